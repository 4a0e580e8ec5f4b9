// CUDA soft class-wise pooling (ACFNet Eq. 2) and attentional class feature (Eq. 3): the kernels
// around the products, which the glue (csrc/cuda_glue/soft_class_pool.cpp) runs through cuBLAS
// (at::bmm / at::baddbmm: tensor cores for fp16/bf16, TF32 when
// torch.backends.cuda.matmul.allow_tf32 allows it). Deterministic (no floating-point atomics).
//
// Forward, with S = P F^T (cuBLAS):
//   normalise_kernel      mass[k] = sum_j P[k,j] and Z = S / mass (0 where mass == 0), in place.
//   attended A = Z^T P    (cuBLAS, attentional_class_feature only).
// Backward (dZ given, or dZ = P dA^T by cuBLAS for attentional_class_feature):
//   scale_grad_kernel     dS = dZ / mass (0 where mass == 0), r[k] = sum_c dS[k,c] Z[k,c].
//   dF = dS^T P and G = dS F (+ Z dA) (cuBLAS).
//   subtract_rows_kernel  dP = G - r, in place.
// The backward formulas are derived in fastseg/ops/soft_class_pool.py.
//
// Cost model at the GPU shapes of bench/bench_soft_class_pool.py (fp32, forward+backward, B=8,
// C=512; H200: 4.8 TB/s HBM, 67 TFLOP/s fp32 (TF32 off, PyTorch's default), ~3 us per dependent
// launch). The floor is max(bytes / bandwidth, FLOPs / peak) of the benchmark's byte and FLOP
// counts; bench/report.py reads the `predicted H200` lines (the one place these numbers live) into
// the "predicted" column of bench/RESULTS.md.
// Each product is one cuBLAS batched GEMM: at K=19 (97^2 pixels) memory-bound, it streams one
// (B,C,P) operand or result (154 MB) at ~85% of HBM, ~39 us; at K=150 (64^2) FLOP-bound, 5.0
// GFLOP at ~75% of fp32 peak (cuBLAS SGEMM), ~100 us. Around them: the mass read of P, the r
// subtraction over dP (read+write), and 2-3 small launches (~3 us each).
//   soft_class_pool:           3 GEMMs + mass + subtract + 3 launches.
//   attentional_class_feature: 6 GEMMs (the Z dA product accumulates into G) + the same.
// Bound: cuBLAS (HBM at K=19, fp32 FMA at K=150); the bmm reference runs the same GEMMs plus
// unfused elementwise passes, so this path is never slower than it by design.
// predicted H200 | soft_class_pool cityscapes-C512 B=8 fwd+bwd | 0.135 ms | 3 cuBLAS GEMMs, HBM-bound (floor 0.100 ms)
// predicted H200 | soft_class_pool ade20k-C512 B=8 fwd+bwd | 0.320 ms | 3 cuBLAS SGEMMs (floor 0.225 ms)
// predicted H200 | attentional_class_feature cityscapes-C512 B=8 fwd+bwd | 0.255 ms | 6 cuBLAS GEMMs, HBM-bound (floor 0.164 ms)
// predicted H200 | attentional_class_feature ade20k-C512 B=8 fwd+bwd | 0.620 ms | 6 cuBLAS SGEMMs (floor 0.451 ms)
#include "cuda/common.cuh"
#include "cuda/soft_class_pool.h"

#include <algorithm>

namespace fastseg::cuda {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxBlocks = 65535;

// The sum of the block's `value`s in a fixed tree order (deterministic), for every thread.
template <typename acc_t>
__device__ acc_t block_sum(acc_t value, acc_t* partial) {
  partial[threadIdx.x] = value;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) partial[threadIdx.x] += partial[threadIdx.x + width];
    __syncthreads();
  }
  const acc_t total = partial[0];
  __syncthreads();  // partial is reused by the block's next sum
  return total;
}

// One block per (image, class) row bk, looping over rows: mass[bk] = sum_j P[bk,j] and, in place,
// centers[bk,:] = S[bk,:] / mass (Eq. 2; 0 where the mass is 0).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    normalise_kernel(const scalar_t* __restrict__ probs, int64_t rows, int64_t pixels, int64_t channels,
                     scalar_t* __restrict__ centers, acc_t* __restrict__ mass) {
  __shared__ acc_t partial[kThreads];
  for (int64_t bk = blockIdx.x; bk < rows; bk += gridDim.x) {
    acc_t sum = acc_t(0);
    for (int64_t j = threadIdx.x; j < pixels; j += blockDim.x) sum += convert<acc_t>(probs[bk * pixels + j]);
    const acc_t n = block_sum(sum, partial);
    if (threadIdx.x == 0) mass[bk] = n;
    for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) {
      const int64_t i = bk * channels + c;
      centers[i] = convert<scalar_t>(n != acc_t(0) ? convert<acc_t>(centers[i]) / n : acc_t(0));
    }
  }
}

