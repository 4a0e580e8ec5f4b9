// CUDA class_avg_pool (CSFRNet Eq. 1/3), deterministic: no floating-point atomics.
//
// Forward: a block owns (pixel slice, 32 channels, image). Each warp stages a 32x32 tile
// (channels x pixels, coalesced along pixels) in shared memory, then lane c walks the tile's
// pixels adding feature[c] into its warp's shared accumulator acc[label][c] (conflict-free, the
// label is warp-uniform). Warps' accumulators are reduced in a fixed order into per-slice partial
// sums, and a finalize kernel adds the slices in order and divides by the counts.
// Backward: grad_features[b,c,p] = grad_centers[b,label,c] / count[b,label], one label load per
// pixel reused over a run of channels.
//
// Cost model at the GPU shapes of
// bench/bench_class_avg_pool.py (forward+backward; H200: 4.8 TB/s HBM, 67 TFLOP/s fp32,
// 989 TFLOP/s dense bf16, ~3 us per dependent launch). The floor is max(bytes / bandwidth, FLOPs /
// peak) of the benchmark's byte and FLOP counts; the prediction is this design's, derived below.
// bench/report.py reads the `predicted H200` lines (the one place these numbers live) into the
// "predicted" column of bench/RESULTS.md.
// Design traffic = the floor's bytes (labels re-read per channel block hit L2); 3 launches (~9 us).
// Bandwidth needs ~22 KB in flight per SM (4.8 TB/s x ~600 ns / 132 SMs). Each lane issues its 32
// tile loads before storing any: 4 KB in flight per warp. K=150 (ADE20K): the shared accumulators
// (K x 32 fp32 per warp, 23 KB) fit 9 warps per SM: 37 KB in flight; K=19: 32 warps per SM. Both
// are bandwidth-bound: ~85% of it (it was 8 loads per lane: ~70% at K=19, ~40% at K=150).
// C=32 is launch-bound.
// predicted H200 | class_avg_pool cityscapes-C512 B=8 fwd+bwd | 0.084 ms | memory (floor 0.064 ms)
// predicted H200 | class_avg_pool cityscapes-C32 B=8 fwd+bwd | 0.015 ms | launches (floor 0.004 ms)
// predicted H200 | class_avg_pool ade20k-C512 B=8 fwd+bwd | 0.042 ms | memory (floor 0.028 ms)
#include "cuda/class_avg_pool.h"
#include "cuda/common.cuh"

#include <algorithm>

