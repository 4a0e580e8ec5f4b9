// CUDA Lovász hinge (Berman et al. 2018 Eq. 8-9; CSFRNet Eq. 4), deterministic: no atomics.
//
// Forward, around PyTorch's device-wide sort in the glue (csrc/cuda_glue/lovasz_hinge.cpp):
// errors_kernel writes the hinge errors (-inf for invalid pixels, so they sort last); the glue sorts
// every row by decreasing error (at::sort, stable), giving the sorted errors and the permutation;
// scan_kernel (one block per row) counts the row's positives, then walks the sorted row in tiles of
// kScanThreads: it gathers label and validity through the permutation, scans the packed counts
// (positives << 32 | negatives) with a warp-shuffle block scan carrying the running total across
// tiles, and writes the row's loss (fixed-order reduction) and the Jaccard-gradient weights in pixel
// order, weights[n, permutation[n,j]], so that nothing of the sort outlives the forward. No host
// synchronisation at any row count.
// Backward: grad_logits[n,p] = grad_loss[n] * weights[n,p], a streaming multiply (scale_kernel).
//
// Cost model at the GPU shapes of
// bench/bench_lovasz_hinge.py (forward+backward; H200: 4.8 TB/s HBM, 50 MB L2, 67 TFLOP/s fp32,
// 989 TFLOP/s dense bf16, ~3 us per dependent launch). The floor is max(bytes / bandwidth, FLOPs /
// peak) of the benchmark's byte and FLOP counts; the prediction is this design's, derived below.
// bench/report.py reads the `predicted H200` lines (the one place these numbers live) into the
// "predicted" column of bench/RESULTS.md.
// Per element: errors 10 B, iota 8 B, PyTorch's segmented radix sort ~5 passes x (read + write of a
// 4 B key and an 8 B index) = 120 B, scan 18 B (gathers through the permutation hit L2), weights
// 4 B, backward 8 B (read weights, write grad_logits): ~168 B at ~60% of bandwidth, ~11 launches.
// The weights are scattered within each row, all rows' scans at once: at 97x97 the 5.7 MB of
// weights stay in L2 and each 32 B sector leaves it whole (4 B/element); at 769x769 the 90 MB do
// not fit, about half the 4 B writes miss and write back a partial sector, ~18 B/element (+14 B).
// Bound: the sort's traffic, which the floor (the benchmark's 18 B/element: logits, labels, valid,
// weights written and read, grad_logits) does not count.
// predicted H200 | lovasz_hinge 97x97 N=152 fwd+bwd | 0.116 ms | sort traffic (floor 0.005 ms)
// predicted H200 | lovasz_hinge 769x769 N=38 fwd+bwd | 1.453 ms | sort traffic (floor 0.084 ms)
#include "cuda/common.cuh"
#include "cuda/lovasz_hinge.h"

#include <algorithm>

namespace fastseg::cuda {
namespace {

constexpr int kScanThreads = 512;
constexpr int kWarps = kScanThreads / 32;
constexpr int kElementwiseThreads = 256;
constexpr int64_t kMaxBlocks = 65535LL * 8;
constexpr int64_t kMaxGridY = 65535;
constexpr long long kPositive = 1LL << 32;  // one positive in the packed counts; one negative is 1
constexpr unsigned kFullWarp = 0xffffffffu;

unsigned blocks_for(int64_t elements) {
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(ceil_div(elements, kElementwiseThreads), 1),
                                                 kMaxBlocks));
}

template <typename scalar_t, typename acc_t>
__global__ void errors_kernel(const scalar_t* __restrict__ logits, const bool* __restrict__ labels,
                              const bool* __restrict__ valid, int64_t elements, acc_t* __restrict__ errors) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < elements; i += stride) {
    const acc_t sign = labels[i] ? acc_t(1) : acc_t(-1);
    const bool keep = valid == nullptr || valid[i];
    errors[i] = keep ? acc_t(1) - convert<acc_t>(logits[i]) * sign : acc_t(-INFINITY);
  }
}

// Inclusive sum of `value` over the block's threads in thread order, and the block's total; every
// thread of the block must call it. Warps scan with shuffles, warp 0 scans the warp totals.
template <typename T>
__device__ T block_inclusive_sum(T value, T& total) {
  __shared__ T warp_totals[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int delta = 1; delta < 32; delta *= 2) {
    const T other = __shfl_up_sync(kFullWarp, value, delta);
    if (lane >= delta) value += other;
  }
  if (lane == 31) warp_totals[warp] = value;
  __syncthreads();
  if (warp == 0) {
    T prefix = lane < kWarps ? warp_totals[lane] : T(0);
#pragma unroll
    for (int delta = 1; delta < kWarps; delta *= 2) {
      const T other = __shfl_up_sync(kFullWarp, prefix, delta);
      if (lane >= delta) prefix += other;
    }
    if (lane < kWarps) warp_totals[lane] = prefix;
  }
  __syncthreads();
  if (warp > 0) value += warp_totals[warp - 1];
  total = warp_totals[kWarps - 1];
  __syncthreads();  // warp_totals is reused by the next call
  return value;
}

template <typename T>
__device__ T block_sum(T value) {
  T total;
  block_inclusive_sum(value, total);
  return total;
}

