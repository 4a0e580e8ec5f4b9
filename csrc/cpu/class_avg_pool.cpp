// CPU kernels of class_avg_pool (CSFRNet Eq. 1/3): run-length label rows, then per (image, channel)
// vectorised sums over each run (forward) or fills of each run (backward).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>

#include "checks/class_avg_pool.h"
#include "cpu/label_runs.h"

namespace fastseg::cpu {
namespace {

std::vector<std::vector<LabelRun>> image_runs(const at::Tensor& labels, int64_t num_classes,
                                              int64_t ignore_index, bool strict) {
  const int64_t batch = labels.size(0), pixels = labels.size(1) * labels.size(2);
  const int64_t* data = labels.data_ptr<int64_t>();
  std::vector<std::vector<LabelRun>> runs(batch);
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) runs[b] = label_runs(data + b * pixels, pixels, num_classes, ignore_index, strict);
  });
  return runs;
}

std::tuple<at::Tensor, at::Tensor> class_avg_pool_cpu(const at::Tensor& features, const at::Tensor& labels,
                                                      int64_t num_classes, int64_t ignore_index) {
  checks::class_avg_pool_inputs(features, labels, num_classes);
  const int64_t batch = features.size(0), channels = features.size(1);
  const int64_t pixels = features.size(2) * features.size(3);

  const at::Tensor feats = features.contiguous();
  const auto runs = image_runs(labels.contiguous(), num_classes, ignore_index, /*strict=*/true);
  at::Tensor counts = at::zeros({batch, num_classes}, labels.options());
  int64_t* count = counts.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    for (const LabelRun& run : runs[b]) count[b * num_classes + run.label] += run.length;
  }
  at::Tensor centers = at::empty({batch, num_classes, channels}, features.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "class_avg_pool_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* in = feats.const_data_ptr<scalar_t>();
    scalar_t* out = centers.data_ptr<scalar_t>();
    at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> sums(num_classes);
      for (int64_t index = begin; index < end; ++index) {
        const int64_t b = index / channels, c = index % channels;
        const scalar_t* row = in + index * pixels;
        std::fill(sums.begin(), sums.end(), acc_t(0));
        for (const LabelRun& run : runs[b]) sums[run.label] += contiguous_sum<acc_t>(row + run.start, run.length);
        for (int64_t k = 0; k < num_classes; ++k) {
          const int64_t n = count[b * num_classes + k];
          out[(b * num_classes + k) * channels + c] = static_cast<scalar_t>(n > 0 ? sums[k] / acc_t(n) : acc_t(0));
        }
      }
    });
  });
  return {centers, counts};
}

at::Tensor class_avg_pool_backward_cpu(const at::Tensor& grad_centers, const at::Tensor& labels,
                                       const at::Tensor& counts, int64_t ignore_index) {
  checks::class_avg_pool_backward_inputs(grad_centers, labels, counts);
  const int64_t batch = grad_centers.size(0), num_classes = grad_centers.size(1), channels = grad_centers.size(2);
  const int64_t height = labels.size(1), width = labels.size(2), pixels = height * width;

  const auto runs = image_runs(labels.contiguous(), num_classes, ignore_index, /*strict=*/false);
  const at::Tensor grad = grad_centers.contiguous();
  const at::Tensor count = counts.contiguous();
  at::Tensor grad_features = at::empty({batch, channels, height, width}, grad_centers.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "class_avg_pool_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const int64_t* n = count.const_data_ptr<int64_t>();
    scalar_t* out = grad_features.data_ptr<scalar_t>();
    at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t index = begin; index < end; ++index) {
        const int64_t b = index / channels, c = index % channels;
        scalar_t* row = out + index * pixels;
        int64_t filled = 0;
        for (const LabelRun& run : runs[b]) {
          std::fill(row + filled, row + run.start, scalar_t(0));
          const int64_t k = b * num_classes + run.label;
          const acc_t value = static_cast<acc_t>(g[k * channels + c]) / acc_t(std::max<int64_t>(n[k], 1));
          std::fill(row + run.start, row + run.start + run.length, static_cast<scalar_t>(value));
          filled = run.start + run.length;
        }
        std::fill(row + filled, row + pixels, scalar_t(0));
      }
    });
  });
  return grad_features;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CPU, m) {
  m.impl("class_avg_pool", &class_avg_pool_cpu);
  m.impl("class_avg_pool_backward", &class_avg_pool_backward_cpu);
}

}  // namespace fastseg::cpu
