// CPU deformable convolution v1/v2 (CSFRNet Eq. 6), torchvision's semantics: im2col with bilinear
// sampling + one grouped GEMM per batch chunk. The four neighbours and weights of every (image,
// offset group, tap, output pixel) are computed once and reused by all channels of the offset group.
// Backward: grad_columns = W^T grad_out (GEMM), col2im scatter parallel over (image, channel) planes
// (each task owns its plane: no races, deterministic), offset/mask gradients from the derivative of
// the bilinear weights, parallel over (image, offset group, tap) rows.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "checks/deform_conv2d.h"

namespace fastseg::cpu {
namespace {

// Bytes of sampled columns materialised at once; the batch is processed in chunks that fit.
constexpr int64_t kColumnBudget = int64_t(256) << 20;

using Geometry = checks::DeformConvShape;

// Items per task so that tiny problems run inline (a parallel region costs more than they do):
// about 32k elementary steps per task, ATen's own grain.
constexpr int64_t kGrainSize = 32768;

int64_t grain(int64_t work_per_item) {
  return std::max<int64_t>(1, kGrainSize / std::max<int64_t>(work_per_item, 1));
}

int64_t chunk_size(const Geometry& g, int64_t element_size) {
  const int64_t per_image = std::max<int64_t>(g.channels * g.taps * g.pixels * element_size, 1);
  return std::clamp<int64_t>(kColumnBudget / per_image, 1, std::max<int64_t>(g.batch, 1));
}

// One bilinear sample: the four neighbours (low/high row x low/high column) as indices in the
// image plane (0 for a neighbour outside, with weight 0), their weights, the fractional parts and
// which neighbours are inside. Only inside neighbours are read (an Inf at index 0 must not leak
// into samples that merely point there); a sample whose position is not finite is `poisoned`: its
// column is NaN and it sends no gradient anywhere (the NaN rule in fastseg/ops/__init__.py).
template <typename acc_t>
struct Sample {
  int64_t index[4];
  acc_t weight[4];
  acc_t frac_y, frac_x, mask;
  unsigned inside;
  bool poisoned;
};

template <typename acc_t>
Sample<acc_t> make_sample(acc_t y, acc_t x, acc_t mask, int64_t height, int64_t width) {
  Sample<acc_t> s{};
  s.mask = mask;
  s.poisoned = !std::isfinite(y) || !std::isfinite(x);
  if (!(y > acc_t(-1) && y < acc_t(height) && x > acc_t(-1) && x < acc_t(width))) return s;
  const acc_t y0f = std::floor(y), x0f = std::floor(x);
  const int64_t y0 = static_cast<int64_t>(y0f), x0 = static_cast<int64_t>(x0f);
  s.frac_y = y - y0f, s.frac_x = x - x0f;
  const int64_t rows[2] = {y0, y0 + 1}, cols[2] = {x0, x0 + 1};
  const acc_t wy[2] = {acc_t(1) - s.frac_y, s.frac_y}, wx[2] = {acc_t(1) - s.frac_x, s.frac_x};
  for (int n = 0; n < 4; ++n) {
    const int64_t r = rows[n >> 1], c = cols[n & 1];
    if (r >= 0 && r < height && c >= 0 && c < width) {
      s.index[n] = r * width + c;
      s.weight[n] = wy[n >> 1] * wx[n & 1];
      s.inside |= 1u << n;
    }
  }
  return s;
}

// Samples of images [b0, b0 + nb): laid out (nb, offset_groups, taps, pixels).
template <typename scalar_t, typename acc_t>
std::vector<Sample<acc_t>> make_samples(const Geometry& g, const scalar_t* offset, const scalar_t* mask, int64_t b0,
                                        int64_t nb) {
  std::vector<Sample<acc_t>> samples(nb * g.offset_groups * g.taps * g.pixels);
  at::parallel_for(0, nb * g.offset_groups * g.taps, grain(g.pixels), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = b0 + row / (g.offset_groups * g.taps), group_tap = row % (g.offset_groups * g.taps);
      const int64_t tap = group_tap % g.taps, i = tap / g.kw, j = tap % g.kw;
      const scalar_t* dy = offset + ((b * g.offset_groups * g.taps + group_tap) * 2) * g.pixels;
      const scalar_t* dx = dy + g.pixels;
      const scalar_t* m = mask ? mask + (b * g.offset_groups * g.taps + group_tap) * g.pixels : nullptr;
      Sample<acc_t>* out = samples.data() + row * g.pixels;
      for (int64_t p = 0; p < g.pixels; ++p) {
        const int64_t ho = p / g.out_w, wo = p % g.out_w;
        const acc_t y = acc_t(ho * g.stride_h - g.pad_h + i * g.dil_h) + static_cast<acc_t>(dy[p]);
        const acc_t x = acc_t(wo * g.stride_w - g.pad_w + j * g.dil_w) + static_cast<acc_t>(dx[p]);
        out[p] = make_sample<acc_t>(y, x, m ? static_cast<acc_t>(m[p]) : acc_t(1), g.height, g.width);
      }
    }
  });
  return samples;
}