// J = 1 - (gts - positives) / (gts + negatives) of the packed counts; 0 for an empty union.
template <typename acc_t>
__device__ acc_t jaccard(acc_t gts, long long packed) {
  const acc_t positives = convert<acc_t>(packed >> 32);
  const acc_t unite = gts + convert<acc_t>(packed & 0xffffffffLL);
  return unite > acc_t(0) ? acc_t(1) - (gts - positives) / unite : acc_t(0);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kScanThreads)
    scan_kernel(const acc_t* __restrict__ sorted_errors, const int64_t* __restrict__ permutation,
                const bool* __restrict__ labels, const bool* __restrict__ valid, int64_t pixels,
                scalar_t* __restrict__ losses, acc_t* __restrict__ weights) {
  const int64_t row = int64_t(blockIdx.x) * pixels;
  long long count = 0;
  for (int64_t p = threadIdx.x; p < pixels; p += kScanThreads) {
    count += (labels[row + p] && (valid == nullptr || valid[row + p])) ? 1 : 0;
  }
  const acc_t gts = convert<acc_t>(block_sum(count));

  long long carry = 0;
  acc_t partial = acc_t(0);
  for (int64_t p0 = 0; p0 < pixels; p0 += kScanThreads) {
    const int64_t j = p0 + threadIdx.x;
    const int64_t index = j < pixels ? permutation[row + j] : -1;
    const bool inside = index >= 0 && index < pixels;
    const bool keep = inside && (valid == nullptr || valid[row + index]);
    const bool positive = keep && labels[row + index];
    const long long step = positive ? kPositive : (keep ? 1LL : 0LL);
    long long tile_total = 0;
    const long long inclusive = block_inclusive_sum(step, tile_total) + carry;
    carry += tile_total;
    // Eq. 9: g_j = J(counts through j) - J(counts before j)
    const acc_t grad = jaccard(gts, inclusive) - jaccard(gts, inclusive - step);
    if (inside) {  // j < pixels; the sort's permutation visits every pixel of the row once
      const acc_t error = sorted_errors[row + j];
      const bool active = keep && !(error <= acc_t(0));  // a NaN error is active: NaN in, NaN loss out
      partial += active ? error * grad : acc_t(0);  // Eq. 8 with relu(errors)
      weights[row + index] = active ? (positive ? -grad : grad) : acc_t(0);  // pixel order
    }
  }
  const acc_t loss = block_sum(partial);
  if (threadIdx.x == 0) losses[blockIdx.x] = convert<scalar_t>(loss);
}

// grad_logits[n,p] = grad_loss[n] * weights[n,p]; rows on grid.y, pixels on grid.x (no division).
template <typename scalar_t, typename acc_t>
__global__ void scale_kernel(const scalar_t* __restrict__ grad_loss, const acc_t* __restrict__ weights, int64_t rows,
                             int64_t pixels, scalar_t* __restrict__ grad_logits) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t n = blockIdx.y; n < rows; n += gridDim.y) {
    const acc_t scale = convert<acc_t>(grad_loss[n]);
    const int64_t row = n * pixels;
    for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < pixels; p += stride) {
      grad_logits[row + p] = convert<scalar_t>(scale * weights[row + p]);
    }
  }
}

}  // namespace

template <typename scalar_t>
cudaError_t lovasz_hinge_errors(const scalar_t* logits, const bool* labels, const bool* valid, int64_t rows,
                                int64_t pixels, acc_type<scalar_t>* errors, cudaStream_t stream) {
  if (rows * pixels == 0) return cudaSuccess;
  launch(errors_kernel<scalar_t, acc_type<scalar_t>>, blocks_for(rows * pixels), kElementwiseThreads, 0, stream, logits,
         labels, valid, rows * pixels, errors);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t lovasz_hinge_scan(const acc_type<scalar_t>* sorted_errors, const int64_t* permutation, const bool* labels,
                              const bool* valid, int64_t rows, int64_t pixels, scalar_t* losses,
                              acc_type<scalar_t>* weights, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  launch(scan_kernel<scalar_t, acc_type<scalar_t>>, static_cast<unsigned>(rows), kScanThreads, 0, stream, sorted_errors,
         permutation, labels, valid, pixels, losses, weights);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t lovasz_hinge_backward(const scalar_t* grad_loss, const acc_type<scalar_t>* weights, int64_t rows,
                                  int64_t pixels, scalar_t* grad_logits, cudaStream_t stream) {
  if (rows * pixels == 0) return cudaSuccess;
  const dim3 grid(blocks_for(pixels), static_cast<unsigned>(std::min<int64_t>(rows, kMaxGridY)));
  launch(scale_kernel<scalar_t, acc_type<scalar_t>>, grid, kElementwiseThreads, 0, stream, grad_loss, weights, rows,
         pixels, grad_logits);
  return cudaGetLastError();
}

#define FASTSEG_INSTANTIATE(T)                                                                                  \
  template cudaError_t lovasz_hinge_errors<T>(const T*, const bool*, const bool*, int64_t, int64_t,             \
                                              acc_type<T>*, cudaStream_t);                                      \
  template cudaError_t lovasz_hinge_scan<T>(const acc_type<T>*, const int64_t*, const bool*, const bool*,       \
                                            int64_t, int64_t, T*, acc_type<T>*, cudaStream_t);                  \
  template cudaError_t lovasz_hinge_backward<T>(const T*, const acc_type<T>*, int64_t, int64_t, T*, cudaStream_t);
FASTSEG_FOR_FLOATING_TYPES(FASTSEG_INSTANTIATE)
#undef FASTSEG_INSTANTIATE

}  // namespace fastseg::cuda
