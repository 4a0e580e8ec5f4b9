// CPU kernels of soft class-wise pooling (ACFNet Eq. 2) and the attentional class feature (Eq. 3).
//
// Per image the contractions are small-K GEMMs, S = P F^T ([K,HW] x [HW,C]) and A = Z^T P
// ([C,K] x [K,HW]); they run as ATen's BLAS-backed bmm in the accumulation type (fp32 for
// fp16/bf16 inputs), which is faster than any hand-written loop here. What the reference spreads
// over several autograd nodes is fused into single passes: the division by the class mass with
// its zero-mass rule, and the backward's dS = dZ / n with its row terms r. The backward formulas
// are derived in fastseg/ops/soft_class_pool.py; it reuses the forward's centers and mass.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <tuple>

#include "checks/soft_class_pool.h"

namespace fastseg::cpu {
namespace {

// (B, rows, H*W) in the accumulation type; a view when the dtype already is and H, W merge.
at::Tensor flat_acc(const at::Tensor& x) { return x.flatten(2).to(at::toOpMathType(x.scalar_type())); }

// Eq. 2 on accumulation-typed (B,C,P) features and (B,K,P) probs: centers (B,K,C), mass (B,K).
std::tuple<at::Tensor, at::Tensor> pool(const at::Tensor& feats, const at::Tensor& probs) {
  at::Tensor centers = at::bmm(probs, feats.transpose(1, 2));  // S = P F^T, contiguous
  at::Tensor mass = at::sum(probs, {2});
  const int64_t rows = centers.size(0) * centers.size(1), channels = centers.size(2);
  AT_DISPATCH_FLOATING_TYPES(centers.scalar_type(), "soft_class_pool_normalise", [&] {
    scalar_t* z = centers.data_ptr<scalar_t>();
    const scalar_t* n = mass.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        scalar_t* center = z + row * channels;
        const scalar_t m = n[row];
        for (int64_t c = 0; c < channels; ++c) center[c] = m != scalar_t(0) ? center[c] / m : scalar_t(0);
      }
    });
  });
  return {centers, mass};
}

// dS = dZ / n (0 where n == 0) and r[k] = sum_c dS[k,c] Z[k,c]; all accumulation-typed (B,K,C).
std::tuple<at::Tensor, at::Tensor> scale_grad(const at::Tensor& grad_centers, const at::Tensor& centers,
                                              const at::Tensor& mass) {
  const at::Tensor grad = grad_centers.contiguous();
  const at::Tensor z = centers.contiguous();
  at::Tensor scaled = at::empty_like(grad);
  at::Tensor row_terms = at::empty_like(mass);
  const int64_t rows = grad.size(0) * grad.size(1), channels = grad.size(2);
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "soft_class_pool_scale_grad", [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* zc = z.const_data_ptr<scalar_t>();
    const scalar_t* n = mass.const_data_ptr<scalar_t>();
    scalar_t* s = scaled.data_ptr<scalar_t>();
    scalar_t* r = row_terms.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const scalar_t m = n[row];
        scalar_t total = 0;
        for (int64_t c = 0; c < channels; ++c) {
          const int64_t i = row * channels + c;
          s[i] = m != scalar_t(0) ? g[i] / m : scalar_t(0);
          total += s[i] * zc[i];
        }
        r[row] = total;
      }
    });
  });
  return {scaled, row_terms};
}

// grad_features = dS^T P and grad_probs = dS F (+ Z dA) - r, given dZ (B,K,C) in the accumulation type.
std::tuple<at::Tensor, at::Tensor> pool_backward(const at::Tensor& grad_centers, const at::Tensor& grad_attended,
                                                 const at::Tensor& features, const at::Tensor& probs,
                                                 const at::Tensor& feats, const at::Tensor& probs_acc,
                                                 const at::Tensor& centers, const at::Tensor& mass) {
  const at::Tensor z = centers.to(grad_centers.scalar_type());
  auto [scaled, row_terms] = scale_grad(grad_centers, z, mass.to(grad_centers.scalar_type()));
  at::Tensor grad_features = at::bmm(scaled.transpose(1, 2), probs_acc);  // (B,C,P)
  at::Tensor grad_probs = at::bmm(scaled, feats);                          // (B,K,P)
  if (grad_attended.defined()) grad_probs.baddbmm_(z, grad_attended);     // Eq. 3's direct term
  const int64_t rows = grad_probs.size(0) * grad_probs.size(1), pixels = grad_probs.size(2);
  AT_DISPATCH_FLOATING_TYPES(grad_probs.scalar_type(), "soft_class_pool_row_terms", [&] {
    scalar_t* out = grad_probs.data_ptr<scalar_t>();
    const scalar_t* r = row_terms.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        scalar_t* values = out + row * pixels;
        const scalar_t term = r[row];
        for (int64_t j = 0; j < pixels; ++j) values[j] -= term;
      }
    });
  });
  return {grad_features.view(features.sizes()).to(features.scalar_type()),
          grad_probs.view(probs.sizes()).to(probs.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> soft_class_pool_cpu(const at::Tensor& features, const at::Tensor& probs) {
  checks::soft_class_pool_inputs(features, probs);
  auto [centers, mass] = pool(flat_acc(features), flat_acc(probs));
  return {centers.to(features.scalar_type()), mass};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attentional_class_feature_cpu(const at::Tensor& features,
                                                                           const at::Tensor& probs) {
  checks::soft_class_pool_inputs(features, probs);
  const at::Tensor probs_acc = flat_acc(probs);
  auto [centers, mass] = pool(flat_acc(features), probs_acc);
  const at::Tensor attended = at::bmm(centers.transpose(1, 2), probs_acc);  // Eq. 3: A = Z^T P, (B,C,P)
  return {attended.view(features.sizes()).to(features.scalar_type()), centers.to(features.scalar_type()), mass};
}

std::tuple<at::Tensor, at::Tensor> soft_class_pool_backward_cpu(const at::Tensor& grad_centers,
                                                                const at::Tensor& features, const at::Tensor& probs,
                                                                const at::Tensor& centers, const at::Tensor& mass) {
  checks::soft_class_pool_saved(features, probs, centers, mass);
  checks::soft_class_pool_grad(grad_centers, centers.sizes(), features, "grad_centers");
  return pool_backward(grad_centers.to(mass.scalar_type()), at::Tensor(), features, probs, flat_acc(features),
                       flat_acc(probs), centers, mass);
}

std::tuple<at::Tensor, at::Tensor> attentional_class_feature_backward_cpu(const at::Tensor& grad_attended,
                                                                          const at::Tensor& features,
                                                                          const at::Tensor& probs,
                                                                          const at::Tensor& centers,
                                                                          const at::Tensor& mass) {
  checks::soft_class_pool_saved(features, probs, centers, mass);
  checks::soft_class_pool_grad(grad_attended, features.sizes(), features, "grad_attended");
  const at::Tensor grad = flat_acc(grad_attended);
  const at::Tensor probs_acc = flat_acc(probs);
  const at::Tensor grad_centers = at::bmm(probs_acc, grad.transpose(1, 2));  // dZ = P dA^T
  return pool_backward(grad_centers, grad, features, probs, flat_acc(features), probs_acc, centers, mass);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CPU, m) {
  m.impl("soft_class_pool", &soft_class_pool_cpu);
  m.impl("soft_class_pool_backward", &soft_class_pool_backward_cpu);
  m.impl("attentional_class_feature", &attentional_class_feature_cpu);
  m.impl("attentional_class_feature_backward", &attentional_class_feature_backward_cpu);
}

}  // namespace fastseg::cpu
