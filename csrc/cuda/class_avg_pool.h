// CUDA class_avg_pool (CSFRNet Eq. 1/3) on raw pointers. Layouts: features (B,C,P) contiguous,
// labels (B,P) int64, centers (B,K,C), counts (B,K) int64, grad_features (B,C,P).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace fastseg::cuda {

// How the forward pass splits its work: pixel slices per image, warps per block, and the bytes
// of workspace (per-slice partial sums and counts) the caller must provide.
struct ClassAvgPoolPlan {
  int64_t splits = 1;
  int warps = 1;
  size_t shared_bytes = 0;
  size_t workspace_bytes = 0;
};

// Returns cudaErrorInvalidValue when num_classes is too large for one block's shared memory.
cudaError_t class_avg_pool_plan(int64_t batch, int64_t channels, int64_t pixels, int64_t num_classes,
                                size_t element_size, ClassAvgPoolPlan* plan);

template <typename scalar_t>
cudaError_t class_avg_pool_forward(const scalar_t* features, const int64_t* labels, int64_t batch, int64_t channels,
                                   int64_t pixels, int64_t num_classes, const ClassAvgPoolPlan& plan,
                                   void* workspace, scalar_t* centers, int64_t* counts, cudaStream_t stream);

template <typename scalar_t>
cudaError_t class_avg_pool_backward(const scalar_t* grad_centers, const int64_t* labels, const int64_t* counts,
                                    int64_t batch, int64_t channels, int64_t pixels, int64_t num_classes,
                                    scalar_t* grad_features, cudaStream_t stream);

}  // namespace fastseg::cuda
