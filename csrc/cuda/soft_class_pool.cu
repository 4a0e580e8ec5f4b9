// CUDA soft class-wise pooling (ACFNet Eq. 2) and attentional class feature (Eq. 3): tiled GEMM
// kernels with fp32 (fp64) accumulation, deterministic (no floating-point atomics).
//
// Every product is a shared-memory tiled GEMM whose 256 threads (16 x 16) each own a strided
// (TM/16) x (TN/16) patch of the output tile:
//   pixel_reduce_kernel   out[k,c] = sum_j P[k,j] V[c,j] and mass[k] = sum_j P[k,j] over one pixel
//                         slice (split-K); slices are added in a fixed order by the next kernel.
//                         V = features gives Eq. 2's numerator, V = dA gives dZ = P dA^T.
//   centers_kernel        Z = S / mass (0 where mass == 0), and the mass.
//   class_expand_kernel   out[c,j] = sum_k L[k,c] P[k,j]: Eq. 3 (L = Z) and dF = dS^T P (L = dS).
//   scale_grad_kernel     dS = dZ / mass (0 where mass == 0), r[k] = sum_c dS[k,c] Z[k,c].
//   grad_probs_kernel     dP[k,j] = sum_c dS[k,c] F[c,j] (+ Z[k,c] dA[c,j]) - r[k].
// The backward formulas are derived in fastseg/ops/soft_class_pool.py.
//
// Cost model at the GPU shapes of
// bench/bench_soft_class_pool.py (forward+backward; H200: 4.8 TB/s HBM, 67 TFLOP/s fp32,
// 989 TFLOP/s dense bf16, ~3 us per dependent launch). The floor is max(bytes / bandwidth, FLOPs /
// peak) of the benchmark's byte and FLOP counts; the prediction is this design's, derived below.
// bench/report.py reads the `predicted H200` lines (the one place these numbers live) into the
// "predicted" column of bench/RESULTS.md.
// FLOPs = the floor's (3 GEMMs for soft_class_pool, 6 for attentional_class_feature), on fp32 CUDA
// cores with 6 shared loads per 8 FMAs: ~40% of 67 TFLOP/s at K=19, ~10% at K=150 (thin K tiles);
// 5 / 8 launches. Bound: the hand GEMM (tensor cores via cuBLAS/tl.dot remain to do, issue 14).
// predicted H200 | soft_class_pool cityscapes-C512 B=8 fwd+bwd | 0.179 ms | fp32 hand GEMM (floor 0.100 ms)
// predicted H200 | soft_class_pool ade20k-C512 B=8 fwd+bwd | 2.269 ms | fp32 hand GEMM (floor 0.225 ms)
// predicted H200 | attentional_class_feature cityscapes-C512 B=8 fwd+bwd | 0.352 ms | fp32 hand GEMM (floor 0.164 ms)
// predicted H200 | attentional_class_feature ade20k-C512 B=8 fwd+bwd | 4.531 ms | fp32 hand GEMM (floor 0.451 ms)
#include "cuda/common.cuh"
#include "cuda/soft_class_pool.h"

#include <algorithm>

namespace fastseg::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kSide = 16;  // threads per side of the 16 x 16 thread grid
// Tile shapes (reduction rows x output rows x output columns) of each kernel.
constexpr int kPoolPixels = 32, kPoolClasses = 32, kPoolChannels = 64;
constexpr int kExpandClasses = 16, kExpandChannels = 64, kExpandPixels = 64;
constexpr int kGradChannels = 16, kGradClasses = 32, kGradPixels = 64;

__host__ __device__ inline int64_t blocks_of(int64_t size, int64_t tile) { return (size + tile - 1) / tile; }
// At least one block, so that a zero-channel call still computes the mass.
__host__ __device__ inline int64_t channel_blocks(int64_t channels, int64_t tile) {
  return channels > 0 ? blocks_of(channels, tile) : 1;
}

