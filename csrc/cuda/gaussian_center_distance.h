// CUDA gaussian_center_distance (CSFRNet Eq. 2 with the exp(m_k * delta) scale) on raw pointers.
// Layouts, all contiguous: embeddings (B,C',P), centers (B,K,C'), margins (B,K), phi and grad_phi
// (B,K,P), and the gradients in their input's layout.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace fastseg::cuda {

// How the backward pass splits its work: pixel slices per image (each block owns one and writes
// its partial center/margin sums), tiles per slice, the bytes of workspace the caller provides
// (uninitialised is fine), and the number of arrival counters (unsigned int) the caller provides:
// zero before the first launch, left zero by every launch that completes, so a buffer kept per
// stream is zeroed once. Kernels that may run concurrently must not share counters.
struct GaussianCenterDistancePlan {
  int64_t slices = 1;
  int64_t tiles_per_slice = 1;
  size_t workspace_bytes = 0;
  int64_t arrival_counters = 0;
};

cudaError_t gaussian_center_distance_plan(int64_t batch, int64_t channels, int64_t pixels, int64_t classes,
                                          size_t element_size, GaussianCenterDistancePlan* plan);

template <typename scalar_t>
cudaError_t gaussian_center_distance_forward(const scalar_t* embeddings, const scalar_t* centers,
                                             const scalar_t* margins, double delta, int64_t batch, int64_t channels,
                                             int64_t pixels, int64_t classes, scalar_t* phi, cudaStream_t stream);

template <typename scalar_t>
cudaError_t gaussian_center_distance_backward(const scalar_t* grad_phi, const scalar_t* embeddings,
                                              const scalar_t* centers, const scalar_t* margins, double delta,
                                              int64_t batch, int64_t channels, int64_t pixels, int64_t classes,
                                              const GaussianCenterDistancePlan& plan, void* workspace,
                                              unsigned int* arrival_counters, scalar_t* grad_embeddings,
                                              scalar_t* grad_centers, scalar_t* grad_margins, cudaStream_t stream);

}  // namespace fastseg::cuda
