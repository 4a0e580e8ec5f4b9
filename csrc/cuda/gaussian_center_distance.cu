// CUDA gaussian_center_distance (CSFRNet Eq. 2 with the exp(m_k * delta) scale), deterministic:
// no floating-point atomics.
//
// One thread per pixel, blocks of kThreads consecutive pixels of one image. Classes are handled in
// chunks of kClassChunk whose squared distances live in registers; for each chunk the channels are
// walked in tiles of kChannelTile: the block stages the chunk's centers and its pixels' embeddings
// (coalesced along pixels) in shared memory, then every thread updates its kClassChunk distances.
// The backward pass recomputes the distances (nothing is saved by the forward), keeps its pixels'
// weights w = 2 grad scale e in shared memory and, per channel tile, (a) adds each pixel's embedding
// gradient sum_k w_k (b - s_k)[c] (carried across class chunks in an fp32/fp64 buffer when there are
// several) and (b) lets thread (class, channel) sum w (b - s)[c] over the tile's pixels into its
// block's partial center sums. A block owns a slice of pixel tiles; its partial center and margin
// sums are reduced over slices in a fixed order by a finalize kernel.
//
// Cost model at the GPU shapes of
// bench/bench_gaussian_center_distance.py (forward+backward; H200: 4.8 TB/s HBM, 67 TFLOP/s fp32,
// 989 TFLOP/s dense bf16, ~3 us per dependent launch). The floor is max(bytes / bandwidth, FLOPs /
// peak) of the benchmark's byte and FLOP counts; the prediction is this design's, derived below.
// bench/report.py reads the `predicted H200` lines (the one place these numbers live) into the
// "predicted" column of bench/RESULTS.md.
// Forward at ~60% of its own floor (embeddings + phi, 3 FLOPs per (pixel, class, channel)); the
// backward at ~10% of its floor (2 x embeddings + phi, 6 FLOPs): small grid, the embedding gradient
// carried across class chunks through a global fp32 buffer. 3 launches.
// predicted H200 | gaussian_center_distance cityscapes-C32 B=8 fwd+bwd | 0.066 ms | bwd round trips (floor 0.008 ms)
// predicted H200 | gaussian_center_distance ade20k-C32 B=8 fwd+bwd | 0.162 ms | bwd round trips (floor 0.021 ms)
#include "cuda/common.cuh"
#include "cuda/gaussian_center_distance.h"

#include <algorithm>

