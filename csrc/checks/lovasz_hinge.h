// Input validation of the Lovász hinge, shared by the CPU kernels and the CUDA glue.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

namespace fastseg::checks {

// Type of the saved Lovász weights: double for double logits, float otherwise.
inline at::ScalarType lovasz_accumulate_type(at::ScalarType type) {
  return type == at::kDouble ? at::kDouble : at::kFloat;
}

inline void lovasz_mask(const at::Tensor& mask, const at::Tensor& logits, const char* name) {
  TORCH_CHECK_VALUE(mask.scalar_type() == at::kBool, name, " must be bool, got ", mask.scalar_type());
  TORCH_CHECK_VALUE(mask.sizes() == logits.sizes(), name, " must have shape ", logits.sizes(), ", got ",
                    mask.sizes());
  TORCH_CHECK_VALUE(mask.device() == logits.device(), name, " must be on ", logits.device());
}

inline void lovasz_hinge_inputs(const at::Tensor& logits, const at::Tensor& labels,
                                const std::optional<at::Tensor>& valid) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "logits must be (N,P), got ", logits.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(logits.scalar_type()), "logits must be floating point");
  lovasz_mask(labels, logits, "labels");
  if (valid.has_value()) lovasz_mask(*valid, logits, "valid");
}

inline void lovasz_hinge_backward_inputs(const at::Tensor& grad_loss, const at::Tensor& weights) {
  TORCH_CHECK_VALUE(grad_loss.dim() == 1, "grad_loss must be (N,), got ", grad_loss.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(grad_loss.scalar_type()), "grad_loss must be floating point");
  const int64_t rows = grad_loss.size(0);
  const at::ScalarType acc_dtype = lovasz_accumulate_type(grad_loss.scalar_type());
  TORCH_CHECK_VALUE(weights.dim() == 2 && weights.size(0) == rows && weights.scalar_type() == acc_dtype,
                    "weights must be ", acc_dtype, " (N,P) with N=", rows, ", got ", weights.scalar_type(), " ",
                    weights.sizes());
  TORCH_CHECK_VALUE(weights.device() == grad_loss.device(), "weights must be on ", grad_loss.device());
}

}  // namespace fastseg::checks
