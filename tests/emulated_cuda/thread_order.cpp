// torch.ops.fastseg_emulated_cuda.set_thread_order(order, seed): the order in which the emulated-CUDA
// layer runs a block's threads between barriers (0 forward, 1 reverse, 2 shuffled by seed).
#include <torch/library.h>

#include <cstdint>

namespace fastseg::emulated {
void set_thread_order(int order, uint64_t seed);  // runtime.cpp
}

namespace {

void set_thread_order(int64_t order, int64_t seed) {
  TORCH_CHECK_VALUE(order >= 0 && order <= 2, "thread order must be 0, 1 or 2, got ", order);
  fastseg::emulated::set_thread_order(static_cast<int>(order), static_cast<uint64_t>(seed));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastseg_emulated_cuda, m) { m.def("set_thread_order(int order, int seed) -> ()", &set_thread_order); }
