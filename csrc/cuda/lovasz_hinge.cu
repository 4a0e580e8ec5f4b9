// CUDA Lovász hinge (Berman et al. 2018 Eq. 8-9; CSFRNet Eq. 4), deterministic: no atomics.
//
// Forward, three paths (chosen in the glue, csrc/cuda_glue/lovasz_hinge.cpp):
// - fused (rows of P <= kLovaszFusedMaxPixels = 2^14 in fp16/bf16/fp32): fused_forward_kernel, one
//   512-thread block per row, one launch. It writes the row's hinge errors as order-preserving
//   descending keys (-inf for invalid pixels, so they sort last) and 16-bit values (pixel index |
//   positive | keep) into shared memory, sorts the pairs with block_radix_sort (stable LSD, 4 passes
//   of 8-bit digits ranked per warp with __match_any_sync, so tied errors keep pixel order exactly as
//   at::sort(stable=True)), and scans the sorted row with scan_sorted_row, the scan of every path.
// - packed (longer fp16/bf16/fp32 rows whose keys fit 64 bits, PackedKeyLayout of lovasz_hinge.h):
//   packed_keys_kernel writes one 64-bit key per pixel, [row][descending key of the fp32 error]
//   [pixel][positive][valid] from the top bit; one device-wide keys-only radix sort
//   (cub::DeviceRadixSort::SortKeys behind cuda/radix_sort.cuh) orders bits [p + 2, p + 34 + r),
//   row then error: LSD and stable over keys written in pixel order, so tied errors keep pixel
//   order; the sorted keys hold everything the scan needs (no permutation, no gathers). The rows,
//   contiguous in the sorted keys, are scanned in chunks of kPackedChunk ranks by every SM:
//   packed_count_kernel (each chunk's counts), packed_scan_kernel (gts and the carry from them,
//   scan_sorted_row over the chunk), packed_loss_kernel (chunk losses summed in order).
// - sort (fp64, whose 64-bit errors do not fit the packed key, and rows x pixels too many for it):
//   errors_kernel writes the hinge errors; the glue sorts every row by decreasing error (at::sort,
//   stable), giving the sorted errors and the permutation; scan_kernel counts the row's positives
//   and runs scan_sorted_row, gathering label and validity through the permutation.
// scan_sorted_row walks a rank range of a sorted row in tiles of kScanThreads x items ranks, scans
// the packed counts (positives << 32 | negatives) with a warp-shuffle block scan carrying the
// running total across tiles, and writes the Jaccard-gradient weights in pixel order,
// weights[n, permutation[n,j]], so that nothing of the sort outlives the forward, and returns the
// range's loss (fixed-order reductions throughout). No host synchronisation at any row count: the
// fused path is one launch whose only other host call is cudaFuncSetAttribute (no stream work,
// allowed during CUDA-graph capture); the packed path's sort size query does no stream work, its
// storage comes from the caching allocator and CUB only enqueues kernels and memsets on the stream
// (not run on a GPU yet).
// Backward: grad_logits[n,p] = grad_loss[n] * weights[n,p], a streaming multiply (scale_kernel).
//
// Cost model at the GPU shapes of
// bench/bench_lovasz_hinge.py (forward+backward; H200: 4.8 TB/s HBM, 50 MB L2, 67 TFLOP/s fp32,
// 989 TFLOP/s dense bf16, ~3 us per dependent launch, 132 SMs at 1.98 GHz, each issuing 128 thread
// instructions and one 128 B shared-memory wavefront per clock, 228 KB shared memory per SM). The
// floor is max(bytes / bandwidth, FLOPs / peak) of the benchmark's byte and FLOP counts (18 B per
// element: logits, labels, valid, weights written and read, grad_logits); the prediction is this
// design's, derived below. bench/report.py reads the `predicted H200` lines (the one place these
// numbers live) into the "predicted" column of bench/RESULTS.md.
// 97x97 (152 rows of 9409 pixels, fp32): the fused path. Global traffic is the floor's 18 B/element
// (the row's weights are scattered within 37 KB that stay in L2 and leave it in whole sectors); the
// time is the sort's, on shared memory. Per pass and 32 pixels (one warp step), in wavefronts (the
// most distinct words in one bank, averaged by a bank model over the benchmark's rows: logits
// uniform in [-1, 1], 5% positive, 10% ignored): ranking 6.1 (key load 1; the warp's digit counter read
// by the peers and bumped by the highest one, 2.5 each: ~30 distinct digits of 256 over 32 banks;
// the last pass, sign and exponent, has few digits and 1 each), scatter 9.5 (counter read 2.5,
// value load 1, key and value stores 3 each: ~30 runs at random banks), the counters' zeroing
// (256 per warp) and digit-major scan (4096 read and written, conflict-free) 1.3 per 32 pixels of
// the row: ~17 wavefronts, 0.53 clocks per pixel per pass. Instructions, ~46 per pixel per pass
// (PTX of the two loops: digit, match, rank, two __syncwarp, scatter addresses) plus __match_any_
// sync at ~12 (taken as 8-16 ordinary instructions on sm_90; no published figure), ~58, 0.45 clocks
// per pixel at 128 per clock: just below the shared memory, so issue and shared memory both near
// their limits. 4 passes: ~2.1 clocks per pixel, 19.9k clocks, 10.0 us per row (the 4-bit sort's 8
// passes of ~14 wavefronts took 32.9k). The ranking's chain through a warp's counter (load, add,
// store, __syncwarp: ~60 clocks per step, 19 steps per pass) hides behind the other 15 warps. Plus
// the scan (19 tiles of 3 barriers and 10 shuffle steps, ~3k clocks, 1.5 us), the sort's 24
// barriers (~1.2k clocks, 0.6 us) and the row's 56 KB of inputs (~1.6 us): ~13.7 us per row. The
// block needs 126 KB of shared memory (12 B per pixel: keys 4 B and values 2 B, double-buffered; +
// 16.1 KB of counters, 16 warps x 258 x 4 B), so two blocks (253 KB) do not fit an SM's 228 KB:
// one block per SM, and the 152 rows on 132 SMs take two rounds on 20 SMs: 27.4 us, + 3 us
// launch; backward 11 MB at ~60% of bandwidth + launch, 7 us: 0.037 ms.
// Bound: the shared-memory wavefronts of the sort (mostly the counter accesses and scattered stores
// at ~3 distinct banks per 32 lanes) with instruction issue close behind, and the second round of
// rows; nearer the floor needs a row split over a 2-block cluster (two rows per SM would need 253
// KB) and fewer scatter conflicts.
// 769x769 (38 rows of 591361 pixels, fp32): the packed path, r = 6 row bits, p = 20 pixel bits, a
// sort of 38 key bits. Per element: keys 14 B (logits, labels, valid in, the 8 B key out); CUB's
// onesweep sort of 64-bit keys, 8-bit digits: one histogram read of the keys (8 B) and
// ceil(38 / 8) = 5 passes reading and writing them (80 B); chunk counts 8 B (sorted keys); scan
// 12 B (sorted keys, weights); backward 8 B (read weights, write grad_logits): 130 B (the sort path
// took ~182 B: ~5 passes of a 4 B key and an 8 B index, the errors, the iota, the gathers, and
// partial-sector weight writes). The chunk blocks start row by row, so the ~264 resident ones (2
// per SM at 64 registers x 512 threads) scatter their weights within ~4 rows, <= 10 MB that stay in
// L2 until their sectors are whole: 4 B, not the ~18 B of one block per row over all rows' 90 MB.
// Times: the coalesced 46 B (keys, histogram, counts, scan reads, backward) at 4.1 TB/s, 0.252 ms;
// the onesweep passes' 80 B (digit-scattered writes) and the weights' 4 B at ~60% of bandwidth
// (2.88 TB/s), 0.624 + 0.031 ms; the scan's ~75 instructions per rank (key decode, two Jaccard
// divisions, the loss term) on all 132 SMs, 0.050 ms, hide under its memory; 17 launches (keys; CUB's
// histogram, exclusive sum and 5 x (lookback memset, onesweep); count, scan, loss; backward) x ~3
// us, 0.051 ms: 0.959 ms. Bound: the sort's five passes over 8 B keys (0.62 ms), which the floor
// does not count; fewer would need fewer key bits (a per-row sort, whose 2.4 MB rows do not fit one
// SM) or a 32-bit key. Storage: keys 2 x 180 MB and CUB's temporary storage (its alternate buffer,
// 180 MB) from the caching allocator.
// predicted H200 | lovasz_hinge 97x97 N=152 fwd+bwd | 0.037 ms | shared-memory radix sort, 2 rounds of rows on 20 SMs (floor 0.005 ms)
// predicted H200 | lovasz_hinge 769x769 N=38 fwd+bwd | 0.959 ms | radix sort passes (floor 0.084 ms)
#include "cuda/common.cuh"
#include "cuda/lovasz_hinge.h"
#include "cuda/radix_sort.cuh"

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
// Ranks per thread and tile of the scans of rows sorted in global memory: 8 independent loads per
// thread in flight before the tile's barriers (one block scanning a 591361-pixel row of the sort
// path waits out 145 load latencies rather than 1155).
constexpr int kGlobalScanItems = 8;
// The fused path's block radix sort: 8-bit digits, 4 passes over the 32-bit key (an even count, so
// the sorted pairs end in the first of the two buffers). Values pack the pixel index (14 bits,
// kLovaszFusedMaxPixels = 2^14) with the pixel's positive and keep flags.
constexpr int kDigitBits = 8;
constexpr int kDigits = 1 << kDigitBits;
constexpr int kKeyBits = 32;
static_assert((kKeyBits / kDigitBits) % 2 == 0, "the sorted pairs must end in the first buffer");
constexpr unsigned kIndexMask = (1u << 14) - 1;
constexpr unsigned kPositiveBit = 1u << 14;
constexpr unsigned kKeepBit = 1u << 15;
static_assert(kLovaszFusedMaxPixels - 1 <= kIndexMask, "pixel indices must fit the value's index bits");

