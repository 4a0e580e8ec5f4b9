// The emulated-CUDA execution layer's scheduler and the subset of the CUDA runtime API the kernels
// and their glue call. See include/fastseg_emulated_cuda.h for the design.
#include "fastseg_emulated_cuda.h"

#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

// Bounds of the section holding every __shared__ variable (shared_memory.ld).
extern "C" unsigned char fastseg_emulated_shared_begin[];
extern "C" unsigned char fastseg_emulated_shared_end[];

namespace fastseg::emulated {

void check_device_memory(std::string* problem);  // device_memory.cpp

namespace {

constexpr unsigned char kPoison = 0xFF;
constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kRedzone = 64 * 1024;  // on each side of the dynamic shared memory: overruns stay inside
constexpr size_t kSharedAlignment = 128;  // of the dynamic shared memory (launch.cuh; wmma tiles need 32 B)
constexpr unsigned kMaxThreads = 1024;
constexpr size_t kDefaultSharedLimit = 48 * 1024;
constexpr size_t kMaxSharedOptin = 227 * 1024;  // sm_80 is 163 KB; sm_90's 227 KB is the larger bound
constexpr int kSms = 132;

enum class State { kRunnable, kAtBlockBarrier, kAtWarpBarrier, kReturned };

// A launch failure: the error code and the layer's explanation.
struct LaunchFailure : std::runtime_error {
  cudaError_t code;
  LaunchFailure(cudaError_t error, const std::string& what) : std::runtime_error(what), code(error) {}
};

struct Fiber {
  ucontext_t context;
  State state = State::kRunnable;
  unsigned warp_mask = 0;
};

struct Runtime {
  cudaError_t sticky = cudaSuccess;
  std::string message;
  std::map<const void*, int> shared_limits;  // cudaFuncSetAttribute(MaxDynamicSharedMemorySize)
  int order = 0;
  uint64_t seed = 0;
  // the running block
  ThreadIndices indices;
  std::vector<Fiber> fibers;
  std::vector<uint64_t> warp_slots;
  std::vector<unsigned char> dynamic_shared;
  size_t dynamic_bytes = 0;
  const std::function<void()>* body = nullptr;
  int running = -1;
  cudaError_t fault = cudaSuccess;  // recorded by a thread of the running block (fault())
  std::string fault_what;
  ucontext_t scheduler;
  std::vector<unsigned char*> stacks;
};

Runtime& runtime() {
  static Runtime instance;
  return instance;
}

void fail(cudaError_t error, const std::string& what) {
  Runtime& r = runtime();
  if (r.sticky == cudaSuccess) {
    r.sticky = error;
    r.message = what;
  }
}

void park(State state) {
  Runtime& r = runtime();
  r.fibers[r.running].state = state;
  swapcontext(&r.fibers[r.running].context, &r.scheduler);
}

void fiber_entry() {
  Runtime& r = runtime();
  (*r.body)();
  r.fibers[r.running].state = State::kReturned;
  swapcontext(&r.fibers[r.running].context, &r.scheduler);
}

uint3 unflatten(unsigned index, const dim3& dims) {
  return make_uint3(index % dims.x, index / dims.x % dims.y, index / (dims.x * dims.y));
}

std::vector<int> run_order(int threads, uint64_t round) {
  Runtime& r = runtime();
  std::vector<int> order(threads);
  std::iota(order.begin(), order.end(), 0);
  if (r.order == 1) std::reverse(order.begin(), order.end());
  if (r.order == 2) {
    const uint3 b = r.indices.block_index;
    const uint64_t block = b.x + 65536ull * (b.y + 65536ull * b.z);
    std::mt19937_64 generator(r.seed * 0x9E3779B97F4A7C15ull + block * 1000003ull + round);
    std::shuffle(order.begin(), order.end(), generator);
  }
  return order;
}

// Releases `warp` when every lane named by its waiting lanes' masks waits at a warp barrier.
bool release_warp(int warp) {
  Runtime& r = runtime();
  const int threads = static_cast<int>(r.fibers.size());
  unsigned waiting = 0, mask = 0;
  for (int lane = 0; lane < 32 && warp * 32 + lane < threads; ++lane) {
    const Fiber& f = r.fibers[warp * 32 + lane];
    if (f.state == State::kAtWarpBarrier) {
      waiting |= 1u << lane;
      mask |= f.warp_mask;
    }
  }
  if (waiting == 0 || (mask & ~waiting) != 0) return false;
  for (int lane = 0; lane < 32; ++lane) {
    if (waiting >> lane & 1u) r.fibers[warp * 32 + lane].state = State::kRunnable;
  }
  return true;
}

void run_fiber(int t) {
  Runtime& r = runtime();
  r.running = t;
  r.indices.thread_index = unflatten(t, r.indices.block_dim);
  swapcontext(&r.scheduler, &r.fibers[t].context);
}

// Once thread t parks, its warp runs on through every warp barrier it completes (its lanes in the
// block's order) up to the next block barrier: warps race ahead of each other as they may on a GPU.
void run_warp_ahead(int t, const std::vector<int>& order) {
  Runtime& r = runtime();
  const int warp = t / 32;
  while (release_warp(warp)) {
    for (int u : order) {
      if (u / 32 == warp && r.fibers[u].state == State::kRunnable) run_fiber(u);
    }
  }
}

// Releases the block barrier when every thread that has not returned waits at it.
bool release_block() {
  Runtime& r = runtime();
  bool any = false;
  for (const Fiber& f : r.fibers) {
    if (f.state == State::kAtWarpBarrier || f.state == State::kRunnable) return false;
    any = any || f.state == State::kAtBlockBarrier;
  }
  for (Fiber& f : r.fibers) {
    if (f.state == State::kAtBlockBarrier) f.state = State::kRunnable;
  }
  return any;
}

std::string describe_block() {
  const uint3 b = runtime().indices.block_index;
  return "block (" + std::to_string(b.x) + "," + std::to_string(b.y) + "," + std::to_string(b.z) + ")";
}

void run_block(int threads) {
  Runtime& r = runtime();
  for (int t = 0; t < threads; ++t) {
    Fiber& f = r.fibers[t];
    f.state = State::kRunnable;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = r.stacks[t];
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = nullptr;
    makecontext(&f.context, fiber_entry, 0);
  }
  for (uint64_t round = 0;; ++round) {
    bool ran = false;
    const std::vector<int> order = run_order(threads, round);
    for (int t : order) {
      if (r.fibers[t].state != State::kRunnable) continue;
      run_fiber(t);
      run_warp_ahead(t, order);
      ran = true;
    }
    if (ran || release_block()) continue;
    const bool done = std::all_of(r.fibers.begin(), r.fibers.begin() + threads,
                                  [](const Fiber& f) { return f.state == State::kReturned; });
    if (done) return;
    throw LaunchFailure(cudaErrorLaunchFailure,
                        describe_block() + ": deadlock: threads wait at different barriers, or a warp barrier "
                                           "names a lane that returned");
  }
}

void check_config(const void* kernel, dim3 grid, dim3 block, size_t shared_bytes) {
  Runtime& r = runtime();
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (threads == 0 || threads > kMaxThreads || block.x > 1024 || block.y > 1024 || block.z > 64) {
    throw LaunchFailure(cudaErrorInvalidConfiguration,
                        "block (" + std::to_string(block.x) + "," + std::to_string(block.y) + "," +
                            std::to_string(block.z) + ") exceeds 1024 threads (x, y <= 1024, z <= 64)");
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    throw LaunchFailure(cudaErrorInvalidConfiguration,
                        "grid (" + std::to_string(grid.x) + "," + std::to_string(grid.y) + "," +
                            std::to_string(grid.z) + ") is empty or exceeds grid.y, grid.z <= 65535");
  }
  const auto raised = r.shared_limits.find(kernel);
  const size_t limit = raised == r.shared_limits.end() ? kDefaultSharedLimit : size_t(raised->second);
  if (shared_bytes > limit) {
    throw LaunchFailure(cudaErrorInvalidValue,
                        std::to_string(shared_bytes) + " bytes of dynamic shared memory exceed the kernel's " +
                            std::to_string(limit) + " (raise it with cudaFuncSetAttribute, at most 227 KB)");
  }
}

void poison_shared(size_t shared_bytes) {
  Runtime& r = runtime();
  std::memset(fastseg_emulated_shared_begin, kPoison, fastseg_emulated_shared_end - fastseg_emulated_shared_begin);
  r.dynamic_bytes = shared_bytes;
  if (shared_bytes > 0) r.dynamic_shared.assign(shared_bytes + 2 * kRedzone + kSharedAlignment, kPoison);
}

// The start of the lower redzone, placed so that the dynamic shared memory after it is
// kSharedAlignment-aligned (as the kernels' extern __shared__ declaration asks).
unsigned char* dynamic_base() {
  const uintptr_t data = reinterpret_cast<uintptr_t>(runtime().dynamic_shared.data());
  return reinterpret_cast<unsigned char*>((data + kSharedAlignment - 1) / kSharedAlignment * kSharedAlignment);
}

void check_redzones() {
  const Runtime& r = runtime();
  if (r.dynamic_bytes == 0) return;
  const unsigned char* base = dynamic_base();
  for (size_t i = 0; i < kRedzone; ++i) {
    if (base[i] != kPoison || base[kRedzone + r.dynamic_bytes + i] != kPoison) {
      throw LaunchFailure(cudaErrorIllegalAddress, describe_block() + " wrote outside its " +
                                                       std::to_string(r.dynamic_bytes) +
                                                       " bytes of dynamic shared memory");
    }
  }
}

void run_grid(const void* kernel, dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& thread) {
  Runtime& r = runtime();
  check_config(kernel, grid, block, shared_bytes);
  const int threads = static_cast<int>(block.x * block.y * block.z);
  while (r.stacks.size() < size_t(threads)) {
    void* stack =
        mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (stack == MAP_FAILED) throw LaunchFailure(cudaErrorMemoryAllocation, "no memory for fiber stacks");
    r.stacks.push_back(static_cast<unsigned char*>(stack));
  }
  r.fibers.assign(threads, Fiber{});
  r.warp_slots.assign((threads + 31) / 32 * 32, 0);
  r.body = &thread;
  r.indices.block_dim = block;
  r.indices.grid_dim = grid;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        r.indices.block_index = make_uint3(x, y, z);
        poison_shared(shared_bytes);
        r.fault = cudaSuccess;
        run_block(threads);
        if (r.fault != cudaSuccess) throw LaunchFailure(r.fault, describe_block() + ": " + r.fault_what);
        check_redzones();
      }
    }
  }
  std::string problem;
  check_device_memory(&problem);
  if (!problem.empty()) throw LaunchFailure(cudaErrorIllegalAddress, problem);
}

}  // namespace

