// The emulated-CUDA layer's own ops, for the tests:
//   torch.ops.fastseg_emulated_cuda.set_thread_order(order, seed): the order in which a block's threads
//     run between barriers (0 forward, 1 reverse, 2 shuffled by seed);
//   torch.ops.fastseg_emulated_cuda.to_device(tensor): a copy in device memory (same strides), so
//     that a kernel reading past an input reads poison or faults.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cstdint>

#include "fastseg_emulated_cuda_glue.h"

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

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastseg_emulated_cuda, m) {
  m.def("set_thread_order(int order, int seed) -> ()", &set_thread_order);
  m.def("to_device(Tensor tensor) -> Tensor", &to_device);
}