unsigned blocks_for(int64_t elements) {
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(ceil_div(elements, kElementwiseThreads), 1),
                                                 kMaxBlocks));
}

// The hinge error of one pixel (Eq. 8's 1 - m_i y_i), -inf for an ignored pixel so it sorts last.
template <typename acc_t, typename scalar_t>
__device__ acc_t hinge_error(scalar_t logit, bool label, bool keep) {
  return keep ? acc_t(1) - convert<acc_t>(logit) * (label ? acc_t(1) : acc_t(-1)) : acc_t(-INFINITY);
}

template <typename scalar_t, typename acc_t>
__global__ void errors_kernel(const scalar_t* __restrict__ logits, const bool* __restrict__ labels,
                              const bool* __restrict__ valid, int64_t elements, acc_t* __restrict__ errors) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < elements; i += stride) {
    errors[i] = hinge_error<acc_t>(logits[i], labels[i], valid == nullptr || valid[i]);
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

__device__ unsigned float_bits(float value) {
  unsigned bits;
  memcpy(&bits, &value, sizeof(bits));
  return bits;
}

__device__ float bits_float(unsigned bits) {
  float value;
  memcpy(&value, &bits, sizeof(value));
  return value;
}

// A key whose increasing unsigned order is the error's decreasing order: the sign-magnitude bits
// flipped into an order-preserving unsigned, then complemented. -0 is keyed as +0 and every NaN as
// the positive quiet NaN (first, as in PyTorch's descending sort); -inf (ignored pixels) last.
__device__ unsigned descending_key(float error) {
  const float canonical = error == 0.0f ? 0.0f : (error != error ? NAN : error);
  const unsigned bits = float_bits(canonical);
  return ~((bits & 0x80000000u) ? ~bits : bits | 0x80000000u);
}

__device__ float error_of_key(unsigned key) {
  const unsigned ordered = ~key;
  return bits_float((ordered & 0x80000000u) ? ordered & 0x7fffffffu : ~ordered);
}

// The pixel at rank j of a row sorted by decreasing error.
template <typename acc_t>
struct RankedPixel {
  acc_t error;
  int64_t index;  // its pixel in the row; outside [0, P) where the permutation names none
  bool keep;      // valid
  bool positive;  // labelled positive and valid
};

// A row sorted in global memory by the glue's at::sort: errors by rank, label and validity gathered
// through the permutation (L2 hits).
template <typename acc_t>
struct GlobalSortedRow {
  const acc_t* sorted_errors;  // (P,) of the row
  const int64_t* permutation;  // (P,) of the row
  const bool* labels;          // (P,) of the row
  const bool* valid;           // (P,) of the row, or null
  int64_t pixels;

  __device__ RankedPixel<acc_t> operator()(int64_t j) const {
    const int64_t index = permutation[j];
    const bool inside = index >= 0 && index < pixels;
    const bool keep = inside && (valid == nullptr || valid[index]);
    return {sorted_errors[j], index, keep, keep && labels[index]};
  }
};

// Scans ranks [begin, end) of one row in tiles of kScanThreads * items ranks, each thread the
// `items` consecutive ranks of its slot (every thread of the block calls it): Eq. 9's Jaccard
// gradient from the packed running counts (positives << 32 | negatives; `carry` those of the ranks
// before begin, then the thread's own sum and a block scan carrying the total across tiles), the
// weights d loss / d logit in pixel order into weights (P,), and, returned to every thread, the
// ranks' share of the row's loss (Eq. 8, fixed-order reduction). `ranked(j)` is the pixel at rank
// j < P; gts the row's valid positives. Rows in shared memory take items = 1 (conflict-free rank
// reads); rows in global memory take kGlobalScanItems, whose loads are all in flight at once.
template <int items, typename acc_t, typename SortedRow>
__device__ acc_t scan_sorted_row(const SortedRow& ranked, int64_t begin, int64_t end, int64_t pixels, acc_t gts,
                                 long long carry, acc_t* __restrict__ weights) {
  acc_t partial = acc_t(0);
  for (int64_t p0 = begin; p0 < end; p0 += int64_t(kScanThreads) * items) {
    const int64_t first = p0 + int64_t(threadIdx.x) * items;
    RankedPixel<acc_t> pixel[items];
    long long step[items];
    long long own = 0;
#pragma unroll
    for (int i = 0; i < items; ++i) {
      pixel[i] = first + i < end ? ranked(first + i) : RankedPixel<acc_t>{acc_t(0), -1, false, false};
      step[i] = pixel[i].positive ? kPositive : (pixel[i].keep ? 1LL : 0LL);
      own += step[i];
    }
    long long tile_total = 0;
    long long inclusive = block_inclusive_sum(own, tile_total) - own + carry;
    carry += tile_total;
#pragma unroll
    for (int i = 0; i < items; ++i) {
      inclusive += step[i];
      // Eq. 9: g_j = J(counts through j) - J(counts before j)
      const acc_t grad = jaccard(gts, inclusive) - jaccard(gts, inclusive - step[i]);
      if (pixel[i].index >= 0 && pixel[i].index < pixels) {  // j < end; the sort visits every pixel once
        const bool active = pixel[i].keep && !(pixel[i].error <= acc_t(0));  // a NaN error is active: NaN loss out
        partial += active ? pixel[i].error * grad : acc_t(0);               // Eq. 8 with relu(errors)
        weights[pixel[i].index] = active ? (pixel[i].positive ? -grad : grad) : acc_t(0);  // pixel order
      }
    }
  }
  return block_sum(partial);
}

// The row's valid positives (gts of Eq. 9), read in pixel order; every thread of the block calls it.
template <typename acc_t>
__device__ acc_t row_positives(const bool* __restrict__ labels, const bool* __restrict__ valid, int64_t pixels) {
  long long count = 0;
  for (int64_t p = threadIdx.x; p < pixels; p += kScanThreads) {
    count += (labels[p] && (valid == nullptr || valid[p])) ? 1 : 0;
  }
  return convert<acc_t>(block_sum(count));
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kScanThreads)
    scan_kernel(const acc_t* __restrict__ sorted_errors, const int64_t* __restrict__ permutation,
                const bool* __restrict__ labels, const bool* __restrict__ valid, int64_t pixels,
                scalar_t* __restrict__ losses, acc_t* __restrict__ weights) {
  const int64_t row = int64_t(blockIdx.x) * pixels;
  const bool* row_valid = valid == nullptr ? nullptr : valid + row;
  const acc_t gts = row_positives<acc_t>(labels + row, row_valid, pixels);
  const GlobalSortedRow<acc_t> ranked{sorted_errors + row, permutation + row, labels + row, row_valid, pixels};
  const acc_t loss = scan_sorted_row<kGlobalScanItems>(ranked, 0, pixels, pixels, gts, 0, weights + row);
  if (threadIdx.x == 0) losses[blockIdx.x] = convert<scalar_t>(loss);
}

// --- Packed path: long fp16/bf16/fp32 rows, one device-wide keys-only radix sort ---
// A pixel's 64-bit key, from the most significant bit (PackedKeyLayout of lovasz_hinge.h):
// [row: row_bits][descending_key(error): 32][pixel: pixel_bits][positive: 1][keep: 1]. Sorting bits
// [pixel_bits + 2, pixel_bits + 34 + row_bits) orders by row, then by decreasing error; the keys are
// written in pixel order and the LSD sort is stable, so tied errors keep pixel order.

// Writes every pixel's key in pixel order; rows on grid.y, pixels on grid.x (no division).
template <typename scalar_t>
__global__ void packed_keys_kernel(const scalar_t* __restrict__ logits, const bool* __restrict__ labels,
                                   const bool* __restrict__ valid, int64_t rows, int64_t pixels, int pixel_bits,
                                   uint64_t* __restrict__ keys) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int row_shift = pixel_bits + 2 + kKeyBits;  // 64 only for a single row (row_bits 0)
  for (int64_t n = blockIdx.y; n < rows; n += gridDim.y) {
    const uint64_t row_key = row_shift < 64 ? uint64_t(n) << row_shift : 0;
    const int64_t row = n * pixels;
    for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < pixels; p += stride) {
      const bool keep = valid == nullptr || valid[row + p];
      const bool label = labels[row + p];
      const unsigned error_key = descending_key(hinge_error<float>(logits[row + p], label, keep));
      keys[row + p] = row_key | (uint64_t(error_key) << (pixel_bits + 2)) | (uint64_t(p) << 2) |
                      (keep && label ? 2u : 0u) | (keep ? 1u : 0u);
    }
  }
}

