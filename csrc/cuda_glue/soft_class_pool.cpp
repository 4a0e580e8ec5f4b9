// CUDA registration of soft_class_pool and attentional_class_feature (ACFNet Eq. 2/3): tensors
// in, raw pointers and the current stream out to csrc/cuda/soft_class_pool.cu.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "checks/soft_class_pool.h"
#include "cuda/soft_class_pool.h"
#include "cuda_glue/cuda_type.h"
#include "cuda_glue/device.h"

namespace fastseg::glue {
namespace {

// The shared checks, plus centers in the dtype of features (the kernels read them as scalar_t).
void check_saved(const at::Tensor& features, const at::Tensor& probs, const at::Tensor& centers,
                 const at::Tensor& mass) {
  checks::soft_class_pool_saved(features, probs, centers, mass);
  TORCH_CHECK_VALUE(centers.scalar_type() == features.scalar_type(), "centers must be ", features.scalar_type(),
                    " like features, got ", centers.scalar_type());
}

// `tensor` contiguous in the dtype of `like`; undefined stays undefined.
at::Tensor contiguous_like(const at::Tensor& tensor, const at::Tensor& like) {
  return tensor.defined() ? tensor.contiguous().to(like.scalar_type()) : at::Tensor();
}

// The plan and its workspace for these shapes.
std::tuple<cuda::SoftClassPoolPlan, at::Tensor> plan_for(const at::Tensor& features, int64_t classes) {
  cuda::SoftClassPoolPlan plan;
  const int64_t pixels = features.size(2) * features.size(3);
  TORCH_CHECK_VALUE(cuda::soft_class_pool_plan(features.size(0), features.size(1), pixels, classes,
                                               features.element_size(), &plan) == cudaSuccess,
                    "soft_class_pool: batch ", features.size(0), ", channels ", features.size(1), " or classes ",
                    classes, " exceed the CUDA grid");
  at::Tensor workspace =
      at::empty({static_cast<int64_t>(plan.workspace_bytes)}, features.options().dtype(at::kByte));
  return {plan, workspace};
}

// centers, mass and (when `with_attended`) the attended feature.
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& features, const at::Tensor& probs,
                                                       bool with_attended) {
  checks::soft_class_pool_inputs(features, probs);
  const DeviceGuard guard(features.device());
  const at::Tensor feats = features.contiguous();
  const at::Tensor weights = probs.contiguous();
  const int64_t batch = features.size(0), channels = features.size(1), classes = probs.size(1);
  const int64_t pixels = features.size(2) * features.size(3);
  at::Tensor centers = at::empty({batch, classes, channels}, features.options());
  at::Tensor mass = at::empty({batch, classes}, features.options().dtype(at::toOpMathType(features.scalar_type())));
  at::Tensor attended = with_attended ? at::empty(features.sizes(), features.options()) : at::Tensor();
  auto [plan, workspace] = plan_for(features, classes);
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "soft_class_pool_cuda", [&] {
    check_cuda(cuda::soft_class_pool_forward(cuda_ptr<scalar_t>(feats), cuda_ptr<scalar_t>(weights), batch, channels,
                                             pixels, classes, plan, workspace.data_ptr(),
                                             cuda_mutable_ptr<scalar_t>(centers),
                                             mass.data_ptr<at::opmath_type<scalar_t>>(),
                                             with_attended ? cuda_mutable_ptr<scalar_t>(attended) : nullptr, stream),
               "soft_class_pool");
  });
  return {attended, centers, mass};
}

// (grad_features, grad_probs) from grad_centers or, when it is undefined, from grad_attended.
std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_centers, const at::Tensor& grad_attended,
                                            const at::Tensor& features, const at::Tensor& probs,
                                            const at::Tensor& centers, const at::Tensor& mass) {
  check_saved(features, probs, centers, mass);
  const DeviceGuard guard(features.device());
  const at::Tensor feats = features.contiguous();
  const at::Tensor weights = probs.contiguous();
  const at::Tensor z = centers.contiguous();
  const at::Tensor n = mass.contiguous();
  const at::Tensor grad_z = contiguous_like(grad_centers, features);
  const at::Tensor grad_a = contiguous_like(grad_attended, features);
  const int64_t batch = features.size(0), channels = features.size(1), classes = probs.size(1);
  const int64_t pixels = features.size(2) * features.size(3);
  at::Tensor grad_features = at::empty(features.sizes(), features.options());
  at::Tensor grad_probs = at::empty(probs.sizes(), probs.options());
  auto [plan, workspace] = plan_for(features, classes);
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "soft_class_pool_backward", [&] {
    check_cuda(cuda::soft_class_pool_backward(
                   grad_z.defined() ? cuda_ptr<scalar_t>(grad_z) : nullptr,
                   grad_a.defined() ? cuda_ptr<scalar_t>(grad_a) : nullptr, cuda_ptr<scalar_t>(feats),
                   cuda_ptr<scalar_t>(weights), cuda_ptr<scalar_t>(z), n.const_data_ptr<at::opmath_type<scalar_t>>(),
                   batch, channels, pixels, classes, plan, workspace.data_ptr(),
                   cuda_mutable_ptr<scalar_t>(grad_features), cuda_mutable_ptr<scalar_t>(grad_probs), stream),
               "soft_class_pool_backward");
  });
  return {grad_features, grad_probs};
}

std::tuple<at::Tensor, at::Tensor> soft_class_pool_cuda(const at::Tensor& features, const at::Tensor& probs) {
  auto [attended, centers, mass] = forward(features, probs, /*with_attended=*/false);
  return {centers, mass};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attentional_class_feature_cuda(const at::Tensor& features,
                                                                            const at::Tensor& probs) {
  return forward(features, probs, /*with_attended=*/true);
}

std::tuple<at::Tensor, at::Tensor> soft_class_pool_backward_cuda(const at::Tensor& grad_centers,
                                                                 const at::Tensor& features, const at::Tensor& probs,
                                                                 const at::Tensor& centers, const at::Tensor& mass) {
  checks::soft_class_pool_grad(grad_centers, centers.sizes(), features, "grad_centers");
  return backward(grad_centers, at::Tensor(), features, probs, centers, mass);
}

std::tuple<at::Tensor, at::Tensor> attentional_class_feature_backward_cuda(const at::Tensor& grad_attended,
                                                                           const at::Tensor& features,
                                                                           const at::Tensor& probs,
                                                                           const at::Tensor& centers,
                                                                           const at::Tensor& mass) {
  checks::soft_class_pool_grad(grad_attended, features.sizes(), features, "grad_attended");
  return backward(at::Tensor(), grad_attended, features, probs, centers, mass);
}

}  // namespace

FASTSEG_CUDA_LIBRARY_IMPL(m) {
  m.impl("soft_class_pool", &soft_class_pool_cuda);
  m.impl("soft_class_pool_backward", &soft_class_pool_backward_cuda);
  m.impl("attentional_class_feature", &attentional_class_feature_cuda);
  m.impl("attentional_class_feature_backward", &attentional_class_feature_backward_cuda);
}

}  // namespace fastseg::glue
