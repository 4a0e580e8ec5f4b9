// CUDA registration of flow_warp: tensors in, raw pointers and the current stream out to
// csrc/cuda/flow_warp.cu. Under torch.use_deterministic_algorithms(True) the backward takes the
// kernels' deterministic (atomic-free) grad_input path.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/flow_warp.h"
#include "cuda_glue/cuda_type.h"

namespace fastseg::glue {
namespace {

int parse_padding(c10::string_view mode) {
  TORCH_CHECK_VALUE(mode == "zeros" || mode == "border", "padding_mode must be 'zeros' or 'border', got '", mode, "'");
  return mode == "zeros" ? 0 : 1;
}

cuda::FlowWarpShape check_inputs(const at::Tensor& input, const at::Tensor& flow) {
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
  TORCH_CHECK_VALUE(input.size(0) <= 65535, "flow_warp on CUDA supports batch <= 65535, got ", input.size(0));
  cuda::FlowWarpShape shape;
  shape.batch = input.size(0);
  shape.channels = input.size(1);
  shape.in_height = input.size(2);
  shape.in_width = input.size(3);
  shape.out_height = flow.size(2);
  shape.out_width = flow.size(3);
  return shape;
}

at::Tensor flow_warp_cuda(const at::Tensor& input, const at::Tensor& flow, c10::string_view padding_mode,
                          bool align_corners) {
  const cuda::FlowWarpShape shape = check_inputs(input, flow);
  const int padding = parse_padding(padding_mode);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor in = input.contiguous();
  const at::Tensor coords = flow.contiguous();
  at::Tensor output = at::empty({shape.batch, shape.channels, shape.out_height, shape.out_width}, input.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "flow_warp_cuda", [&] {
    using coord_type = cuda::coord_t<cuda_t<scalar_t>>;
    check_cuda(cuda::flow_warp_forward(cuda_ptr<scalar_t>(in), coords.const_data_ptr<coord_type>(), shape, padding,
                                       align_corners, cuda_mutable_ptr<scalar_t>(output), stream),
               "flow_warp");
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor> flow_warp_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                                           const at::Tensor& flow, c10::string_view padding_mode,
                                                           bool align_corners) {
  const cuda::FlowWarpShape shape = check_inputs(input, flow);
  const int padding = parse_padding(padding_mode);
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef({shape.batch, shape.channels, shape.out_height,
                                                            shape.out_width}) &&
                        grad_output.scalar_type() == input.scalar_type() && grad_output.device() == input.device(),
                    "grad_output must be (B,C,Ho,Wo) in the input's dtype and device, got ", grad_output.sizes());
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor in = input.contiguous();
  const at::Tensor grad = grad_output.contiguous();
  const at::Tensor coords = flow.contiguous();
  at::Tensor grad_input = at::empty_like(in);
  at::Tensor grad_flow = at::empty_like(coords);
  const size_t workspace_bytes = cuda::flow_warp_backward_workspace(shape, input.element_size());
  at::Tensor workspace = at::empty({static_cast<int64_t>(workspace_bytes)}, input.options().dtype(at::kByte));
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "flow_warp_backward_cuda", [&] {
    using coord_type = cuda::coord_t<cuda_t<scalar_t>>;
    check_cuda(cuda::flow_warp_backward(cuda_ptr<scalar_t>(grad), cuda_ptr<scalar_t>(in),
                                        coords.const_data_ptr<coord_type>(), shape, padding, align_corners,
                                        deterministic, workspace.data_ptr(), cuda_mutable_ptr<scalar_t>(grad_input),
                                        grad_flow.mutable_data_ptr<coord_type>(), stream),
               "flow_warp_backward");
  });
  return {grad_input, grad_flow};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CUDA, m) {
  m.impl("flow_warp", &flow_warp_cuda);
  m.impl("flow_warp_backward", &flow_warp_backward_cuda);
}

}  // namespace fastseg::glue
