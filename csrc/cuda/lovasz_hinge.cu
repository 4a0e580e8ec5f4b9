// CUDA Lovász hinge (Berman et al. 2018 Eq. 8-9; CSFRNet Eq. 4), deterministic: no atomics.
//
// Forward: errors_kernel writes the hinge errors (-inf for invalid pixels, so they sort last) and
// the pixel indices; one cub::DeviceSegmentedSort sorts every row by decreasing error, the indices
// landing in the permutation output. scan_kernel (one block per row) counts the row's positives,
// then walks the sorted row in tiles: it gathers label and validity through the permutation, scans
// the packed counts (positives << 32 | negatives) with cub::BlockScan carrying the running total
// across tiles, and writes the Jaccard-gradient weights and the row's loss (fixed-order reduction).
// Backward: grad_logits[n, permutation[n,j]] = grad_loss[n] * weights[n,j], one thread per element.
#include "cuda/common.cuh"
#include "cuda/lovasz_hinge.h"

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_sort.cuh>

#include <algorithm>

namespace fastseg::cuda {
namespace {

constexpr int kScanThreads = 512;
constexpr int kElementwiseThreads = 256;
constexpr int64_t kMaxBlocks = 65535LL * 8;
constexpr size_t kAlignment = 256;
constexpr long long kPositive = 1LL << 32;  // one positive in the packed counts; one negative is 1

size_t aligned(size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

// The workspace's pieces, carved in this order from one allocation.
template <typename acc_t>
struct Workspace {
  acc_t* errors;
  acc_t* sorted_errors;
  int64_t* indices;
  int64_t* offsets;
  void* sort_storage;
  size_t sort_bytes;
};

template <typename acc_t>
size_t fixed_bytes(int64_t rows, int64_t pixels) {
  const size_t elements = static_cast<size_t>(rows * pixels);
  return 2 * aligned(elements * sizeof(acc_t)) + aligned(elements * sizeof(int64_t)) +
         aligned(static_cast<size_t>(rows + 1) * sizeof(int64_t));
}

template <typename acc_t>
Workspace<acc_t> carve(void* base, size_t bytes, int64_t rows, int64_t pixels) {
  const size_t elements = static_cast<size_t>(rows * pixels);
  unsigned char* at = static_cast<unsigned char*>(base);
  Workspace<acc_t> w;
  w.errors = reinterpret_cast<acc_t*>(at);
  at += aligned(elements * sizeof(acc_t));
  w.sorted_errors = reinterpret_cast<acc_t*>(at);
  at += aligned(elements * sizeof(acc_t));
  w.indices = reinterpret_cast<int64_t*>(at);
  at += aligned(elements * sizeof(int64_t));
  w.offsets = reinterpret_cast<int64_t*>(at);
  at += aligned(static_cast<size_t>(rows + 1) * sizeof(int64_t));
  w.sort_storage = at;
  w.sort_bytes = bytes - fixed_bytes<acc_t>(rows, pixels);
  return w;
}

template <typename acc_t>
cudaError_t segmented_sort(const Workspace<acc_t>& w, void* storage, size_t& storage_bytes, int64_t rows,
                           int64_t pixels, int64_t* permutation, cudaStream_t stream) {
  return cub::DeviceSegmentedSort::SortPairsDescending(storage, storage_bytes, w.errors, w.sorted_errors, w.indices,
                                                       permutation, rows * pixels, rows, w.offsets, w.offsets + 1,
                                                       stream);
}

unsigned blocks_for(int64_t elements) {
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(ceil_div(elements, kElementwiseThreads), 1),
                                                 kMaxBlocks));
}

template <typename scalar_t, typename acc_t>
__global__ void errors_kernel(const scalar_t* __restrict__ logits, const bool* __restrict__ labels,
                              const bool* __restrict__ valid, int64_t rows, int64_t pixels, acc_t* __restrict__ errors,
                              int64_t* __restrict__ indices, int64_t* __restrict__ offsets) {
  const int64_t total = rows * pixels;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += stride) {
    const acc_t sign = labels[i] ? acc_t(1) : acc_t(-1);
    const bool keep = valid == nullptr || valid[i];
    errors[i] = keep ? acc_t(1) - convert<acc_t>(logits[i]) * sign : acc_t(-INFINITY);
    indices[i] = i % pixels;
  }
  for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n <= rows; n += stride) offsets[n] = n * pixels;
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
  using CountReduce = cub::BlockReduce<long long, kScanThreads>;
  using CountScan = cub::BlockScan<long long, kScanThreads>;
  using LossReduce = cub::BlockReduce<acc_t, kScanThreads>;
  __shared__ union {
    typename CountReduce::TempStorage count_reduce;
    typename CountScan::TempStorage count_scan;
    typename LossReduce::TempStorage loss_reduce;
  } temp;
  __shared__ long long row_positives;
  const int64_t row = int64_t(blockIdx.x) * pixels;

  long long count = 0;
  for (int64_t p = threadIdx.x; p < pixels; p += kScanThreads) {
    count += (labels[row + p] && (valid == nullptr || valid[row + p])) ? 1 : 0;
  }
  const long long positives = CountReduce(temp.count_reduce).Sum(count);
  if (threadIdx.x == 0) row_positives = positives;
  __syncthreads();
  const acc_t gts = convert<acc_t>(row_positives);

  long long carry = 0;
  acc_t partial = acc_t(0);
  for (int64_t p0 = 0; p0 < pixels; p0 += kScanThreads) {
    const int64_t j = p0 + threadIdx.x;
    const int64_t index = j < pixels ? permutation[row + j] : -1;
    const bool inside = index >= 0 && index < pixels;
    const bool keep = inside && (valid == nullptr || valid[row + index]);
    const bool positive = keep && labels[row + index];
    const long long step = positive ? kPositive : (keep ? 1LL : 0LL);
    long long inclusive = 0, tile_total = 0;
    CountScan(temp.count_scan).InclusiveSum(step, inclusive, tile_total);
    __syncthreads();
    inclusive += carry;
    carry += tile_total;
    // Eq. 9: g_j = J(counts through j) - J(counts before j)
    const acc_t grad = jaccard(gts, inclusive) - jaccard(gts, inclusive - step);
    if (j < pixels) {
      const acc_t error = sorted_errors[row + j];
      const bool active = keep && error > acc_t(0);
      partial += active ? error * grad : acc_t(0);  // Eq. 8 with relu(errors)
      weights[row + j] = active ? (positive ? -grad : grad) : acc_t(0);
    }
  }
  const acc_t loss = LossReduce(temp.loss_reduce).Sum(partial);
  if (threadIdx.x == 0) losses[blockIdx.x] = convert<scalar_t>(loss);
}

