// CUDA gaussian_center_distance (CSFRNet Eq. 2 with the exp(m_k * delta) scale), deterministic:
// no floating-point atomics.
//
// One thread per pixel, blocks of kThreads consecutive pixels of one image. Forward: classes are
// handled in chunks of kClassChunk whose squared distances live in registers; for each chunk the
// channels are walked in tiles of kChannelTile: the block stages the chunk's centers and its pixels'
// embeddings (coalesced along pixels) in shared memory, then every thread updates its kClassChunk
// distances. Backward (nothing saved by the forward): one pass per pixel tile (and per group of
// kGroup = 32 channels; one group when C' <= 32) with the pixel's embedding and its gradient in
// registers, looping over class chunks: distances, weights w = 2 grad scale e, the embedding
// gradient sum_k w_k (b - s_k) accumulated in registers and written once; the block's partial
// center sums sum_p w (b - s) (warp = classes, lane = channel, over the tile's pixels in shared
// memory) and margin sums go to its own slot, and a finalize kernel adds the slots once, in a fixed
// order. A block owns a slice of pixel tiles.
//
// Cost model at the GPU shapes of bench/bench_gaussian_center_distance.py (forward+backward; H200:
// 4.8 TB/s HBM, 67 TFLOP/s fp32, 989 TFLOP/s dense bf16, ~3 us per dependent launch). The floor is
// max(bytes / bandwidth, FLOPs / peak) of the benchmark's byte and FLOP counts; the prediction is
// this design's, derived below. bench/report.py reads the `predicted H200` lines (the one place these
// numbers live) into the "predicted" column of bench/RESULTS.md.
// Forward: embeddings + phi, 2 FLOPs per (pixel, class, channel), at ~60% of its floor: 5.3 us
// (cityscapes-C32: 75k pixels x 19 classes x 32 channels), 11.7 us (ade20k-C32: 33k x 150 x 32).
// Backward: reads embeddings and grad_phi, writes the embedding gradient (25 MB / 28 MB: 5.2 / 5.9
// us); 6 FLOPs per (pixel, class, channel) (distance, embedding gradient, center sum: 4.1 / 14.1 us
// at 67 TFLOP/s); bound by shared-memory wavefronts of the center sums, 1 embedding + 4 broadcast
// weight loads per 128 (pixel, class, channel) per warp: 1.8 M / 6.6 M wavefronts over 132 SMs at
// 1.98 GHz = 6.9 / 25 us, at ~70% -> 10 / 36 us. Plus memset and finalize launches (4 x 3 us).
// predicted H200 | gaussian_center_distance cityscapes-C32 B=8 fwd+bwd | 0.027 ms | center sums (floor 0.008 ms)
// predicted H200 | gaussian_center_distance ade20k-C32 B=8 fwd+bwd | 0.060 ms | center sums (floor 0.021 ms)
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
constexpr int kGroup = 32;  // channels of a backward thread's embedding and gradient registers (one per lane)
constexpr int kClassesPerWarp = kClassChunk / (kThreads / 32);  // classes a warp sums the centers of
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

// w * (b - s), and 0 where w is 0: a pair at infinite distance (phi saturated at 1) sends no gradient,
// where w * (b - s) would be 0 * Inf (the NaN rule of fastseg.ops).
template <typename acc_t>
__device__ __forceinline__ acc_t weighted(acc_t w, acc_t difference) {
  return w != acc_t(0) ? w * difference : acc_t(0);
}

// Backward of Eq. 2 with d2 = ||b - s||^2, t = d2 * scale, e = exp(-t):
//   dphi/dd2 = scale * e,  dd2/db = 2 (b - s) = -dd2/ds,  dphi/dm = t * e * d(log scale)/dm.
// One pass per pixel tile and channel group (one group when C' <= kGroup): a thread holds its pixel's
// embedding and embedding gradient of the group's kGroup channels in registers and loops over the
// classes in chunks of kClassChunk; per chunk it computes the squared distances (the other groups'
// channels read from global memory), its weights w = 2 grad scale e, and adds sum_k w_k (b - s_k)
// to its registers, which are written once per group. The block's partial center sums
// sum_p w (b - s)[c] are reduced over the tile's pixels by warp (classes) x lane (channel) from
// shared memory and added into the block's own slot (partial_centers (B, slices, K, C'), likewise
// partial_margins (B, slices, K); both zeroed by the caller), which finalize_kernel adds once, in a
// fixed order: no atomics, the same bits in every run.
template <typename scalar_t, typename acc_t>
__device__ inline void load_group(const scalar_t* image, int64_t channels, int64_t pixels, int64_t c0, int64_t p,
                                  bool active, acc_t (&x)[kGroup]) {
#pragma unroll
  for (int i = 0; i < kGroup; ++i) {
    x[i] = (active && c0 + i < channels) ? convert<acc_t>(image[(c0 + i) * pixels + p]) : acc_t(0);
  }
}