const ThreadIndices& current() { return runtime().indices; }

void launch(const void* kernel, dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& thread) {
  Runtime& r = runtime();
  if (r.sticky != cudaSuccess) return;  // a failed launch poisons the context, as on a GPU
  try {
    run_grid(kernel, grid, block, shared_bytes, thread);
  } catch (const LaunchFailure& failure) {
    fail(failure.code, failure.what());
  }
  r.body = nullptr;
  r.running = -1;
}

void sync_block() { park(State::kAtBlockBarrier); }

void sync_warp(unsigned mask) {
  Runtime& r = runtime();
  r.fibers[r.running].warp_mask = mask | (1u << (r.running % 32));
  park(State::kAtWarpBarrier);
}

const uint64_t* exchange_in_warp(unsigned mask, uint64_t value) {
  Runtime& r = runtime();
  const int warp = r.running / 32;
  r.warp_slots[r.running] = value;
  sync_warp(mask);
  return r.warp_slots.data() + warp * 32;
}

void* dynamic_shared_memory() { return dynamic_base() + kRedzone; }

void fault(cudaError_t error, const char* what) {
  Runtime& r = runtime();
  if (r.fault != cudaSuccess) return;
  r.fault = error;
  r.fault_what = what;
}

void set_thread_order(int order, uint64_t seed) {
  runtime().order = order;
  runtime().seed = seed;
}