// A row of the sorted keys: every field of the pixel at rank j is in its key.
struct PackedSortedRow {
  const uint64_t* keys;  // (P,) of the row, sorted
  int pixel_bits;

  __device__ RankedPixel<float> operator()(int64_t j) const {
    const uint64_t key = keys[j];
    const int64_t index = int64_t((key >> 2) & ((uint64_t(1) << pixel_bits) - 1));
    return {error_of_key(static_cast<unsigned>(key >> (pixel_bits + 2))), index, (key & 1u) != 0, (key & 2u) != 0};
  }
};

// The sorted rows are scanned in chunks of kPackedChunk ranks, one block each (chunk c of row n on
// blockIdx.x = c, blockIdx.y = n; the row's keys are sorted_keys[n * P, (n + 1) * P), its row bits
// sorting first), so that every SM scans, not one per row.
constexpr int64_t kPackedChunk = 2 * int64_t(kScanThreads) * kGlobalScanItems;

// counts[n * chunks + c]: the packed counts (positives << 32 | negatives) of chunk c of row n.
__global__ void __launch_bounds__(kScanThreads)
    packed_count_kernel(const uint64_t* __restrict__ sorted_keys, int64_t pixels, long long* __restrict__ counts) {
  const int64_t row = int64_t(blockIdx.y) * pixels;
  const int64_t end = std::min<int64_t>(pixels, (int64_t(blockIdx.x) + 1) * kPackedChunk);
  long long count = 0;
  for (int64_t j = blockIdx.x * kPackedChunk + threadIdx.x; j < end; j += kScanThreads) {
    const uint64_t key = sorted_keys[row + j];
    count += (key & 2u) ? kPositive : (key & 1u) ? 1LL : 0LL;
  }
  const long long total = block_sum(count);
  if (threadIdx.x == 0) counts[int64_t(blockIdx.y) * gridDim.x + blockIdx.x] = total;
}

