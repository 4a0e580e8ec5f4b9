// The emulated-CUDA layer's side of csrc/cuda_glue/device.h: the glue's ops register for CPU tensors
// under the library fastseg_emulated_cuda (schemas copied from fastseg's by
// tests/emulated_cuda/extension.py), and "device memory" is what the glue allocates while its
// DeviceGuard is held: poisoned, with redzones checked after every launch.
#pragma once

#include <c10/core/Allocator.h>
#include <c10/core/Device.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

namespace fastseg::glue {

// While alive, every CPU allocation is device memory: filled with 0xFF and guarded by redzones.
class DeviceGuard {
 public:
  explicit DeviceGuard(c10::Device device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  c10::Allocator* previous_;
};

inline cudaStream_t current_stream() { return nullptr; }

}  // namespace fastseg::glue

#define FASTSEG_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(fastseg_emulated_cuda, CPU, m)
