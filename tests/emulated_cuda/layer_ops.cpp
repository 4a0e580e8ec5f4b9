// The emulated-CUDA layer's own ops, for the tests:
//   torch.ops.fastseg_emulated_cuda.set_thread_order(order, seed): the order in which a block's threads
//     run between barriers (0 forward, 1 reverse, 2 shuffled by seed);
//   torch.ops.fastseg_emulated_cuda.to_device(tensor): a copy in device memory (same strides), so
//     that a kernel reading past an input reads poison or faults;
//   torch.ops.fastseg_emulated_cuda.match_any(values, mask): __match_any_sync(mask, values[t]) of
//     every thread t of one block of values.numel() threads whose lane is in mask (0 for the others).
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <cstdint>

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

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastseg_emulated_cuda, m) {
  m.def("set_thread_order(int order, int seed) -> ()", &set_thread_order);
  m.def("to_device(Tensor tensor) -> Tensor", &to_device);
  m.def("match_any(Tensor values, int mask) -> Tensor", &match_any);
}
