// CUDA registration of flow_warp: tensors in, raw pointers and the current stream out to
// csrc/cuda/flow_warp.cu. Under torch.use_deterministic_algorithms(True) the backward takes the
// kernels' deterministic (fixed-point) grad_input path.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cstdint>

#include "checks/flow_warp.h"
#include "cuda/flow_warp.h"
#include "cuda_glue/cuda_type.h"
#include "cuda_glue/device.h"

namespace fastseg::glue {
namespace {

cuda::FlowWarpShape check_inputs(const at::Tensor& input, const at::Tensor& flow) {
  checks::flow_warp_inputs(input, flow);
  TORCH_CHECK_VALUE(input.size(0) <= 65535, "flow_warp on CUDA supports batch <= 65535, got ", input.size(0));
  // the backward's tiles index input rows and columns in 32-bit ints
  TORCH_CHECK_VALUE(input.size(2) <= INT32_MAX && input.size(3) <= INT32_MAX,
                    "flow_warp on CUDA supports input height and width < 2^31, got ", input.sizes());
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
  const int padding = static_cast<int>(checks::flow_warp_padding(padding_mode));
  const DeviceGuard guard(input.device());
  const at::Tensor in = input.contiguous();
  const at::Tensor coords = flow.contiguous();
  at::Tensor output = at::empty({shape.batch, shape.channels, shape.out_height, shape.out_width}, input.options());
  const cudaStream_t stream = current_stream();
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
  const int padding = static_cast<int>(checks::flow_warp_padding(padding_mode));
  checks::flow_warp_grad_output(grad_output, input, flow);
  const DeviceGuard guard(input.device());
  const at::Tensor in = input.contiguous();
  const at::Tensor grad = grad_output.contiguous();
  const at::Tensor coords = flow.contiguous();
  at::Tensor grad_input = at::empty_like(in);
  at::Tensor grad_flow = at::empty_like(coords);
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const size_t workspace_bytes = cuda::flow_warp_backward_workspace(shape, input.element_size(), deterministic);
  at::Tensor workspace = at::empty({static_cast<int64_t>(workspace_bytes)}, input.options().dtype(at::kByte));
  const cudaStream_t stream = current_stream();
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

FASTSEG_CUDA_LIBRARY_IMPL(m) {
  m.impl("flow_warp", &flow_warp_cuda);
  m.impl("flow_warp_backward", &flow_warp_backward_cuda);
}

}  // namespace fastseg::glue