// tile[r][m] = src[(row0 + r) * ld + col0 + m], zero outside [0, rows) x [0, cols).
template <int TR, int TW, typename acc_t, typename in_t>
__device__ void load_rows(acc_t (*tile)[TW + 1], const in_t* __restrict__ src, int64_t ld, int64_t row0,
                          int64_t rows, int64_t col0, int64_t cols) {
  for (int i = threadIdx.x; i < TR * TW; i += blockDim.x) {
    const int r = i / TW, m = i % TW;
    const int64_t row = row0 + r, col = col0 + m;
    tile[r][m] = (row < rows && col < cols) ? convert<acc_t>(src[row * ld + col]) : acc_t(0);
  }
}

// tile[r][m] = src[(col0 + m) * ld + row0 + r]: the source runs along the reduction (coalesced reads).
template <int TR, int TW, typename acc_t, typename in_t>
__device__ void load_columns(acc_t (*tile)[TW + 1], const in_t* __restrict__ src, int64_t ld, int64_t row0,
                             int64_t rows, int64_t col0, int64_t cols) {
  for (int i = threadIdx.x; i < TR * TW; i += blockDim.x) {
    const int r = i % TR, m = i / TR;
    const int64_t row = row0 + r, col = col0 + m;
    tile[r][m] = (row < rows && col < cols) ? convert<acc_t>(src[col * ld + row]) : acc_t(0);
  }
}

// acc[i][j] += sum_r a[r][ty + 16 i] * b[r][tx + 16 j]
template <int TR, int TM, int TN, typename acc_t>
__device__ void multiply_tiles(const acc_t (*a)[TM + 1], const acc_t (*b)[TN + 1], acc_t (&acc)[TM / kSide][TN / kSide],
                               int ty, int tx) {
#pragma unroll 4
  for (int r = 0; r < TR; ++r) {
    acc_t left[TM / kSide], right[TN / kSide];
#pragma unroll
    for (int i = 0; i < TM / kSide; ++i) left[i] = a[r][ty + kSide * i];
#pragma unroll
    for (int j = 0; j < TN / kSide; ++j) right[j] = b[r][tx + kSide * j];
#pragma unroll
    for (int i = 0; i < TM / kSide; ++i) {
#pragma unroll
      for (int j = 0; j < TN / kSide; ++j) acc[i][j] += left[i] * right[j];
    }
  }
}

// Grid (splits, class blocks x channel blocks, batch). partial_sums (splits,B,K,C), partial_mass (splits,B,K).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    pixel_reduce_kernel(const scalar_t* __restrict__ probs, const scalar_t* __restrict__ values, int64_t classes,
                        int64_t channels, int64_t pixels, int64_t pixels_per_split, acc_t* __restrict__ partial_sums,
                        acc_t* __restrict__ partial_mass) {
  constexpr int TR = kPoolPixels, TM = kPoolClasses, TN = kPoolChannels;
  __shared__ acc_t a[TR][TM + 1];
  __shared__ acc_t v[TR][TN + 1];
  const int64_t c_blocks = channel_blocks(channels, TN);
  const int64_t k0 = (blockIdx.y / c_blocks) * TM, c0 = (blockIdx.y % c_blocks) * TN;
  const int64_t split = blockIdx.x, b = blockIdx.z, batch = gridDim.z;
  const int ty = threadIdx.x / kSide, tx = threadIdx.x % kSide;
  const scalar_t* prob = probs + b * classes * pixels;
  const scalar_t* value = values + b * channels * pixels;
  const int64_t start = split * pixels_per_split;
  const int64_t end = min(start + pixels_per_split, pixels);
  acc_t acc[TM / kSide][TN / kSide] = {};
  acc_t mass = acc_t(0);  // of class k0 + threadIdx.x, for threadIdx.x < TM
  for (int64_t p0 = start; p0 < end; p0 += TR) {
    load_columns<TR, TM>(a, prob, pixels, p0, end, k0, classes);
    load_columns<TR, TN>(v, value, pixels, p0, end, c0, channels);
    __syncthreads();
    if (threadIdx.x < TM) {
      for (int r = 0; r < TR; ++r) mass += a[r][threadIdx.x];
    }
    multiply_tiles<TR, TM, TN>(a, v, acc, ty, tx);
    __syncthreads();
  }
  const int64_t slot = split * batch + b;
#pragma unroll
  for (int i = 0; i < TM / kSide; ++i) {
    const int64_t k = k0 + ty + kSide * i;
#pragma unroll
    for (int j = 0; j < TN / kSide; ++j) {
      const int64_t c = c0 + tx + kSide * j;
      if (k < classes && c < channels) partial_sums[(slot * classes + k) * channels + c] = acc[i][j];
    }
  }
  if (blockIdx.y % c_blocks == 0 && threadIdx.x < TM && k0 + threadIdx.x < classes) {
    partial_mass[slot * classes + k0 + threadIdx.x] = mass;
  }
}