// Output pixels per work item: the item's samples (a few kB) stay in L1 while every channel of
// their offset group reads them.
constexpr int64_t kPixelBlock = 256;
// Channels whose input-gradient planes one col2im task accumulates at once.
constexpr int64_t kChannelBlock = 8;

// A range of output pixels [begin, end) of one (image, offset group, tap) row of samples.
struct PixelBlock {
  int64_t b, og, tap, begin, end;
};

PixelBlock pixel_block(const Geometry& g, int64_t item) {
  const int64_t blocks = (g.pixels + kPixelBlock - 1) / kPixelBlock;
  const int64_t block = item % blocks, row = item / blocks;
  return {row / (g.offset_groups * g.taps), row / g.taps % g.offset_groups, row % g.taps, block * kPixelBlock,
          std::min(g.pixels, (block + 1) * kPixelBlock)};
}

int64_t pixel_blocks(const Geometry& g, int64_t nb) {
  return nb * g.offset_groups * g.taps * ((g.pixels + kPixelBlock - 1) / kPixelBlock);
}

// columns (nb, C_in*taps, pixels): mask * bilinear(input[b, c], y, x), row c*taps + tap.
template <typename scalar_t, typename acc_t>
void fill_columns(const Geometry& g, const scalar_t* input, const std::vector<Sample<acc_t>>& samples, int64_t b0,
                  int64_t nb, scalar_t* columns) {
  const int64_t plane = g.height * g.width, group_channels = g.channels / g.offset_groups;
  at::parallel_for(0, pixel_blocks(g, nb), grain(4 * group_channels * kPixelBlock), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const PixelBlock blk = pixel_block(g, item);
      const Sample<acc_t>* s = samples.data() + ((blk.b * g.offset_groups + blk.og) * g.taps + blk.tap) * g.pixels;
      for (int64_t c = blk.og * group_channels; c < (blk.og + 1) * group_channels; ++c) {
        const scalar_t* image = input + ((b0 + blk.b) * g.channels + c) * plane;
        scalar_t* col = columns + ((blk.b * g.channels + c) * g.taps + blk.tap) * g.pixels;
        for (int64_t p = blk.begin; p < blk.end; ++p) {
          const Sample<acc_t>& q = s[p];
          acc_t value = acc_t(0);
          for (int n = 0; n < 4; ++n) {
            const acc_t v = static_cast<acc_t>(image[q.index[n]]);
            value += (q.inside >> n & 1u) ? q.weight[n] * v : acc_t(0);
          }
          col[p] = static_cast<scalar_t>(q.poisoned ? std::numeric_limits<acc_t>::quiet_NaN() : q.mask * value);
        }
      }
    }
  });
}

