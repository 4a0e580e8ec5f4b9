// The emulated-CUDA execution layer: runs fastseg's unchanged csrc/cuda/*.cu kernels on the CPU.
// Test-only; built by tests/emulated_cuda/extension.py, never shipped in the wheel.
//
// DESIGN
// A .cu file is compiled by the host compiler (g++ -x c++, -DFASTSEG_EMULATED_CUDA) against the real
// CUDA headers in host mode, which give dim3, cudaError_t, the runtime API's declarations and the
// fp16/bf16 types with their host conversion functions. This header adds what host mode lacks:
//   - execution: every launch goes through fastseg::cuda::launch (csrc/cuda/launch.cuh), which here
//     calls fastseg::emulated::launch. Blocks run one after another on the calling thread; inside a
//     block every CUDA thread is a fiber (ucontext) with its own stack, so `threadIdx` and friends
//     are the running fiber's indices. A fiber runs until it reaches a barrier or returns.
//   - barriers: __syncthreads() parks the fiber until every thread of the block that has not
//     returned is parked at it; __syncwarp(mask) and the warp intrinsics (__shfl*_sync,
//     __ballot_sync, __match_any_sync) park it until every lane named in the mask is there, then
//     exchange values with lane semantics. A barrier nobody can pass (threads split between
//     different barriers, a lane of the mask returned) fails the launch instead of hanging.
//   - thread orders: between barriers the runnable fibers run in forward, reverse or a seeded
//     shuffled order (set_thread_order), and a warp whose lanes all reach a warp barrier runs on at
//     once, up to its next block barrier, ahead of the other warps. A kernel that reads what another
//     thread writes without a barrier in between gives order-dependent results, which the tests
//     compare bitwise.
//   - memory: `__shared__` variables are function statics, which the test build gathers in one
//     linker section (-fdata-sections and shared_memory.ld), filled with 0xFF (NaN for every float
//     type) before each block; dynamic shared memory is a per-block buffer with 0xFF redzones
//     checked after the block. Device buffers are the tensors allocated while the glue's
//     DeviceGuard is held (fastseg_emulated_cuda_glue.h, device_memory.cpp), and the inputs the
//     tests copy there (to_device): filled with 0xFF, between 4 KB redzones checked after every
//     launch and inaccessible guard pages, so a read of unwritten memory shows as NaN/-1, a write
//     just out of bounds fails the launch with cudaErrorIllegalAddress and a far one faults.
//   - checks a GPU (sm_80/sm_90) would make at launch: threads per block <= 1024 (x, y <= 1024,
//     z <= 64), grid.y/z <= 65535, dynamic shared memory over 48 KB only after
//     cudaFuncSetAttribute(MaxDynamicSharedMemorySize) raised it, never over 227 KB.
//   - atomics are plain read-modify-writes: fibers switch only at barriers, so they are atomic; the
//     16-bit float ones round the fp32 sum to nearest even, as the hardware does, and a vector atomic
//     (a 16-bit pair, sm_90's float2) at an address not aligned to its size fails the launch
//     (cudaErrorMisalignedAddress); a kernel's vector loads ask check_alignment themselves (the
//     host's loads never fault).
//   - libraries: the device-wide radix sort of csrc/cuda/radix_sort.cuh (CUB under nvcc) is a host
//     LSD radix sort with CUB's temporary-storage contract (radix_sort_keys below).
// Errors are sticky like the runtime's: cudaGetLastError() returns and clears the first one, and
// cudaGetErrorString() gives the layer's explanation of it.
// Not covered: out of bounds accesses between static __shared__ arrays (one section holds them
// all), inputs not copied with to_device, static shared memory sizes, and __launch_bounds__ against
// the launch's block size.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)

namespace fastseg::emulated {

// The indices of the CUDA thread whose fiber is running.
struct ThreadIndices {
  uint3 thread_index;
  uint3 block_index;
  dim3 block_dim;
  dim3 grid_dim;
};

const ThreadIndices& current();

// Runs `thread` (one CUDA thread's body) as grid x block threads; errors go to cudaGetLastError().
void launch(const void* kernel, dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& thread);

void sync_block();
// Parks until every lane of `mask` is parked at a warp barrier.
void sync_warp(unsigned mask);
// sync_warp, writing `value` into this lane's slot first; returns the slots of the whole warp, which
// stay valid until the lanes' next sync_warp (which must follow, before the next exchange).
const uint64_t* exchange_in_warp(unsigned mask, uint64_t value);
void* dynamic_shared_memory();
// Records a fault of the running thread (the first one); the launch fails with `error` after the
// block, as a GPU reports a faulting instruction (an exception cannot leave a fiber).
void fault(cudaError_t error, const char* what);

// A vector atomic or load needs an address aligned to its size (4 bytes for a 16-bit pair, 8 for
// float2), else the instruction faults; `what` names it in the error.
inline void check_alignment(const void* address, uintptr_t bytes, const char* what) {
  if (reinterpret_cast<uintptr_t>(address) % bytes != 0) fault(cudaErrorMisalignedAddress, what);
}

// Thread orders between barriers: 0 forward, 1 reverse, 2 shuffled with `seed`.
void set_thread_order(int order, uint64_t seed);

// cub::DeviceRadixSort::SortKeys of 64-bit keys (csrc/cuda/radix_sort.cuh): a stable LSD radix sort
// of bits [begin_bit, end_bit) in 8-bit digits, ping-ponging between keys_out and the temporary
// storage (num_items keys, as CUB's non-overwriting sort asks). temp == nullptr sets temp_bytes;
// too little storage, a bad bit range or overlapping keys give cudaErrorInvalidValue.
cudaError_t radix_sort_keys(void* temp, size_t& temp_bytes, const uint64_t* keys_in, uint64_t* keys_out,
                            int64_t num_items, int begin_bit, int end_bit);

template <typename T>
T shuffle_from(unsigned mask, T value, int (*source)(int lane, int parameter, int width), int parameter, int width) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>, "shuffle of a register value");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  const int lane = static_cast<int>(current().thread_index.x % 32);
  const uint64_t* slots = exchange_in_warp(mask, bits);
  T result;
  std::memcpy(&result, &slots[source(lane, parameter, width)], sizeof(T));
  sync_warp(mask);  // nobody overwrites a slot before every lane has read
  return result;
}

