// CPU kernels of the Lovász hinge (Berman et al. 2018 Eq. 8-9; CSFRNet Eq. 4). Rows run in
// parallel; each row sorts its valid pixels once by decreasing hinge error and scans them once for
// the Jaccard gradient, the loss and the gradient weights, which it stores in pixel order (through
// the sort's permutation). Backward is a streaming multiply of those weights, without sorting again.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <optional>
#include <vector>

#include "checks/lovasz_hinge.h"

namespace fastseg::cpu {
namespace {

template <typename acc_t>
struct SortItem {
  acc_t error;
  int64_t index;
};

// Unsigned integer of the width of acc_t.
template <typename acc_t>
using KeyBits = std::conditional_t<sizeof(acc_t) == 4, uint32_t, uint64_t>;

// Key whose ascending order is decreasing error with NaN first (torch.sort(descending=True)).
template <typename acc_t>
KeyBits<acc_t> descending_key(acc_t error) {
  using bits_t = KeyBits<acc_t>;
  constexpr bits_t sign = bits_t(1) << (8 * sizeof(bits_t) - 1);
  if (std::isnan(error)) return 0;
  bits_t bits;
  std::memcpy(&bits, &error, sizeof(bits));
  const bits_t ascending = (bits & sign) ? ~bits : (bits | sign);  // order-preserving map of floats
  return ~ascending;
}

// A row's items and the buffers its sort reuses from row to row.
template <typename acc_t>
struct RowBuffers {
  std::vector<SortItem<acc_t>> items, scratch;
  std::vector<KeyBits<acc_t>> keys, scratch_keys;
};

// Stable LSD radix sort of buffers.items by descending_key, 8 bits a pass.
template <typename acc_t>
void sort_descending(RowBuffers<acc_t>& buffers) {
  auto& [items, scratch, keys, scratch_keys] = buffers;
  const size_t count = items.size();
  if (count < 2) return;
  keys.resize(count);
  scratch.resize(count);
  scratch_keys.resize(count);
  for (size_t i = 0; i < count; ++i) keys[i] = descending_key(items[i].error);
  for (size_t shift = 0; shift < 8 * sizeof(KeyBits<acc_t>); shift += 8) {
    size_t offsets[257] = {0};
    for (size_t i = 0; i < count; ++i) ++offsets[((keys[i] >> shift) & 0xff) + 1];
    if (offsets[((keys[0] >> shift) & 0xff) + 1] == count) continue;  // one digit value: pass is a no-op
    for (int d = 0; d < 256; ++d) offsets[d + 1] += offsets[d];
    for (size_t i = 0; i < count; ++i) {
      const size_t to = offsets[(keys[i] >> shift) & 0xff]++;
      scratch[to] = items[i];
      scratch_keys[to] = keys[i];
    }
    items.swap(scratch);
    keys.swap(scratch_keys);
  }
}

// One row of `pixels`: writes its weights[p] = d loss / d logits[p] in pixel order (0 for invalid
// pixels), returns its loss.
template <typename scalar_t, typename acc_t>
acc_t lovasz_row(const scalar_t* logits, const bool* labels, const bool* valid, int64_t pixels,
                 RowBuffers<acc_t>& buffers, acc_t* weights) {
  std::vector<SortItem<acc_t>>& items = buffers.items;
  items.clear();
  int64_t positives = 0;
  for (int64_t p = 0; p < pixels; ++p) {
    if (valid != nullptr && !valid[p]) {
      weights[p] = acc_t(0);
      continue;
    }
    const acc_t sign = labels[p] ? acc_t(1) : acc_t(-1);
    items.push_back({acc_t(1) - static_cast<acc_t>(logits[p]) * sign, p});
    positives += labels[p];
  }
  sort_descending(buffers);

  // Eq. 9: g_j = J_j - J_{j-1}, J_j = 1 - (gts - pos_j) / (gts + neg_j); the union is >= 1 here.
  const acc_t gts = static_cast<acc_t>(positives);
  int64_t pos = 0, neg = 0;
  acc_t previous = acc_t(0), loss = acc_t(0);
  const int64_t count = static_cast<int64_t>(items.size());
  for (int64_t j = 0; j < count; ++j) {
    const int64_t p = items[j].index;
    const bool positive = labels[p];
    pos += positive;
    neg += !positive;
    const acc_t jaccard = acc_t(1) - (gts - acc_t(pos)) / (gts + acc_t(neg));
    const acc_t grad = jaccard - previous;
    previous = jaccard;
    const acc_t error = items[j].error;
    const bool active = !(error <= acc_t(0));  // a NaN error is active: NaN in, NaN loss out
    loss += active ? error * grad : acc_t(0);  // Eq. 8 with relu(errors)
    weights[p] = active ? (positive ? -grad : grad) : acc_t(0);  // the sort's permutation: pixel order
  }
  return loss;
}

std::tuple<at::Tensor, at::Tensor> lovasz_hinge_cpu(const at::Tensor& logits, const at::Tensor& labels,
                                                    const std::optional<at::Tensor>& valid) {
  checks::lovasz_hinge_inputs(logits, labels, valid);
  const int64_t rows = logits.size(0), pixels = logits.size(1);
  const at::Tensor x = logits.contiguous();
  const at::Tensor y = labels.contiguous();
  const at::Tensor mask = valid.has_value() ? valid->contiguous() : at::Tensor();
  const at::ScalarType acc_dtype = checks::lovasz_accumulate_type(logits.scalar_type());
  at::Tensor loss = at::empty({rows}, logits.options());
  at::Tensor weights = at::empty({rows, pixels}, logits.options().dtype(acc_dtype));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "lovasz_hinge_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    const bool* gt = y.const_data_ptr<bool>();
    const bool* keep = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
    scalar_t* out = loss.data_ptr<scalar_t>();
    acc_t* weight = weights.data_ptr<acc_t>();
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      RowBuffers<acc_t> buffers;
      buffers.items.reserve(pixels);
      for (int64_t n = begin; n < end; ++n) {
        const int64_t offset = n * pixels;
        out[n] = static_cast<scalar_t>(lovasz_row<scalar_t, acc_t>(
            in + offset, gt + offset, keep ? keep + offset : nullptr, pixels, buffers, weight + offset));
      }
    });
  });
  return {loss, weights};
}

// grad_logits[n,p] = grad_loss[n] * weights[n,p]: a streaming multiply, in the accumulation type.
at::Tensor lovasz_hinge_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& weights) {
  checks::lovasz_hinge_backward_inputs(grad_loss, weights);
  const int64_t rows = weights.size(0), pixels = weights.size(1);
  const at::Tensor grad = grad_loss.contiguous();
  const at::Tensor weight = weights.contiguous();
  at::Tensor grad_logits = at::empty({rows, pixels}, grad_loss.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_loss.scalar_type(), "lovasz_hinge_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const acc_t* w = weight.const_data_ptr<acc_t>();
    scalar_t* out = grad_logits.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const acc_t scale = static_cast<acc_t>(g[n]);
        const int64_t offset = n * pixels;
        for (int64_t p = 0; p < pixels; ++p) out[offset + p] = static_cast<scalar_t>(scale * w[offset + p]);
      }
    });
  });
  return grad_logits;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CPU, m) {
  m.impl("lovasz_hinge", &lovasz_hinge_cpu);
  m.impl("lovasz_hinge_backward", &lovasz_hinge_backward_cpu);
}

}  // namespace fastseg::cpu