namespace fastseg::cuda {
namespace {

constexpr int kThreads = 128;      // pixels per tile (one per thread)
constexpr int kClassChunk = 16;    // classes whose distances a thread holds in registers
constexpr int kChannelTile = 8;    // channels staged in shared memory at a time
constexpr int kTileStride = kThreads + 1;  // padded rows: column reads hit distinct banks
constexpr int kMarginParts = kThreads / kClassChunk;  // threads summing one class's margin terms
constexpr int kPixelsPerPart = kThreads / kMarginParts;
static_assert(kClassChunk * kChannelTile == kThreads, "one (class, channel) pair per thread");

__device__ inline float exp_acc(float x) { return expf(x); }
__device__ inline double exp_acc(double x) { return exp(x); }

// Largest margin * delta used: exp() of it and the backward's 2 * grad * scale stay finite
// (see fastseg/ops/gaussian_center_distance.py).
template <typename acc_t>
__device__ inline acc_t log_scale_max() {
  return sizeof(acc_t) == sizeof(double) ? acc_t(600) : acc_t(60);
}

template <typename scalar_t, typename acc_t>
__device__ inline acc_t class_scale(const scalar_t* margins, int64_t index, acc_t delta) {
  const acc_t log_scale = convert<acc_t>(margins[index]) * delta;
  return exp_acc(log_scale < log_scale_max<acc_t>() ? log_scale : log_scale_max<acc_t>());
}

template <typename acc_t>
struct SharedTiles {
  acc_t centers[kChannelTile][kClassChunk];
  acc_t embeddings[kChannelTile][kTileStride];
};

// Stages centers[k0 .. k0+kClassChunk)[c0 .. c0+kChannelTile) and the block's pixels' embeddings of
// those channels (zeros outside the arrays). Called by every thread of the block.
template <typename scalar_t, typename acc_t>
__device__ inline void stage_tiles(const scalar_t* image, const scalar_t* image_centers, int64_t channels,
                                   int64_t pixels, int64_t classes, int64_t k0, int64_t c0, int64_t p, bool active,
                                   SharedTiles<acc_t>& tiles) {
  const int t = threadIdx.x;
  const int kk = t / kChannelTile, cc = t % kChannelTile;
  const int64_t k = k0 + kk, c = c0 + cc;
  tiles.centers[cc][kk] = (k < classes && c < channels) ? convert<acc_t>(image_centers[k * channels + c]) : acc_t(0);
#pragma unroll
  for (int i = 0; i < kChannelTile; ++i) {
    const int64_t channel = c0 + i;
    tiles.embeddings[i][t] =
        (active && channel < channels) ? convert<acc_t>(image[channel * pixels + p]) : acc_t(0);
  }
}

// distance[kk] = ||b_p - s_{k0+kk}||^2 (direct difference form). Called by every thread of the block.
template <typename scalar_t, typename acc_t>
__device__ inline void chunk_distances(const scalar_t* image, const scalar_t* image_centers, int64_t channels,
                                       int64_t pixels, int64_t classes, int64_t k0, int64_t p, bool active,
                                       SharedTiles<acc_t>& tiles, acc_t (&distance)[kClassChunk]) {
#pragma unroll
  for (int kk = 0; kk < kClassChunk; ++kk) distance[kk] = acc_t(0);
  for (int64_t c0 = 0; c0 < channels; c0 += kChannelTile) {
    __syncthreads();
    stage_tiles(image, image_centers, channels, pixels, classes, k0, c0, p, active, tiles);
    __syncthreads();
#pragma unroll
    for (int cc = 0; cc < kChannelTile; ++cc) {
      const acc_t x = tiles.embeddings[cc][threadIdx.x];
#pragma unroll
      for (int kk = 0; kk < kClassChunk; ++kk) {
        const acc_t diff = x - tiles.centers[cc][kk];
        distance[kk] += diff * diff;
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ embeddings, const scalar_t* __restrict__ centers,
                   const scalar_t* __restrict__ margins, acc_t delta, int64_t channels, int64_t pixels,
                   int64_t classes, scalar_t* __restrict__ phi) {
  __shared__ SharedTiles<acc_t> tiles;
  const int64_t b = blockIdx.y;
  const int64_t p = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const bool active = p < pixels;
  const scalar_t* image = embeddings + b * channels * pixels;
  const scalar_t* image_centers = centers + b * classes * channels;
  for (int64_t k0 = 0; k0 < classes; k0 += kClassChunk) {
    acc_t distance[kClassChunk];
    chunk_distances(image, image_centers, channels, pixels, classes, k0, p, active, tiles, distance);
#pragma unroll
    for (int kk = 0; kk < kClassChunk; ++kk) {
      const int64_t k = k0 + kk;
      if (active && k < classes) {
        const acc_t scale = class_scale(margins, b * classes + k, delta);
        phi[(b * classes + k) * pixels + p] = convert<scalar_t>(acc_t(1) - exp_acc(-distance[kk] * scale));  // Eq. 2
      }
    }
  }
}

// Backward of Eq. 2 with d2 = ||b - s||^2, t = d2 * scale, e = exp(-t):
//   dphi/dd2 = scale * e,  dd2/db = 2 (b - s) = -dd2/ds,  dphi/dm = t * e * d(log scale)/dm.
// partial_centers (B, slices, K, C') and partial_margins (B, slices, K) must be zeroed; grad_accum
// (B, C', P) is used only when there are several class chunks.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ grad_phi, const scalar_t* __restrict__ embeddings,
                    const scalar_t* __restrict__ centers, const scalar_t* __restrict__ margins, acc_t delta,
                    int64_t channels, int64_t pixels, int64_t classes, int64_t tiles_per_slice,
                    acc_t* __restrict__ grad_accum, scalar_t* __restrict__ grad_embeddings,
                    acc_t* __restrict__ partial_centers, acc_t* __restrict__ partial_margins) {
  __shared__ SharedTiles<acc_t> tiles;
  __shared__ acc_t weights[kClassChunk][kTileStride];
  __shared__ acc_t margin_terms[kClassChunk][kTileStride];
  __shared__ acc_t margin_parts[kClassChunk][kMarginParts];
  const int t = threadIdx.x;
  const int64_t b = blockIdx.y, slice = blockIdx.x, slices = gridDim.x;
  const int64_t slot = b * slices + slice;
  const scalar_t* image = embeddings + b * channels * pixels;
  const scalar_t* image_centers = centers + b * classes * channels;
  const int64_t tiles_total = (pixels + kThreads - 1) / kThreads;
  const int64_t tile_end = min(tiles_total, (slice + 1) * tiles_per_slice);
  // this thread's (class, channel) pair when summing over the tile's pixels
  const int pair_class = t / kChannelTile, pair_channel = t % kChannelTile;

  for (int64_t tile = slice * tiles_per_slice; tile < tile_end; ++tile) {
    const int64_t p = tile * kThreads + t;
    const bool active = p < pixels;
    for (int64_t k0 = 0; k0 < classes; k0 += kClassChunk) {
      const bool first_chunk = k0 == 0, last_chunk = k0 + kClassChunk >= classes;
      acc_t weight[kClassChunk];
      chunk_distances(image, image_centers, channels, pixels, classes, k0, p, active, tiles, weight);
#pragma unroll
      for (int kk = 0; kk < kClassChunk; ++kk) {
        const int64_t k = k0 + kk;
        acc_t margin_term = acc_t(0);
        acc_t w = acc_t(0);
        if (active && k < classes) {
          const acc_t g = convert<acc_t>(grad_phi[(b * classes + k) * pixels + p]);
          const acc_t scale = class_scale(margins, b * classes + k, delta);
          const acc_t exponent = weight[kk] * scale;
          const acc_t e = exp_acc(-exponent);
          // e == 0 covers exponent == inf, where exponent * e would be inf * 0
          margin_term = e > acc_t(0) ? g * exponent * e : acc_t(0);
          w = acc_t(2) * g * scale * e;
        }
        weight[kk] = w;
        weights[kk][t] = w;
        margin_terms[kk][t] = margin_term;
      }
      __syncthreads();
      {
        // margin sums: kMarginParts threads per class, each over kPixelsPerPart pixels, then in order
        const int kk = t / kMarginParts, part = t % kMarginParts;
        acc_t sum = acc_t(0);
        for (int q = part * kPixelsPerPart; q < (part + 1) * kPixelsPerPart; ++q) sum += margin_terms[kk][q];
        margin_parts[kk][part] = sum;
      }
      __syncthreads();
      if (t < kClassChunk && k0 + t < classes) {
        acc_t sum = acc_t(0);
        for (int part = 0; part < kMarginParts; ++part) sum += margin_parts[t][part];
        partial_margins[slot * classes + k0 + t] += sum;
      }
      for (int64_t c0 = 0; c0 < channels; c0 += kChannelTile) {
        __syncthreads();
        stage_tiles(image, image_centers, channels, pixels, classes, k0, c0, p, active, tiles);
        __syncthreads();
        // (a) this pixel's embedding gradient for the tile's channels
#pragma unroll
        for (int cc = 0; cc < kChannelTile; ++cc) {
          const int64_t c = c0 + cc;
          if (!active || c >= channels) continue;
          const acc_t x = tiles.embeddings[cc][t];
          acc_t sum = acc_t(0);
#pragma unroll
          for (int kk = 0; kk < kClassChunk; ++kk) sum += weight[kk] * (x - tiles.centers[cc][kk]);
          const int64_t index = (b * channels + c) * pixels + p;
          if (!first_chunk) sum += grad_accum[index];
          if (last_chunk) {
            grad_embeddings[index] = convert<scalar_t>(sum);
          } else {
            grad_accum[index] = sum;
          }
        }
        // (b) this thread's (class, channel) pair summed over the tile's pixels
        const int64_t k = k0 + pair_class, c = c0 + pair_channel;
        if (k < classes && c < channels) {
          const acc_t s = tiles.centers[pair_channel][pair_class];
          acc_t sum = acc_t(0);
          for (int q = 0; q < kThreads; ++q) sum += weights[pair_class][q] * (tiles.embeddings[pair_channel][q] - s);
          partial_centers[(slot * classes + k) * channels + c] += sum;
        }
      }
      __syncthreads();
    }
  }
}

// grad_s = -sum over slices of the center sums; grad_m = d(log scale)/dm * sum of the margin sums.
template <typename scalar_t, typename acc_t>
__global__ void finalize_kernel(const acc_t* __restrict__ partial_centers, const acc_t* __restrict__ partial_margins,
                                const scalar_t* __restrict__ margins, acc_t delta, int64_t batch, int64_t slices,
                                int64_t classes, int64_t channels, scalar_t* __restrict__ grad_centers,
                                scalar_t* __restrict__ grad_margins) {
  const int64_t columns = channels + 1;  // C' center sums, then the margin sum
  const int64_t total = batch * classes * columns;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t bk = i / columns, c = i % columns, b = bk / classes, k = bk % classes;
    acc_t sum = acc_t(0);
    if (c < channels) {
      for (int64_t s = 0; s < slices; ++s) sum += partial_centers[((b * slices + s) * classes + k) * channels + c];
      grad_centers[bk * channels + c] = convert<scalar_t>(-sum);
    } else {
      for (int64_t s = 0; s < slices; ++s) sum += partial_margins[(b * slices + s) * classes + k];
      const bool clamped = convert<acc_t>(margins[bk]) * delta > log_scale_max<acc_t>();
      grad_margins[bk] = convert<scalar_t>(clamped ? acc_t(0) : delta * sum);
    }
  }
}

struct WorkspaceLayout {
  size_t centers_elements, margins_elements, accum_elements;
};

WorkspaceLayout workspace_layout(int64_t batch, int64_t channels, int64_t pixels, int64_t classes, int64_t slices) {
  const bool several_chunks = classes > kClassChunk;
  return {size_t(batch * slices * classes * channels), size_t(batch * slices * classes),
          several_chunks ? size_t(batch * channels * pixels) : size_t(0)};
}

}  // namespace

cudaError_t gaussian_center_distance_plan(int64_t batch, int64_t channels, int64_t pixels, int64_t classes,
                                          size_t element_size, GaussianCenterDistancePlan* plan) {
  DeviceLimits limits;
  cudaError_t error = device_limits(&limits);
  if (error != cudaSuccess) return error;
  const size_t acc_size = element_size == sizeof(double) ? sizeof(double) : sizeof(float);
  // About four blocks per SM over the whole batch.
  const int64_t tiles = std::max<int64_t>(1, ceil_div(pixels, kThreads));
  const int64_t wanted = ceil_div(4 * int64_t(limits.sms), std::max<int64_t>(batch, 1));
  plan->tiles_per_slice = ceil_div(tiles, std::max<int64_t>(1, std::min(wanted, tiles)));
  plan->slices = ceil_div(tiles, plan->tiles_per_slice);
  const WorkspaceLayout layout = workspace_layout(batch, channels, pixels, classes, plan->slices);
  plan->workspace_bytes = acc_size * (layout.centers_elements + layout.margins_elements + layout.accum_elements);
  return cudaSuccess;
}

template <typename scalar_t>
cudaError_t gaussian_center_distance_forward(const scalar_t* embeddings, const scalar_t* centers,
                                             const scalar_t* margins, double delta, int64_t batch, int64_t channels,
                                             int64_t pixels, int64_t classes, scalar_t* phi, cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  if (batch * classes * pixels == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(ceil_div(pixels, kThreads)), static_cast<unsigned>(batch));
  launch(forward_kernel<scalar_t, acc_t>, grid, kThreads, 0, stream, embeddings, centers, margins,
         convert<acc_t>(delta), channels, pixels, classes, phi);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t gaussian_center_distance_backward(const scalar_t* grad_phi, const scalar_t* embeddings,
                                              const scalar_t* centers, const scalar_t* margins, double delta,
                                              int64_t batch, int64_t channels, int64_t pixels, int64_t classes,
                                              const GaussianCenterDistancePlan& plan, void* workspace,
                                              scalar_t* grad_embeddings, scalar_t* grad_centers,
                                              scalar_t* grad_margins, cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  const acc_t delta_acc = convert<acc_t>(delta);
  if (batch == 0) return cudaSuccess;
  if (classes == 0) {
    // phi is empty: the embedding gradient is zero (centers and margins are empty too)
    return cudaMemsetAsync(grad_embeddings, 0, sizeof(scalar_t) * batch * channels * pixels, stream);
  }
  const WorkspaceLayout layout = workspace_layout(batch, channels, pixels, classes, plan.slices);
  acc_t* partial_centers = static_cast<acc_t*>(workspace);
  acc_t* partial_margins = partial_centers + layout.centers_elements;
  acc_t* grad_accum = partial_margins + layout.margins_elements;
  cudaError_t error = cudaMemsetAsync(
      workspace, 0, sizeof(acc_t) * (layout.centers_elements + layout.margins_elements), stream);
  if (error != cudaSuccess) return error;
  if (pixels > 0) {
    const dim3 grid(static_cast<unsigned>(plan.slices), static_cast<unsigned>(batch));
    launch(backward_kernel<scalar_t, acc_t>, grid, kThreads, 0, stream, grad_phi, embeddings, centers, margins,
           delta_acc, channels, pixels, classes, plan.tiles_per_slice, grad_accum, grad_embeddings, partial_centers,
           partial_margins);
  }
  const int64_t outputs = batch * classes * (channels + 1);
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(outputs, 256), 65535));
  launch(finalize_kernel<scalar_t, acc_t>, blocks, 256, 0, stream, partial_centers, partial_margins, margins, delta_acc,
         batch, plan.slices, classes, channels, grad_centers, grad_margins);
  return cudaGetLastError();
}

#define FASTSEG_INSTANTIATE(T)                                                                                   \
  template cudaError_t gaussian_center_distance_forward<T>(const T*, const T*, const T*, double, int64_t,       \
                                                           int64_t, int64_t, int64_t, T*, cudaStream_t);        \
  template cudaError_t gaussian_center_distance_backward<T>(const T*, const T*, const T*, const T*, double,     \
                                                            int64_t, int64_t, int64_t, int64_t,                \
                                                            const GaussianCenterDistancePlan&, void*, T*, T*,   \
                                                            T*, cudaStream_t);
FASTSEG_FOR_FLOATING_TYPES(FASTSEG_INSTANTIATE)
#undef FASTSEG_INSTANTIATE

}  // namespace fastseg::cuda
