// CUDA Lovász hinge (Berman et al. 2018 Eq. 8-9) on raw pointers. Layouts: logits, labels, valid,
// permutation, weights and grad_logits (N,P) contiguous; labels and valid bool (valid may be null);
// losses and grad_loss (N,). weights are in the accumulation type (fp32, fp64 for double).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/common.cuh"

namespace fastseg::cuda {

// Bytes of workspace lovasz_hinge_forward needs: the hinge errors and their sorted copy, the pixel
// indices sorted with them, the row offsets, and CUB's segmented-sort temporary storage.
template <typename scalar_t>
cudaError_t lovasz_hinge_workspace(int64_t rows, int64_t pixels, size_t* bytes);

// One segmented sort of all rows by decreasing error (invalid pixels last), then one block per row
// scans the sorted row: losses, the permutation and weights[n,j] = d losses[n] / d logits[n, permutation[n,j]].
template <typename scalar_t>
cudaError_t lovasz_hinge_forward(const scalar_t* logits, const bool* labels, const bool* valid, int64_t rows,
                                 int64_t pixels, void* workspace, size_t workspace_bytes, scalar_t* losses,
                                 int64_t* permutation, acc_type<scalar_t>* weights, cudaStream_t stream);

// grad_logits[n, permutation[n,j]] = grad_loss[n] * weights[n,j]; indices outside [0, P) are skipped.
template <typename scalar_t>
cudaError_t lovasz_hinge_backward(const scalar_t* grad_loss, const int64_t* permutation,
                                  const acc_type<scalar_t>* weights, int64_t rows, int64_t pixels,
                                  scalar_t* grad_logits, cudaStream_t stream);

}  // namespace fastseg::cuda
