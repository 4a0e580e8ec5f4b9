// CUDA registration of deform_conv2d (CSFRNet Eq. 6). Both paths read the input channels-last (one
// transposing copy per call, none when the caller's tensor is channels_last) and the backward scatters
// into a channels-last acc_t grad_input, copied back to NCHW in the input dtype (one pass). Small
// channel counts with groups == 1 take the fused path of csrc/cuda/deform_conv2d.cu when its shared
// memory fits (cuda::deform_fused_plan): one launch forward, one plus a reduction backward, no columns
// in HBM. Otherwise (generic path) the batch is processed in chunks whose sampled columns fit a
// workspace budget; sampling (im2col, and one backward pass for the input, offset and mask gradients)
// runs in csrc/cuda/deform_conv2d.cu, the GEMMs in cuBLAS through ATen's bmm/baddbmm (fp32
// accumulation; tensor cores for fp16/bf16, TF32 when torch.backends.cuda.matmul.allow_tf32 allows
// it). Columns are pixel-major, (nb, groups, P, taps * C/groups) with k = tap * C/groups + c, so that
// the sampling warps' channel lanes write and read them contiguously; the GEMMs take them as
// transposed views (cuBLAS's transpose flags, no copies) and the weight reordered to (groups,
// C_out/groups, taps, C/groups) (a small copy per call; its gradient permuted back). The forward GEMM
// writes straight into the output with the bias as its C operand (beta = 1), the weight broadcast
// over the chunk's images by a stride-0 view; the column buffers, in the input dtype, are allocated
// once per call.
// On both paths the input gradient is scattered with atomics, so the backward raises under
// torch.use_deterministic_algorithms(True) (a warning with warn_only=True).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <optional>

#include "checks/deform_conv2d.h"
#include "cuda/deform_conv2d.h"
#include "cuda_glue/cuda_type.h"
#include "cuda_glue/device.h"