template <typename scalar_t, typename acc_t>
__global__ void scatter_kernel(const scalar_t* __restrict__ grad_loss, const int64_t* __restrict__ permutation,
                               const acc_t* __restrict__ weights, int64_t rows, int64_t pixels,
                               scalar_t* __restrict__ grad_logits) {
  const int64_t total = rows * pixels;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += stride) {
    const int64_t n = i / pixels, index = permutation[i];
    if (index < 0 || index >= pixels) continue;
    grad_logits[n * pixels + index] = convert<scalar_t>(convert<acc_t>(grad_loss[n]) * weights[i]);
  }
}

}  // namespace

template <typename scalar_t>
cudaError_t lovasz_hinge_workspace(int64_t rows, int64_t pixels, size_t* bytes) {
  using acc_t = acc_type<scalar_t>;
  size_t sort_bytes = 0;
  Workspace<acc_t> none{};
  cudaError_t error = segmented_sort(none, nullptr, sort_bytes, rows, pixels, nullptr, nullptr);
  if (error != cudaSuccess) return error;
  *bytes = fixed_bytes<acc_t>(rows, pixels) + aligned(sort_bytes);
  return cudaSuccess;
}

template <typename scalar_t>
cudaError_t lovasz_hinge_forward(const scalar_t* logits, const bool* labels, const bool* valid, int64_t rows,
                                 int64_t pixels, void* workspace, size_t workspace_bytes, scalar_t* losses,
                                 int64_t* permutation, acc_type<scalar_t>* weights, cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  if (rows == 0) return cudaSuccess;
  if (pixels == 0) return cudaMemsetAsync(losses, 0, rows * sizeof(scalar_t), stream);
  Workspace<acc_t> w = carve<acc_t>(workspace, workspace_bytes, rows, pixels);
  errors_kernel<scalar_t, acc_t><<<blocks_for(rows * pixels), kElementwiseThreads, 0, stream>>>(
      logits, labels, valid, rows, pixels, w.errors, w.indices, w.offsets);
  cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) return error;
  error = segmented_sort(w, w.sort_storage, w.sort_bytes, rows, pixels, permutation, stream);
  if (error != cudaSuccess) return error;
  scan_kernel<scalar_t, acc_t><<<static_cast<unsigned>(rows), kScanThreads, 0, stream>>>(
      w.sorted_errors, permutation, labels, valid, pixels, losses, weights);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t lovasz_hinge_backward(const scalar_t* grad_loss, const int64_t* permutation,
                                  const acc_type<scalar_t>* weights, int64_t rows, int64_t pixels,
                                  scalar_t* grad_logits, cudaStream_t stream) {
  if (rows * pixels == 0) return cudaSuccess;
  cudaError_t error = cudaMemsetAsync(grad_logits, 0, rows * pixels * sizeof(scalar_t), stream);
  if (error != cudaSuccess) return error;
  scatter_kernel<scalar_t, acc_type<scalar_t>><<<blocks_for(rows * pixels), kElementwiseThreads, 0, stream>>>(
      grad_loss, permutation, weights, rows, pixels, grad_logits);
  return cudaGetLastError();
}

#define FASTSEG_INSTANTIATE(T)                                                                                  \
  template cudaError_t lovasz_hinge_workspace<T>(int64_t, int64_t, size_t*);                                    \
  template cudaError_t lovasz_hinge_forward<T>(const T*, const bool*, const bool*, int64_t, int64_t, void*,     \
                                               size_t, T*, int64_t*, acc_type<T>*, cudaStream_t);               \
  template cudaError_t lovasz_hinge_backward<T>(const T*, const int64_t*, const acc_type<T>*, int64_t, int64_t, \
                                                T*, cudaStream_t);
FASTSEG_FOR_FLOATING_TYPES(FASTSEG_INSTANTIATE)
#undef FASTSEG_INSTANTIATE

}  // namespace fastseg::cuda
