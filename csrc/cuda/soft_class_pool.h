// CUDA soft class-wise pooling (ACFNet Eq. 2) and attentional class feature (Eq. 3) on raw pointers.
// Layouts, all contiguous: features, attended, grad_attended, grad_features (B,C,P); probs and
// grad_probs (B,K,P); centers and grad_centers (B,K,C); mass (B,K) in the accumulation type.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/common.cuh"

namespace fastseg::cuda {

// How the reductions over pixels are split (slices per image, added in a fixed order) and the
// bytes of workspace the caller must provide; one plan serves the forward and the backward.
struct SoftClassPoolPlan {
  int64_t splits = 1;
  size_t workspace_bytes = 0;
};

cudaError_t soft_class_pool_plan(int64_t batch, int64_t channels, int64_t pixels, int64_t num_classes,
                                 size_t element_size, SoftClassPoolPlan* plan);

// centers and mass (Eq. 2), and attended (Eq. 3) when `attended` is not null.
template <typename scalar_t>
cudaError_t soft_class_pool_forward(const scalar_t* features, const scalar_t* probs, int64_t batch, int64_t channels,
                                    int64_t pixels, int64_t num_classes, const SoftClassPoolPlan& plan,
                                    void* workspace, scalar_t* centers, acc_type<scalar_t>* mass, scalar_t* attended,
                                    cudaStream_t stream);

// grad_features and grad_probs from grad_centers (soft_class_pool) or, when grad_centers is null,
// from grad_attended (attentional_class_feature).
template <typename scalar_t>
cudaError_t soft_class_pool_backward(const scalar_t* grad_centers, const scalar_t* grad_attended,
                                     const scalar_t* features, const scalar_t* probs, const scalar_t* centers,
                                     const acc_type<scalar_t>* mass, int64_t batch, int64_t channels, int64_t pixels,
                                     int64_t num_classes, const SoftClassPoolPlan& plan, void* workspace,
                                     scalar_t* grad_features, scalar_t* grad_probs, cudaStream_t stream);

}  // namespace fastseg::cuda