// Scans chunk c of row n from the counts of the row's chunks (gts: all positives; carry: the
// chunks before c) into weights and the chunk's loss, chunk_losses[n * chunks + c].
__global__ void __launch_bounds__(kScanThreads)
    packed_scan_kernel(const uint64_t* __restrict__ sorted_keys, const long long* __restrict__ counts,
                       int64_t pixels, int pixel_bits, float* __restrict__ chunk_losses, float* __restrict__ weights) {
  const int64_t row = int64_t(blockIdx.y) * pixels;
  const long long* row_counts = counts + int64_t(blockIdx.y) * gridDim.x;
  long long positives = 0, before = 0;
  for (unsigned c = threadIdx.x; c < gridDim.x; c += kScanThreads) {
    positives += row_counts[c] >> 32;
    before += c < blockIdx.x ? row_counts[c] : 0LL;
  }
  const float gts = convert<float>(block_sum(positives));
  const long long carry = block_sum(before);
  const int64_t begin = int64_t(blockIdx.x) * kPackedChunk;
  const float loss = scan_sorted_row<kGlobalScanItems>(PackedSortedRow{sorted_keys + row, pixel_bits}, begin,
                                                       std::min<int64_t>(pixels, begin + kPackedChunk), pixels, gts,
                                                       carry, weights + row);
  if (threadIdx.x == 0) chunk_losses[int64_t(blockIdx.y) * gridDim.x + blockIdx.x] = loss;
}