cudaError_t radix_sort_keys(void* temp, size_t& temp_bytes, const uint64_t* keys_in, uint64_t* keys_out,
                            int64_t num_items, int begin_bit, int end_bit) {
  constexpr int kDigitBits = 8;
  const size_t needed = sizeof(uint64_t) * static_cast<size_t>(std::max<int64_t>(num_items, 1));
  if (temp == nullptr) {
    temp_bytes = needed;
    return cudaSuccess;
  }
  if (runtime().sticky != cudaSuccess) return runtime().sticky;
  const size_t n = static_cast<size_t>(std::max<int64_t>(num_items, 0));
  const bool overlap = keys_in < keys_out + n && keys_out < keys_in + n;
  if (num_items < 0 || begin_bit < 0 || end_bit > 64 || begin_bit >= end_bit || temp_bytes < needed || overlap) {
    return cudaErrorInvalidValue;
  }
  // Counting sort of one digit per pass, from the lowest; the passes alternate between keys_out and
  // temp, starting where an odd or even pass count ends in keys_out.
  const int passes = (end_bit - begin_bit + kDigitBits - 1) / kDigitBits;
  uint64_t* buffers[2] = {keys_out, static_cast<uint64_t*>(temp)};
  const uint64_t* source = keys_in;
  std::vector<size_t> offsets(size_t(1) << kDigitBits);
  for (int pass = 0; pass < passes; ++pass) {
    const int shift = begin_bit + pass * kDigitBits;
    const uint64_t mask = (uint64_t(1) << std::min(kDigitBits, end_bit - shift)) - 1;
    uint64_t* destination = buffers[(passes - 1 - pass) % 2];
    std::fill(offsets.begin(), offsets.end(), 0);
    for (size_t i = 0; i < n; ++i) ++offsets[(source[i] >> shift) & mask];
    std::exclusive_scan(offsets.begin(), offsets.end(), offsets.begin(), size_t(0));
    for (size_t i = 0; i < n; ++i) destination[offsets[(source[i] >> shift) & mask]++] = source[i];
    source = destination;
  }
  std::string problem;
  check_device_memory(&problem);
  return problem.empty() ? cudaSuccess : cudaErrorIllegalAddress;
}

}  // namespace fastseg::emulated

