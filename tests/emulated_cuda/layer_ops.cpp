// The emulated-CUDA layer's own ops, for the tests:
//   torch.ops.fastseg_emulated_cuda.set_thread_order(order, seed): the order in which a block's threads
//     run between barriers (0 forward, 1 reverse, 2 shuffled by seed);
//   torch.ops.fastseg_emulated_cuda.to_device(tensor): a copy in device memory (same strides), so
//     that a kernel reading past an input reads poison or faults;
//   torch.ops.fastseg_emulated_cuda.match_any(values, mask): __match_any_sync(mask, values[t]) of
//     every thread t of one block of values.numel() threads whose lane is in mask (0 for the others);
//   torch.ops.fastseg_emulated_cuda.wmma_product(a, b, c, a_col_major, b_col_major, c_col_major, ldm):
//     a x b + c by one warp's nvcuda::wmma calls (16x16 fp16/bf16 a and b, fp32 c), each operand laid
//     out in memory with leading dimension ldm (row- or column-major), the result read back as stored.
//   torch.ops.fastseg_emulated_cuda.atomic_add_float2(target, index, values): a copy of the fp32 vector
//     target after thread t of one block of index.numel() threads ran atomicAdd((float2*)(target +
//     index[t]), (values[2t], values[2t + 1])) (sm_90's vector atomic); an odd index faults.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "fastseg_emulated_cuda_glue.h"
#include "fastseg_emulated_cuda.h"

namespace fastseg::emulated {
void set_thread_order(int order, uint64_t seed);  // runtime.cpp
}