// losses[n]: the sum of row n's chunk losses in chunk order (a fixed-order block reduction).
template <typename scalar_t>
__global__ void __launch_bounds__(kScanThreads)
    packed_loss_kernel(const float* __restrict__ chunk_losses, int64_t chunks, scalar_t* __restrict__ losses) {
  float partial = 0.0f;
  for (int64_t c = threadIdx.x; c < chunks; c += kScanThreads) partial += chunk_losses[blockIdx.x * chunks + c];
  const float loss = block_sum(partial);
  if (threadIdx.x == 0) losses[blockIdx.x] = convert<scalar_t>(loss);
}

// --- Fused path: rows of at most kLovaszFusedMaxPixels, fp32 errors, one block per row ---

// A row sorted in shared memory by block_radix_sort.
struct SharedSortedRow {
  const unsigned* keys;          // (P,) descending_key by rank
  const unsigned short* values;  // (P,) pixel index | kPositiveBit | kKeepBit by rank

  __device__ RankedPixel<float> operator()(int64_t j) const {
    const unsigned value = values[j];
    return {error_of_key(keys[j]), int64_t(value & kIndexMask), (value & kKeepBit) != 0, (value & kPositiveBit) != 0};
  }
};

// The digit counters of block_radix_sort, counters[w][d] (warp w, digit d; 32-bit) in warp-major
// order at word w * kCounterWarpStride + d: a warp ranks and scatters through its own 256 (banks
// (2 w + d) % 32). The scan gives thread t digit t / 2 and the kScanEntries warps from
// (t % 2) * kScanEntries on: for each entry its lanes l read banks (l / 2 + 16 (l % 2) + c) % 32,
// distinct, as kScanEntries * kCounterWarpStride = 16 (mod 32).
constexpr int kCounterWarpStride = kDigits + 2;
constexpr int kCounterSlots = kWarps * kCounterWarpStride;
constexpr int kScanEntries = kDigits * kWarps / kScanThreads;
static_assert(kWarps == 2 * kScanEntries, "the scan gives each digit's counters to two threads");
static_assert((kScanEntries * kCounterWarpStride) % 32 == 16, "the scan's counter reads must be conflict-free");
// Keys per lane of a warp's chunk, kept in registers through a pass.
constexpr int kSortItems = kLovaszFusedMaxPixels / kScanThreads;
static_assert(kSortItems * kScanThreads == kLovaszFusedMaxPixels, "a row must fit the lanes' registers");