using fastseg::emulated::runtime;

// The runtime API subset used by csrc/cuda and csrc/cuda_glue, on one emulated sm_90 device.
cudaError_t cudaGetLastError() {
  const cudaError_t error = runtime().sticky;
  runtime().sticky = cudaSuccess;
  return error;
}

cudaError_t cudaPeekAtLastError() { return runtime().sticky; }

const char* cudaGetErrorString(cudaError_t error) {
  static std::string text;
  text = "emulated CUDA error " + std::to_string(int(error)) +
         (runtime().message.empty() ? std::string() : ": " + runtime().message);
  return text.c_str();
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int /*device*/) {
  switch (attribute) {
    case cudaDevAttrMultiProcessorCount: *value = fastseg::emulated::kSms; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = int(fastseg::emulated::kMaxSharedOptin); return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = int(fastseg::emulated::kDefaultSharedLimit); return cudaSuccess;
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attribute, int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (value < 0 || size_t(value) > fastseg::emulated::kMaxSharedOptin) return cudaErrorInvalidValue;
  runtime().shared_limits[kernel] = value;
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* destination, int value, size_t bytes, cudaStream_t /*stream*/) {
  if (runtime().sticky != cudaSuccess) return runtime().sticky;
  std::memset(destination, value, bytes);
  std::string problem;
  fastseg::emulated::check_device_memory(&problem);
  if (!problem.empty()) return cudaErrorIllegalAddress;
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t /*stream*/, cudaStreamCaptureStatus* status) {
  *status = cudaStreamCaptureStatusNone;  // the emulated device captures no graphs
  return cudaSuccess;
}
