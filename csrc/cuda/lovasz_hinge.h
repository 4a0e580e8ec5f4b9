// CUDA Lovász hinge (Berman et al. 2018 Eq. 8-9) on raw pointers. Layouts: logits, labels, valid,
// errors, sorted_errors, permutation, weights and grad_logits (N,P) contiguous; labels and valid
// bool (valid may be null); losses and grad_loss (N,). errors and weights are in the accumulation
// type (fp32, fp64 for double). The row sort between the two forward kernels is the caller's
// (PyTorch's device-wide sort in csrc/cuda_glue/lovasz_hinge.cpp).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/common.cuh"

namespace fastseg::cuda {

// errors[n,p] = 1 - logits[n,p] * (2 labels[n,p] - 1) where valid, -inf elsewhere (sorted last).
template <typename scalar_t>
cudaError_t lovasz_hinge_errors(const scalar_t* logits, const bool* labels, const bool* valid, int64_t rows,
                                int64_t pixels, acc_type<scalar_t>* errors, cudaStream_t stream);

// One block per row scans the row sorted by decreasing error (sorted_errors[n,j] =
// errors[n, permutation[n,j]], permutation[n] a permutation of [0, P)): losses and, in pixel order,
// weights[n,p] = d losses[n] / d logits[n,p] (written at p = permutation[n,j]).
template <typename scalar_t>
cudaError_t lovasz_hinge_scan(const acc_type<scalar_t>* sorted_errors, const int64_t* permutation, const bool* labels,
                              const bool* valid, int64_t rows, int64_t pixels, scalar_t* losses,
                              acc_type<scalar_t>* weights, cudaStream_t stream);

// grad_logits[n,p] = grad_loss[n] * weights[n,p], a streaming multiply.
template <typename scalar_t>
cudaError_t lovasz_hinge_backward(const scalar_t* grad_loss, const acc_type<scalar_t>* weights, int64_t rows,
                                  int64_t pixels, scalar_t* grad_logits, cudaStream_t stream);

}  // namespace fastseg::cuda