// grad_input[b, c] = sum over taps and pixels of weight * mask * grad_columns (col2im). A task owns
// the planes of up to kChannelBlock channels of one offset group: no races, a fixed summation order.
template <typename scalar_t, typename acc_t>
void scatter_grad_input(const Geometry& g, const scalar_t* grad_columns, const std::vector<Sample<acc_t>>& samples,
                        int64_t b0, int64_t nb, scalar_t* grad_input) {
  const int64_t plane = g.height * g.width, group_channels = g.channels / g.offset_groups;
  const int64_t channel_blocks = (group_channels + kChannelBlock - 1) / kChannelBlock;
  const int64_t items = nb * g.offset_groups * channel_blocks;
  at::parallel_for(0, items, grain(4 * kChannelBlock * g.taps * g.pixels), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sums(kChannelBlock * plane);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / (g.offset_groups * channel_blocks), og = item / channel_blocks % g.offset_groups;
      const int64_t c_begin = og * group_channels + item % channel_blocks * kChannelBlock;
      const int64_t c_end = std::min(c_begin + kChannelBlock, (og + 1) * group_channels);
      std::fill(sums.begin(), sums.end(), acc_t(0));
      for (int64_t tap = 0; tap < g.taps; ++tap) {
        const Sample<acc_t>* s = samples.data() + ((b * g.offset_groups + og) * g.taps + tap) * g.pixels;
        for (int64_t p0 = 0; p0 < g.pixels; p0 += kPixelBlock) {
          const int64_t p1 = std::min(g.pixels, p0 + kPixelBlock);
          for (int64_t c = c_begin; c < c_end; ++c) {
            const scalar_t* grad = grad_columns + ((b * g.channels + c) * g.taps + tap) * g.pixels;
            acc_t* sum = sums.data() + (c - c_begin) * plane;
            for (int64_t p = p0; p < p1; ++p) {
              const Sample<acc_t>& q = s[p];
              const acc_t value = q.mask * static_cast<acc_t>(grad[p]);
              for (int n = 0; n < 4; ++n) {
                if (q.inside >> n & 1u) sum[q.index[n]] += q.weight[n] * value;
              }
            }
          }
        }
      }
      for (int64_t c = c_begin; c < c_end; ++c) {
        scalar_t* out = grad_input + ((b0 + b) * g.channels + c) * plane;
        const acc_t* sum = sums.data() + (c - c_begin) * plane;
        for (int64_t i = 0; i < plane; ++i) out[i] = static_cast<scalar_t>(sum[i]);
      }
    }
  });
}

// d(sample)/dy and d(sample)/dx from the four neighbours' values (zero outside).
template <typename acc_t>
void sample_derivatives(const Sample<acc_t>& q, const acc_t v[4], acc_t* value, acc_t* dy, acc_t* dx) {
  const acc_t fy = q.frac_y, fx = q.frac_x;
  *value = q.weight[0] * v[0] + q.weight[1] * v[1] + q.weight[2] * v[2] + q.weight[3] * v[3];
  *dy = (acc_t(1) - fx) * (v[2] - v[0]) + fx * (v[3] - v[1]);
  *dx = (acc_t(1) - fy) * (v[1] - v[0]) + fy * (v[3] - v[2]);
}

