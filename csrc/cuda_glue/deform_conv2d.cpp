// CUDA registration of deform_conv2d (CSFRNet Eq. 6): the batch is processed in chunks whose
// sampled columns fit a workspace budget; sampling (im2col/col2im, offset and mask gradients) runs
// in csrc/cuda/deform_conv2d.cu, the GEMMs in cuBLAS through at::matmul (fp32 accumulation).
// The input gradient is scattered with atomics, so the backward raises under
// torch.use_deterministic_algorithms(True) (a warning with warn_only=True).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "cuda/deform_conv2d.h"
#include "cuda_glue/cuda_type.h"

namespace fastseg::glue {
namespace {

// Bytes of columns (forward) or columns + their gradient (backward) materialised at once.
constexpr int64_t kWorkspaceBudget = int64_t(1) << 30;

struct Shapes {
  cuda::DeformGeometry g;
  int64_t out_channels, groups, taps, pixels;
};

Shapes shapes(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
              const std::optional<at::Tensor>& mask, at::IntArrayRef stride, at::IntArrayRef padding,
              at::IntArrayRef dilation) {
  TORCH_CHECK_VALUE(input.dim() == 4 && offset.dim() == 4 && weight.dim() == 4,
                    "deform_conv2d: input, offset and weight must be 4-D");
  TORCH_CHECK_VALUE(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
                    "deform_conv2d: stride, padding and dilation must have two values");
  TORCH_CHECK_VALUE(offset.device() == input.device() && weight.device() == input.device(),
                    "deform_conv2d: offset and weight must be on ", input.device());
  Shapes s{};
  cuda::DeformGeometry& g = s.g;
  g.batch = input.size(0), g.channels = input.size(1), g.height = input.size(2), g.width = input.size(3);
  g.kh = weight.size(2), g.kw = weight.size(3);
  s.taps = g.kh * g.kw, s.out_channels = weight.size(0);
  TORCH_CHECK_VALUE(weight.size(1) > 0 && g.channels % weight.size(1) == 0,
                    "deform_conv2d: in_channels is not a multiple of weight.shape[1]");
  s.groups = g.channels / weight.size(1);
  TORCH_CHECK_VALUE(s.out_channels % s.groups == 0, "deform_conv2d: out_channels is not a multiple of groups");
  TORCH_CHECK_VALUE(s.taps > 0 && offset.size(1) > 0 && offset.size(1) % (2 * s.taps) == 0,
                    "deform_conv2d: offset channels must be a positive multiple of 2*kh*kw");
  g.offset_groups = offset.size(1) / (2 * s.taps);
  TORCH_CHECK_VALUE(g.channels % g.offset_groups == 0, "deform_conv2d: in_channels is not a multiple of offset_groups");
  g.stride_h = stride[0], g.stride_w = stride[1], g.pad_h = padding[0], g.pad_w = padding[1];
  g.dil_h = dilation[0], g.dil_w = dilation[1];
  g.out_h = (g.height + 2 * g.pad_h - g.dil_h * (g.kh - 1) - 1) / g.stride_h + 1;
  g.out_w = (g.width + 2 * g.pad_w - g.dil_w * (g.kw - 1) - 1) / g.stride_w + 1;
  s.pixels = g.out_h * g.out_w;
  TORCH_CHECK_VALUE(offset.size(0) == g.batch && offset.size(2) == g.out_h && offset.size(3) == g.out_w,
                    "deform_conv2d: offset must be (B, 2*G*kh*kw, Ho, Wo), got ", offset.sizes());
  if (mask.has_value()) {
    TORCH_CHECK_VALUE(mask->device() == input.device(), "deform_conv2d: mask must be on ", input.device());
    TORCH_CHECK_VALUE(mask->dim() == 4 && mask->size(0) == g.batch && mask->size(1) == g.offset_groups * s.taps &&
                          mask->size(2) == g.out_h && mask->size(3) == g.out_w,
                      "deform_conv2d: mask must be (B, G*kh*kw, Ho, Wo), got ", mask->sizes());
  }
  return s;
}

int64_t chunk_size(const Shapes& s, int64_t bytes_per_element) {
  const int64_t per_image = std::max<int64_t>(s.g.channels * s.taps * s.pixels * bytes_per_element, 1);
  return std::clamp<int64_t>(kWorkspaceBudget / per_image, 1, std::max<int64_t>(s.g.batch, 1));
}

std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& tensor) {
  return tensor.has_value() ? std::optional<at::Tensor>(tensor->contiguous()) : std::nullopt;
}

template <typename scalar_t>
const cuda_t<scalar_t>* optional_ptr(const std::optional<at::Tensor>& tensor) {
  return tensor.has_value() ? cuda_ptr<scalar_t>(*tensor) : nullptr;
}

at::Tensor deform_conv2d_cuda(const at::Tensor& input_, const at::Tensor& offset_, const at::Tensor& weight_,
                              const std::optional<at::Tensor>& mask_, const std::optional<at::Tensor>& bias,
                              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const Shapes s = shapes(input_, offset_, weight_, mask_, stride, padding, dilation);
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = input_.contiguous(), offset = offset_.contiguous(), weight = weight_.contiguous();
  const std::optional<at::Tensor> mask = contiguous(mask_);
  const int64_t group_rows = s.g.channels / s.groups * s.taps, group_out = s.out_channels / s.groups;
  at::Tensor output = at::empty({s.g.batch, s.out_channels, s.g.out_h, s.g.out_w}, input.options());
  const at::Tensor kernels = weight.view({s.groups, group_out, group_rows});
  const int64_t chunk = chunk_size(s, input.element_size());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "deform_conv2d_cuda", [&] {
    for (int64_t b0 = 0; b0 < s.g.batch; b0 += chunk) {
      const int64_t nb = std::min(chunk, s.g.batch - b0);
      at::Tensor columns = at::empty({nb, s.groups, group_rows, s.pixels}, input.options());
      check_cuda(cuda::deform_im2col(cuda_ptr<scalar_t>(input), cuda_ptr<scalar_t>(offset), optional_ptr<scalar_t>(mask),
                                     s.g, b0, nb, cuda_mutable_ptr<scalar_t>(columns), stream),
                 "deform_conv2d im2col");
      output.narrow(0, b0, nb).view({nb, s.groups, group_out, s.pixels}).copy_(at::matmul(kernels, columns));
    }
  });
  if (bias.has_value()) output.add_(bias->view({1, -1, 1, 1}));
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cuda(
    const at::Tensor& grad_output_, const at::Tensor& input_, const at::Tensor& offset_, const at::Tensor& weight_,
    const std::optional<at::Tensor>& mask_, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const Shapes s = shapes(input_, offset_, weight_, mask_, stride, padding, dilation);
  TORCH_CHECK_VALUE(grad_output_.dim() == 4 && grad_output_.size(0) == s.g.batch &&
                        grad_output_.size(1) == s.out_channels && grad_output_.size(2) == s.g.out_h &&
                        grad_output_.size(3) == s.g.out_w,
                    "deform_conv2d_backward: grad_output must be (B, C_out, Ho, Wo), got ", grad_output_.sizes());
  at::globalContext().alertNotDeterministic(
      "fastseg deform_conv2d_backward on CUDA (grad_input is scattered with atomicAdd); use backend='cpu' or "
      "backend='reference' for a deterministic backward");
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = input_.contiguous(), offset = offset_.contiguous(), weight = weight_.contiguous();
  const at::Tensor grad_output = grad_output_.contiguous();
  const std::optional<at::Tensor> mask = contiguous(mask_);
  const int64_t group_rows = s.g.channels / s.groups * s.taps, group_out = s.out_channels / s.groups;
  const at::ScalarType acc_type = at::toOpMathType(input.scalar_type());
  at::Tensor grad_input_acc = at::zeros(input.sizes(), input.options().dtype(acc_type));
  at::Tensor grad_offset = at::empty_like(offset);
  at::Tensor grad_mask = mask.has_value() ? at::empty_like(*mask) : at::empty({0}, input.options());
  at::Tensor grad_kernels = at::zeros({s.groups, group_out, group_rows}, input.options().dtype(acc_type));
  const at::Tensor kernels = weight.view({s.groups, group_out, group_rows});
  const at::Tensor kernels_t = kernels.transpose(1, 2);
  const int64_t chunk = chunk_size(s, 2 * input.element_size());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "deform_conv2d_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (int64_t b0 = 0; b0 < s.g.batch; b0 += chunk) {
      const int64_t nb = std::min(chunk, s.g.batch - b0);
      at::Tensor columns = at::empty({nb, s.groups, group_rows, s.pixels}, input.options());
      check_cuda(cuda::deform_im2col(cuda_ptr<scalar_t>(input), cuda_ptr<scalar_t>(offset), optional_ptr<scalar_t>(mask),
                                     s.g, b0, nb, cuda_mutable_ptr<scalar_t>(columns), stream),
                 "deform_conv2d im2col");
      const at::Tensor grad_out = grad_output.narrow(0, b0, nb).view({nb, s.groups, group_out, s.pixels});
      grad_kernels.add_(at::matmul(grad_out, columns.transpose(2, 3)).sum(0, false, acc_type));
      const at::Tensor grad_columns = at::matmul(kernels_t, grad_out).contiguous();
      check_cuda(cuda::deform_col2im(cuda_ptr<scalar_t>(grad_columns), cuda_ptr<scalar_t>(offset),
                                     optional_ptr<scalar_t>(mask), s.g, b0, nb, grad_input_acc.data_ptr<acc_t>(), stream),
                 "deform_conv2d col2im");
      check_cuda(cuda::deform_offset_mask_grads(
                     cuda_ptr<scalar_t>(input), cuda_ptr<scalar_t>(grad_columns), cuda_ptr<scalar_t>(offset),
                     optional_ptr<scalar_t>(mask), s.g, b0, nb, cuda_mutable_ptr<scalar_t>(grad_offset),
                     mask.has_value() ? cuda_mutable_ptr<scalar_t>(grad_mask) : nullptr, stream),
                 "deform_conv2d offset/mask gradients");
    }
  });
  at::Tensor grad_input = grad_input_acc.to(input.scalar_type());
  at::Tensor grad_weight = grad_kernels.to(input.scalar_type()).view(weight.sizes());
  at::Tensor grad_bias = grad_output.sum({0, 2, 3}, false, acc_type).to(input.scalar_type());
  return {grad_input, grad_offset, grad_weight, grad_mask, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CUDA, m) {
  m.impl("deform_conv2d", &deform_conv2d_cuda);
  m.impl("deform_conv2d_backward", &deform_conv2d_backward_cuda);
}

}  // namespace fastseg::glue
