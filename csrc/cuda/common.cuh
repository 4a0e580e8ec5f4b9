// Helpers shared by the CUDA kernels. CUDA headers only: these files compile with nvcc alone.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

// MACRO(T) for every type the kernels are explicitly instantiated for.
#define FASTSEG_FOR_FLOATING_TYPES(MACRO) MACRO(float) MACRO(double) MACRO(__half) MACRO(__nv_bfloat16)

namespace fastseg::cuda {

// Accumulation type: fp32 for fp16/bf16/fp32 inputs, fp64 for fp64.
template <typename scalar_t>
struct AccumulateType {
  using type = float;
};
template <>
struct AccumulateType<double> {
  using type = double;
};
template <typename scalar_t>
using acc_type = typename AccumulateType<scalar_t>::type;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Number of SMs and opt-in shared memory per block of the current device.
struct DeviceLimits {
  int sms = 1;
  int shared_per_block = 48 * 1024;
};

inline cudaError_t device_limits(DeviceLimits* limits) {
  int device = 0;
  cudaError_t error = cudaGetDevice(&device);
  if (error != cudaSuccess) return error;
  error = cudaDeviceGetAttribute(&limits->sms, cudaDevAttrMultiProcessorCount, device);
  if (error != cudaSuccess) return error;
  return cudaDeviceGetAttribute(&limits->shared_per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
}

}  // namespace fastseg::cuda