namespace {

void set_thread_order(int64_t order, int64_t seed) {
  TORCH_CHECK_VALUE(order >= 0 && order <= 2, "thread order must be 0, 1 or 2, got ", order);
  fastseg::emulated::set_thread_order(static_cast<int>(order), static_cast<uint64_t>(seed));
}

at::Tensor to_device(const at::Tensor& tensor) {
  const fastseg::glue::DeviceGuard guard(tensor.device());
  return tensor.clone();
}

at::Tensor match_any(const at::Tensor& values, int64_t mask) {
  TORCH_CHECK_VALUE(values.dim() == 1 && values.numel() % 32 == 0 && values.numel() <= 1024 &&
                        values.scalar_type() == at::kLong && values.device().is_cpu(),
                    "match_any takes a CPU int64 vector of whole warps, at most 1024 threads");
  const at::Tensor in = values.contiguous();
  at::Tensor peers = at::zeros_like(in);
  const int64_t* value = in.data_ptr<int64_t>();
  int64_t* out = peers.data_ptr<int64_t>();
  const unsigned lanes = static_cast<unsigned>(mask);
  fastseg::emulated::launch(reinterpret_cast<const void*>(&match_any), dim3(1), dim3(unsigned(in.numel())), 0, [&] {
    const unsigned t = threadIdx.x;
    if ((lanes >> (t % 32)) & 1u) out[t] = __match_any_sync(lanes, value[t]);
  });
  const cudaError_t error = cudaGetLastError();
  TORCH_CHECK(error == cudaSuccess, "match_any: ", cudaGetErrorString(error));
  return peers;
}

template <typename T, typename LayoutA, typename LayoutB>
at::Tensor wmma_product_as(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, bool c_col_major,
                           int64_t ldm) {
  namespace wmma = nvcuda::wmma;
  constexpr bool kACol = std::is_same_v<LayoutA, wmma::col_major>, kBCol = std::is_same_v<LayoutB, wmma::col_major>;
  // Operands in 32-byte aligned storage (64 bytes of slack), poisoned past the 16x16 entries.
  std::vector<T> a_store(16 * ldm + 32), b_store(16 * ldm + 32);
  std::vector<float> c_store(16 * ldm + 8), d_store(16 * ldm + 8);
  for (auto* store : {static_cast<void*>(a_store.data()), static_cast<void*>(b_store.data())}) {
    std::memset(store, 0xFF, a_store.size() * sizeof(T));
  }
  std::memset(c_store.data(), 0xFF, c_store.size() * sizeof(float));
  std::memset(d_store.data(), 0xFF, d_store.size() * sizeof(float));
  const auto aligned = [](auto& store) {
    const uintptr_t data = reinterpret_cast<uintptr_t>(store.data());
    return reinterpret_cast<typename std::decay_t<decltype(store)>::value_type*>((data + 31) / 32 * 32);
  };
  T* pa = aligned(a_store);
  T* pb = aligned(b_store);
  float* pc = aligned(c_store);
  float* pd = aligned(d_store);
  const at::Tensor a_in = a.contiguous(), b_in = b.contiguous(), c_in = c.contiguous();
  const T* a_data = static_cast<const T*>(a_in.const_data_ptr());  // at::Half / BFloat16: the same bits
  const T* b_data = static_cast<const T*>(b_in.const_data_ptr());
  for (int r = 0; r < 16; ++r) {
    for (int k = 0; k < 16; ++k) {
      pa[kACol ? k * ldm + r : r * ldm + k] = a_data[r * 16 + k];
      pb[kBCol ? k * ldm + r : r * ldm + k] = b_data[r * 16 + k];
      pc[c_col_major ? k * ldm + r : r * ldm + k] = c_in.data_ptr<float>()[r * 16 + k];
    }
  }
  const wmma::layout_t c_layout = c_col_major ? wmma::mem_col_major : wmma::mem_row_major;
  fastseg::emulated::launch(reinterpret_cast<const void*>(&wmma_product_as<T, LayoutA, LayoutB>), dim3(1), dim3(32),
                            0, [&] {
                              wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LayoutA> fa;
                              wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LayoutB> fb;
                              wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
                              wmma::load_matrix_sync(fa, pa, unsigned(ldm));
                              wmma::load_matrix_sync(fb, pb, unsigned(ldm));
                              wmma::load_matrix_sync(fc, pc, unsigned(ldm), c_layout);
                              wmma::mma_sync(fc, fa, fb, fc);
                              wmma::store_matrix_sync(pd, fc, unsigned(ldm), c_layout);
                            });
  const cudaError_t error = cudaGetLastError();
  TORCH_CHECK(error == cudaSuccess, "wmma_product: ", cudaGetErrorString(error));
  at::Tensor d = at::empty({16, 16}, c.options());
  for (int r = 0; r < 16; ++r) {
    for (int k = 0; k < 16; ++k) d.data_ptr<float>()[r * 16 + k] = pd[c_col_major ? k * ldm + r : r * ldm + k];
  }
  return d;
}

template <typename T>
at::Tensor wmma_product_of(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, bool a_col_major,
                           bool b_col_major, bool c_col_major, int64_t ldm) {
  using Row = nvcuda::wmma::row_major;
  using Col = nvcuda::wmma::col_major;
  if (a_col_major) {
    return b_col_major ? wmma_product_as<T, Col, Col>(a, b, c, c_col_major, ldm)
                       : wmma_product_as<T, Col, Row>(a, b, c, c_col_major, ldm);
  }
  return b_col_major ? wmma_product_as<T, Row, Col>(a, b, c, c_col_major, ldm)
                     : wmma_product_as<T, Row, Row>(a, b, c, c_col_major, ldm);
}

at::Tensor wmma_product(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, bool a_col_major,
                        bool b_col_major, bool c_col_major, int64_t ldm) {
  TORCH_CHECK_VALUE(a.sizes() == at::IntArrayRef({16, 16}) && b.sizes() == a.sizes() && c.sizes() == a.sizes() &&
                        a.scalar_type() == b.scalar_type() && c.scalar_type() == at::kFloat && a.device().is_cpu() &&
                        b.device().is_cpu() && c.device().is_cpu() && ldm >= 16,
                    "wmma_product takes 16x16 CPU a, b (fp16 or bf16) and c (fp32), ldm >= 16");
  if (a.scalar_type() == at::kHalf) {
    return wmma_product_of<__half>(a, b, c, a_col_major, b_col_major, c_col_major, ldm);
  }
  TORCH_CHECK_VALUE(a.scalar_type() == at::kBFloat16, "wmma_product: a and b fp16 or bf16");
  return wmma_product_of<__nv_bfloat16>(a, b, c, a_col_major, b_col_major, c_col_major, ldm);
}

at::Tensor atomic_add_float2(const at::Tensor& target, const at::Tensor& index, const at::Tensor& values) {
  TORCH_CHECK_VALUE(target.dim() == 1 && target.scalar_type() == at::kFloat && index.dim() == 1 &&
                        index.scalar_type() == at::kLong && index.numel() <= 1024 &&
                        values.scalar_type() == at::kFloat && values.numel() == 2 * index.numel() &&
                        target.device().is_cpu() && index.device().is_cpu() && values.device().is_cpu(),
                    "atomic_add_float2 takes CPU fp32 target, int64 index (at most 1024) and 2 fp32 values each");
  at::Tensor result = target.clone(at::MemoryFormat::Contiguous);  // 64-byte aligned storage
  const at::Tensor in = index.contiguous(), add = values.contiguous();
  float* data = result.data_ptr<float>();
  const int64_t* at = in.data_ptr<int64_t>();
  for (int64_t t = 0; t < in.numel(); ++t) {
    TORCH_CHECK_VALUE(at[t] >= 0 && at[t] + 2 <= result.numel(), "atomic_add_float2: index out of range");
  }
  const float* value = add.data_ptr<float>();
  fastseg::emulated::launch(reinterpret_cast<const void*>(&atomic_add_float2), dim3(1), dim3(unsigned(in.numel())), 0,
                            [&] {
                              const unsigned t = threadIdx.x;
                              atomicAdd(reinterpret_cast<float2*>(data + at[t]),
                                        make_float2(value[2 * t], value[2 * t + 1]));
                            });
  const cudaError_t error = cudaGetLastError();
  TORCH_CHECK(error == cudaSuccess, "atomic_add_float2: ", cudaGetErrorString(error));
  return result;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastseg_emulated_cuda, m) {
  m.def("set_thread_order(int order, int seed) -> ()", &set_thread_order);
  m.def("to_device(Tensor tensor) -> Tensor", &to_device);
  m.def("match_any(Tensor values, int mask) -> Tensor", &match_any);
  m.def("wmma_product(Tensor a, Tensor b, Tensor c, bool a_col_major, bool b_col_major, bool c_col_major, int ldm) "
        "-> Tensor",
        &wmma_product);
  m.def("atomic_add_float2(Tensor target, Tensor index, Tensor values) -> Tensor", &atomic_add_float2);
}
