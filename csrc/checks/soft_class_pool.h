// Input validation of soft_class_pool and attentional_class_feature, shared by the CPU kernels and
// the CUDA glue.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace fastseg::checks {

inline void soft_class_pool_inputs(const at::Tensor& features, const at::Tensor& probs) {
  TORCH_CHECK_VALUE(features.dim() == 4, "features must be (B,C,H,W), got ", features.sizes());
  TORCH_CHECK_VALUE(probs.dim() == 4 && probs.size(0) == features.size(0) && probs.size(2) == features.size(2) &&
                        probs.size(3) == features.size(3),
                    "probs must be (B,K,H,W) with the B,H,W of features ", features.sizes(), ", got ", probs.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(features.scalar_type()) && probs.scalar_type() == features.scalar_type(),
                    "features and probs must share one floating-point dtype, got ", features.scalar_type(), " and ",
                    probs.scalar_type());
  TORCH_CHECK_VALUE(probs.device() == features.device(), "probs must be on ", features.device());
}

// The inputs and the forward's outputs saved for the backward.
inline void soft_class_pool_saved(const at::Tensor& features, const at::Tensor& probs, const at::Tensor& centers,
                                  const at::Tensor& mass) {
  soft_class_pool_inputs(features, probs);
  const int64_t batch = features.size(0), classes = probs.size(1), channels = features.size(1);
  TORCH_CHECK_VALUE(centers.sizes() == at::IntArrayRef({batch, classes, channels}) &&
                        centers.device() == features.device(),
                    "centers must be (B,K,C) = (", batch, ",", classes, ",", channels, ") on ", features.device(),
                    ", got ", centers.sizes());
  TORCH_CHECK_VALUE(mass.sizes() == at::IntArrayRef({batch, classes}) &&
                        mass.scalar_type() == at::toOpMathType(features.scalar_type()) &&
                        mass.device() == features.device(),
                    "mass must be (B,K) in the accumulation type, got ", mass.sizes(), " ", mass.scalar_type());
}

// An incoming gradient (`name`) of shape `sizes` on the device of features.
inline void soft_class_pool_grad(const at::Tensor& grad, at::IntArrayRef sizes, const at::Tensor& features,
                                 const char* name) {
  TORCH_CHECK_VALUE(grad.sizes() == sizes && grad.device() == features.device(), name, " must be ", sizes, " on ",
                    features.device(), ", got ", grad.sizes());
}

}  // namespace fastseg::checks