// Sum of the slices' mass of row bk, in slice order.
template <typename acc_t>
__device__ acc_t total_mass(const acc_t* __restrict__ partial_mass, int64_t splits, int64_t rows, int64_t bk) {
  acc_t n = acc_t(0);
  for (int64_t s = 0; s < splits; ++s) n += partial_mass[s * rows + bk];
  return n;
}

// Eq. 2: centers (and their accumulation-typed copy) = slice sums / mass; mass.
template <typename scalar_t, typename acc_t>
__global__ void centers_kernel(const acc_t* __restrict__ partial_sums, const acc_t* __restrict__ partial_mass,
                               int64_t splits, int64_t rows, int64_t channels, acc_t* __restrict__ centers_acc,
                               scalar_t* __restrict__ centers, acc_t* __restrict__ mass) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  for (int64_t bk = first; bk < rows; bk += stride) mass[bk] = total_mass(partial_mass, splits, rows, bk);
  for (int64_t i = first; i < rows * channels; i += stride) {
    const int64_t bk = i / channels;
    const acc_t n = total_mass(partial_mass, splits, rows, bk);
    acc_t sum = acc_t(0);
    for (int64_t s = 0; s < splits; ++s) sum += partial_sums[s * rows * channels + i];
    const acc_t z = n != acc_t(0) ? sum / n : acc_t(0);
    centers_acc[i] = z;
    centers[i] = convert<scalar_t>(z);
  }
}

// Grid (pixel blocks, channel blocks, batch): out[b,c,j] = sum_k left[b,k,c] probs[b,k,j].
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    class_expand_kernel(const acc_t* __restrict__ left, const scalar_t* __restrict__ probs, int64_t classes,
                        int64_t channels, int64_t pixels, scalar_t* __restrict__ out) {
  constexpr int TR = kExpandClasses, TM = kExpandChannels, TN = kExpandPixels;
  __shared__ acc_t l[TR][TM + 1];
  __shared__ acc_t w[TR][TN + 1];
  const int64_t p0 = int64_t(blockIdx.x) * TN, c0 = int64_t(blockIdx.y) * TM, b = blockIdx.z;
  const int ty = threadIdx.x / kSide, tx = threadIdx.x % kSide;
  acc_t acc[TM / kSide][TN / kSide] = {};
  for (int64_t k0 = 0; k0 < classes; k0 += TR) {
    load_rows<TR, TM>(l, left + b * classes * channels, channels, k0, classes, c0, channels);
    load_rows<TR, TN>(w, probs + b * classes * pixels, pixels, k0, classes, p0, pixels);
    __syncthreads();
    multiply_tiles<TR, TM, TN>(l, w, acc, ty, tx);
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < TM / kSide; ++i) {
    const int64_t c = c0 + ty + kSide * i;
#pragma unroll
    for (int j = 0; j < TN / kSide; ++j) {
      const int64_t p = p0 + tx + kSide * j;
      if (c < channels && p < pixels) out[(b * channels + c) * pixels + p] = convert<scalar_t>(acc[i][j]);
    }
  }
}