namespace fastseg::glue {
namespace {

// Bytes of columns (forward) or columns + their gradient (backward) materialised at once.
constexpr int64_t kWorkspaceBudget = int64_t(1) << 30;

// The budget; FASTSEG_DEFORM_CONV2D_WORKSPACE_BYTES overrides it (a seam for the tests, which force
// several chunks on small shapes).
int64_t workspace_budget() {
  const char* bytes = std::getenv("FASTSEG_DEFORM_CONV2D_WORKSPACE_BYTES");
  return bytes != nullptr ? std::max<int64_t>(std::atoll(bytes), 1) : kWorkspaceBudget;
}

// The kernels' copy of the checked shape.
cuda::DeformGeometry cuda_geometry(const checks::DeformConvShape& s) {
  return {s.batch, s.channels, s.height, s.width, s.offset_groups, s.kh, s.kw, s.out_h, s.out_w,
          s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dil_h, s.dil_w};
}

int64_t chunk_size(const checks::DeformConvShape& s, int64_t bytes_per_element) {
  const int64_t per_image = std::max<int64_t>(s.channels * s.taps * s.pixels * bytes_per_element, 1);
  return std::clamp<int64_t>(workspace_budget() / per_image, 1, std::max<int64_t>(s.batch, 1));
}

cuda::DeformFusedPlan fused_plan(const checks::DeformConvShape& s, const cuda::DeformGeometry& g,
                                 const at::Tensor& input) {
  cuda::DeformFusedPlan plan;
  check_cuda(cuda::deform_fused_plan(g, s.out_channels, s.groups, input.element_size(), &plan),
             "deform_conv2d fused plan");
  return plan;
}

// The channels-last (B, H, W, C) copy of an input: one pass (none when it is channels_last already).
at::Tensor channels_last(const at::Tensor& input) { return input.permute({0, 2, 3, 1}).contiguous(); }

// The input gradient from its channels-last acc_t sums: one pass back to NCHW in the input dtype.
at::Tensor from_channels_last(const at::Tensor& grad_input_nhwc, const at::Tensor& input) {
  at::Tensor grad_input = at::empty(input.sizes(), input.options());
  grad_input.copy_(grad_input_nhwc.permute({0, 3, 1, 2}));
  return grad_input;
}

// The generic path's kernels (groups, C_out/groups, taps * C/groups), k = tap * C/groups + c like the
// columns: the weight (C_out, C/groups, kh, kw) reordered (one small copy).
at::Tensor tap_major_kernels(const at::Tensor& weight, const checks::DeformConvShape& s) {
  const int64_t group_channels = s.channels / s.groups;
  return weight.view({s.groups, s.out_channels / s.groups, group_channels, s.taps})
      .permute({0, 1, 3, 2})
      .contiguous()
      .view({s.groups, s.out_channels / s.groups, s.taps * group_channels});
}

std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& tensor) {
  return tensor.has_value() ? std::optional<at::Tensor>(tensor->contiguous()) : std::nullopt;
}

template <typename scalar_t>
const cuda_t<scalar_t>* optional_ptr(const std::optional<at::Tensor>& tensor) {
  return tensor.has_value() ? cuda_ptr<scalar_t>(*tensor) : nullptr;
}

// out[n] = kernels @ columns[n] (+ bias broadcast over pixels), n over the chunk's images: one
// cuBLAS strided-batched GEMM into `out` (a view), kernels (rows, K) broadcast by a stride-0 view.
void batched_product(const at::Tensor& out, const at::Tensor& kernels, const at::Tensor& columns,
                     const std::optional<at::Tensor>& bias) {
  at::Tensor target = out;  // the *_out functions take a non-const reference
  const at::Tensor broadcast = kernels.expand({columns.size(0), kernels.size(0), kernels.size(1)});
  if (bias.has_value()) {
    at::baddbmm_out(target, bias->view({1, -1, 1}), broadcast, columns);
  } else {
    at::bmm_out(target, broadcast, columns);
  }
}

at::Tensor deform_conv2d_cuda(const at::Tensor& input_, const at::Tensor& offset_, const at::Tensor& weight_,
                              const std::optional<at::Tensor>& mask_, const std::optional<at::Tensor>& bias,
                              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const checks::DeformConvShape s =
      checks::deform_conv2d_shape(input_, offset_, weight_, mask_, stride, padding, dilation);
  checks::deform_conv2d_bias(bias, s);
  const cuda::DeformGeometry g = cuda_geometry(s);
  const DeviceGuard guard(input_.device());
  const at::Tensor offset = offset_.contiguous(), weight = weight_.contiguous();
  const std::optional<at::Tensor> mask = contiguous(mask_);
  const int64_t group_rows = s.channels / s.groups * s.taps, group_out = s.out_channels / s.groups;
  at::Tensor output = at::empty({s.batch, s.out_channels, s.out_h, s.out_w}, input_.options());
  const cudaStream_t stream = current_stream();
  const at::Tensor input_nhwc = channels_last(input_);
  if (fused_plan(s, g, input_).forward) {
    const std::optional<at::Tensor> bias_ = contiguous(bias);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input_.scalar_type(), "deform_conv2d_cuda", [&] {
      check_cuda(cuda::deform_fused_forward(cuda_ptr<scalar_t>(input_nhwc), cuda_ptr<scalar_t>(offset),
                                            optional_ptr<scalar_t>(mask), cuda_ptr<scalar_t>(weight),
                                            optional_ptr<scalar_t>(bias_), g, s.out_channels,
                                            cuda_mutable_ptr<scalar_t>(output), stream),
                 "deform_conv2d fused forward");
    });
    return output;
  }
  const at::Tensor kernels = tap_major_kernels(weight, s);
  const int64_t chunk = chunk_size(s, input_.element_size());
  at::Tensor column_buffer = at::empty({chunk, s.groups, s.pixels, group_rows}, input_.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input_.scalar_type(), "deform_conv2d_cuda", [&] {
    for (int64_t b0 = 0; b0 < s.batch; b0 += chunk) {
      const int64_t nb = std::min(chunk, s.batch - b0);
      at::Tensor columns = column_buffer.narrow(0, 0, nb);
      check_cuda(cuda::deform_im2col(cuda_ptr<scalar_t>(input_nhwc), cuda_ptr<scalar_t>(offset),
                                     optional_ptr<scalar_t>(mask), g, s.groups, b0, nb,
                                     cuda_mutable_ptr<scalar_t>(columns), stream),
                 "deform_conv2d im2col");
      const at::Tensor out = output.narrow(0, b0, nb).view({nb, s.groups, group_out, s.pixels});
      for (int64_t group = 0; group < s.groups; ++group) {
        const std::optional<at::Tensor> group_bias =
            bias.has_value() ? std::optional<at::Tensor>(bias->narrow(0, group * group_out, group_out)) : std::nullopt;
        // (K, P) operand: a transposed view of the group's (nb, P, K) columns.
        batched_product(out.select(1, group), kernels[group], columns.select(1, group).transpose(1, 2), group_bias);
      }
    }
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cuda(
    const at::Tensor& grad_output_, const at::Tensor& input_, const at::Tensor& offset_, const at::Tensor& weight_,
    const std::optional<at::Tensor>& mask_, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const checks::DeformConvShape s =
      checks::deform_conv2d_shape(input_, offset_, weight_, mask_, stride, padding, dilation);
  const cuda::DeformGeometry g = cuda_geometry(s);
  checks::deform_conv2d_grad_output(grad_output_, s);
  at::globalContext().alertNotDeterministic(
      "fastseg deform_conv2d_backward on CUDA (grad_input is scattered with atomicAdd); use backend='cpu' or "
      "backend='reference' for a deterministic backward");
  const DeviceGuard guard(input_.device());
  const at::Tensor offset = offset_.contiguous(), weight = weight_.contiguous();
  const at::Tensor grad_output = grad_output_.contiguous();
  const std::optional<at::Tensor> mask = contiguous(mask_);
  const int64_t group_rows = s.channels / s.groups * s.taps, group_out = s.out_channels / s.groups;
  const at::ScalarType acc_type = at::toOpMathType(input_.scalar_type());
  at::Tensor grad_offset = at::empty_like(offset);
  at::Tensor grad_mask = mask.has_value() ? at::empty_like(*mask) : at::empty({0}, input_.options());
  const cudaStream_t stream = current_stream();
  const at::Tensor input_nhwc = channels_last(input_);
  at::Tensor grad_input_nhwc = at::zeros({s.batch, s.height, s.width, s.channels}, input_.options().dtype(acc_type));
  const cuda::DeformFusedPlan plan = fused_plan(s, g, input_);
  if (plan.backward) {
    at::Tensor partials = at::empty({plan.partial_elements}, input_.options().dtype(acc_type));
    at::Tensor grad_weight = at::empty_like(weight);
    at::Tensor grad_bias = at::empty({s.out_channels}, input_.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input_.scalar_type(), "deform_conv2d_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      check_cuda(cuda::deform_fused_backward(
                     cuda_ptr<scalar_t>(grad_output), cuda_ptr<scalar_t>(input_nhwc), cuda_ptr<scalar_t>(offset),
                     optional_ptr<scalar_t>(mask), cuda_ptr<scalar_t>(weight), g, s.out_channels, plan,
                     grad_input_nhwc.data_ptr<acc_t>(), cuda_mutable_ptr<scalar_t>(grad_offset),
                     mask.has_value() ? cuda_mutable_ptr<scalar_t>(grad_mask) : nullptr, partials.data_ptr<acc_t>(),
                     cuda_mutable_ptr<scalar_t>(grad_weight), cuda_mutable_ptr<scalar_t>(grad_bias), stream),
                 "deform_conv2d fused backward");
    });
    return {from_channels_last(grad_input_nhwc, input_), grad_offset, grad_weight, grad_mask, grad_bias};
  }
  at::Tensor grad_kernels = at::zeros({s.groups, group_out, group_rows}, input_.options().dtype(acc_type));
  const at::Tensor kernels = tap_major_kernels(weight, s);
  const int64_t chunk = chunk_size(s, 2 * input_.element_size());
  at::Tensor column_buffer = at::empty({chunk, s.groups, s.pixels, group_rows}, input_.options());
  at::Tensor grad_column_buffer = at::empty_like(column_buffer);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input_.scalar_type(), "deform_conv2d_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (int64_t b0 = 0; b0 < s.batch; b0 += chunk) {
      const int64_t nb = std::min(chunk, s.batch - b0);
      at::Tensor columns = column_buffer.narrow(0, 0, nb);
      at::Tensor grad_columns = grad_column_buffer.narrow(0, 0, nb);
      check_cuda(cuda::deform_im2col(cuda_ptr<scalar_t>(input_nhwc), cuda_ptr<scalar_t>(offset),
                                     optional_ptr<scalar_t>(mask), g, s.groups, b0, nb,
                                     cuda_mutable_ptr<scalar_t>(columns), stream),
                 "deform_conv2d im2col");
      const at::Tensor grad_out = grad_output.narrow(0, b0, nb).view({nb, s.groups, group_out, s.pixels});
      // (group_out, P) x (P, K) per image and group: the columns as they lie.
      grad_kernels.add_(at::matmul(grad_out, columns).sum(0, false, acc_type));
      for (int64_t group = 0; group < s.groups; ++group) {
        // grad columns (P, K) = grad_out^T kernels, written as their transpose (K, P) = kernels^T grad_out.
        batched_product(grad_columns.select(1, group).transpose(1, 2), kernels[group].t(), grad_out.select(1, group),
                        std::nullopt);
      }
      check_cuda(cuda::deform_columns_backward(
                     cuda_ptr<scalar_t>(input_nhwc), cuda_ptr<scalar_t>(grad_columns), cuda_ptr<scalar_t>(offset),
                     optional_ptr<scalar_t>(mask), g, s.groups, b0, nb, grad_input_nhwc.data_ptr<acc_t>(),
                     cuda_mutable_ptr<scalar_t>(grad_offset),
                     mask.has_value() ? cuda_mutable_ptr<scalar_t>(grad_mask) : nullptr, stream),
                 "deform_conv2d columns backward");
    }
  });
  // grad weight (groups, C_out/groups, C/groups, taps) from the tap-major sums: one pass.
  at::Tensor grad_weight = at::empty_like(weight);
  grad_weight.view({s.groups, group_out, s.channels / s.groups, s.taps})
      .copy_(grad_kernels.view({s.groups, group_out, s.taps, s.channels / s.groups}).permute({0, 1, 3, 2}));
  at::Tensor grad_bias = grad_output.sum({0, 2, 3}, false, acc_type).to(input_.scalar_type());
  return {from_channels_last(grad_input_nhwc, input_), grad_offset, grad_weight, grad_mask, grad_bias};
}

}  // namespace

FASTSEG_CUDA_LIBRARY_IMPL(m) {
  m.impl("deform_conv2d", &deform_conv2d_cuda);
  m.impl("deform_conv2d_backward", &deform_conv2d_backward_cuda);
}

}  // namespace fastseg::glue
