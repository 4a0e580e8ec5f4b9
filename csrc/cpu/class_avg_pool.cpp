// CPU kernels of class_avg_pool (CSFRNet Eq. 1/3).
//
// Each image's labels are first mapped once to slots: the class id, or K for a pixel of no class
// (ignored or out of range), so the per-channel loops need no branch. Forward: per (image,
// channel) a scatter-add of the row into K+1 sums, with kLanes interleaved copies of the sums so
// that consecutive pixels of one class do not wait on each other. Backward: per (image, channel)
// a gather from a table of K+1 values (grad_center / count, and 0 in slot K).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "checks/class_avg_pool.h"

namespace fastseg::cpu {
namespace {

constexpr int64_t kLanes = 4;  // independent partial sums per class in the forward scatter-add

// slots[b * P + p] = labels[b, p] if it is in [0, K) and not ignore_index (which may lie in
// [0, K)), else K: a label outside [0, K) counts nowhere, as on every backend (fastseg.ops
// validates labels once, in check_labels, before the op runs).
std::vector<int32_t> label_slots(const at::Tensor& labels, int64_t num_classes, int64_t ignore_index) {
  const int64_t total = labels.numel();
  const int64_t* label = labels.const_data_ptr<int64_t>();
  std::vector<int32_t> slots(total);
  at::parallel_for(0, total, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t value = label[i];
      const bool valid = value >= 0 && value < num_classes && value != ignore_index;
      slots[i] = static_cast<int32_t>(valid ? value : num_classes);
    }
  });
  return slots;
}

std::tuple<at::Tensor, at::Tensor> class_avg_pool_cpu(const at::Tensor& features, const at::Tensor& labels,
                                                      int64_t num_classes, int64_t ignore_index) {
  checks::class_avg_pool_inputs(features, labels, num_classes);
  const int64_t batch = features.size(0), channels = features.size(1);
  const int64_t pixels = features.size(2) * features.size(3), bins = num_classes + 1;
  const at::Tensor feats = features.contiguous();
  const std::vector<int32_t> slots = label_slots(labels.contiguous(), num_classes, ignore_index);

  at::Tensor counts = at::zeros({batch, num_classes}, labels.options());
  int64_t* count = counts.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t p = 0; p < pixels; ++p) {
      const int32_t slot = slots[b * pixels + p];
      if (slot < num_classes) ++count[b * num_classes + slot];
    }
  }
  at::Tensor centers = at::empty({batch, num_classes, channels}, features.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "class_avg_pool_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* in = feats.const_data_ptr<scalar_t>();
    scalar_t* out = centers.data_ptr<scalar_t>();
    at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> sums(kLanes * bins);  // sums[lane * bins + slot]
      for (int64_t index = begin; index < end; ++index) {
        const int64_t b = index / channels, c = index % channels;
        const scalar_t* row = in + index * pixels;
        const int32_t* slot = slots.data() + b * pixels;
        std::fill(sums.begin(), sums.end(), acc_t(0));
        int64_t p = 0;
        for (; p + kLanes <= pixels; p += kLanes) {
          for (int64_t lane = 0; lane < kLanes; ++lane) {
            sums[lane * bins + slot[p + lane]] += static_cast<acc_t>(row[p + lane]);
          }
        }
        for (; p < pixels; ++p) sums[slot[p]] += static_cast<acc_t>(row[p]);
        for (int64_t k = 0; k < num_classes; ++k) {
          acc_t sum = acc_t(0);
          for (int64_t lane = 0; lane < kLanes; ++lane) sum += sums[lane * bins + k];
          const int64_t n = count[b * num_classes + k];
          out[(b * num_classes + k) * channels + c] = static_cast<scalar_t>(n > 0 ? sum / acc_t(n) : acc_t(0));
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
  const std::vector<int32_t> slots = label_slots(labels.contiguous(), num_classes, ignore_index);
  const at::Tensor grad = grad_centers.contiguous();
  const at::Tensor count = counts.contiguous();
  at::Tensor grad_features = at::empty({batch, channels, height, width}, grad_centers.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "class_avg_pool_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const int64_t* n = count.const_data_ptr<int64_t>();
    scalar_t* out = grad_features.data_ptr<scalar_t>();
    at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> table(num_classes + 1);  // d centers[k, c] / d feature, and 0 for slot K
      for (int64_t index = begin; index < end; ++index) {
        const int64_t b = index / channels, c = index % channels;
        for (int64_t k = 0; k < num_classes; ++k) {
          const int64_t bk = b * num_classes + k;
          table[k] = static_cast<scalar_t>(static_cast<acc_t>(g[bk * channels + c]) /
                                           acc_t(std::max<int64_t>(n[bk], 1)));
        }
        table[num_classes] = scalar_t(0);
        const int32_t* slot = slots.data() + b * pixels;
        scalar_t* row = out + index * pixels;
        for (int64_t p = 0; p < pixels; ++p) row[p] = table[slot[p]];
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
