// CUDA gaussian_center_distance (CSFRNet Eq. 2 with the exp(m_k * delta) scale), deterministic:
// no floating-point atomics.
//
// One thread per pixel, blocks of kThreads consecutive pixels of one image. Forward: classes are
// handled in chunks of kClassChunk whose squared distances live in registers; for each chunk the
// channels are walked in tiles of kChannelTile: the block stages the chunk's centers and its pixels'
// embeddings (coalesced along pixels) in shared memory, then every thread updates its kClassChunk
// distances. One launch, nothing to zero: it cannot drop launches. Backward (nothing saved by the
// forward), one launch: a block owns a slice of pixel tiles of one image; per tile (and per group of
// kGroup = 32 channels; one group when C' <= 32) the pixel's embedding and its gradient stay in
// registers while the thread loops over class chunks: distances, weights w = 2 grad scale e, the
// embedding gradient sum_k w_k (b - s_k); the chunk's center sums sum_p w (b - s) are register-tiled
// (4 classes x 4 channels per lane, w and b read as vectors from shared memory) into the block's own
// slot, and the last block to finish an (image, group, chunk) adds the slots in slice order
// (backward_kernel's comment has the details).
//
// Cost model at the GPU shapes of bench/bench_gaussian_center_distance.py (forward+backward, fp32;
// H200: 132 SMs at 1.98 GHz, 4.8 TB/s HBM, 67 TFLOP/s fp32 = 128 lanes x 2 x 1.98 GHz per SM, one
// 128-byte shared-memory wavefront per SM and clock, ~3 us per dependent launch). The floor is
// max(bytes / bandwidth, FLOPs / peak) of the benchmark's byte and FLOP counts (9 FLOPs per (pixel,
// class, channel)); the prediction is this design's, derived below. bench/report.py reads the
// `predicted H200` lines (the one place these numbers live) into the "predicted" column of
// bench/RESULTS.md. Counts are lane instructions (PTX of the fp32 kernels); cityscapes-C32: B=8,
// 97x97 (75k pixels), K=19; ade20k-C32: B=8, 64x64 (33k pixels), K=150; C'=32 (one group).
// Forward: a sub and an FMA per (pixel, class, channel) (classes below K only: a last chunk of 3
// classes costs 3, not 16; centers read as vectors) plus ~20 per (pixel, class) for exp and the
// store: 1596 / 12600 per pixel. 592 / 256 one-tile blocks, all resident: the busiest SM runs 5 / 2
// tiles: 1.02 M / 3.23 M instructions at 253 G/s per SM = 4.0 / 12.7 us, at ~85% issue 4.7 / 15.0
// us. HBM (embeddings, phi: 15 / 24 MB, 3.1 / 5.0 us) is hidden under it.
// Backward, per pixel: distance and embedding gradient a sub and an FMA each per (class, channel)
// (4 x 19 x 32 = 2432 / 4 x 150 x 32 = 19200; the gradient skips w = 0 by a branch per class, no
// select); center sums a sub and an FMA per (class, channel) over the classes the lanes cover (a last
// chunk of <= 8 / <= 4 classes covers 8 / 4: 20 / 152 classes, 1280 / 9728); ~30 per (pixel, class)
// for the two exp, grad_phi, the margin term and the staging (570 / 4500): 4282 / 33428 per pixel.
// The plan makes one wave of 3 resident blocks per SM (168 registers): 296 blocks of 2 tiles / 256 of
// 1 tile; the busiest SM runs 6 / 2 tiles = 3.29 M / 8.56 M instructions = 13.0 / 33.8 us, at ~80%
// issue (12 / 8 warps, 16-32 independent accumulators per thread, ~8 barriers per chunk) 16.2 / 42.2
// us. Shared memory per warp and full chunk (32 pixels x 16 classes x 32 channels): 128 + 128
// broadcast LDS.128 of the centers (distance, gradient), 64 of the center sums (one weight and one
// embedding vector per pixel for 16 FMAs per lane; the old warp = classes x lane = channel mapping
// read 5 scalars per 4 FMAs: 640), 32 for the conflict-free STS.128 of weights and margin terms, 48
// for the parts, margins and staging: ~420 wavefronts against ~890 issue cycles of its 3552 warp
// instructions: no longer the bound. HBM (embeddings, grad_phi, embedding gradient: 25 / 28 MB,
// 5.2 / 5.9 us) and the partial slots (0.7 / 4.9 MB, L2) are hidden. Tail: the last block of the last
// chunk adds 4 pairs x 37 / 32 slices per thread from L2, 16 loads in flight: ~10 / 8 round trips of
// ~0.3 us = 3.0 / 2.4 us (earlier chunks' finalizes overlap other blocks' work).
// Total: 4.7 + 16.2 + 3.0 + 2 launches x 3 us = 30 us / 15.0 + 42.2 + 2.4 + 6 = 66 us. Bound by fp32
// issue: the subtractions of the difference form (the split sum_p w b - s sum_p w cancels at pixels
// on their center), the per-(pixel, class) exp work, the busiest SM and the launches keep it at 27% /
// 32% of the floor. The previous design, counted the same way (the center sum and the gradient 4
// instructions per pair with a select, 32 / 160 classes in the forward and the center sums, memset
// and finalize launches), comes to ~51 / ~96 us: its 0.027 / 0.060 ms had counted FLOPs at the FMA
// rate and missed the subtractions, the per-(pixel, class) work and the busiest SM.
// predicted H200 | gaussian_center_distance cityscapes-C32 B=8 fwd+bwd | 0.030 ms | fp32 issue, sub + FMA per pair (floor 0.008 ms)
// predicted H200 | gaussian_center_distance ade20k-C32 B=8 fwd+bwd | 0.066 ms | fp32 issue, sub + FMA per pair (floor 0.021 ms)
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
constexpr int kGroup = 32;  // channels of a backward thread's embedding and gradient registers
constexpr int kWarps = kThreads / 32;
// Backward center sums: a lane owns kTileClasses x kTileChannels (class, channel) pairs of the chunk,
// one warp covers the chunk's kClassChunk x kGroup pairs, each warp a quarter of the tile's pixels.
constexpr int kTileClasses = 4;
constexpr int kTileChannels = 4;
constexpr int kChannelQuads = kGroup / kTileChannels;
constexpr int kPixelsPerWarp = kThreads / kWarps;
static_assert(kClassChunk * kChannelTile == kThreads, "one (class, channel) pair per thread");
static_assert((kClassChunk / kTileClasses) * kChannelQuads == 32, "a warp's lanes cover the chunk's center sums");
static_assert(kTileClasses == 4 && kTileChannels == 4, "center-sum tiles are read as 4-element vectors");

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
struct alignas(16) SharedTiles {
  acc_t centers[kClassChunk][kChannelTile];  // a class's channels contiguous: two vector loads
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
  tiles.centers[kk][cc] = (k < classes && c < channels) ? convert<acc_t>(image_centers[k * channels + c]) : acc_t(0);
#pragma unroll
  for (int i = 0; i < kChannelTile; ++i) {
    const int64_t channel = c0 + i;
    tiles.embeddings[i][t] =
        (active && channel < channels) ? convert<acc_t>(image[channel * pixels + p]) : acc_t(0);
  }
}

