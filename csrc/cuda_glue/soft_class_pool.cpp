// CUDA registration of soft_class_pool and attentional_class_feature (ACFNet Eq. 2/3): the products
// as cuBLAS batched GEMMs (at::bmm / baddbmm_: tensor cores for fp16/bf16, TF32 when
// torch.backends.cuda.matmul.allow_tf32 allows it), the normalisation and the gradient scaling as
// the kernels of csrc/cuda/soft_class_pool.cu around them, on the current stream.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
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

// (B, rows, H, W) contiguous as (B, rows, P) in the dtype of `like`.
at::Tensor flat_like(const at::Tensor& tensor, const at::Tensor& like) {
  return tensor.contiguous().to(like.scalar_type()).view({tensor.size(0), tensor.size(1), -1});
}

// centers, mass and (when `with_attended`) the attended feature.
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& features, const at::Tensor& probs,
                                                       bool with_attended) {
  checks::soft_class_pool_inputs(features, probs);
  const DeviceGuard guard(features.device());
  const at::Tensor feats = flat_like(features, features);  // F (B,C,P)
  const at::Tensor weights = flat_like(probs, features);   // P (B,K,P)
  const int64_t batch = features.size(0), channels = features.size(1), classes = probs.size(1);
  at::Tensor centers = at::bmm(weights, feats.transpose(1, 2));  // S = P F^T (B,K,C), Eq. 2's numerator
  at::Tensor mass = at::empty({batch, classes}, features.options().dtype(at::toOpMathType(features.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "soft_class_pool_cuda", [&] {
    check_cuda(cuda::soft_class_pool_normalise(cuda_ptr<scalar_t>(weights), batch * classes, weights.size(2),
                                               channels, cuda_mutable_ptr<scalar_t>(centers),
                                               mass.mutable_data_ptr<at::opmath_type<scalar_t>>(), current_stream()),
               "soft_class_pool");
  });
  // Eq. 3: A = Z^T P (B,C,P).
  at::Tensor attended = with_attended ? at::bmm(centers.transpose(1, 2), weights).view(features.sizes()) : at::Tensor();
  return {attended, centers, mass};
}

// (grad_features, grad_probs) from grad_centers or, when it is undefined, from grad_attended.
std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_centers, const at::Tensor& grad_attended,
                                            const at::Tensor& features, const at::Tensor& probs,
                                            const at::Tensor& centers, const at::Tensor& mass) {
  check_saved(features, probs, centers, mass);
  const DeviceGuard guard(features.device());
  const at::Tensor feats = flat_like(features, features);
  const at::Tensor weights = flat_like(probs, features);
  const at::Tensor z = centers.contiguous();
  const at::Tensor n = mass.contiguous();
  const at::Tensor grad_a = grad_attended.defined() ? flat_like(grad_attended, features) : at::Tensor();
  // dZ given, or dZ = P dA^T through Eq. 3.
  const at::Tensor grad_z = grad_centers.defined() ? grad_centers.contiguous().to(features.scalar_type())
                                                   : at::bmm(weights, grad_a.transpose(1, 2));
  const int64_t batch = features.size(0), channels = features.size(1), classes = probs.size(1);
  const int64_t rows = batch * classes;
  at::Tensor scaled = at::empty_like(z);  // dS = dZ / mass (B,K,C)
  at::Tensor row_terms = at::empty({batch, classes}, n.options());
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "soft_class_pool_backward", [&] {
    check_cuda(cuda::soft_class_pool_scale_grad(cuda_ptr<scalar_t>(grad_z), cuda_ptr<scalar_t>(z),
                                                n.const_data_ptr<at::opmath_type<scalar_t>>(), rows, channels,
                                                cuda_mutable_ptr<scalar_t>(scaled),
                                                row_terms.mutable_data_ptr<at::opmath_type<scalar_t>>(), stream),
               "soft_class_pool_backward");
  });
  at::Tensor grad_features = at::bmm(scaled.transpose(1, 2), weights).view(features.sizes());  // dF = dS^T P
  at::Tensor grad_probs = at::bmm(scaled, feats);                                                 // dS F
  if (grad_a.defined()) grad_probs.baddbmm_(z, grad_a);                                           // + Z dA
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "soft_class_pool_backward", [&] {
    check_cuda(cuda::soft_class_pool_subtract_rows(row_terms.const_data_ptr<at::opmath_type<scalar_t>>(), rows,
                                                   weights.size(2), cuda_mutable_ptr<scalar_t>(grad_probs), stream),
               "soft_class_pool_backward");
  });
  return {grad_features, grad_probs.view(probs.sizes())};
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