// One block per row bk, looping over rows: dS = dZ / mass (0 where mass == 0) and r = sum_c dS Z.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    scale_grad_kernel(const scalar_t* __restrict__ grad_centers, const scalar_t* __restrict__ centers,
                      const acc_t* __restrict__ mass, int64_t rows, int64_t channels, scalar_t* __restrict__ scaled,
                      acc_t* __restrict__ row_terms) {
  __shared__ acc_t partial[kThreads];
  for (int64_t bk = blockIdx.x; bk < rows; bk += gridDim.x) {
    const acc_t n = mass[bk];
    acc_t term = acc_t(0);
    for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) {
      const int64_t i = bk * channels + c;
      const scalar_t ds = convert<scalar_t>(n != acc_t(0) ? convert<acc_t>(grad_centers[i]) / n : acc_t(0));
      scaled[i] = ds;
      term += convert<acc_t>(ds) * convert<acc_t>(centers[i]);
    }
    const acc_t r = block_sum(term, partial);
    if (threadIdx.x == 0) row_terms[bk] = r;
  }
}

// Grid-stride over (B,K,P): grad_probs[bk,j] -= r[bk], in place.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    subtract_rows_kernel(const acc_t* __restrict__ row_terms, int64_t rows, int64_t pixels,
                         scalar_t* __restrict__ grad_probs) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * pixels; i += stride) {
    grad_probs[i] = convert<scalar_t>(convert<acc_t>(grad_probs[i]) - row_terms[i / pixels]);
  }
}

unsigned blocks_for(int64_t work) { return static_cast<unsigned>(std::clamp<int64_t>(work, 1, kMaxBlocks)); }

}  // namespace

template <typename scalar_t>
cudaError_t soft_class_pool_normalise(const scalar_t* probs, int64_t rows, int64_t pixels, int64_t channels,
                                      scalar_t* centers, acc_type<scalar_t>* mass, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  launch(normalise_kernel<scalar_t, acc_type<scalar_t>>, blocks_for(rows), kThreads, 0, stream, probs, rows, pixels,
         channels, centers, mass);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t soft_class_pool_scale_grad(const scalar_t* grad_centers, const scalar_t* centers,
                                       const acc_type<scalar_t>* mass, int64_t rows, int64_t channels,
                                       scalar_t* scaled, acc_type<scalar_t>* row_terms, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  launch(scale_grad_kernel<scalar_t, acc_type<scalar_t>>, blocks_for(rows), kThreads, 0, stream, grad_centers,
         centers, mass, rows, channels, scaled, row_terms);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t soft_class_pool_subtract_rows(const acc_type<scalar_t>* row_terms, int64_t rows, int64_t pixels,
                                          scalar_t* grad_probs, cudaStream_t stream) {
  if (rows * pixels == 0) return cudaSuccess;
  launch(subtract_rows_kernel<scalar_t, acc_type<scalar_t>>, blocks_for((rows * pixels + kThreads - 1) / kThreads),
         kThreads, 0, stream, row_terms, rows, pixels, grad_probs);
  return cudaGetLastError();
}

#define FASTSEG_INSTANTIATE(T)                                                                                     \
  template cudaError_t soft_class_pool_normalise<T>(const T*, int64_t, int64_t, int64_t, T*, acc_type<T>*,       \
                                                    cudaStream_t);                                                \
  template cudaError_t soft_class_pool_scale_grad<T>(const T*, const T*, const acc_type<T>*, int64_t, int64_t,   \
                                                     T*, acc_type<T>*, cudaStream_t);                             \
  template cudaError_t soft_class_pool_subtract_rows<T>(const acc_type<T>*, int64_t, int64_t, T*, cudaStream_t);
FASTSEG_FOR_FLOATING_TYPES(FASTSEG_INSTANTIATE)
#undef FASTSEG_INSTANTIATE

}  // namespace fastseg::cuda