// grad_offset (dy, dx) = mask * sum_c grad_columns * d(sample)/d(y, x); grad_mask = sum_c grad_columns * sample.
template <typename scalar_t, typename acc_t>
void offset_mask_grads(const Geometry& g, const scalar_t* input, const scalar_t* grad_columns,
                       const std::vector<Sample<acc_t>>& samples, int64_t b0, int64_t nb, scalar_t* grad_offset,
                       scalar_t* grad_mask) {
  const int64_t plane = g.height * g.width, group_channels = g.channels / g.offset_groups;
  at::parallel_for(0, pixel_blocks(g, nb), grain(4 * group_channels * kPixelBlock), [&](int64_t begin, int64_t end) {
    acc_t sum_y[kPixelBlock], sum_x[kPixelBlock], sum_m[kPixelBlock];
    for (int64_t item = begin; item < end; ++item) {
      const PixelBlock blk = pixel_block(g, item);
      const int64_t row = (blk.b * g.offset_groups + blk.og) * g.taps + blk.tap;
      const int64_t count = blk.end - blk.begin;
      std::fill(sum_y, sum_y + count, acc_t(0));
      std::fill(sum_x, sum_x + count, acc_t(0));
      std::fill(sum_m, sum_m + count, acc_t(0));
      const Sample<acc_t>* s = samples.data() + row * g.pixels + blk.begin;
      for (int64_t c = blk.og * group_channels; c < (blk.og + 1) * group_channels; ++c) {
        const scalar_t* image = input + ((b0 + blk.b) * g.channels + c) * plane;
        const scalar_t* grad = grad_columns + ((blk.b * g.channels + c) * g.taps + blk.tap) * g.pixels + blk.begin;
        for (int64_t p = 0; p < count; ++p) {
          const Sample<acc_t>& q = s[p];
          if (!q.inside) continue;
          acc_t v[4];
          for (int n = 0; n < 4; ++n) v[n] = (q.inside >> n & 1u) ? static_cast<acc_t>(image[q.index[n]]) : acc_t(0);
          acc_t value, dy, dx;
          sample_derivatives(q, v, &value, &dy, &dx);
          const acc_t gc = static_cast<acc_t>(grad[p]);
          sum_m[p] += gc * value;
          sum_y[p] += gc * dy;
          sum_x[p] += gc * dx;
        }
      }
      const int64_t global_row = b0 * g.offset_groups * g.taps + row;
      scalar_t* out_y = grad_offset + (2 * global_row) * g.pixels + blk.begin;
      scalar_t* out_x = out_y + g.pixels;
      for (int64_t p = 0; p < count; ++p) {
        out_y[p] = static_cast<scalar_t>(s[p].inside ? s[p].mask * sum_y[p] : acc_t(0));
        out_x[p] = static_cast<scalar_t>(s[p].inside ? s[p].mask * sum_x[p] : acc_t(0));
      }
      if (grad_mask) {
        scalar_t* out_m = grad_mask + global_row * g.pixels + blk.begin;
        for (int64_t p = 0; p < count; ++p) out_m[p] = static_cast<scalar_t>(sum_m[p]);
      }
    }
  });
}

template <typename scalar_t>
const scalar_t* optional_ptr(const std::optional<at::Tensor>& tensor) {
  return tensor.has_value() ? tensor->const_data_ptr<scalar_t>() : nullptr;
}

// Images [b0, b0 + nb): their bilinear samples and the sampled columns (nb, groups, C/groups*taps, Ho*Wo),
// shared by the forward GEMM and the backward (weight GEMM, input scatter, offset/mask gradients).
template <typename scalar_t, typename acc_t>
std::pair<std::vector<Sample<acc_t>>, at::Tensor> sampled_columns(const Geometry& g, const at::Tensor& input,
                                                                  const at::Tensor& offset,
                                                                  const std::optional<at::Tensor>& mask,
                                                                  int64_t b0, int64_t nb) {
  auto samples = make_samples<scalar_t, acc_t>(g, offset.const_data_ptr<scalar_t>(), optional_ptr<scalar_t>(mask), b0, nb);
  at::Tensor columns = at::empty({nb, g.groups, g.channels / g.groups * g.taps, g.pixels}, input.options());
  fill_columns<scalar_t, acc_t>(g, input.const_data_ptr<scalar_t>(), samples, b0, nb, columns.data_ptr<scalar_t>());
  return {std::move(samples), columns};
}

