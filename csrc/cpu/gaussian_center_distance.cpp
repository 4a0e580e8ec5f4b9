// CPU kernels of gaussian_center_distance (CSFRNet Eq. 2 with the exp(m_k * delta) scale).
//
// Work unit: one image and a tile of kTile consecutive pixels. The tile's embeddings are copied
// once into an accumulation-type buffer (C' rows of kTile), then the squared distances to all K
// centers are accumulated channel by channel: each embedding row is reused K times from L1 and the
// innermost loop runs over the tile's pixels, so it vectorises.
// Backward recomputes the distances per tile (no saved intermediate), then produces the embedding
// gradient of the tile directly and the center/margin gradients as per-chunk partial sums. Chunks
// are fixed runs of tiles (independent of the thread count) and their partials are added in chunk
// order, so the result is deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "checks/gaussian_center_distance.h"

namespace fastseg::cpu {
namespace {

constexpr int64_t kTile = 64;            // pixels per work unit
constexpr int64_t kMaxChunksPerImage = 64;  // bounds the partial-sum buffer of the backward pass

using Shapes = checks::GaussianCenterDistanceShape;

// Largest margin * delta used: exp() of it and the backward's 2 * grad * scale stay finite
// (see fastseg/ops/gaussian_center_distance.py).
template <typename acc_t>
constexpr acc_t log_scale_max() {
  return std::is_same_v<acc_t, double> ? acc_t(600) : acc_t(60);
}

// Per (image, class): the centers in the accumulation type, the scale exp(min(m * delta, max)) and
// d(log scale)/dm, which is delta or 0 where the clamp is active.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
struct ClassTerms {
  std::vector<acc_t> centers, scale, dlog_scale;

  ClassTerms(const at::Tensor& centers_in, const at::Tensor& margins_in, double delta_in) {
    const int64_t rows = margins_in.numel();
    const scalar_t* s = centers_in.const_data_ptr<scalar_t>();
    const scalar_t* m = margins_in.const_data_ptr<scalar_t>();
    const acc_t delta = static_cast<acc_t>(delta_in);
    centers.assign(s, s + centers_in.numel());
    scale.resize(rows);
    dlog_scale.resize(rows);
    for (int64_t i = 0; i < rows; ++i) {
      const acc_t log_scale = static_cast<acc_t>(m[i]) * delta;
      scale[i] = std::exp(std::min(log_scale, log_scale_max<acc_t>()));
      dlog_scale[i] = log_scale <= log_scale_max<acc_t>() ? delta : acc_t(0);
    }
  }
};

// tile[c * kTile + q] = embedding of pixel p0 + q, channel c (zero past the image's end).
template <typename scalar_t, typename acc_t>
void load_tile(const scalar_t* image, int64_t channels, int64_t pixels, int64_t p0, int64_t count, acc_t* tile) {
  for (int64_t c = 0; c < channels; ++c) {
    const scalar_t* row = image + c * pixels + p0;
    acc_t* out = tile + c * kTile;
    for (int64_t q = 0; q < count; ++q) out[q] = static_cast<acc_t>(row[q]);
    std::fill(out + count, out + kTile, acc_t(0));
  }
}

// distance[k * kTile + q] = ||b_q - s_k||^2 for the tile's pixels (the direct difference form).
template <typename acc_t>
void squared_distances(const acc_t* __restrict__ tile, const acc_t* __restrict__ centers, int64_t channels,
                       int64_t classes, acc_t* __restrict__ distance) {
  std::fill(distance, distance + classes * kTile, acc_t(0));
  for (int64_t c = 0; c < channels; ++c) {
    const acc_t* x = tile + c * kTile;
    for (int64_t k = 0; k < classes; ++k) {
      const acc_t s = centers[k * channels + c];
      acc_t* d = distance + k * kTile;
      for (int64_t q = 0; q < kTile; ++q) {
        const acc_t diff = x[q] - s;
        d[q] += diff * diff;
      }
    }
  }
}

// grad[q] += w[q] (x[q] - s) over a tile; returns sum_q w[q] (x[q] - s), summed in eight lanes so
// that the loop vectorises. A zero weight contributes 0 even where x - s is infinite: a pair at
// infinite distance (phi saturated at 1) sends no gradient (the NaN rule of fastseg.ops).
template <typename acc_t>
acc_t accumulate_gradient(const acc_t* __restrict__ w, const acc_t* __restrict__ x, acc_t s,
                          acc_t* __restrict__ grad) {
  acc_t lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t q = 0; q < kTile; q += 8) {
    for (int j = 0; j < 8; ++j) {
      const acc_t v = w[q + j] != acc_t(0) ? w[q + j] * (x[q + j] - s) : acc_t(0);
      grad[q + j] += v;
      lanes[j] += v;
    }
  }
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

at::Tensor gaussian_center_distance_cpu(const at::Tensor& embeddings, const at::Tensor& centers,
                                        const at::Tensor& margins, double delta) {
  const Shapes n = checks::gaussian_center_distance_shape(embeddings, centers, margins);
  const at::Tensor x = embeddings.contiguous();
  at::Tensor phi = at::empty({n.batch, n.classes, embeddings.size(2), embeddings.size(3)}, embeddings.options());
  const int64_t tiles = (n.pixels + kTile - 1) / kTile;
  if (phi.numel() == 0) return phi;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gaussian_center_distance_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const ClassTerms<scalar_t> terms(centers.contiguous(), margins.contiguous(), delta);
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* out = phi.data_ptr<scalar_t>();
    at::parallel_for(0, n.batch * tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> tile(n.channels * kTile), distance(n.classes * kTile);
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t b = unit / tiles, p0 = (unit % tiles) * kTile, count = std::min(kTile, n.pixels - p0);
        load_tile(in + b * n.channels * n.pixels, n.channels, n.pixels, p0, count, tile.data());
        squared_distances(tile.data(), terms.centers.data() + b * n.classes * n.channels, n.channels, n.classes,
                          distance.data());
        for (int64_t k = 0; k < n.classes; ++k) {
          const acc_t scale = terms.scale[b * n.classes + k];
          scalar_t* row = out + (b * n.classes + k) * n.pixels + p0;
          for (int64_t q = 0; q < count; ++q) {
            row[q] = static_cast<scalar_t>(acc_t(1) - std::exp(-distance[k * kTile + q] * scale));  // Eq. 2
          }
        }
      }
    });
  });
  return phi;
}

