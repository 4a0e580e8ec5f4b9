// Input validation of deform_conv2d, shared by the CPU kernels and the CUDA glue.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

namespace fastseg::checks {

// Sizes of one deform_conv2d call (taps = kh*kw, pixels = out_h*out_w).
struct DeformConvShape {
  int64_t batch, channels, height, width;
  int64_t out_channels, groups, offset_groups, kh, kw, taps, out_h, out_w, pixels;
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
};

inline DeformConvShape deform_conv2d_shape(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                                           const std::optional<at::Tensor>& mask, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK_VALUE(input.dim() == 4 && offset.dim() == 4 && weight.dim() == 4,
                    "deform_conv2d: input, offset and weight must be 4-D");
  TORCH_CHECK_VALUE(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
                    "deform_conv2d: stride, padding and dilation must have two values");
  TORCH_CHECK_VALUE(offset.device() == input.device() && weight.device() == input.device(),
                    "deform_conv2d: offset and weight must be on ", input.device());
  DeformConvShape g{};
  g.batch = input.size(0), g.channels = input.size(1), g.height = input.size(2), g.width = input.size(3);
  g.out_channels = weight.size(0), g.kh = weight.size(2), g.kw = weight.size(3), g.taps = g.kh * g.kw;
  TORCH_CHECK_VALUE(weight.size(1) > 0 && g.channels % weight.size(1) == 0,
                    "deform_conv2d: in_channels is not a multiple of weight.shape[1]");
  g.groups = g.channels / weight.size(1);
  TORCH_CHECK_VALUE(g.out_channels % g.groups == 0, "deform_conv2d: out_channels is not a multiple of groups");
  TORCH_CHECK_VALUE(g.taps > 0 && offset.size(1) > 0 && offset.size(1) % (2 * g.taps) == 0,
                    "deform_conv2d: offset channels must be a positive multiple of 2*kh*kw");
  g.offset_groups = offset.size(1) / (2 * g.taps);
  TORCH_CHECK_VALUE(g.channels % g.offset_groups == 0, "deform_conv2d: in_channels is not a multiple of offset_groups");
  g.stride_h = stride[0], g.stride_w = stride[1], g.pad_h = padding[0], g.pad_w = padding[1];
  g.dil_h = dilation[0], g.dil_w = dilation[1];
  g.out_h = (g.height + 2 * g.pad_h - g.dil_h * (g.kh - 1) - 1) / g.stride_h + 1;
  g.out_w = (g.width + 2 * g.pad_w - g.dil_w * (g.kw - 1) - 1) / g.stride_w + 1;
  g.pixels = g.out_h * g.out_w;
  TORCH_CHECK_VALUE(offset.size(0) == g.batch && offset.size(2) == g.out_h && offset.size(3) == g.out_w,
                    "deform_conv2d: offset must be (B, 2*G*kh*kw, Ho, Wo), got ", offset.sizes());
  if (mask.has_value()) {
    TORCH_CHECK_VALUE(mask->device() == input.device(), "deform_conv2d: mask must be on ", input.device());
    TORCH_CHECK_VALUE(mask->dim() == 4 && mask->size(0) == g.batch && mask->size(1) == g.offset_groups * g.taps &&
                          mask->size(2) == g.out_h && mask->size(3) == g.out_w,
                      "deform_conv2d: mask must be (B, G*kh*kw, Ho, Wo), got ", mask->sizes());
  }
  return g;
}

inline void deform_conv2d_grad_output(const at::Tensor& grad_output, const DeformConvShape& g) {
  TORCH_CHECK_VALUE(grad_output.dim() == 4 && grad_output.size(0) == g.batch && grad_output.size(1) == g.out_channels &&
                        grad_output.size(2) == g.out_h && grad_output.size(3) == g.out_w,
                    "deform_conv2d_backward: grad_output must be (B, C_out, Ho, Wo), got ", grad_output.sizes());
}

}  // namespace fastseg::checks