at::Tensor deform_conv2d_cpu(const at::Tensor& input_, const at::Tensor& offset_, const at::Tensor& weight_,
                             const std::optional<at::Tensor>& mask_, const std::optional<at::Tensor>& bias,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const Geometry g = checks::deform_conv2d_shape(input_, offset_, weight_, mask_, stride, padding, dilation);
  checks::deform_conv2d_bias(bias, g);
  const at::Tensor input = input_.contiguous(), offset = offset_.contiguous(), weight = weight_.contiguous();
  const std::optional<at::Tensor> mask = mask_.has_value() ? std::optional<at::Tensor>(mask_->contiguous()) : std::nullopt;
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  const int64_t group_rows = g.channels / g.groups * g.taps;
  const at::Tensor kernels = weight.view({g.groups, g.out_channels / g.groups, group_rows});
  const int64_t chunk = chunk_size(g, input.element_size());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "deform_conv2d_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (int64_t b0 = 0; b0 < g.batch; b0 += chunk) {
      const int64_t nb = std::min(chunk, g.batch - b0);
      const auto [samples, columns] = sampled_columns<scalar_t, acc_t>(g, input, offset, mask, b0, nb);
      output.narrow(0, b0, nb).view({nb, g.groups, g.out_channels / g.groups, g.pixels}).copy_(at::matmul(kernels, columns));
    }
  });
  if (bias.has_value()) output.add_(bias->view({1, -1, 1, 1}));
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cpu(
    const at::Tensor& grad_output_, const at::Tensor& input_, const at::Tensor& offset_, const at::Tensor& weight_,
    const std::optional<at::Tensor>& mask_, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const Geometry g = checks::deform_conv2d_shape(input_, offset_, weight_, mask_, stride, padding, dilation);
  checks::deform_conv2d_grad_output(grad_output_, g);
  const at::Tensor input = input_.contiguous(), offset = offset_.contiguous(), weight = weight_.contiguous();
  const at::Tensor grad_output = grad_output_.contiguous();
  const std::optional<at::Tensor> mask = mask_.has_value() ? std::optional<at::Tensor>(mask_->contiguous()) : std::nullopt;
  at::Tensor grad_input = at::empty_like(input);
  at::Tensor grad_offset = at::empty_like(offset);
  at::Tensor grad_mask = mask.has_value() ? at::empty_like(*mask) : at::empty({0}, input.options());
  const int64_t group_rows = g.channels / g.groups * g.taps, group_out = g.out_channels / g.groups;
  const at::Tensor kernels = weight.view({g.groups, group_out, group_rows});
  const at::Tensor kernels_t = kernels.transpose(1, 2);
  const at::ScalarType acc_type = at::toOpMathType(input.scalar_type());
  at::Tensor grad_kernels = at::zeros({g.groups, group_out, group_rows}, input.options().dtype(acc_type));
  const int64_t chunk = chunk_size(g, 2 * input.element_size());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "deform_conv2d_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (int64_t b0 = 0; b0 < g.batch; b0 += chunk) {
      const int64_t nb = std::min(chunk, g.batch - b0);
      const auto [samples, columns] = sampled_columns<scalar_t, acc_t>(g, input, offset, mask, b0, nb);
      const at::Tensor grad_out = grad_output.narrow(0, b0, nb).view({nb, g.groups, group_out, g.pixels});
      grad_kernels.add_(at::matmul(grad_out, columns.transpose(2, 3)).sum(0, false, acc_type));
      const at::Tensor grad_columns = at::matmul(kernels_t, grad_out).contiguous();
      scatter_grad_input<scalar_t, acc_t>(g, grad_columns.const_data_ptr<scalar_t>(), samples, b0, nb,
                                          grad_input.data_ptr<scalar_t>());
      offset_mask_grads<scalar_t, acc_t>(g, input.const_data_ptr<scalar_t>(), grad_columns.const_data_ptr<scalar_t>(),
                                         samples, b0, nb, grad_offset.data_ptr<scalar_t>(),
                                         mask.has_value() ? grad_mask.data_ptr<scalar_t>() : nullptr);
    }
  });
  at::Tensor grad_weight = grad_kernels.to(input.scalar_type()).view(weight.sizes());
  at::Tensor grad_bias = grad_output.sum({0, 2, 3}, false, acc_type).to(input.scalar_type());
  return {grad_input, grad_offset, grad_weight, grad_mask, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CPU, m) {
  m.impl("deform_conv2d", &deform_conv2d_cpu);
  m.impl("deform_conv2d_backward", &deform_conv2d_backward_cpu);
}

}  // namespace fastseg::cpu