// Backward of Eq. 2 with d2 = ||b - s||^2, t = d2 * scale, e = exp(-t):
//   dphi/dd2 = scale * e,  dd2/db = 2 (b - s) = -dd2/ds,  dphi/dm = t * e * dlog_scale.
std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_center_distance_backward_cpu(
    const at::Tensor& grad_phi, const at::Tensor& embeddings, const at::Tensor& centers, const at::Tensor& margins,
    double delta) {
  const Shapes n = checks::gaussian_center_distance_shape(embeddings, centers, margins);
  checks::gaussian_center_distance_grad_phi(grad_phi, embeddings, n);
  const at::Tensor x = embeddings.contiguous();
  const at::Tensor grad = grad_phi.contiguous();
  at::Tensor grad_embeddings = at::empty(embeddings.sizes(), embeddings.options());
  at::Tensor grad_centers = at::empty({n.batch, n.classes, n.channels}, embeddings.options());
  at::Tensor grad_margins = at::empty({n.batch, n.classes}, embeddings.options());
  const int64_t tiles = (n.pixels + kTile - 1) / kTile;
  const int64_t tiles_per_chunk = std::max<int64_t>(1, (tiles + kMaxChunksPerImage - 1) / kMaxChunksPerImage);
  const int64_t chunks = (tiles + tiles_per_chunk - 1) / tiles_per_chunk;
  // One partial row per (image, chunk): K * C' center sums, then K margin sums.
  const int64_t row_size = n.classes * (n.channels + 1);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gaussian_center_distance_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const ClassTerms<scalar_t> terms(centers.contiguous(), margins.contiguous(), delta);
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* out = grad_embeddings.data_ptr<scalar_t>();
    std::vector<acc_t> partials(n.batch * chunks * row_size, acc_t(0));

    at::parallel_for(0, n.batch * chunks, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> tile(n.channels * kTile), weight(n.classes * kTile), grad_tile(n.channels * kTile);
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t b = unit / chunks, chunk = unit % chunks;
        const acc_t* s = terms.centers.data() + b * n.classes * n.channels;
        acc_t* center_sums = partials.data() + unit * row_size;
        acc_t* margin_sums = center_sums + n.classes * n.channels;
        const int64_t tile_end = std::min(tiles, (chunk + 1) * tiles_per_chunk);
        for (int64_t t = chunk * tiles_per_chunk; t < tile_end; ++t) {
          const int64_t p0 = t * kTile, count = std::min(kTile, n.pixels - p0);
          load_tile(in + b * n.channels * n.pixels, n.channels, n.pixels, p0, count, tile.data());
          squared_distances(tile.data(), s, n.channels, n.classes, weight.data());
          // weight[k, q] <- dL/dd2 * 2 = 2 * grad * scale * e; margin sums get grad * t * e.
          for (int64_t k = 0; k < n.classes; ++k) {
            const acc_t scale = terms.scale[b * n.classes + k];
            const scalar_t* grad_row = g + (b * n.classes + k) * n.pixels + p0;
            acc_t* w = weight.data() + k * kTile;
            acc_t margin_sum = 0;
            for (int64_t q = 0; q < count; ++q) {
              const acc_t grad_q = static_cast<acc_t>(grad_row[q]);
              const acc_t exponent = w[q] * scale;
              const acc_t e = std::exp(-exponent);
              // e == 0 covers exponent == inf, where exponent * e would be inf * 0
              margin_sum += e > acc_t(0) ? grad_q * exponent * e : acc_t(0);
              w[q] = acc_t(2) * grad_q * scale * e;
            }
            std::fill(w + count, w + kTile, acc_t(0));
            margin_sums[k] += margin_sum;
          }
          // grad_b[c, q] = sum_k w[k, q] (b_q - s_k)[c];  center sums[k, c] += sum_q w[k, q] (b_q - s_k)[c]
          std::fill(grad_tile.begin(), grad_tile.end(), acc_t(0));
          for (int64_t c = 0; c < n.channels; ++c) {
            const acc_t* xr = tile.data() + c * kTile;
            acc_t* gb = grad_tile.data() + c * kTile;
            for (int64_t k = 0; k < n.classes; ++k) {
              center_sums[k * n.channels + c] +=
                  accumulate_gradient(weight.data() + k * kTile, xr, s[k * n.channels + c], gb);
            }
          }
          for (int64_t c = 0; c < n.channels; ++c) {
            scalar_t* row = out + (b * n.channels + c) * n.pixels + p0;
            for (int64_t q = 0; q < count; ++q) row[q] = static_cast<scalar_t>(grad_tile[c * kTile + q]);
          }
        }
      }
    });

    // Chunk partials added in chunk order: grad_s = -sum w (b - s), grad_m = dlog_scale * sum g t e.
    scalar_t* gs = grad_centers.data_ptr<scalar_t>();
    scalar_t* gm = grad_margins.data_ptr<scalar_t>();
    at::parallel_for(0, n.batch * n.classes, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bk = begin; bk < end; ++bk) {
        const int64_t b = bk / n.classes, k = bk % n.classes;
        for (int64_t c = 0; c <= n.channels; ++c) {
          const int64_t column = c < n.channels ? k * n.channels + c : n.classes * n.channels + k;
          acc_t sum = 0;
          for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += partials[(b * chunks + chunk) * row_size + column];
          if (c < n.channels) {
            gs[bk * n.channels + c] = static_cast<scalar_t>(-sum);
          } else {
            gm[bk] = static_cast<scalar_t>(terms.dlog_scale[bk] * sum);
          }
        }
      }
    });
  });
  return {grad_embeddings, grad_centers, grad_margins};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CPU, m) {
  m.impl("gaussian_center_distance", &gaussian_center_distance_cpu);
  m.impl("gaussian_center_distance_backward", &gaussian_center_distance_backward_cpu);
}

}  // namespace fastseg::cpu