// One block per (image, class) row: dS = dZ / mass (dZ summed over `splits` slices in order) and
// r = sum_c dS Z, reduced in a fixed tree order.
template <typename grad_t, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    scale_grad_kernel(const grad_t* __restrict__ grad_centers, int64_t splits, const scalar_t* __restrict__ centers,
                      const acc_t* __restrict__ mass, int64_t rows, int64_t channels, acc_t* __restrict__ scaled,
                      acc_t* __restrict__ row_terms) {
  __shared__ acc_t partial[kThreads];
  const int64_t bk = blockIdx.x;
  const acc_t n = mass[bk];
  acc_t term = acc_t(0);
  for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) {
    const int64_t i = bk * channels + c;
    acc_t g = acc_t(0);
    for (int64_t s = 0; s < splits; ++s) g += convert<acc_t>(grad_centers[s * rows * channels + i]);
    const acc_t ds = n != acc_t(0) ? g / n : acc_t(0);
    scaled[i] = ds;
    term += ds * convert<acc_t>(centers[i]);
  }
  partial[threadIdx.x] = term;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) partial[threadIdx.x] += partial[threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) row_terms[bk] = partial[0];
}

// Grid (pixel blocks, class blocks, batch): dP = dS F (+ Z dA) - r.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    grad_probs_kernel(const acc_t* __restrict__ scaled, const scalar_t* __restrict__ features,
                      const scalar_t* __restrict__ centers, const scalar_t* __restrict__ grad_attended,
                      const acc_t* __restrict__ row_terms, int64_t classes, int64_t channels, int64_t pixels,
                      scalar_t* __restrict__ grad_probs) {
  constexpr int TR = kGradChannels, TM = kGradClasses, TN = kGradPixels;
  __shared__ acc_t l[TR][TM + 1];
  __shared__ acc_t f[TR][TN + 1];
  const int64_t p0 = int64_t(blockIdx.x) * TN, k0 = int64_t(blockIdx.y) * TM, b = blockIdx.z;
  const int ty = threadIdx.x / kSide, tx = threadIdx.x % kSide;
  const int64_t left_offset = b * classes * channels, right_offset = b * channels * pixels;
  acc_t acc[TM / kSide][TN / kSide] = {};
  for (int64_t c0 = 0; c0 < channels; c0 += TR) {
    load_columns<TR, TM>(l, scaled + left_offset, channels, c0, channels, k0, classes);
    load_rows<TR, TN>(f, features + right_offset, pixels, c0, channels, p0, pixels);
    __syncthreads();
    multiply_tiles<TR, TM, TN>(l, f, acc, ty, tx);
    __syncthreads();
    if (grad_attended != nullptr) {
      load_columns<TR, TM>(l, centers + left_offset, channels, c0, channels, k0, classes);
      load_rows<TR, TN>(f, grad_attended + right_offset, pixels, c0, channels, p0, pixels);
      __syncthreads();
      multiply_tiles<TR, TM, TN>(l, f, acc, ty, tx);
      __syncthreads();
    }
  }
#pragma unroll
  for (int i = 0; i < TM / kSide; ++i) {
    const int64_t k = k0 + ty + kSide * i;
    if (k >= classes) continue;
    const acc_t r = row_terms[b * classes + k];
#pragma unroll
    for (int j = 0; j < TN / kSide; ++j) {
      const int64_t p = p0 + tx + kSide * j;
      if (p < pixels) grad_probs[(b * classes + k) * pixels + p] = convert<scalar_t>(acc[i][j] - r);
    }
  }
}

// The workspace of one call, in accumulation-typed elements.
template <typename acc_t>
struct Workspace {
  acc_t* partial_sums;  // (splits, B, K, C)
  acc_t* partial_mass;  // (splits, B, K)
  acc_t* rows;          // (B, K, C): the centers in the forward, dS in the backward
  acc_t* row_terms;     // (B, K): r in the backward
};

