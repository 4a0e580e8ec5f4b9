// Tensor-to-pointer helpers for the CUDA glue: the CUDA type of an ATen scalar type, and turning
// a kernel's cudaError_t into a PyTorch error. Compiled only when PyTorch has CUDA.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

namespace fastseg::glue {

template <typename scalar_t>
struct CudaType {
  using type = scalar_t;
};
template <>
struct CudaType<c10::Half> {
  using type = __half;
};
template <>
struct CudaType<c10::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename scalar_t>
using cuda_t = typename CudaType<scalar_t>::type;

template <typename scalar_t>
const cuda_t<scalar_t>* cuda_ptr(const at::Tensor& tensor) {
  return reinterpret_cast<const cuda_t<scalar_t>*>(tensor.const_data_ptr<scalar_t>());
}

template <typename scalar_t>
cuda_t<scalar_t>* cuda_mutable_ptr(at::Tensor& tensor) {
  return reinterpret_cast<cuda_t<scalar_t>*>(tensor.mutable_data_ptr<scalar_t>());
}

inline void check_cuda(cudaError_t error, const char* op) {
  TORCH_CHECK(error == cudaSuccess, op, " CUDA kernel failed: ", cudaGetErrorString(error));
}

}  // namespace fastseg::glue
