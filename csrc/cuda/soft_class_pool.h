// CUDA soft class-wise pooling (ACFNet Eq. 2) and attentional class feature (Eq. 3): the kernels
// around the products, on raw pointers; the products themselves are cuBLAS GEMMs in the glue.
// Layouts, all contiguous: probs and grad_probs (B,K,P) seen as rows = B*K rows of P; centers,
// grad_centers and scaled (B,K,C) as rows of C; mass and row_terms (B,K) in the accumulation type.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"

namespace fastseg::cuda {

// mass = row sums of probs; centers (holding S = P F^T on entry) = S / mass in place (Eq. 2).
template <typename scalar_t>
cudaError_t soft_class_pool_normalise(const scalar_t* probs, int64_t rows, int64_t pixels, int64_t channels,
                                      scalar_t* centers, acc_type<scalar_t>* mass, cudaStream_t stream);

// scaled = grad_centers / mass, row_terms = sum_c scaled * centers per row.
template <typename scalar_t>
cudaError_t soft_class_pool_scale_grad(const scalar_t* grad_centers, const scalar_t* centers,
                                       const acc_type<scalar_t>* mass, int64_t rows, int64_t channels,
                                       scalar_t* scaled, acc_type<scalar_t>* row_terms, cudaStream_t stream);

// grad_probs (holding dS F (+ Z dA) on entry) -= row_terms per row, in place.
template <typename scalar_t>
cudaError_t soft_class_pool_subtract_rows(const acc_type<scalar_t>* row_terms, int64_t rows, int64_t pixels,
                                          scalar_t* grad_probs, cudaStream_t stream);

}  // namespace fastseg::cuda