template <typename acc_t>
Workspace<acc_t> split_workspace(void* workspace, int64_t splits, int64_t rows, int64_t channels) {
  acc_t* base = static_cast<acc_t*>(workspace);
  Workspace<acc_t> parts;
  parts.partial_sums = base;
  parts.partial_mass = parts.partial_sums + splits * rows * channels;
  parts.rows = parts.partial_mass + splits * rows;
  parts.row_terms = parts.rows + rows * channels;
  return parts;
}

int64_t pixels_per_split(int64_t pixels, int64_t splits) {
  return blocks_of(blocks_of(std::max<int64_t>(pixels, 1), splits), kPoolPixels) * kPoolPixels;
}

// Launches pixel_reduce_kernel over all slices: partial sums of P V^T and of the mass.
template <typename scalar_t, typename acc_t>
void launch_pixel_reduce(const scalar_t* probs, const scalar_t* values, int64_t batch, int64_t channels,
                         int64_t pixels, int64_t classes, int64_t splits, const Workspace<acc_t>& parts,
                         cudaStream_t stream) {
  const int64_t columns = blocks_of(classes, kPoolClasses) * channel_blocks(channels, kPoolChannels);
  const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(columns), static_cast<unsigned>(batch));
  launch(pixel_reduce_kernel<scalar_t, acc_t>, grid, kThreads, 0, stream, probs, values, classes, channels, pixels,
         pixels_per_split(pixels, splits), parts.partial_sums, parts.partial_mass);
}

// out (B,C,P) = left^T probs per image, left (B,K,C) accumulation-typed.
template <typename scalar_t, typename acc_t>
void launch_class_expand(const acc_t* left, const scalar_t* probs, int64_t batch, int64_t channels, int64_t pixels,
                         int64_t classes, scalar_t* out, cudaStream_t stream) {
  if (channels * pixels == 0) return;
  const dim3 grid(static_cast<unsigned>(blocks_of(pixels, kExpandPixels)),
                  static_cast<unsigned>(blocks_of(channels, kExpandChannels)), static_cast<unsigned>(batch));
  launch(class_expand_kernel<scalar_t, acc_t>, grid, kThreads, 0, stream, left, probs, classes, channels, pixels, out);
}

bool fits_grid(int64_t batch, int64_t channels, int64_t classes) {
  return batch <= 65535 && blocks_of(channels, kExpandChannels) <= 65535 &&
         blocks_of(classes, kPoolClasses) * channel_blocks(channels, kPoolChannels) <= 65535 &&
         blocks_of(classes, kGradClasses) <= 65535;
}

}  // namespace

cudaError_t soft_class_pool_plan(int64_t batch, int64_t channels, int64_t pixels, int64_t num_classes,
                                 size_t element_size, SoftClassPoolPlan* plan) {
  if (!fits_grid(batch, channels, num_classes)) return cudaErrorInvalidValue;
  DeviceLimits limits;
  const cudaError_t error = device_limits(&limits);
  if (error != cudaSuccess) return error;
  // About four blocks per SM, each slice at least 1024 pixels.
  const int64_t columns = batch * blocks_of(num_classes, kPoolClasses) * channel_blocks(channels, kPoolChannels);
  const int64_t wanted = blocks_of(4 * int64_t(limits.sms), std::max<int64_t>(columns, 1));
  plan->splits = std::max<int64_t>(1, std::min(wanted, blocks_of(pixels, 1024)));
  const size_t acc_size = element_size == sizeof(double) ? sizeof(double) : sizeof(float);
  plan->workspace_bytes = acc_size * (plan->splits + 1) * batch * num_classes * (channels + 1);
  return cudaSuccess;
}