// Stable LSD radix sort of n <= kLovaszFusedMaxPixels (key, value) pairs by increasing key in shared
// memory (every thread of the block calls it): keys and values hold two buffers of n each, the
// pairs start and end in the first. Each pass is a counting sort of one kDigitBits digit: warp w
// owns the ranks [w * 32 items, (w + 1) * 32 items) and walks them 32 at a time in order; the lanes
// with equal digits find each other (__match_any_sync), so a key's rank among its warp's keys of
// that digit is the warp's running count of the digit plus its peers on lower lanes, and the
// highest peer bumps the count. The counters are scanned in digit-major order (digit, then warp),
// and each key goes to its (digit, warp) offset plus its rank, so pairs with equal keys keep their
// order (ties stay in pixel order).
__device__ void block_radix_sort(unsigned* keys, unsigned short* values, unsigned* counters, int n) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const unsigned lanes_below = (1u << lane) - 1u;
  const int items = (n + kScanThreads - 1) / kScanThreads;  // keys per lane, uniform over the block
  const int begin = warp * 32 * items + lane;                // this lane's first key; then every 32nd
  unsigned* own = counters + warp * kCounterWarpStride;      // own[d]: this warp's counter of digit d
  // scanned[j * kCounterWarpStride]: entry j of this thread's kScanEntries in the digit-major scan
  unsigned* scanned = counters + (threadIdx.x % 2) * kScanEntries * kCounterWarpStride + threadIdx.x / 2;
  unsigned key[kSortItems], rank[kSortItems];
  for (int shift = 0; shift < kKeyBits; shift += kDigitBits) {
    const int source = (shift / kDigitBits) % 2;
    const unsigned* keys_in = keys + source * n;
    const unsigned short* values_in = values + source * n;
    unsigned* keys_out = keys + (1 - source) * n;
    unsigned short* values_out = values + (1 - source) * n;
    for (int d = lane; d < kDigits; d += 32) own[d] = 0;
    __syncwarp();
#pragma unroll
    for (int k = 0; k < kSortItems; ++k) {
      if (k < items) {
        const int i = begin + 32 * k;
        const bool inside = i < n;
        key[k] = inside ? keys_in[i] : 0u;
        const unsigned digit = (key[k] >> shift) & (kDigits - 1);
        // lanes past the row match only each other (kDigits is no digit)
        const unsigned peers = __match_any_sync(kFullWarp, inside ? digit : unsigned(kDigits));
        const unsigned count = own[digit];
        rank[k] = count + __popc(peers & lanes_below);
        __syncwarp();  // every peer has read the count before the highest one bumps it
        if (inside && (peers >> lane) == 1u) own[digit] = count + __popc(peers);
        __syncwarp();
      }
    }
    __syncthreads();
    unsigned counts[kScanEntries];
    unsigned sum = 0;
#pragma unroll
    for (int j = 0; j < kScanEntries; ++j) {
      counts[j] = scanned[j * kCounterWarpStride];
      sum += counts[j];
    }
    unsigned total;
    unsigned before = block_inclusive_sum(sum, total) - sum;  // its barriers order every read above before the writes
#pragma unroll
    for (int j = 0; j < kScanEntries; ++j) {
      scanned[j * kCounterWarpStride] = before;
      before += counts[j];
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kSortItems; ++k) {
      const int i = begin + 32 * k;
      if (k < items && i < n) {
        const unsigned slot = own[(key[k] >> shift) & (kDigits - 1)] + rank[k];
        keys_out[slot] = key[k];
        values_out[slot] = values_in[i];
      }
    }
    __syncthreads();
  }
}

