// Input validation of class_avg_pool, shared by the CPU kernels and the CUDA glue.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace fastseg::checks {

// labels: int64 (B,H,W) on the device of `like`.
inline void class_avg_pool_labels(const at::Tensor& labels, const at::Tensor& like, int64_t batch, int64_t height,
                                  int64_t width) {
  TORCH_CHECK_VALUE(labels.dim() == 3 && labels.size(0) == batch && labels.size(1) == height &&
                        labels.size(2) == width,
                    "labels must be (B,H,W) = (", batch, ",", height, ",", width, "), got ", labels.sizes());
  TORCH_CHECK_VALUE(labels.scalar_type() == at::kLong, "labels must be int64, got ", labels.scalar_type());
  TORCH_CHECK_VALUE(labels.device() == like.device(), "labels must be on ", like.device());
}

inline void class_avg_pool_inputs(const at::Tensor& features, const at::Tensor& labels, int64_t num_classes) {
  TORCH_CHECK_VALUE(features.dim() == 4, "features must be (B,C,H,W), got ", features.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(features.scalar_type()), "features must be floating point");
  TORCH_CHECK_VALUE(features.size(1) > 0, "features must have at least one channel");
  TORCH_CHECK_VALUE(num_classes > 0 && num_classes < INT32_MAX, "num_classes must be in [1, 2^31-1), got ",
                    num_classes);
  class_avg_pool_labels(labels, features, features.size(0), features.size(2), features.size(3));
}

inline void class_avg_pool_backward_inputs(const at::Tensor& grad_centers, const at::Tensor& labels,
                                           const at::Tensor& counts) {
  TORCH_CHECK_VALUE(grad_centers.dim() == 3, "grad_centers must be (B,K,C), got ", grad_centers.sizes());
  const int64_t batch = grad_centers.size(0), num_classes = grad_centers.size(1);
  TORCH_CHECK_VALUE(num_classes > 0, "num_classes must be positive, got ", num_classes);
  class_avg_pool_labels(labels, grad_centers, batch, labels.size(1), labels.size(2));
  TORCH_CHECK_VALUE(counts.sizes() == at::IntArrayRef({batch, num_classes}) && counts.scalar_type() == at::kLong,
                    "counts must be int64 (B,K)");
}

}  // namespace fastseg::checks