template <typename scalar_t>
cudaError_t soft_class_pool_forward(const scalar_t* features, const scalar_t* probs, int64_t batch, int64_t channels,
                                    int64_t pixels, int64_t num_classes, const SoftClassPoolPlan& plan,
                                    void* workspace, scalar_t* centers, acc_type<scalar_t>* mass, scalar_t* attended,
                                    cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  const int64_t rows = batch * num_classes;
  if (rows == 0) return cudaSuccess;
  const Workspace<acc_t> parts = split_workspace<acc_t>(workspace, plan.splits, rows, channels);
  launch_pixel_reduce(probs, features, batch, channels, pixels, num_classes, plan.splits, parts, stream);
  const int blocks = static_cast<int>(std::min<int64_t>(blocks_of(rows * std::max<int64_t>(channels, 1), 256), 65535));
  launch(centers_kernel<scalar_t, acc_t>, blocks, 256, 0, stream, parts.partial_sums, parts.partial_mass, plan.splits,
         rows, channels, parts.rows, centers, mass);
  if (attended != nullptr) {
    launch_class_expand(static_cast<const acc_t*>(parts.rows), probs, batch, channels, pixels, num_classes, attended,
                        stream);
  }
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t soft_class_pool_backward(const scalar_t* grad_centers, const scalar_t* grad_attended,
                                     const scalar_t* features, const scalar_t* probs, const scalar_t* centers,
                                     const acc_type<scalar_t>* mass, int64_t batch, int64_t channels, int64_t pixels,
                                     int64_t num_classes, const SoftClassPoolPlan& plan, void* workspace,
                                     scalar_t* grad_features, scalar_t* grad_probs, cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  const int64_t rows = batch * num_classes;
  if (rows == 0) return cudaSuccess;
  const Workspace<acc_t> parts = split_workspace<acc_t>(workspace, plan.splits, rows, channels);
  if (grad_centers == nullptr) {
    launch_pixel_reduce(probs, grad_attended, batch, channels, pixels, num_classes, plan.splits, parts, stream);
    launch(scale_grad_kernel<acc_t, scalar_t, acc_t>, static_cast<unsigned>(rows), kThreads, 0, stream,
           parts.partial_sums, plan.splits, centers, mass, rows, channels, parts.rows, parts.row_terms);
  } else {
    launch(scale_grad_kernel<scalar_t, scalar_t, acc_t>, static_cast<unsigned>(rows), kThreads, 0, stream, grad_centers,
           1, centers, mass, rows, channels, parts.rows, parts.row_terms);
  }
  launch_class_expand(static_cast<const acc_t*>(parts.rows), probs, batch, channels, pixels, num_classes,
                      grad_features, stream);
  if (pixels > 0) {
    const dim3 grid(static_cast<unsigned>(blocks_of(pixels, kGradPixels)),
                    static_cast<unsigned>(blocks_of(num_classes, kGradClasses)), static_cast<unsigned>(batch));
    launch(grad_probs_kernel<scalar_t, acc_t>, grid, kThreads, 0, stream, parts.rows, features, centers, grad_attended,
           parts.row_terms, num_classes, channels, pixels, grad_probs);
  }
  return cudaGetLastError();
}

#define FASTSEG_INSTANTIATE(T)                                                                                       \
  template cudaError_t soft_class_pool_forward<T>(const T*, const T*, int64_t, int64_t, int64_t, int64_t,           \
                                                  const SoftClassPoolPlan&, void*, T*, acc_type<T>*, T*,            \
                                                  cudaStream_t);                                                    \
  template cudaError_t soft_class_pool_backward<T>(const T*, const T*, const T*, const T*, const T*,                \
                                                   const acc_type<T>*, int64_t, int64_t, int64_t, int64_t,          \
                                                   const SoftClassPoolPlan&, void*, T*, T*, cudaStream_t);
FASTSEG_FOR_FLOATING_TYPES(FASTSEG_INSTANTIATE)
#undef FASTSEG_INSTANTIATE

}  // namespace fastseg::cuda