namespace fastseg::cuda {
namespace {

constexpr int kLanes = 32;            // channels per block and pixels per warp tile
constexpr int kTileStride = kLanes + 1;  // padded row: conflict-free transposed reads
constexpr int kMaxWarps = 4;
constexpr int kBackwardThreads = 256;
constexpr int kBackwardChannels = 16;

size_t shared_bytes(int warps, int64_t num_classes, size_t acc_size) {
  const size_t per_warp = acc_size * (kLanes * kTileStride + num_classes * kLanes) +
                          sizeof(int) * (num_classes + kLanes);
  return per_warp * warps;
}

template <typename scalar_t, typename acc_t>
__global__ void partial_sums_kernel(const scalar_t* __restrict__ features, const int64_t* __restrict__ labels,
                                    int64_t channels, int64_t pixels, int64_t num_classes, int64_t pixels_per_split,
                                    acc_t* __restrict__ partial_sums, int* __restrict__ partial_counts) {
  FASTSEG_DYNAMIC_SHARED(shared);
  const int warps = blockDim.x / kLanes, warp = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const int64_t split = blockIdx.x, c0 = int64_t(blockIdx.y) * kLanes, b = blockIdx.z, batch = gridDim.z;
  const int classes = static_cast<int>(num_classes);
  acc_t* tiles = reinterpret_cast<acc_t*>(shared);                // [warps][32][33]
  acc_t* sums = tiles + warps * kLanes * kTileStride;            // [warps][K][32]
  int* counts = reinterpret_cast<int*>(sums + warps * classes * kLanes);  // [warps][K]
  int* tile_labels = counts + warps * classes;                    // [warps][32]
  for (int i = threadIdx.x; i < warps * classes * kLanes; i += blockDim.x) sums[i] = acc_t(0);
  for (int i = threadIdx.x; i < warps * classes; i += blockDim.x) counts[i] = 0;
  __syncthreads();

  acc_t* tile = tiles + warp * kLanes * kTileStride;
  acc_t* sum = sums + warp * classes * kLanes;
  int* count = counts + warp * classes;
  int* label_of = tile_labels + warp * kLanes;
  const bool counting = blockIdx.y == 0;
  const scalar_t* image = features + b * channels * pixels;
  const int64_t start = split * pixels_per_split;
  const int64_t end = min(start + pixels_per_split, pixels);
  for (int64_t p0 = start + warp * kLanes; p0 < end; p0 += warps * kLanes) {
    const int64_t p = p0 + lane;
    const bool inside = p < end;
    const int64_t label = inside ? labels[b * pixels + p] : -1;
    label_of[lane] = (label >= 0 && label < num_classes) ? static_cast<int>(label) : -1;
    // All 32 loads of the lane in flight before the first shared store (32 x 4 B x 32 lanes per warp).
    acc_t column[kLanes];
#pragma unroll
    for (int r = 0; r < kLanes; ++r) {
      const int64_t c = c0 + r;
      column[r] = (inside && c < channels) ? convert<acc_t>(image[c * pixels + p]) : acc_t(0);
    }
#pragma unroll
    for (int r = 0; r < kLanes; ++r) tile[r * kTileStride + lane] = column[r];
    __syncwarp();
    for (int q = 0; q < kLanes; ++q) {
      const int k = label_of[q];
      if (k >= 0) {
        sum[k * kLanes + lane] += tile[lane * kTileStride + q];
        if (counting && lane == 0) ++count[k];
      }
    }
    __syncwarp();
  }
  __syncthreads();

  const int64_t slot = split * batch + b;
  for (int i = threadIdx.x; i < classes * kLanes; i += blockDim.x) {
    acc_t total = acc_t(0);
    for (int w = 0; w < warps; ++w) total += sums[w * classes * kLanes + i];
    const int64_t c = c0 + i % kLanes;
    if (c < channels) partial_sums[(slot * num_classes + i / kLanes) * channels + c] = total;
  }
  if (counting) {
    for (int k = threadIdx.x; k < classes; k += blockDim.x) {
      int total = 0;
      for (int w = 0; w < warps; ++w) total += counts[w * classes + k];
      partial_counts[slot * num_classes + k] = total;
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void finalize_kernel(const acc_t* __restrict__ partial_sums, const int* __restrict__ partial_counts,
                                int64_t splits, int64_t batch_classes, int64_t channels,
                                scalar_t* __restrict__ centers, int64_t* __restrict__ counts) {
  const int64_t total = batch_classes * channels;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t bk = i / channels, c = i % channels;
    int64_t n = 0;
    acc_t sum = acc_t(0);
    for (int64_t s = 0; s < splits; ++s) {
      n += partial_counts[s * batch_classes + bk];
      sum += partial_sums[(s * batch_classes + bk) * channels + c];
    }
    centers[i] = convert<scalar_t>(n > 0 ? sum / convert<acc_t>(n) : acc_t(0));
    if (c == 0) counts[bk] = n;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad_centers, const int64_t* __restrict__ labels,
                                const int64_t* __restrict__ counts, int64_t channels, int64_t pixels,
                                int64_t num_classes, scalar_t* __restrict__ grad_features) {
  const int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t c0 = int64_t(blockIdx.y) * kBackwardChannels, b = blockIdx.z;
  if (p >= pixels) return;
  const int64_t label = labels[b * pixels + p];
  const bool valid = label >= 0 && label < num_classes;
  const int64_t bk = b * num_classes + (valid ? label : 0);
  const acc_t scale = valid ? acc_t(1) / convert<acc_t>(max(counts[bk], int64_t(1))) : acc_t(0);
  const int64_t c_end = min(c0 + kBackwardChannels, channels);
  for (int64_t c = c0; c < c_end; ++c) {
    const acc_t g = valid ? convert<acc_t>(grad_centers[bk * channels + c]) : acc_t(0);
    grad_features[(b * channels + c) * pixels + p] = convert<scalar_t>(g * scale);
  }
}

}  // namespace

cudaError_t class_avg_pool_plan(int64_t batch, int64_t channels, int64_t pixels, int64_t num_classes,
                                size_t element_size, ClassAvgPoolPlan* plan) {
  DeviceLimits limits;
  cudaError_t error = device_limits(&limits);
  if (error != cudaSuccess) return error;
  const size_t acc_size = element_size == sizeof(double) ? sizeof(double) : sizeof(float);
  int warps = kMaxWarps;
  while (warps > 0 && shared_bytes(warps, num_classes, acc_size) > size_t(limits.shared_per_block)) --warps;
  if (warps == 0) return cudaErrorInvalidValue;
  // About eight blocks per SM, each slice at least 512 pixels.
  const int64_t columns = batch * ceil_div(channels, kLanes);
  const int64_t wanted = ceil_div(8 * int64_t(limits.sms), std::max<int64_t>(columns, 1));
  plan->splits = std::max<int64_t>(1, std::min(wanted, ceil_div(pixels, 512)));
  plan->warps = warps;
  plan->shared_bytes = shared_bytes(warps, num_classes, acc_size);
  plan->workspace_bytes = plan->splits * batch * num_classes * (channels * acc_size + sizeof(int));
  return cudaSuccess;
}

template <typename scalar_t>
cudaError_t class_avg_pool_forward(const scalar_t* features, const int64_t* labels, int64_t batch, int64_t channels,
                                   int64_t pixels, int64_t num_classes, const ClassAvgPoolPlan& plan,
                                   void* workspace, scalar_t* centers, int64_t* counts, cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  if (batch * num_classes == 0) return cudaSuccess;
  acc_t* partial_sums = static_cast<acc_t*>(workspace);
  int* partial_counts = reinterpret_cast<int*>(partial_sums + plan.splits * batch * num_classes * channels);
  const int64_t pixels_per_split = ceil_div(std::max<int64_t>(pixels, 1), plan.splits);
  auto kernel = partial_sums_kernel<scalar_t, acc_t>;
  const cudaError_t error = allow_shared(kernel, plan.shared_bytes);
  if (error != cudaSuccess) return error;
  const dim3 grid(static_cast<unsigned>(plan.splits), static_cast<unsigned>(ceil_div(channels, kLanes)),
                  static_cast<unsigned>(batch));  // channels >= 1: the caller rejects empty features
  launch(kernel, grid, plan.warps * kLanes, plan.shared_bytes, stream, features, labels, channels, pixels, num_classes,
         pixels_per_split, partial_sums, partial_counts);
  const int64_t outputs = batch * num_classes * std::max<int64_t>(channels, 1);
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(outputs, 256), 65535));
  launch(finalize_kernel<scalar_t, acc_t>, blocks, 256, 0, stream, partial_sums, partial_counts, plan.splits,
         batch * num_classes, channels, centers, counts);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t class_avg_pool_backward(const scalar_t* grad_centers, const int64_t* labels, const int64_t* counts,
                                    int64_t batch, int64_t channels, int64_t pixels, int64_t num_classes,
                                    scalar_t* grad_features, cudaStream_t stream) {
  if (batch * channels * pixels == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(ceil_div(pixels, kBackwardThreads)),
                  static_cast<unsigned>(ceil_div(channels, kBackwardChannels)), static_cast<unsigned>(batch));
  launch(backward_kernel<scalar_t, acc_type<scalar_t>>, grid, kBackwardThreads, 0, stream, grad_centers, labels, counts,
         channels, pixels, num_classes, grad_features);
  return cudaGetLastError();
}

#define FASTSEG_INSTANTIATE(T)                                                                                    \
  template cudaError_t class_avg_pool_forward<T>(const T*, const int64_t*, int64_t, int64_t, int64_t, int64_t,   \
                                                 const ClassAvgPoolPlan&, void*, T*, int64_t*, cudaStream_t);    \
  template cudaError_t class_avg_pool_backward<T>(const T*, const int64_t*, const int64_t*, int64_t, int64_t,    \
                                                  int64_t, int64_t, T*, cudaStream_t);
FASTSEG_FOR_FLOATING_TYPES(FASTSEG_INSTANTIATE)
#undef FASTSEG_INSTANTIATE

}  // namespace fastseg::cuda
