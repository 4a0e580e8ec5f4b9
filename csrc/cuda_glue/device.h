// The device side of the CUDA glue: the guard that selects a tensor's device, the stream kernels run
// on, and the dispatch key the ops register under. On the emulated-CUDA layer of the tests
// (FASTSEG_EMULATED_CUDA, tests/emulated_cuda) the same glue runs the kernels on CPU tensors.
#pragma once

#ifdef FASTSEG_EMULATED_CUDA
#include <fastseg_emulated_cuda_glue.h>
#else
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace fastseg::glue {

using DeviceGuard = c10::cuda::CUDAGuard;

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

}  // namespace fastseg::glue

#define FASTSEG_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(fastseg, CUDA, m)
#endif