size_t fused_shared_bytes(int64_t pixels) {
  return size_t(pixels) * 2 * (sizeof(unsigned) + sizeof(unsigned short)) + sizeof(unsigned) * kCounterSlots;
}

// One block per row: hinge errors and flags into shared memory, block_radix_sort, scan_sorted_row.
template <typename scalar_t>
__global__ void __launch_bounds__(kScanThreads)
    fused_forward_kernel(const scalar_t* __restrict__ logits, const bool* __restrict__ labels,
                         const bool* __restrict__ valid, int64_t pixels, scalar_t* __restrict__ losses,
                         float* __restrict__ weights) {
  FASTSEG_DYNAMIC_SHARED(shared);
  const int n = static_cast<int>(pixels);
  unsigned* keys = reinterpret_cast<unsigned*>(shared);                        // [2][n]
  unsigned* counters = keys + 2 * n;                                            // kCounterSlots
  unsigned short* values = reinterpret_cast<unsigned short*>(counters + kCounterSlots);  // [2][n]
  const int64_t row = int64_t(blockIdx.x) * pixels;
  long long count = 0;
  for (int p = threadIdx.x; p < n; p += kScanThreads) {
    const bool keep = valid == nullptr || valid[row + p];
    const bool label = labels[row + p];
    keys[p] = descending_key(hinge_error<float>(logits[row + p], label, keep));
    values[p] = static_cast<unsigned short>(p | (keep && label ? kPositiveBit : 0u) | (keep ? kKeepBit : 0u));
    count += keep && label ? 1 : 0;
  }
  const float gts = convert<float>(block_sum(count));  // its barriers publish keys and values
  block_radix_sort(keys, values, counters, n);
  const float loss = scan_sorted_row<1>(SharedSortedRow{keys, values}, 0, pixels, pixels, gts, 0, weights + row);
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

// The packed path's device storage, each part 256-byte aligned: the chunk counts (long long) and
// chunk losses (float) of rows x chunks, then the sort's temporary storage.
struct PackedStorage {
  int64_t chunks;
  size_t counts_bytes, losses_bytes;

  PackedStorage(int64_t rows, int64_t pixels)
      : chunks(std::max<int64_t>(ceil_div(pixels, kPackedChunk), 1)),
        counts_bytes(aligned(sizeof(long long) * rows * chunks)),
        losses_bytes(aligned(sizeof(float) * rows * chunks)) {}
  static size_t aligned(int64_t bytes) { return size_t(ceil_div(bytes, 256) * 256); }
};

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
cudaError_t lovasz_hinge_fused(const scalar_t* logits, const bool* labels, const bool* valid, int64_t rows,
                               int64_t pixels, scalar_t* losses, float* weights, cudaStream_t stream) {
  if (pixels > kLovaszFusedMaxPixels) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  auto kernel = fused_forward_kernel<scalar_t>;
  const size_t shared_bytes = fused_shared_bytes(pixels);
  const cudaError_t error = allow_shared(kernel, shared_bytes);
  if (error != cudaSuccess) return error;
  launch(kernel, static_cast<unsigned>(rows), kScanThreads, shared_bytes, stream, logits, labels, valid, pixels, losses,
         weights);
  return cudaGetLastError();
}

cudaError_t lovasz_hinge_packed_temp_bytes(int64_t rows, int64_t pixels, size_t* temp_bytes) {
  if (!lovasz_hinge_packed_supported(rows, pixels)) return cudaErrorInvalidValue;
  const PackedKeyLayout layout(rows, pixels);
  const PackedStorage storage(rows, pixels);
  size_t sort_bytes = 0;
  const cudaError_t error = radix_sort_keys(nullptr, sort_bytes, nullptr, nullptr, rows * pixels,
                                            layout.sort_begin_bit(), layout.sort_end_bit(), nullptr);
  *temp_bytes = storage.counts_bytes + storage.losses_bytes + sort_bytes;
  return error;
}

template <typename scalar_t>
cudaError_t lovasz_hinge_packed(const scalar_t* logits, const bool* labels, const bool* valid, int64_t rows,
                                int64_t pixels, void* temp, size_t temp_bytes, uint64_t* keys, scalar_t* losses,
                                float* weights, cudaStream_t stream) {
  const PackedKeyLayout layout(rows, pixels);
  const PackedStorage storage(rows, pixels);
  if (!lovasz_hinge_packed_supported(rows, pixels) || temp_bytes < storage.counts_bytes + storage.losses_bytes) {
    return cudaErrorInvalidValue;
  }
  if (rows == 0) return cudaSuccess;
  unsigned char* bytes = static_cast<unsigned char*>(temp);
  long long* counts = reinterpret_cast<long long*>(bytes);
  float* chunk_losses = reinterpret_cast<float*>(bytes + storage.counts_bytes);
  const dim3 keys_grid(blocks_for(pixels), static_cast<unsigned>(rows));
  launch(packed_keys_kernel<scalar_t>, keys_grid, kElementwiseThreads, 0, stream, logits, labels, valid, rows, pixels,
         layout.pixel_bits, keys);
  cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) return error;
  uint64_t* sorted_keys = keys + rows * pixels;
  size_t sort_bytes = temp_bytes - storage.counts_bytes - storage.losses_bytes;
  error = radix_sort_keys(bytes + storage.counts_bytes + storage.losses_bytes, sort_bytes, keys, sorted_keys,
                          rows * pixels, layout.sort_begin_bit(), layout.sort_end_bit(), stream);
  if (error != cudaSuccess) return error;
  const dim3 chunk_grid(static_cast<unsigned>(storage.chunks), static_cast<unsigned>(rows));
  launch(packed_count_kernel, chunk_grid, kScanThreads, 0, stream, sorted_keys, pixels, counts);
  launch(packed_scan_kernel, chunk_grid, kScanThreads, 0, stream, sorted_keys, counts, pixels, layout.pixel_bits,
         chunk_losses, weights);
  launch(packed_loss_kernel<scalar_t>, static_cast<unsigned>(rows), kScanThreads, 0, stream, chunk_losses,
         storage.chunks, losses);
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
#define FASTSEG_INSTANTIATE_FP32_ERRORS(T)                                                                      \
  template cudaError_t lovasz_hinge_fused<T>(const T*, const bool*, const bool*, int64_t, int64_t, T*, float*,   \
                                             cudaStream_t);                                                     \
  template cudaError_t lovasz_hinge_packed<T>(const T*, const bool*, const bool*, int64_t, int64_t, void*, size_t, \
                                              uint64_t*, T*, float*, cudaStream_t);
FASTSEG_INSTANTIATE_FP32_ERRORS(float)
FASTSEG_INSTANTIATE_FP32_ERRORS(__half)
FASTSEG_INSTANTIATE_FP32_ERRORS(__nv_bfloat16)
#undef FASTSEG_INSTANTIATE_FP32_ERRORS

}  // namespace fastseg::cuda
