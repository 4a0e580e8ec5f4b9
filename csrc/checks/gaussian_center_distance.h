// Input validation of gaussian_center_distance, shared by the CPU kernels and the CUDA glue.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace fastseg::checks {

struct GaussianCenterDistanceShape {
  int64_t batch, channels, classes, pixels;
};

inline GaussianCenterDistanceShape gaussian_center_distance_shape(const at::Tensor& embeddings,
                                                                  const at::Tensor& centers,
                                                                  const at::Tensor& margins) {
  TORCH_CHECK_VALUE(embeddings.dim() == 4, "embeddings must be (B,C',H,W), got ", embeddings.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(embeddings.scalar_type()), "embeddings must be floating point");
  const GaussianCenterDistanceShape shape{embeddings.size(0), embeddings.size(1), centers.size(1),
                                          embeddings.size(2) * embeddings.size(3)};
  TORCH_CHECK_VALUE(centers.dim() == 3 && centers.size(0) == shape.batch && centers.size(2) == shape.channels,
                    "centers must be (B,K,C') with B=", shape.batch, ", C'=", shape.channels, ", got ",
                    centers.sizes());
  TORCH_CHECK_VALUE(margins.dim() == 2 && margins.size(0) == shape.batch && margins.size(1) == shape.classes,
                    "margins must be (B,K) = (", shape.batch, ",", shape.classes, "), got ", margins.sizes());
  TORCH_CHECK_VALUE(centers.scalar_type() == embeddings.scalar_type() &&
                        margins.scalar_type() == embeddings.scalar_type(),
                    "centers and margins must have the embeddings' dtype ", embeddings.scalar_type());
  TORCH_CHECK_VALUE(centers.device() == embeddings.device() && margins.device() == embeddings.device(),
                    "centers and margins must be on ", embeddings.device());
  return shape;
}

inline void gaussian_center_distance_grad_phi(const at::Tensor& grad_phi, const at::Tensor& embeddings,
                                              const GaussianCenterDistanceShape& shape) {
  TORCH_CHECK_VALUE(grad_phi.dim() == 4 && grad_phi.size(0) == shape.batch && grad_phi.size(1) == shape.classes &&
                        grad_phi.size(2) * grad_phi.size(3) == shape.pixels &&
                        grad_phi.scalar_type() == embeddings.scalar_type() && grad_phi.device() == embeddings.device(),
                    "grad_phi must be (B,K,H,W) of the embeddings' dtype and device, got ", grad_phi.sizes());
}

}  // namespace fastseg::checks