inline int lane_index(int lane, int source, int width) { return (lane & ~(width - 1)) + (source & (width - 1)); }
inline int lane_up(int lane, int delta, int width) {
  return (lane & (width - 1)) >= delta ? lane - delta : lane;
}
inline int lane_down(int lane, int delta, int width) {
  return (lane & (width - 1)) + delta < width ? lane + delta : lane;
}
inline int lane_xor(int lane, int lane_mask, int width) {
  const int other = lane ^ lane_mask;
  return (other & ~(width - 1)) == (lane & ~(width - 1)) ? other : lane;
}

}  // namespace fastseg::emulated

#define threadIdx (::fastseg::emulated::current().thread_index)
#define blockIdx (::fastseg::emulated::current().block_index)
#define blockDim (::fastseg::emulated::current().block_dim)
#define gridDim (::fastseg::emulated::current().grid_dim)
constexpr int warpSize = 32;

inline void __syncthreads() { ::fastseg::emulated::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::fastseg::emulated::sync_warp(mask); }
inline void __threadfence() {}
inline void __threadfence_block() {}

template <typename T>
T __shfl_sync(unsigned mask, T value, int source, int width = 32) {
  return ::fastseg::emulated::shuffle_from(mask, value, ::fastseg::emulated::lane_index, source, width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  return ::fastseg::emulated::shuffle_from(mask, value, ::fastseg::emulated::lane_up, int(delta), width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  return ::fastseg::emulated::shuffle_from(mask, value, ::fastseg::emulated::lane_down, int(delta), width);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  return ::fastseg::emulated::shuffle_from(mask, value, ::fastseg::emulated::lane_xor, lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  const uint64_t* slots = ::fastseg::emulated::exchange_in_warp(mask, predicate ? 1 : 0);
  unsigned ballot = 0;
  for (int lane = 0; lane < 32; ++lane) ballot |= ((mask >> lane) & 1u) && slots[lane] ? 1u << lane : 0u;
  ::fastseg::emulated::sync_warp(mask);
  return ballot;
}
// The lanes of `mask` whose value has the same bits as this lane's (CUDA's overloads: 32- and
// 64-bit integers and floats).
template <typename T>
unsigned __match_any_sync(unsigned mask, T value) {
  static_assert((sizeof(T) == 4 || sizeof(T) == 8) && std::is_trivially_copyable_v<T>, "match of a 32/64-bit value");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  const uint64_t* slots = ::fastseg::emulated::exchange_in_warp(mask, bits);
  unsigned peers = 0;
  for (int lane = 0; lane < 32; ++lane) peers |= ((mask >> lane) & 1u) && slots[lane] == bits ? 1u << lane : 0u;
  ::fastseg::emulated::sync_warp(mask);
  return peers;
}
inline int __popc(unsigned value) { return __builtin_popcount(value); }

// cuda_runtime.h declares this overload for nvcc only.
template <typename T>
cudaError_t cudaFuncSetAttribute(T* kernel, cudaFuncAttribute attribute, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attribute, value);
}

// Fibers switch only at barriers, so a read-modify-write is atomic.
template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}

// The 16-bit atomics of sm_70+ (__half) and sm_90 (__nv_bfloat16; sm_80 emulates it with a CAS
// loop), scalar and on an aligned pair (x the lower address, each half added on its own): the fp32
// sum of two 16-bit values rounded to nearest even. The fp32 sum is exact unless the smaller term is
// below 2^-12 of the larger, and then under a quarter of the 16-bit ulp (never near a tie), so the
// result is the correctly rounded sum, as atom.add.noftz.{f16,bf16}{,x2} gives it.
inline __half atomicAdd(__half* address, __half value) {
  const __half old = *address;
  *address = __float2half_rn(__half2float(old) + __half2float(value));
  return old;
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* address, __nv_bfloat16 value) {
  const __nv_bfloat16 old = *address;
  *address = __float2bfloat16_rn(__bfloat162float(old) + __bfloat162float(value));
  return old;
}
inline __half2 atomicAdd(__half2* address, __half2 value) {
  ::fastseg::emulated::check_alignment(address, 4, "16-bit pair atomicAdd at an address not 4-byte aligned");
  const __half2 old = *address;
  *address = __floats2half2_rn(__low2float(old) + __low2float(value), __high2float(old) + __high2float(value));
  return old;
}
inline __nv_bfloat162 atomicAdd(__nv_bfloat162* address, __nv_bfloat162 value) {
  ::fastseg::emulated::check_alignment(address, 4, "16-bit pair atomicAdd at an address not 4-byte aligned");
  const __nv_bfloat162 old = *address;
  *address = __floats2bfloat162_rn(__low2float(old) + __low2float(value), __high2float(old) + __high2float(value));
  return old;
}
// sm_90's vector atomic on an fp32 pair (atom.global.v2.f32.add, CUDA 12.1+): each element added on
// its own (fp32 round to nearest), the address 8-byte aligned.
inline float2 atomicAdd(float2* address, float2 value) {
  ::fastseg::emulated::check_alignment(address, 8, "float2 atomicAdd at an address not 8-byte aligned");
  const float2 old = *address;
  *address = make_float2(old.x + value.x, old.y + value.y);
  return old;
}
// sm_90's vector atomic on four fp32 values (atom.global.v4.f32.add, CUDA 12.1+): each element added
// on its own, the address 16-byte aligned (check_alignment serves the 16-byte vector loads alike),
// copied as bytes (the host's aligned 16-byte access of a misaligned float4 would crash the process
// before the launch fails).
inline float4 atomicAdd(float4* address, float4 value) {
  ::fastseg::emulated::check_alignment(address, 16, "float4 atomicAdd at an address not 16-byte aligned");
  float4 old;
  std::memcpy(&old, static_cast<const void*>(address), sizeof(old));
  const float4 sum = make_float4(old.x + value.x, old.y + value.y, old.z + value.z, old.w + value.w);
  std::memcpy(static_cast<void*>(address), &sum, sizeof(sum));
  return old;
}

// Device math the kernels call unqualified, for integer and floating arguments alike.
template <typename T>
T min(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
T max(T a, T b) {
  return a < b ? b : a;
}
using std::exp;
using std::floor;

// nvcuda::wmma (<mma.h>, empty in host mode) for the 16x16x16 shapes with fp16/bf16 operands and an
// fp32 accumulator. A fragment's storage is opaque in CUDA (spread over the lanes); here every lane
// holds the whole tile, in fp32 (16-bit values convert exactly), so the kernels cannot touch x[].
// Every call is warp-collective: it first parks at a full-mask warp barrier, so that a lane that
// skips a call fails the launch as it deadlocks a GPU. Products are exact in fp32 and accumulated in
// fp32 in k order. Pointers must be 32-byte aligned and ldm (in elements) a multiple of 16 bytes,
// else the call faults (cudaErrorMisalignedAddress), as the PTX wmma instructions require.
namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulated wmma has the 16x16x16 shape only");
  float tile[16][16];  // tile[row][column] of the fragment's matrix
};

namespace detail {
inline void enter(const void* pointer, unsigned ldm, size_t element_size) {
  ::fastseg::emulated::sync_warp(0xffffffffu);
  if (reinterpret_cast<uintptr_t>(pointer) % 32 != 0 || ldm * element_size % 16 != 0) {
    ::fastseg::emulated::fault(cudaErrorMisalignedAddress, "wmma tile not 32-byte aligned or ldm not 16 bytes");
  }
}
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float to_float(float v) { return v; }
}  // namespace detail

template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  static_assert(std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>, "a or b fragment");
  detail::enter(p, ldm, sizeof(T));
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < 16; ++c) {
      f.tile[r][c] = detail::to_float(std::is_same_v<Layout, row_major> ? p[r * ldm + c] : p[c * ldm + r]);
    }
  }
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm,
                             layout_t layout) {
  detail::enter(p, ldm, sizeof(float));
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < 16; ++c) f.tile[r][c] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
  }
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
  detail::enter(p, ldm, sizeof(float));
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < 16; ++c) (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.tile[r][c];
  }
}

inline void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, float value) {
  ::fastseg::emulated::sync_warp(0xffffffffu);
  for (auto& row : f.tile) {
    for (float& v : row) v = value;
  }
}

// d = a x b + c.
template <typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LayoutA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LayoutB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  ::fastseg::emulated::sync_warp(0xffffffffu);
  fragment<accumulator, 16, 16, 16, float> result;
  for (int r = 0; r < 16; ++r) {
    for (int col = 0; col < 16; ++col) {
      float sum = c.tile[r][col];
      for (int k = 0; k < 16; ++k) sum += a.tile[r][k] * b.tile[k][col];
      result.tile[r][col] = sum;
    }
  }
  d = result;
}

}  // namespace nvcuda::wmma