// Dynamic shared memory of backward_kernel, in acc_t elements.
constexpr int kBackwardSharedElements =
    (kGroup + 2 * kClassChunk) * kTileStride + kClassChunk * kGroup + kClassChunk * kMarginParts;

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ grad_phi, const scalar_t* __restrict__ embeddings,
                    const scalar_t* __restrict__ centers, const scalar_t* __restrict__ margins, acc_t delta,
                    int64_t channels, int64_t pixels, int64_t classes, int64_t tiles_per_slice,
                    scalar_t* __restrict__ grad_embeddings, acc_t* __restrict__ partial_centers,
                    acc_t* __restrict__ partial_margins) {
  FASTSEG_DYNAMIC_SHARED(shared);
  acc_t* tile_embeddings = reinterpret_cast<acc_t*>(shared);          // [kGroup][kTileStride]
  acc_t* tile_weights = tile_embeddings + kGroup * kTileStride;       // [kClassChunk][kTileStride]
  acc_t* margin_terms = tile_weights + kClassChunk * kTileStride;     // [kClassChunk][kTileStride]
  acc_t* chunk_centers = margin_terms + kClassChunk * kTileStride;    // [kClassChunk][kGroup]
  acc_t* margin_parts = chunk_centers + kClassChunk * kGroup;         // [kClassChunk][kMarginParts]
  const int t = threadIdx.x, lane = t % 32, warp = t / 32;
  const int64_t b = blockIdx.y, slice = blockIdx.x, slices = gridDim.x;
  const int64_t slot = b * slices + slice;
  const scalar_t* image = embeddings + b * channels * pixels;
  const scalar_t* image_centers = centers + b * classes * channels;
  const int64_t groups = (channels + kGroup - 1) / kGroup;
  const int64_t tiles_total = (pixels + kThreads - 1) / kThreads;
  const int64_t tile_end = min(tiles_total, (slice + 1) * tiles_per_slice);

  for (int64_t tile = slice * tiles_per_slice; tile < tile_end; ++tile) {
    const int64_t p = tile * kThreads + t;
    const bool active = p < pixels;
    for (int64_t c0 = 0; c0 < channels; c0 += kGroup) {
      acc_t x[kGroup], grad[kGroup];
      load_group(image, channels, pixels, c0, p, active, x);
      // no barrier needed: every read of tile_embeddings precedes the last chunk's closing barrier
#pragma unroll
      for (int i = 0; i < kGroup; ++i) {
        tile_embeddings[i * kTileStride + t] = x[i];
        grad[i] = acc_t(0);
      }
      for (int64_t k0 = 0; k0 < classes; k0 += kClassChunk) {
        acc_t weight[kClassChunk];
#pragma unroll
        for (int kk = 0; kk < kClassChunk; ++kk) weight[kk] = acc_t(0);
        // squared distances over every group; this thread's own group last, so that its centers stay staged
        for (int64_t step = 1; step <= groups; ++step) {
          const int64_t h = (c0 / kGroup + step) % groups * kGroup;
          __syncthreads();
          for (int i = t; i < kClassChunk * kGroup; i += kThreads) {
            const int64_t k = k0 + i / kGroup, c = h + i % kGroup;
            const bool inside = k < classes && c < channels;
            chunk_centers[i] = inside ? convert<acc_t>(image_centers[k * channels + c]) : acc_t(0);
          }
          __syncthreads();
          acc_t y[kGroup];
          if (h == c0) {
#pragma unroll
            for (int i = 0; i < kGroup; ++i) y[i] = x[i];
          } else {
            load_group(image, channels, pixels, h, p, active, y);
          }
#pragma unroll
          for (int kk = 0; kk < kClassChunk; ++kk) {
            if (k0 + kk >= classes) break;
#pragma unroll
            for (int i = 0; i < kGroup; ++i) {
              const acc_t diff = y[i] - chunk_centers[kk * kGroup + i];
              weight[kk] += diff * diff;
            }
          }
        }
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
          tile_weights[kk * kTileStride + t] = w;
          margin_terms[kk * kTileStride + t] = margin_term;
        }
        // this pixel's embedding gradient, in registers across the chunks
#pragma unroll
        for (int kk = 0; kk < kClassChunk; ++kk) {
          if (k0 + kk >= classes) break;
#pragma unroll
          for (int i = 0; i < kGroup; ++i) grad[i] += weighted(weight[kk], x[i] - chunk_centers[kk * kGroup + i]);
        }
        __syncthreads();
        if (c0 == 0) {
          // margin sums: kMarginParts threads per class, each over kPixelsPerPart pixels, then in order
          const int kk = t / kMarginParts, part = t % kMarginParts;
          acc_t sum = acc_t(0);
          for (int q = part * kPixelsPerPart; q < (part + 1) * kPixelsPerPart; ++q) {
            sum += margin_terms[kk * kTileStride + q];
          }
          margin_parts[kk * kMarginParts + part] = sum;
        }
        // center sums: warp `warp` owns kClassesPerWarp classes of the chunk, lane the channel c0 + lane
        {
          acc_t sums[kClassesPerWarp], center[kClassesPerWarp];
#pragma unroll
          for (int j = 0; j < kClassesPerWarp; ++j) {
            sums[j] = acc_t(0);
            center[j] = chunk_centers[(warp * kClassesPerWarp + j) * kGroup + lane];
          }
          for (int q = 0; q < kThreads; ++q) {
            const acc_t embedding = tile_embeddings[lane * kTileStride + q];
#pragma unroll
            for (int j = 0; j < kClassesPerWarp; ++j) {
              sums[j] += weighted(tile_weights[(warp * kClassesPerWarp + j) * kTileStride + q], embedding - center[j]);
            }
          }
#pragma unroll
          for (int j = 0; j < kClassesPerWarp; ++j) {
            const int64_t k = k0 + warp * kClassesPerWarp + j, c = c0 + lane;
            if (k < classes && c < channels) partial_centers[(slot * classes + k) * channels + c] += sums[j];
          }
        }
        __syncthreads();
        if (c0 == 0 && t < kClassChunk && k0 + t < classes) {
          acc_t sum = acc_t(0);
          for (int part = 0; part < kMarginParts; ++part) sum += margin_parts[t * kMarginParts + part];
          partial_margins[slot * classes + k0 + t] += sum;
        }
      }
      if (active) {
#pragma unroll
        for (int i = 0; i < kGroup; ++i) {
          if (c0 + i < channels) grad_embeddings[((b * channels) + c0 + i) * pixels + p] = convert<scalar_t>(grad[i]);
        }
      }
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
  size_t centers_elements, margins_elements;
};

WorkspaceLayout workspace_layout(int64_t batch, int64_t channels, int64_t classes, int64_t slices) {
  return {size_t(batch * slices * classes * channels), size_t(batch * slices * classes)};
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
  const WorkspaceLayout layout = workspace_layout(batch, channels, classes, plan->slices);
  plan->workspace_bytes = acc_size * (layout.centers_elements + layout.margins_elements);
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
  const WorkspaceLayout layout = workspace_layout(batch, channels, classes, plan.slices);
  acc_t* partial_centers = static_cast<acc_t*>(workspace);
  acc_t* partial_margins = partial_centers + layout.centers_elements;
  cudaError_t error = cudaMemsetAsync(
      workspace, 0, sizeof(acc_t) * (layout.centers_elements + layout.margins_elements), stream);
  if (error != cudaSuccess) return error;
  if (pixels > 0 && channels > 0) {
    auto kernel = backward_kernel<scalar_t, acc_t>;
    const size_t shared_bytes = sizeof(acc_t) * kBackwardSharedElements;
    if (shared_bytes > 48 * 1024) {
      error = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes));
      if (error != cudaSuccess) return error;
    }
    const dim3 grid(static_cast<unsigned>(plan.slices), static_cast<unsigned>(batch));
    launch(kernel, grid, kThreads, shared_bytes, stream, grad_phi, embeddings, centers, margins, delta_acc, channels,
           pixels, classes, plan.tiles_per_slice, grad_embeddings, partial_centers, partial_margins);
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
