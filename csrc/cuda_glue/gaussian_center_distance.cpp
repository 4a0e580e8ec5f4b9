// CUDA registration of gaussian_center_distance: tensors in, raw pointers and the current stream out
// to csrc/cuda/gaussian_center_distance.cu.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/gaussian_center_distance.h"
#include "cuda_glue/cuda_type.h"

namespace fastseg::glue {
namespace {

struct Shapes {
  int64_t batch, channels, classes, pixels;
};

Shapes check_inputs(const at::Tensor& embeddings, const at::Tensor& centers, const at::Tensor& margins) {
  TORCH_CHECK_VALUE(embeddings.dim() == 4, "embeddings must be (B,C',H,W), got ", embeddings.sizes());
  const Shapes shapes{embeddings.size(0), embeddings.size(1), centers.size(1), embeddings.size(2) * embeddings.size(3)};
  TORCH_CHECK_VALUE(centers.dim() == 3 && centers.size(0) == shapes.batch && centers.size(2) == shapes.channels,
                    "centers must be (B,K,C') with B=", shapes.batch, ", C'=", shapes.channels, ", got ",
                    centers.sizes());
  TORCH_CHECK_VALUE(margins.dim() == 2 && margins.size(0) == shapes.batch && margins.size(1) == shapes.classes,
                    "margins must be (B,K) = (", shapes.batch, ",", shapes.classes, "), got ", margins.sizes());
  TORCH_CHECK_VALUE(centers.scalar_type() == embeddings.scalar_type() &&
                        margins.scalar_type() == embeddings.scalar_type(),
                    "centers and margins must have the embeddings' dtype ", embeddings.scalar_type());
  TORCH_CHECK_VALUE(centers.device() == embeddings.device() && margins.device() == embeddings.device(),
                    "centers and margins must be on ", embeddings.device());
  TORCH_CHECK_VALUE(shapes.batch <= 65535, "gaussian_center_distance: batch ", shapes.batch,
                    " exceeds the CUDA grid limit 65535");
  return shapes;
}

at::Tensor gaussian_center_distance_cuda(const at::Tensor& embeddings, const at::Tensor& centers,
                                         const at::Tensor& margins, double delta) {
  const Shapes n = check_inputs(embeddings, centers, margins);
  const c10::cuda::CUDAGuard guard(embeddings.device());
  const at::Tensor x = embeddings.contiguous();
  const at::Tensor s = centers.contiguous();
  const at::Tensor m = margins.contiguous();
  at::Tensor phi = at::empty({n.batch, n.classes, embeddings.size(2), embeddings.size(3)}, embeddings.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gaussian_center_distance_cuda", [&] {
    check_cuda(cuda::gaussian_center_distance_forward(cuda_ptr<scalar_t>(x), cuda_ptr<scalar_t>(s),
                                                      cuda_ptr<scalar_t>(m), delta, n.batch, n.channels, n.pixels,
                                                      n.classes, cuda_mutable_ptr<scalar_t>(phi), stream),
               "gaussian_center_distance");
  });
  return phi;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_center_distance_backward_cuda(
    const at::Tensor& grad_phi, const at::Tensor& embeddings, const at::Tensor& centers, const at::Tensor& margins,
    double delta) {
  const Shapes n = check_inputs(embeddings, centers, margins);
  TORCH_CHECK_VALUE(grad_phi.dim() == 4 && grad_phi.size(0) == n.batch && grad_phi.size(1) == n.classes &&
                        grad_phi.size(2) * grad_phi.size(3) == n.pixels &&
                        grad_phi.scalar_type() == embeddings.scalar_type() && grad_phi.device() == embeddings.device(),
                    "grad_phi must be (B,K,H,W) of the embeddings' dtype and device, got ", grad_phi.sizes());
  const c10::cuda::CUDAGuard guard(embeddings.device());
  const at::Tensor grad = grad_phi.contiguous();
  const at::Tensor x = embeddings.contiguous();
  const at::Tensor s = centers.contiguous();
  const at::Tensor m = margins.contiguous();
  at::Tensor grad_embeddings = at::empty(embeddings.sizes(), embeddings.options());
  at::Tensor grad_centers = at::empty({n.batch, n.classes, n.channels}, embeddings.options());
  at::Tensor grad_margins = at::empty({n.batch, n.classes}, embeddings.options());
  cuda::GaussianCenterDistancePlan plan;
  check_cuda(cuda::gaussian_center_distance_plan(n.batch, n.channels, n.pixels, n.classes, embeddings.element_size(),
                                                 &plan),
             "gaussian_center_distance_backward");
  at::Tensor workspace = at::empty({static_cast<int64_t>(plan.workspace_bytes)}, embeddings.options().dtype(at::kByte));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gaussian_center_distance_backward_cuda", [&] {
    check_cuda(cuda::gaussian_center_distance_backward(
                   cuda_ptr<scalar_t>(grad), cuda_ptr<scalar_t>(x), cuda_ptr<scalar_t>(s), cuda_ptr<scalar_t>(m), delta,
                   n.batch, n.channels, n.pixels, n.classes, plan, workspace.data_ptr(),
                   cuda_mutable_ptr<scalar_t>(grad_embeddings), cuda_mutable_ptr<scalar_t>(grad_centers),
                   cuda_mutable_ptr<scalar_t>(grad_margins), stream),
               "gaussian_center_distance_backward");
  });
  return {grad_embeddings, grad_centers, grad_margins};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CUDA, m) {
  m.impl("gaussian_center_distance", &gaussian_center_distance_cuda);
  m.impl("gaussian_center_distance_backward", &gaussian_center_distance_backward_cuda);
}

}  // namespace fastseg::glue
