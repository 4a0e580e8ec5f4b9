// Input validation of flow_warp, shared by the CPU kernels and the CUDA glue.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cstdint>

#include "flow_warp_sampling.h"

namespace fastseg::checks {

inline flow_warp::Padding flow_warp_padding(c10::string_view mode) {
  TORCH_CHECK_VALUE(mode == "zeros" || mode == "border", "padding_mode must be 'zeros' or 'border', got '", mode, "'");
  return mode == "zeros" ? flow_warp::Padding::kZeros : flow_warp::Padding::kBorder;
}

inline void flow_warp_inputs(const at::Tensor& input, const at::Tensor& flow) {
  TORCH_CHECK_VALUE(input.dim() == 4, "input must be (B,C,Hi,Wi), got ", input.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(input.scalar_type()), "input must be floating point, got ", input.scalar_type());
  TORCH_CHECK_VALUE(input.size(2) > 0 && input.size(3) > 0, "input must have a non-empty spatial size, got ",
                    input.sizes());
  TORCH_CHECK_VALUE(flow.dim() == 4 && flow.size(1) == 2 && flow.size(0) == input.size(0),
                    "flow must be (B,2,Ho,Wo) with B=", input.size(0), ", got ", flow.sizes());
  TORCH_CHECK_VALUE(flow.device() == input.device(), "flow must be on ", input.device(), ", got ", flow.device());
  const auto coord_type = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK_VALUE(flow.scalar_type() == coord_type, "flow must be ", coord_type, " for ", input.scalar_type(),
                    " input, got ", flow.scalar_type());
}

inline void flow_warp_grad_output(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& flow) {
  const int64_t sizes[] = {input.size(0), input.size(1), flow.size(2), flow.size(3)};
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(sizes) && grad_output.scalar_type() == input.scalar_type() &&
                        grad_output.device() == input.device(),
                    "grad_output must be (B,C,Ho,Wo) in the input's dtype and device, got ", grad_output.sizes());
}

}  // namespace fastseg::checks
