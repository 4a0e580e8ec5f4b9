// Helpers shared by the CUDA kernels. CUDA headers only: these files compile with nvcc alone (and
// with the host compiler on the emulated-CUDA layer of the tests, see cuda/launch.cuh).
#pragma once

#include "cuda/launch.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

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

// Explicit conversion between storage and accumulation types. PyTorch compiles CUDA sources with
// __CUDA_NO_HALF_CONVERSIONS__ and __CUDA_NO_BFLOAT16_CONVERSIONS__, so __half and __nv_bfloat16 do
// not convert implicitly: fp16/bf16 go through float (their accumulation type), everything else is a
// static_cast. Use it for every load into and store from an accumulator.
template <typename To, typename From>
__host__ __device__ __forceinline__ To convert(From x) {
  if constexpr (std::is_same_v<To, From>) {
    return x;
  } else if constexpr (std::is_same_v<From, __half>) {
    return static_cast<To>(__half2float(x));
  } else if constexpr (std::is_same_v<From, __nv_bfloat16>) {
    return static_cast<To>(__bfloat162float(x));
  } else if constexpr (std::is_same_v<To, __half>) {
    return __float2half_rn(static_cast<float>(x));
  } else if constexpr (std::is_same_v<To, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(x));
  } else {
    return static_cast<To>(x);
  }
}

// False for NaN and +-Inf (x - x is NaN for both): the same test in device code and in the host
// compiler's build of these sources (the emulated-CUDA layer), where CUDA's isfinite is not declared.
template <typename T>
__host__ __device__ __forceinline__ bool is_finite(T value) {
  return value - value == T(0);
}

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

// Lets `kernel` launch with `bytes` of dynamic shared memory: above the default 48 KB a kernel must
// opt in (no stream work: allowed while a stream captures a CUDA graph).
template <typename Kernel>
cudaError_t allow_shared(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

}  // namespace fastseg::cuda
