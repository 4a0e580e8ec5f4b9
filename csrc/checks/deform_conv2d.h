// Input validation of deform_conv2d, shared by the CPU kernels and the CUDA glue.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <initializer_list>
#include <optional>

namespace fastseg::checks {

// Sizes of one deform_conv2d call (taps = kh*kw, pixels = out_h*out_w).
struct DeformConvShape {
  int64_t batch, channels, height, width;
  int64_t out_channels, groups, offset_groups, kh, kw, taps, out_h, out_w, pixels;
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  at::ScalarType dtype;  // of input, offset, weight and mask
  c10::DeviceType device_type;
  c10::DeviceIndex device_index;
};

inline DeformConvShape deform_conv2d_shape(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                                           const std::optional<at::Tensor>& mask, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK_VALUE(input.dim() == 4 && offset.dim() == 4 && weight.dim() == 4,
                    "deform_conv2d: input, offset and weight must be 4-D");
  TORCH_CHECK_VALUE(at::isFloatingType(input.scalar_type()), "deform_conv2d: input must be floating point, got ",
                    input.scalar_type());
  TORCH_CHECK_VALUE(offset.scalar_type() == input.scalar_type() && weight.scalar_type() == input.scalar_type(),
                    "deform_conv2d: offset and weight must have the input's dtype ", input.scalar_type(), ", got ",
                    offset.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK_VALUE(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
                    "deform_conv2d: stride, padding and dilation must have two values");
  TORCH_CHECK_VALUE(stride[0] > 0 && stride[1] > 0, "deform_conv2d: stride must be positive, got ", stride);
  TORCH_CHECK_VALUE(dilation[0] > 0 && dilation[1] > 0, "deform_conv2d: dilation must be positive, got ", dilation);
  TORCH_CHECK_VALUE(padding[0] >= 0 && padding[1] >= 0, "deform_conv2d: padding must be non-negative, got ", padding);
  for (const at::IntArrayRef values : {stride, padding, dilation}) {  // keeps the output-size arithmetic exact
    TORCH_CHECK_VALUE(values[0] <= INT32_MAX && values[1] <= INT32_MAX,
                      "deform_conv2d: stride, padding and dilation must be at most 2^31-1, got ", values);
  }
  TORCH_CHECK_VALUE(input.size(2) > 0 && input.size(3) > 0, "deform_conv2d: input must have a non-empty spatial size, got ",
                    input.sizes());
  TORCH_CHECK_VALUE(offset.device() == input.device() && weight.device() == input.device(),
                    "deform_conv2d: offset and weight must be on ", input.device());
  DeformConvShape g{};
  g.dtype = input.scalar_type(), g.device_type = input.device().type(), g.device_index = input.device().index();
  g.batch = input.size(0), g.channels = input.size(1), g.height = input.size(2), g.width = input.size(3);
  g.out_channels = weight.size(0), g.kh = weight.size(2), g.kw = weight.size(3), g.taps = g.kh * g.kw;
  TORCH_CHECK_VALUE(g.channels > 0 && weight.size(1) > 0 && g.channels % weight.size(1) == 0,
                    "deform_conv2d: in_channels must be a positive multiple of weight.shape[1]");
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
  TORCH_CHECK_VALUE(g.out_h > 0 && g.out_w > 0, "deform_conv2d: input of size ", input.sizes(),
                    " is too small for the kernel: output size (", g.out_h, ", ", g.out_w, ")");
  g.pixels = g.out_h * g.out_w;
  TORCH_CHECK_VALUE(offset.size(0) == g.batch && offset.size(2) == g.out_h && offset.size(3) == g.out_w,
                    "deform_conv2d: offset must be (B, 2*G*kh*kw, Ho, Wo), got ", offset.sizes());
  if (mask.has_value()) {
    TORCH_CHECK_VALUE(mask->device() == input.device() && mask->scalar_type() == input.scalar_type(),
                      "deform_conv2d: mask must be ", input.scalar_type(), " on ", input.device());
    TORCH_CHECK_VALUE(mask->dim() == 4 && mask->size(0) == g.batch && mask->size(1) == g.offset_groups * g.taps &&
                          mask->size(2) == g.out_h && mask->size(3) == g.out_w,
                      "deform_conv2d: mask must be (B, G*kh*kw, Ho, Wo), got ", mask->sizes());
  }
  return g;
}

inline void deform_conv2d_bias(const std::optional<at::Tensor>& bias, const DeformConvShape& g) {
  if (!bias.has_value()) return;
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == g.out_channels, "deform_conv2d: bias must be (C_out,) = (",
                    g.out_channels, ",), got ", bias->sizes());
  TORCH_CHECK_VALUE(bias->scalar_type() == g.dtype && bias->device().type() == g.device_type &&
                        bias->device().index() == g.device_index,
                    "deform_conv2d: bias must have the input's dtype ", g.dtype, " and device");
}

inline void deform_conv2d_grad_output(const at::Tensor& grad_output, const DeformConvShape& g) {
  TORCH_CHECK_VALUE(grad_output.dim() == 4 && grad_output.size(0) == g.batch && grad_output.size(1) == g.out_channels &&
                        grad_output.size(2) == g.out_h && grad_output.size(3) == g.out_w,
                    "deform_conv2d_backward: grad_output must be (B, C_out, Ho, Wo), got ", grad_output.sizes());
  TORCH_CHECK_VALUE(grad_output.scalar_type() == g.dtype && grad_output.device().type() == g.device_type &&
                        grad_output.device().index() == g.device_index,
                    "deform_conv2d_backward: grad_output must have the input's dtype ", g.dtype, " and device");
}

}  // namespace fastseg::checks