// distance[kk] += the staged channels' part of ||b_p - s_{k0+kk}||^2 for kk < valid (all 16 when
// kWholeChunk: no bound check per class).
template <bool kWholeChunk, typename acc_t>
__device__ inline void add_staged_channels(const SharedTiles<acc_t>& tiles, int64_t valid,
                                           acc_t (&distance)[kClassChunk]) {
  acc_t x[kChannelTile];
#pragma unroll
  for (int cc = 0; cc < kChannelTile; ++cc) x[cc] = tiles.embeddings[cc][threadIdx.x];
#pragma unroll
  for (int kk = 0; kk < kClassChunk; ++kk) {
    if (!kWholeChunk && kk >= valid) break;
#pragma unroll
    for (int cc = 0; cc < kChannelTile; ++cc) {
      const acc_t diff = x[cc] - tiles.centers[kk][cc];
      distance[kk] += diff * diff;
    }
  }
}

// distance[kk] = ||b_p - s_{k0+kk}||^2 (direct difference form) for the chunk's classes below K (the
// others stay 0: a last chunk of 3 classes costs 3, not 16). Called by every thread of the block.
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
    if (classes - k0 >= kClassChunk) {
      add_staged_channels<true>(tiles, kClassChunk, distance);
    } else {
      add_staged_channels<false>(tiles, classes - k0, distance);
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

// Four consecutive acc_t of shared memory, 16-byte aligned, as one vector access (LDS.128 / STS.128
// for fp32, two 128-bit accesses for fp64).
__device__ __forceinline__ void load_quad(const float* from, float (&to)[4]) {
  const float4 v = *reinterpret_cast<const float4*>(from);
  to[0] = v.x, to[1] = v.y, to[2] = v.z, to[3] = v.w;
}
__device__ __forceinline__ void load_quad(const double* from, double (&to)[4]) {
  const double2 low = reinterpret_cast<const double2*>(from)[0], high = reinterpret_cast<const double2*>(from)[1];
  to[0] = low.x, to[1] = low.y, to[2] = high.x, to[3] = high.y;
}
__device__ __forceinline__ void store_quad(float* to, const float (&from)[4]) {
  *reinterpret_cast<float4*>(to) = make_float4(from[0], from[1], from[2], from[3]);
}
__device__ __forceinline__ void store_quad(double* to, const double (&from)[4]) {
  reinterpret_cast<double2*>(to)[0] = make_double2(from[0], from[1]);
  reinterpret_cast<double2*>(to)[1] = make_double2(from[2], from[3]);
}

// A value another block wrote in this launch: read past this SM's L1, which is not coherent.
template <typename acc_t>
__device__ __forceinline__ acc_t load_from_other_block(const acc_t* address) {
  return *static_cast<const volatile acc_t*>(address);
}

template <typename scalar_t, typename acc_t>
__device__ inline void load_group(const scalar_t* image, int64_t channels, int64_t pixels, int64_t c0, int64_t p,
                                  bool active, acc_t (&x)[kGroup]) {
#pragma unroll
  for (int i = 0; i < kGroup; ++i) {
    x[i] = (active && c0 + i < channels) ? convert<acc_t>(image[(c0 + i) * pixels + p]) : acc_t(0);
  }
}

// Class quads of the chunk at k0 whose center sums the lanes cover: 4, or 2 (1) for a last chunk of at
// most 8 (4) classes.
__device__ inline int covered_quads(int64_t classes, int64_t k0) {
  const int64_t valid = classes - k0;
  return valid > 2 * kTileClasses ? 4 : valid > kTileClasses ? 2 : 1;
}

// Dynamic shared memory of backward_kernel, in acc_t elements; every array starts 16-byte aligned.
constexpr int kEmbeddingRow = kGroup + 4;     // [pixel][channel] rows, padded: a quarter warp's row stores
constexpr int kWeightRow = kClassChunk + 4;   // [pixel][class] rows        hit distinct banks
constexpr int kBackwardSharedElements = kThreads * kEmbeddingRow + 2 * kThreads * kWeightRow + kClassChunk * kGroup +
                                        kWarps * kClassChunk * kGroup + kClassChunk * kMarginParts;
static_assert(kEmbeddingRow % 4 == 0 && kWeightRow % 4 == 0 && (kClassChunk * kGroup) % 4 == 0,
              "vector rows and arrays start 16-byte aligned");
// Resident backward blocks per SM the registers are budgeted for (65536 / (3 x 128) = 170 per thread):
// fp32 fits without spilling (210 unbounded, 2 blocks); fp64 needs its 255.
template <typename acc_t>
constexpr int kBackwardBlocksPerSm = sizeof(acc_t) == sizeof(float) ? 3 : 1;
constexpr int kPairsPerThread = kClassChunk * kGroup / kThreads;  // (class, channel) pairs a thread adds up
static_assert(kPairsPerThread * kThreads == kClassChunk * kGroup, "a chunk's pairs spread evenly");

// grad_s = -sum over slices of the center sums and grad_m = d(log scale)/dm * sum of the margin sums,
// for the classes k0 + [0, kClassChunk) and channels c0 + [0, kGroup) of image b, slices in order.
// Run by every thread of the last block to finish them.
template <typename scalar_t, typename acc_t>
__device__ inline void finalize_chunk(const acc_t* partial_centers, const acc_t* partial_margins,
                                      const scalar_t* margins, acc_t delta, int64_t b, int64_t slices,
                                      int64_t classes, int64_t channels, int64_t k0, int64_t c0,
                                      scalar_t* grad_centers, scalar_t* grad_margins) {
  const int t = threadIdx.x;
  // pairs t + j kThreads: a thread's kPairsPerThread loads per slice are independent, in flight together
  bool inside[kPairsPerThread];
  int64_t offset[kPairsPerThread];
  acc_t sum[kPairsPerThread];
#pragma unroll
  for (int j = 0; j < kPairsPerThread; ++j) {
    const int i = t + j * kThreads;
    const int64_t k = k0 + i / kGroup, c = c0 + i % kGroup;
    inside[j] = k < classes && c < channels;
    offset[j] = k * channels + c;
    sum[j] = acc_t(0);
  }
#pragma unroll 4
  for (int64_t s = 0; s < slices; ++s) {
    const acc_t* slot = partial_centers + (b * slices + s) * classes * channels;
#pragma unroll
    for (int j = 0; j < kPairsPerThread; ++j) {
      if (inside[j]) sum[j] += load_from_other_block(slot + offset[j]);
    }
  }
#pragma unroll
  for (int j = 0; j < kPairsPerThread; ++j) {
    if (inside[j]) grad_centers[b * classes * channels + offset[j]] = convert<scalar_t>(-sum[j]);
  }
  if (c0 == 0 && t < kClassChunk && k0 + t < classes) {
    const int64_t bk = b * classes + k0 + t;
    acc_t sum = acc_t(0);
    for (int64_t s = 0; s < slices; ++s) {
      sum += load_from_other_block(partial_margins + (b * slices + s) * classes + k0 + t);
    }
    const bool clamped = convert<acc_t>(margins[bk]) * delta > log_scale_max<acc_t>();
    grad_margins[bk] = convert<scalar_t>(clamped ? acc_t(0) : delta * sum);
  }
}

// Backward of Eq. 2 with d2 = ||b - s||^2, t = d2 * scale, e = exp(-t):
//   dphi/dd2 = scale * e,  dd2/db = 2 (b - s) = -dd2/ds,  dphi/dm = t * e * d(log scale)/dm.
// One launch. A block owns a slice of pixel tiles of one image; per tile and channel group (one group
// when C' <= kGroup) a thread holds its pixel's embedding and embedding gradient of the group's
// kGroup channels in registers and loops over the classes in chunks of kClassChunk; per chunk it
// computes the squared distances (the other groups' channels read from global memory), its weights
// w = 2 grad scale e, and adds sum_k w_k (b - s_k) to its registers, which are written once per group.
// The chunk's center sums sum_p w_pk (b_p - s_k) are register-tiled: lane (kq, cq) of every warp owns
// kTileClasses x kTileChannels (class, channel) pairs with their centers in registers, warp `warp` the
// tile's pixels [warp * kPixelsPerWarp, +kPixelsPerWarp), reading w and b as vectors from shared
// memory ([pixel][class] and [pixel][channel] rows). The difference form stays: the split
// sum_p w b - s sum_p w loses to cancellation in fp32 at pixels on their center (large w, b = s:
// 1.5e-5 error against a 1e-5 tolerance in the tests). The (warp, pixel phase) parts are added in a
// fixed order and written (first tile of the slice) or added (later tiles) into the block's own slot
// of partial_centers (B, slices, K, C') and partial_margins (B, slices, K): every slot is written
// completely, nothing needs zeroing. After its slice's last tile, a block counts itself in on the
// (image, group, chunk) arrival counter (every thread fences its slot writes, then one integer
// atomic); the last of the `slices` blocks resets the counter to 0 (so the next launch needs no
// memset) and adds the slots, read past L1, in slice order into grad_centers / grad_margins: no
// floating-point atomics, the same bits whatever the schedule.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, kBackwardBlocksPerSm<acc_t>)
    backward_kernel(const scalar_t* __restrict__ grad_phi, const scalar_t* __restrict__ embeddings,
                    const scalar_t* __restrict__ centers, const scalar_t* __restrict__ margins, acc_t delta,
                    int64_t channels, int64_t pixels, int64_t classes, int64_t tiles_per_slice,
                    scalar_t* __restrict__ grad_embeddings, scalar_t* __restrict__ grad_centers,
                    scalar_t* __restrict__ grad_margins, acc_t* __restrict__ partial_centers,
                    acc_t* __restrict__ partial_margins, unsigned int* __restrict__ arrivals) {
  FASTSEG_DYNAMIC_SHARED(shared);
  acc_t* tile_embeddings = reinterpret_cast<acc_t*>(shared);            // [kThreads][kEmbeddingRow]
  acc_t* tile_weights = tile_embeddings + kThreads * kEmbeddingRow;     // [kThreads][kWeightRow]
  acc_t* margin_terms = tile_weights + kThreads * kWeightRow;           // [kThreads][kWeightRow]
  acc_t* chunk_centers = margin_terms + kThreads * kWeightRow;          // [kClassChunk][kGroup]
  acc_t* center_parts = chunk_centers + kClassChunk * kGroup;           // [kWarps][kClassChunk][kGroup]
  acc_t* margin_parts = center_parts + kWarps * kClassChunk * kGroup;   // [kClassChunk][kMarginParts]
  __shared__ bool last_block;
  const int t = threadIdx.x, lane = t % 32, warp = t / 32;
  const int cq = lane % kChannelQuads, kq = lane / kChannelQuads;  // this lane's center-sum tile
  const int64_t b = blockIdx.y, slice = blockIdx.x, slices = gridDim.x;
  const int64_t slot = b * slices + slice;
  const scalar_t* image = embeddings + b * channels * pixels;
  const scalar_t* image_centers = centers + b * classes * channels;
  const int64_t groups = max(int64_t(1), (channels + kGroup - 1) / kGroup);  // one (empty) group when C' = 0
  const int64_t chunks = (classes + kClassChunk - 1) / kClassChunk;
  const int64_t tiles_total = max(int64_t(1), (pixels + kThreads - 1) / kThreads);  // P = 0: one empty tile
  const int64_t tile_begin = slice * tiles_per_slice;
  const int64_t tile_end = min(tiles_total, tile_begin + tiles_per_slice);

  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    const int64_t p = tile * kThreads + t;
    const bool active = p < pixels;
    for (int64_t group = 0; group < groups; ++group) {
      const int64_t c0 = group * kGroup;
      acc_t x[kGroup], grad[kGroup];
      load_group(image, channels, pixels, c0, p, active, x);
      // no barrier needed: every read of tile_embeddings precedes the last chunk's barrier after its center sums
#pragma unroll
      for (int i = 0; i < kGroup; i += 4) {
        const acc_t quad[4] = {is_finite(x[i]) ? x[i] : acc_t(0), is_finite(x[i + 1]) ? x[i + 1] : acc_t(0),
                               is_finite(x[i + 2]) ? x[i + 2] : acc_t(0), is_finite(x[i + 3]) ? x[i + 3] : acc_t(0)};
        store_quad(tile_embeddings + t * kEmbeddingRow + i, quad);
      }
#pragma unroll
      for (int i = 0; i < kGroup; ++i) grad[i] = acc_t(0);
      for (int64_t chunk = 0; chunk < chunks; ++chunk) {
        const int64_t k0 = chunk * kClassChunk;
        acc_t weight[kClassChunk];
#pragma unroll
        for (int kk = 0; kk < kClassChunk; ++kk) weight[kk] = acc_t(0);
        // squared distances over every group; this thread's own group last, so that its centers stay staged
        for (int64_t step = 1; step <= groups; ++step) {
          const int64_t h = (group + step) % groups * kGroup;
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
        acc_t margin_term[kClassChunk];
#pragma unroll
        for (int kk = 0; kk < kClassChunk; ++kk) {
          const int64_t k = k0 + kk;
          acc_t w = acc_t(0);
          margin_term[kk] = acc_t(0);
          if (active && k < classes) {
            const acc_t g = convert<acc_t>(grad_phi[(b * classes + k) * pixels + p]);
            const acc_t scale = class_scale(margins, b * classes + k, delta);
            const acc_t exponent = weight[kk] * scale;
            const acc_t e = exp_acc(-exponent);
            // e == 0 covers exponent == inf, where exponent * e would be inf * 0
            margin_term[kk] = e > acc_t(0) ? g * exponent * e : acc_t(0);
            w = acc_t(2) * g * scale * e;
          }
          weight[kk] = w;
        }
#pragma unroll
        for (int kk = 0; kk < kClassChunk; kk += 4) {
          const acc_t weights[4] = {weight[kk], weight[kk + 1], weight[kk + 2], weight[kk + 3]};
          const acc_t terms[4] = {margin_term[kk], margin_term[kk + 1], margin_term[kk + 2], margin_term[kk + 3]};
          store_quad(tile_weights + t * kWeightRow + kk, weights);
          store_quad(margin_terms + t * kWeightRow + kk, terms);
        }
        // this pixel's embedding gradient, in registers across the chunks. Classes with w = 0 are skipped: a
        // pair at infinite distance (phi saturated at 1) sends no gradient, where w (b - s) would be 0 * Inf
        // (the NaN rule of fastseg.ops); one branch per class instead of a select per (class, channel), and a
        // warp whose pixels all have w = 0 (far classes) skips the class
#pragma unroll
        for (int kk = 0; kk < kClassChunk; ++kk) {
          if (k0 + kk >= classes) break;
          if (weight[kk] == acc_t(0)) continue;
#pragma unroll
          for (int i = 0; i < kGroup; ++i) grad[i] += weight[kk] * (x[i] - chunk_centers[kk * kGroup + i]);
        }
        __syncthreads();
        if (c0 == 0) {
          // margin sums: kMarginParts threads per class, part over the pixels part + kMarginParts m (rows
          // of kWeightRow = 20: the warp's 32 reads hit distinct banks), then in order
          const int kk = t / kMarginParts, part = t % kMarginParts;
          acc_t sum = acc_t(0);
          for (int q = part; q < kThreads; q += kMarginParts) sum += margin_terms[q * kWeightRow + kk];
          margin_parts[kk * kMarginParts + part] = sum;
        }
        {
          // sum_p w_pk (b_p - s_k) over this warp's pixels, kTileClasses x kTileChannels pairs per lane. A
          // chunk of at most 8 (4) classes, the last, covers 2 (1) class quads, the lanes of the other quads
          // take other pixels: quads x phases = 4, lane (kq) = (quad, phase), pixels phase + phases m.
          // A non-finite b or s has w = 0 (or NaN) with every pixel: stored as 0 they keep w (b - s)
          // from being 0 * Inf without a select per pair
          const int quads = covered_quads(classes, k0);
          const int phases = kClassChunk / kTileClasses / quads, quad = kq % quads, phase = kq / quads;
          acc_t center[kTileClasses][kTileChannels], sums[kTileClasses][kTileChannels] = {};
#pragma unroll
          for (int i = 0; i < kTileClasses; ++i) {
            load_quad(chunk_centers + (quad * kTileClasses + i) * kGroup + cq * kTileChannels, center[i]);
#pragma unroll
            for (int j = 0; j < kTileChannels; ++j) center[i][j] = is_finite(center[i][j]) ? center[i][j] : acc_t(0);
          }
          for (int q = warp * kPixelsPerWarp + phase; q < (warp + 1) * kPixelsPerWarp; q += phases) {
            acc_t w[kTileClasses], e[kTileChannels];
            load_quad(tile_weights + q * kWeightRow + quad * kTileClasses, w);
            load_quad(tile_embeddings + q * kEmbeddingRow + cq * kTileChannels, e);
#pragma unroll
            for (int i = 0; i < kTileClasses; ++i) {
#pragma unroll
              for (int j = 0; j < kTileChannels; ++j) sums[i][j] += w[i] * (e[j] - center[i][j]);
            }
          }
          // part (warp, phase) of the chunk's quads x kTileClasses classes
          const int covered = quads * kTileClasses;
#pragma unroll
          for (int i = 0; i < kTileClasses; ++i) {
            store_quad(center_parts + ((warp * phases + phase) * covered + quad * kTileClasses + i) * kGroup +
                           cq * kTileChannels,
                       sums[i]);
          }
        }
        __syncthreads();
        const bool first_tile = tile == tile_begin;
        const int covered = covered_quads(classes, k0) * kTileClasses;
        const int parts = kWarps * kClassChunk / covered;  // (warp, phase) parts of each pair, added in order
        for (int i = t; i < kClassChunk * kGroup; i += kThreads) {
          const int kk = i / kGroup, cc = i % kGroup;
          const int64_t k = k0 + kk, c = c0 + cc;
          if (k >= classes || c >= channels) continue;
          acc_t sum = acc_t(0);
          for (int part = 0; part < parts; ++part) sum += center_parts[(part * covered + kk) * kGroup + cc];
          acc_t& into = partial_centers[(slot * classes + k) * channels + c];
          into = first_tile ? sum : into + sum;
        }
        if (c0 == 0 && t < kClassChunk && k0 + t < classes) {
          acc_t sum = acc_t(0);
          for (int part = 0; part < kMarginParts; ++part) sum += margin_parts[t * kMarginParts + part];
          acc_t& into = partial_margins[slot * classes + k0 + t];
          into = first_tile ? sum : into + sum;
        }
        if (tile == tile_end - 1) {
          // this block's part of (image, group, chunk) is complete: count it in; the last block adds the slots
          __threadfence();
          __syncthreads();
          if (t == 0) {
            unsigned int* counter = arrivals + (b * groups + group) * chunks + chunk;
            last_block = atomicAdd(counter, 1u) == static_cast<unsigned int>(slices - 1);
            if (last_block) *counter = 0u;  // every block has arrived: ready for the next launch
          }
          __syncthreads();
          if (last_block) {
            __threadfence();
            finalize_chunk(partial_centers, partial_margins, margins, delta, b, slices, classes, channels, k0, c0,
                           grad_centers, grad_margins);
          }
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
  // One wave of resident fp32 blocks over the whole batch, split evenly between the images.
  const int64_t tiles = std::max<int64_t>(1, ceil_div(pixels, kThreads));
  const int64_t wanted = ceil_div(kBackwardBlocksPerSm<float> * int64_t(limits.sms), std::max<int64_t>(batch, 1));
  plan->tiles_per_slice = ceil_div(tiles, std::max<int64_t>(1, std::min(wanted, tiles)));
  plan->slices = ceil_div(tiles, plan->tiles_per_slice);
  const WorkspaceLayout layout = workspace_layout(batch, channels, classes, plan->slices);
  plan->workspace_bytes = acc_size * (layout.centers_elements + layout.margins_elements);
  plan->arrival_counters = batch * std::max<int64_t>(1, ceil_div(channels, kGroup)) * ceil_div(classes, kClassChunk);
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
                                              unsigned int* arrival_counters, scalar_t* grad_embeddings,
                                              scalar_t* grad_centers, scalar_t* grad_margins, cudaStream_t stream) {
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
  auto kernel = backward_kernel<scalar_t, acc_t>;
  const size_t shared_bytes = sizeof(acc_t) * kBackwardSharedElements;
  const cudaError_t error = allow_shared(kernel, shared_bytes);
  if (error != cudaSuccess) return error;
  const dim3 grid(static_cast<unsigned>(plan.slices), static_cast<unsigned>(batch));
  launch(kernel, grid, kThreads, shared_bytes, stream, grad_phi, embeddings, centers, margins, delta_acc, channels,
         pixels, classes, plan.tiles_per_slice, grad_embeddings, grad_centers, grad_margins, partial_centers,
         partial_margins, arrival_counters);
  return cudaGetLastError();
}

#define FASTSEG_INSTANTIATE(T)                                                                                   \
  template cudaError_t gaussian_center_distance_forward<T>(const T*, const T*, const T*, double, int64_t,       \
                                                           int64_t, int64_t, int64_t, T*, cudaStream_t);        \
  template cudaError_t gaussian_center_distance_backward<T>(const T*, const T*, const T*, const T*, double,     \
                                                            int64_t, int64_t, int64_t, int64_t,                \
                                                            const GaussianCenterDistancePlan&, void*,           \
                                                            unsigned int*, T*, T*, T*, cudaStream_t);
FASTSEG_FOR_FLOATING_TYPES(FASTSEG_INSTANTIATE)
#undef FASTSEG_INSTANTIATE

}  // namespace fastseg::cuda
