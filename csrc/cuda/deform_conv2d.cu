// CUDA sampling kernels of deformable convolution v1/v2 (CSFRNet Eq. 6), torchvision's semantics:
// a sample at (y, x) is the bilinear mix of its four neighbours, each neighbour outside the image
// contributing zero, and is zero when y <= -1, y >= H, x <= -1 or x >= W. All arithmetic in acc_t
// (fp32 for fp16/bf16/fp32, fp64 for fp64); int64 indexing throughout.
//
// Design, generic path: one thread per sample (image, offset group, tap, output pixel) computes the
// bilinear neighbours, weights and mask once (the only integer divisions, per sample) and loops over
// the channels of the offset group with pointer strides: im2col writes the column of each channel
// (coalesced over pixels); the backward kernel reads each grad column once, scatters it to grad_input
// (4 fp32 atomics) and sums the offset and mask gradients in registers. The GEMMs are cuBLAS through
// the glue (csrc/cuda_glue/deform_conv2d.cpp): straight into the output, the bias as the C operand.
// Fused path (groups == 1 and its shared memory fits, see FusedLayout; the glue chooses): a block
// takes tiles of 64 output pixels of one image and keeps the kernels and the column tile in shared
// memory (acc_t), the bias as a row of ones. Forward, one launch: gather the tile (the same
// per-sample code), output = kernels x tile (block_product: fp32 FMAs, 4 x 2 register tile per
// thread). Backward, one launch: grad tile = kernels^T x grad_out, one pass over the samples that
// scatters it (atomics) and writes the offset and mask gradients (no atomics) and leaves the column
// values in the tile, grad weight/bias sums += grad_out x tile^T per block in shared memory; then a
// block-ordered (deterministic) reduction of the per-block sums.
//
// Cost model at the GPU shapes of bench/bench_deform_conv2d.py (B=8, 97x97 -> P=9409 pixels per
// image, 3x3 taps, modulated, forward+backward; H200: 4.8 TB/s HBM, taken at 85% = 4.1 TB/s;
// 67 TFLOP/s fp32, 989 TFLOP/s dense bf16; 33 T lane-instructions/s; ~3 us per launch). The floor is
// max(bytes / bandwidth, FLOPs / peak) of the benchmark's byte and FLOP counts; bench/report.py reads
// the `predicted H200` lines (the one place these numbers live) into the "predicted" column of
// bench/RESULTS.md. With E = B*C*9*P column elements (C512: 347 M; C32: 21.7 M) and
// F = 2*B*P*C*C*9 FLOPs per GEMM (C512: 355 GFLOP):
// C512, generic path:
//   im2col (twice: forward, and again in the backward): write E columns + read input/offset/mask,
//     ~15 instructions per element: C512 0.380 ms fp32, 0.190 ms bf16 (HBM-bound).
//   3 GEMMs (output, grad columns, grad weight as per-image products summed in fp32): each
//     max(F / rate, columns / HBM); rate = cuBLAS SGEMM at 70% of 67 TFLOP/s with TF32 off
//     (PyTorch's default; with torch.backends.cuda.matmul.allow_tf32 = True cuBLAS runs TF32 on its
//     own, ~300 TFLOP/s, and the fp32 C512 prediction drops to ~5.6 ms), bf16 at 60% of 989 TFLOP/s:
//     C512 7.6 ms each fp32, 0.61 ms each bf16. The bias costs one broadcast write of the output
//     (ATen's baddbmm copies C into the output, then the GEMM reads it with beta = 1).
//   backward sampling: read E grad columns + input, 4*E fp32 atomics at ~2.5 T/s (an assumption:
//     uncontended, mostly coalesced RED in L2), ~30 instructions per element: C512 0.94 ms fp32,
//     0.75 ms bf16.
//   small passes (zeroed fp32 grad_input, its cast, grad_bias): ~0.11-0.15 ms; launches, 3 us each:
//     3 per forward chunk, 6 per backward chunk, 5 more (the 1 GiB column workspace gives C512
//     2 + 3 chunks in fp32, 1 + 2 in bf16): 29 / 20 launches.
// C32, fused path (C = C_out = 32, R = 289 tile rows; 148 tiles per image, 1184 in all), counted in
// clocks of one SM's L1/shared-memory data path (128 B = 1 wavefront per clock), which every phase
// below goes through:
//   products: block_product reads 3 shared wavefronts (one broadcast quad, two scalars) per 8 FMAs
//     per warp and row r; its ~12 instructions per (warp, r) over 4 schedulers also take 3 clocks:
//     67% of the fp32 FMA peak, fp32 for every dtype (no tensor cores). Per tile: forward 8 warps x
//     289 r x 3 = 6.9 K clocks; backward grad tile 8 x 9 row quads x 32 x 3 = 6.9 K, grad weight
//     8 x 5 column blocks x 64 x 3 = 7.7 K.
//   neighbour loads: 2304 warp loads per tile (2 warps of pixels x 9 taps x 32 channels x 4). With
//     the benchmark's offsets (2 N(0,1) pixels) a warp's 32 lanes land on ~10 rows: 20.7 sectors per
//     load in fp32, 15.3 in bf16 (counted on the host with such offsets), at 4 sectors per clock:
//     11.9 K / 8.8 K clocks per tile, once in the forward (gather) and once in the backward (its
//     single sample pass); the backward's 4 atomics per element into the fp32 grad_input, 20.7
//     sectors per warp as well: 11.9 K.
//   smaller: tile stores, 4-way-conflicted transposing stores of the kernels, weight loads: 2.1 K
//     forward (1.9 K bf16); grad_out tile (two layouts), grad tile reads and column stores, offset and
//     mask writes: 1.6 K backward.
//   forward: 1184 blocks, two per SM (112.9 KB of shared memory each), 8.97 tiles per SM: 20.9 K /
//     17.7 K clocks per tile -> 95 us fp32, 80 us bf16 (HBM: 27 / 14 MB of input, offset, mask and
//     output, 7 / 3 us, hidden).
//   backward: 132 blocks (one per SM: 163.0 KB), at most 9 tiles each: 40.1 K / 36.9 K clocks per
//     tile -> 182 us fp32, 168 us bf16; zeroed fp32 grad_input (9.6 MB) 2.3 us, reduction of the
//     132 x 9248 fp32 partial sums 1.2 us, bf16 cast of grad_input 3.5 us.
//   launches: forward 1, backward 3 (zeroing, fused, reduction) + 1 cast in bf16: 4 / 5 x 3 us.
//   The generic path's 0.254 / 0.163 ms C32 predictions (14-20 launches, column round trips through
//   HBM, cuBLAS) left the neighbour sectors out; counted the same way its four passes (im2col twice,
//   backward reads, atomics) add ~0.22 / ~0.17 ms: ~0.43 / ~0.30 ms against the fused 0.293 /
//   0.270 ms. In bf16 the fused path gains launches and HBM traffic but loses the tensor cores.
//   Risks: if the L1 serves one 128-byte line, not 4 sectors, per clock (10.4 / 9.4 lines per load),
//   the neighbour terms double (both paths); the L2 traffic of the scattered loads and the latency
//   of the backward's 8 warps per SM are not modelled.
// Bound: C512 fp32 by the SGEMMs (1.55x floor); C512 bf16 by the GEMMs at 60% of peak plus the column
// passes and atomics, which the floor does not count (3.0x); C32 by the L1 sectors of the scattered
// neighbour loads and atomics, then the shared-memory products.
// predicted H200 | deform_conv2d csfrnet-C512 fp32 B=8 97x97 fwd+bwd | 24.691 ms | fp32 SGEMM, TF32 off (floor 15.903 ms)
// predicted H200 | deform_conv2d csfrnet-C512 bf16 B=8 97x97 fwd+bwd | 3.179 ms | bf16 GEMMs, column passes, atomics (floor 1.077 ms)
// predicted H200 | deform_conv2d csfrnet-C32 fp32 B=8 97x97 fwd+bwd | 0.293 ms | L1 sectors of scattered loads and atomics, shared-memory products (floor 0.062 ms)
// predicted H200 | deform_conv2d csfrnet-C32 bf16 B=8 97x97 fwd+bwd | 0.270 ms | L1 sectors of scattered loads and atomics, fp32 shared-memory products (floor 0.008 ms)
#include "cuda/common.cuh"
#include "cuda/deform_conv2d.h"

#include <algorithm>
#include <type_traits>

namespace fastseg::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = 65535;

// One sample's neighbours: plane indices, inside flags and bilinear weights.
template <typename acc_t>
struct Sample {
  int64_t index[4];
  acc_t weight[4];
  acc_t frac_y, frac_x, mask;
  bool inside[4];
  bool any;       // some neighbour is inside (the position is finite and within (-1, size))
  bool poisoned;  // the position is not finite: NaN column, no gradient (the NaN rule of fastseg.ops)

  // The factor of the sample's column values (mask * bilinear value): NaN when poisoned.
  __device__ acc_t column_scale() const { return poisoned ? acc_t(NAN) : mask; }
};

// Row `row` of the samples of the chunk starting at image b0; rows are (local image, offset group,
// tap), tap fastest.
struct SampleRow {
  int64_t local_b, b, og, tap;
};

__device__ SampleRow sample_row(const DeformGeometry& g, int64_t b0, int64_t row) {
  const int64_t taps = g.kh * g.kw, image_group = row / taps, local_b = image_group / g.offset_groups;
  return {local_b, b0 + local_b, image_group - local_b * g.offset_groups, row - image_group * taps};
}

// The sample of row r at output pixel p = (ho, wo): computed once per (image, offset group, tap,
// pixel) and reused for every channel of the offset group.
template <typename scalar_t, typename acc_t>
__device__ Sample<acc_t> load_sample(const scalar_t* offset, const scalar_t* mask, const DeformGeometry& g,
                                     const SampleRow& r, int64_t ho, int64_t wo, int64_t p) {
  const int64_t taps = g.kh * g.kw, pixels = g.out_h * g.out_w;
  const int64_t row = (r.b * g.offset_groups + r.og) * taps + r.tap;
  const int64_t i = r.tap / g.kw, j = r.tap - i * g.kw;
  const acc_t y = acc_t(ho * g.stride_h - g.pad_h + i * g.dil_h) + convert<acc_t>(offset[(2 * row) * pixels + p]);
  const acc_t x = acc_t(wo * g.stride_w - g.pad_w + j * g.dil_w) + convert<acc_t>(offset[(2 * row + 1) * pixels + p]);
  Sample<acc_t> s;
  s.mask = mask ? convert<acc_t>(mask[row * pixels + p]) : acc_t(1);
  s.poisoned = !is_finite(y) || !is_finite(x);
  s.any = y > acc_t(-1) && y < acc_t(g.height) && x > acc_t(-1) && x < acc_t(g.width);
  const acc_t y0f = s.any ? floor(y) : acc_t(0), x0f = s.any ? floor(x) : acc_t(0);
  const int64_t y0 = static_cast<int64_t>(y0f), x0 = static_cast<int64_t>(x0f);
  s.frac_y = s.any ? y - y0f : acc_t(0);
  s.frac_x = s.any ? x - x0f : acc_t(0);
#pragma unroll
  for (int n = 0; n < 4; ++n) {
    const int64_t yn = y0 + (n >> 1), xn = x0 + (n & 1);
    s.inside[n] = s.any && yn >= 0 && yn < g.height && xn >= 0 && xn < g.width;
    s.index[n] = s.inside[n] ? yn * g.width + xn : 0;
    const acc_t wy = (n >> 1) ? s.frac_y : acc_t(1) - s.frac_y;
    const acc_t wx = (n & 1) ? s.frac_x : acc_t(1) - s.frac_x;
    s.weight[n] = s.inside[n] ? wy * wx : acc_t(0);
  }
  return s;
}

// Where the channel loop of a sample starts: the first channel of its offset group in the input
// planes and in the columns (nb, C*taps, Ho*Wo); successive channels are `plane` and
// `taps * pixels` further.
struct GroupStart {
  int64_t image, column;
};

__device__ GroupStart group_start(const DeformGeometry& g, const SampleRow& r, int64_t p) {
  const int64_t taps = g.kh * g.kw, c0 = r.og * (g.channels / g.offset_groups);
  return {(r.b * g.channels + c0) * g.height * g.width,
          ((r.local_b * g.channels + c0) * taps + r.tap) * g.out_h * g.out_w + p};
}

// The channel loop of one sample: column[c * column_stride] = mask * bilinear(image + c * plane) for
// the channels of its offset group (`image` at the group's first one; NaN when the position is
// poisoned). Serves im2col (scalar_t columns in HBM) and the fused forward (acc_t columns in shared
// memory).
template <typename scalar_t, typename acc_t, typename column_t>
__device__ void sample_columns(const Sample<acc_t>& s, const DeformGeometry& g, const scalar_t* image,
                               column_t* column, int64_t column_stride) {
  const int64_t plane = g.height * g.width, group_channels = g.channels / g.offset_groups;
  const acc_t scale = s.column_scale();
#pragma unroll 4
  for (int64_t c = 0; c < group_channels; ++c, image += plane, column += column_stride) {
    acc_t value = acc_t(0);
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      if (s.inside[n]) value += s.weight[n] * convert<acc_t>(image[s.index[n]]);
    }
    *column = convert<column_t>(scale * value);
  }
}

// The backward of one sample (row r, pixel p) given its grad column (grad_column[c * column_stride]
// for the channels of its offset group): grad_image[c] += bilinear weight * mask * grad (atomics), and
// the offset and mask gradients of the sample written in place (no atomics; grad_mask null when mask
// is). Serves the generic backward (const grad columns in HBM) and the fused one (grad columns in
// shared memory, mutable): there each entry is then replaced by the sample's column value (what
// sample_columns writes), from the neighbours this pass loads anyway, for the grad weight product.
template <typename scalar_t, typename acc_t, typename column_t>
__device__ void sample_backward(const Sample<acc_t>& s, const DeformGeometry& g, const SampleRow& r, int64_t p,
                                const scalar_t* image, acc_t* grad_image, column_t* grad_column,
                                int64_t column_stride, scalar_t* grad_offset, scalar_t* grad_mask) {
  constexpr bool kRebuildColumns = !std::is_const_v<column_t>;
  const int64_t taps = g.kh * g.kw, pixels = g.out_h * g.out_w, plane = g.height * g.width;
  const int64_t group_channels = g.channels / g.offset_groups;
  acc_t sum_y = acc_t(0), sum_x = acc_t(0), sum_m = acc_t(0);
  if (s.any) {
#pragma unroll 2
    for (int64_t c = 0; c < group_channels;
         ++c, image += plane, grad_image += plane, grad_column += column_stride) {
      const acc_t grad = convert<acc_t>(*grad_column);
      const acc_t masked_grad = s.mask * grad;
      acc_t v[4];
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        v[n] = s.inside[n] ? convert<acc_t>(image[s.index[n]]) : acc_t(0);
        if (s.inside[n]) atomicAdd(grad_image + s.index[n], s.weight[n] * masked_grad);
      }
      const acc_t value = s.weight[0] * v[0] + s.weight[1] * v[1] + s.weight[2] * v[2] + s.weight[3] * v[3];
      sum_m += grad * value;
      sum_y += grad * ((acc_t(1) - s.frac_x) * (v[2] - v[0]) + s.frac_x * (v[3] - v[1]));
      sum_x += grad * ((acc_t(1) - s.frac_y) * (v[1] - v[0]) + s.frac_y * (v[3] - v[2]));
      if constexpr (kRebuildColumns) *grad_column = s.column_scale() * value;
    }
  } else if constexpr (kRebuildColumns) {
    for (int64_t c = 0; c < group_channels; ++c) grad_column[c * column_stride] = s.column_scale() * acc_t(0);
  }
  const int64_t sample = (r.b * g.offset_groups + r.og) * taps + r.tap;
  grad_offset[(2 * sample) * pixels + p] = convert<scalar_t>(s.any ? s.mask * sum_y : acc_t(0));
  grad_offset[(2 * sample + 1) * pixels + p] = convert<scalar_t>(s.any ? s.mask * sum_x : acc_t(0));
  if (grad_mask) grad_mask[sample * pixels + p] = convert<scalar_t>(sum_m);
}

// Grid of the sample kernels: x over output pixels (one thread each), y over sample rows (strided
// when there are more than 65535).
dim3 sample_grid(const DeformGeometry& g, int64_t nb) {
  const int64_t rows = nb * g.offset_groups * g.kh * g.kw;
  return dim3(static_cast<unsigned>(ceil_div(g.out_h * g.out_w, kThreads)),
              static_cast<unsigned>(std::min(rows, kMaxGridY)));
}

// Thread (pixel p, rows blockIdx.y + k * gridDim.y): the columns of every channel of the sample's
// offset group, channel-strided writes (coalesced over p).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    im2col_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ offset,
                  const scalar_t* __restrict__ mask, DeformGeometry g, int64_t b0, int64_t nb,
                  scalar_t* __restrict__ columns) {
  const int64_t pixels = g.out_h * g.out_w, p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (p >= pixels) return;
  const int64_t ho = p / g.out_w, wo = p - ho * g.out_w;
  const int64_t column_stride = g.kh * g.kw * pixels, rows = nb * g.offset_groups * g.kh * g.kw;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const SampleRow r = sample_row(g, b0, row);
    const Sample<acc_t> s = load_sample<scalar_t, acc_t>(offset, mask, g, r, ho, wo, p);
    const GroupStart start = group_start(g, r, p);
    sample_columns(s, g, input + start.image, columns + start.column, column_stride);
  }
}

// Thread (pixel p, sample rows as in im2col_kernel): one pass over the channels of the sample's offset
// group reads each grad column once, scatters it to grad_input (atomics) and sums the offset and mask
// gradients, which the thread then writes (no atomics).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    columns_backward_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ grad_columns,
                            const scalar_t* __restrict__ offset, const scalar_t* __restrict__ mask, DeformGeometry g,
                            int64_t b0, int64_t nb, acc_t* __restrict__ grad_input, scalar_t* __restrict__ grad_offset,
                            scalar_t* __restrict__ grad_mask) {
  const int64_t pixels = g.out_h * g.out_w, p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (p >= pixels) return;
  const int64_t ho = p / g.out_w, wo = p - ho * g.out_w;
  const int64_t column_stride = g.kh * g.kw * pixels, rows = nb * g.offset_groups * g.kh * g.kw;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const SampleRow r = sample_row(g, b0, row);
    const Sample<acc_t> s = load_sample<scalar_t, acc_t>(offset, mask, g, r, ho, wo, p);
    const GroupStart start = group_start(g, r, p);
    sample_backward(s, g, r, p, input + start.image, grad_input + start.image, grad_columns + start.column,
                    column_stride, grad_offset, grad_mask);
  }
}

// Fused small-channel path (groups == 1): a block owns a tile of kTile output pixels of one image and
// keeps everything between the sampling and the output in shared memory, in acc_t: the kernels with
// R = C*taps + 1 rows (the last one the bias) and the column tile (R, tile_stride), whose last row is
// ones, so that the bias rides in the product (and its gradient in the grad weight product).
constexpr int kFusedThreads = 256;
constexpr int kTile = 64;
// The backward's blocks each take at least this many tiles (amortising their kernel load and their
// partial grad weight), and at most one block per SM.
constexpr int64_t kMinTilesPerBlock = 4;

__host__ __device__ inline int64_t round_up4(int64_t n) { return (n + 3) / 4 * 4; }

// Shared-memory layout of the fused kernels, offsets in acc_t elements, every region starting on a
// 4-element boundary (block_product reads its A operand in aligned quads). Forward: kernels (R,
// out_stride), channel-contiguous, and the column tile, rows of kTile (read along pixels only).
// Backward: kernels (C_out, rows_stride), grad weight sums (C_out, R), the column tile with rows
// padded to kTile + 1 (the grad weight product reads it along R: no bank conflicts either way),
// grad_out (C_out, kTile) and grad_out_t (kTile, out_stride). out_stride is C_out rounded up to 4,
// plus 4: the transposing stores into those operands (lanes along R or along pixels) then conflict
// 4-way, not 32-way. (At C_in = C_out = 32, 3x3, fp32: 112.9 KB forward, two blocks per SM; 163.0 KB
// backward, one.)
struct FusedLayout {
  int64_t rows, out_stride, rows_stride, tile_stride;
  int64_t sums, columns, grad_out, grad_out_t, elements;
};

__host__ __device__ inline FusedLayout fused_layout(const DeformGeometry& g, int64_t out_channels, bool backward) {
  FusedLayout l{};
  l.rows = g.channels * g.kh * g.kw + 1;
  l.out_stride = round_up4(out_channels) + 4;
  l.rows_stride = round_up4(l.rows);
  l.tile_stride = backward ? kTile + 1 : kTile;
  if (!backward) {
    l.columns = l.rows * l.out_stride;
    l.elements = l.columns + l.rows * l.tile_stride;
    return l;
  }
  l.sums = out_channels * l.rows_stride;
  l.columns = l.sums + round_up4(out_channels * l.rows);
  l.grad_out = l.columns + round_up4(l.rows * l.tile_stride);
  l.grad_out_t = l.grad_out + out_channels * kTile;
  l.elements = l.grad_out_t + kTile * l.out_stride;
  return l;
}

// Four consecutive acc_t of an A operand: one 16-byte shared load for float, two for double.
template <typename acc_t>
struct alignas(16) Quad {
  acc_t v[4];
};

// C(i, j) = sum_r A[r * ar + i] * B[j * bj + r * br] for i < ni, j < nj over r < nr, operands in
// shared memory, each result handed to epilogue(i, j, value) by the one thread that computed it
// (fixed summation order: deterministic). A warp takes 4 consecutive i: one aligned quad of A per r,
// the same address in every lane (broadcast; A 16-byte aligned, ar a multiple of 4, readable up to
// i = round_up4(ni) - 1, whose extra rows are never handed out); each lane takes the columns j and
// j + 32 (consecutive B reads; out-of-range j clamped for the reads and skipped). Per r and warp: 3
// shared wavefronts for float (1 broadcast quad, 2 B loads) and 8 FMAs.
template <typename acc_t, typename Epilogue>
__device__ void block_product(const acc_t* a, int ar, const acc_t* b, int bj, int br, int ni, int nj, int nr,
                              Epilogue epilogue) {
  const int lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int i0 = threadIdx.x / 32 * 4; i0 < ni; i0 += warps * 4) {
    for (int j0 = lane; j0 < nj + lane; j0 += 64) {
      const acc_t* b_column[2];
#pragma unroll
      for (int m = 0; m < 2; ++m) b_column[m] = b + min(j0 + 32 * m, nj - 1) * bj;
      acc_t sum[4][2] = {};
      for (int r = 0; r < nr; ++r) {
        const Quad<acc_t> av = *reinterpret_cast<const Quad<acc_t>*>(a + r * ar + i0);
        const acc_t bv[2] = {b_column[0][r * br], b_column[1][r * br]};
#pragma unroll
        for (int n = 0; n < 4; ++n) {
#pragma unroll
          for (int m = 0; m < 2; ++m) sum[n][m] += av.v[n] * bv[m];
        }
      }
#pragma unroll
      for (int n = 0; n < 4; ++n) {
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          if (i0 + n < ni && j0 + 32 * m < nj) epilogue(i0 + n, j0 + 32 * m, sum[n][m]);
        }
      }
    }
  }
}

// kernels[i * i_stride + k * k_stride] = weight[i, k] for k < C*taps and bias[i] (0 when null) at
// k = C*taps; weight read in order (coalesced).
template <typename scalar_t, typename acc_t>
__device__ void load_kernels(const scalar_t* weight, const scalar_t* bias, int out_channels, int rows, int i_stride,
                             int k_stride, acc_t* kernels) {
  const int sampled = rows - 1;
  for (int e = threadIdx.x; e < out_channels * rows; e += blockDim.x) {
    const int i = e / rows, k = e - i * rows;
    kernels[i * i_stride + k * k_stride] = k < sampled ? convert<acc_t>(weight[int64_t(i) * sampled + k])
                                                       : (bias ? convert<acc_t>(bias[i]) : acc_t(0));
  }
}

// The column tile of pixels [p0, p0 + kTile) of image b: columns[(c*taps + tap) * tile_stride + t],
// each sample computed once per (offset group, tap, pixel) by one thread; zero past the last pixel;
// the bias row C*taps is ones.
template <typename scalar_t, typename acc_t>
__device__ void gather_tile(const scalar_t* input, const scalar_t* offset, const scalar_t* mask,
                            const DeformGeometry& g, int64_t b, int64_t p0, int tile_stride, acc_t* columns) {
  const int taps = static_cast<int>(g.kh * g.kw), group_channels = static_cast<int>(g.channels / g.offset_groups);
  const int64_t pixels = g.out_h * g.out_w;
  const int column_stride = taps * tile_stride;
  for (int item = threadIdx.x; item < g.offset_groups * taps * kTile; item += blockDim.x) {
    const int t = item % kTile, og_tap = item / kTile, og = og_tap / taps, tap = og_tap - og * taps;
    const int64_t p = p0 + t;
    acc_t* column = columns + (og * group_channels * taps + tap) * tile_stride + t;
    if (p < pixels) {
      const int64_t ho = p / g.out_w, wo = p - ho * g.out_w;
      const SampleRow r{0, b, og, tap};
      const Sample<acc_t> s = load_sample<scalar_t, acc_t>(offset, mask, g, r, ho, wo, p);
      sample_columns(s, g, input + group_start(g, r, p).image, column, column_stride);
    } else {
      for (int c = 0; c < group_channels; ++c) column[c * column_stride] = acc_t(0);
    }
  }
  for (int t = threadIdx.x; t < kTile; t += blockDim.x) columns[g.channels * taps * tile_stride + t] = acc_t(1);
}

// Block per tile (image blockIdx.x / tiles, tile blockIdx.x % tiles): gather the column tile, then
// output(i, p) = sum_k kernels(i, k) * columns(k, p) with the bias row included (Eq. 6).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kFusedThreads)
    fused_forward_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ offset,
                         const scalar_t* __restrict__ mask, const scalar_t* __restrict__ weight,
                         const scalar_t* __restrict__ bias, DeformGeometry g, int out_channels,
                         scalar_t* __restrict__ output) {
  FASTSEG_DYNAMIC_SHARED(shared);
  const FusedLayout l = fused_layout(g, out_channels, false);
  const int rows = static_cast<int>(l.rows), out_stride = static_cast<int>(l.out_stride);
  acc_t* kernels = reinterpret_cast<acc_t*>(shared);
  acc_t* columns = kernels + l.columns;
  const int64_t pixels = g.out_h * g.out_w, tiles = (pixels + kTile - 1) / kTile;
  const int64_t b = blockIdx.x / tiles, p0 = (blockIdx.x - b * tiles) * kTile;
  load_kernels(weight, bias, out_channels, rows, 1, out_stride, kernels);
  gather_tile(input, offset, mask, g, b, p0, kTile, columns);
  __syncthreads();
  scalar_t* out = output + b * out_channels * pixels + p0;
  const int valid = static_cast<int>(pixels - p0 < kTile ? pixels - p0 : kTile);
  block_product(kernels, out_stride, columns, 1, kTile, out_channels, valid, rows,
                [&](int i, int t, acc_t value) { out[i * pixels + t] = convert<scalar_t>(value); });
}

// Blocks over tiles blockIdx.x + k * gridDim.x. Per tile: load the grad_output tile (zero past the
// last pixel), channel-major and pixel-major; grad_columns(k, p) = sum_i kernels(i, k) * grad_out(i,
// p) into the column tile; one pass over the samples (each one thread, the only neighbour loads of
// the tile) scatters them to grad_input (atomics), writes the offset and mask gradients (no atomics)
// and leaves the column values in the tile; then grad_kernels(i, k) += sum_p grad_out(i, p) *
// columns(k, p) into the block's shared sums (the tile's row of ones gives grad_bias). At the end the
// block's sums go to partials[blockIdx.x] (reduced by reduce_kernel).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kFusedThreads)
    fused_backward_kernel(const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ input,
                          const scalar_t* __restrict__ offset, const scalar_t* __restrict__ mask,
                          const scalar_t* __restrict__ weight, DeformGeometry g, int out_channels,
                          acc_t* __restrict__ grad_input, scalar_t* __restrict__ grad_offset,
                          scalar_t* __restrict__ grad_mask, acc_t* __restrict__ partials) {
  FASTSEG_DYNAMIC_SHARED(shared);
  const FusedLayout l = fused_layout(g, out_channels, true);
  const int rows = static_cast<int>(l.rows), out_stride = static_cast<int>(l.out_stride);
  const int rows_stride = static_cast<int>(l.rows_stride), tile_stride = static_cast<int>(l.tile_stride);
  const int taps = static_cast<int>(g.kh * g.kw), group_channels = static_cast<int>(g.channels / g.offset_groups);
  acc_t* kernels = reinterpret_cast<acc_t*>(shared);
  acc_t* sums = kernels + l.sums;
  acc_t* columns = kernels + l.columns;
  acc_t* grad_out = kernels + l.grad_out;
  acc_t* grad_out_t = kernels + l.grad_out_t;
  const int64_t pixels = g.out_h * g.out_w, tiles = (pixels + kTile - 1) / kTile;
  load_kernels(weight, static_cast<const scalar_t*>(nullptr), out_channels, rows, rows_stride, 1, kernels);
  for (int e = threadIdx.x; e < out_channels * rows; e += blockDim.x) sums[e] = acc_t(0);
  for (int t = threadIdx.x; t < kTile; t += blockDim.x) columns[(rows - 1) * tile_stride + t] = acc_t(1);
  for (int64_t tile = blockIdx.x; tile < g.batch * tiles; tile += gridDim.x) {
    const int64_t b = tile / tiles, p0 = (tile - b * tiles) * kTile;
    __syncthreads();  // the previous tile's columns and grad_out are consumed
    for (int e = threadIdx.x; e < out_channels * kTile; e += blockDim.x) {
      const int i = e / kTile, t = e - i * kTile;
      const acc_t value =
          p0 + t < pixels ? convert<acc_t>(grad_output[(b * out_channels + i) * pixels + p0 + t]) : acc_t(0);
      grad_out[e] = value;
      grad_out_t[t * out_stride + i] = value;
    }
    __syncthreads();
    const int valid = static_cast<int>(pixels - p0 < kTile ? pixels - p0 : kTile);
    block_product(kernels, rows_stride, grad_out, 1, kTile, rows - 1, kTile, out_channels,
                  [&](int k, int t, acc_t value) { columns[k * tile_stride + t] = t < valid ? value : acc_t(0); });
    __syncthreads();
    for (int item = threadIdx.x; item < g.offset_groups * taps * kTile; item += blockDim.x) {
      const int t = item % kTile, og_tap = item / kTile, og = og_tap / taps, tap = og_tap - og * taps;
      const int64_t p = p0 + t;
      if (p >= pixels) continue;  // its columns stay zero
      const int64_t ho = p / g.out_w, wo = p - ho * g.out_w;
      const SampleRow r{0, b, og, tap};
      const Sample<acc_t> s = load_sample<scalar_t, acc_t>(offset, mask, g, r, ho, wo, p);
      const int64_t image = group_start(g, r, p).image;
      sample_backward(s, g, r, p, input + image, grad_input + image,
                      columns + (og * group_channels * taps + tap) * tile_stride + t, taps * tile_stride,
                      grad_offset, grad_mask);
    }
    __syncthreads();
    block_product(grad_out_t, out_stride, columns, tile_stride, 1, out_channels, rows, kTile,
                  [&](int i, int k, acc_t value) { sums[i * rows + k] += value; });
  }
  __syncthreads();
  for (int e = threadIdx.x; e < out_channels * rows; e += blockDim.x) {
    partials[int64_t(blockIdx.x) * out_channels * rows + e] = sums[e];
  }
}

// grad_weight (C_out, C*taps) and grad_bias (C_out) from the backward blocks' partial sums
// (blocks, C_out, R), added in block order (deterministic).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    reduce_kernel(const acc_t* __restrict__ partials, int blocks, int out_channels, int rows,
                  scalar_t* __restrict__ grad_weight, scalar_t* __restrict__ grad_bias) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x, entries = out_channels * rows;
  if (e >= entries) return;
  acc_t sum = acc_t(0);
  for (int block = 0; block < blocks; ++block) sum += partials[int64_t(block) * entries + e];
  const int i = e / rows, k = e - i * rows;
  if (k < rows - 1) {
    grad_weight[i * (rows - 1) + k] = convert<scalar_t>(sum);
  } else {
    grad_bias[i] = convert<scalar_t>(sum);
  }
}

template <typename Kernel>
cudaError_t allow_shared(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

bool no_samples(const DeformGeometry& g, int64_t nb) {
  return nb * g.offset_groups * g.kh * g.kw * g.out_h * g.out_w == 0;
}

}  // namespace

template <typename scalar_t>
cudaError_t deform_im2col(const scalar_t* input, const scalar_t* offset, const scalar_t* mask,
                          const DeformGeometry& g, int64_t b0, int64_t nb, scalar_t* columns, cudaStream_t stream) {
  if (no_samples(g, nb)) return cudaSuccess;
  launch(im2col_kernel<scalar_t, acc_type<scalar_t>>, sample_grid(g, nb), kThreads, 0, stream, input, offset, mask, g,
         b0, nb, columns);
  return cudaGetLastError();
}

template <typename scalar_t, typename acc_t>
cudaError_t deform_columns_backward(const scalar_t* input, const scalar_t* grad_columns, const scalar_t* offset,
                                    const scalar_t* mask, const DeformGeometry& g, int64_t b0, int64_t nb,
                                    acc_t* grad_input, scalar_t* grad_offset, scalar_t* grad_mask,
                                    cudaStream_t stream) {
  if (no_samples(g, nb)) return cudaSuccess;
  launch(columns_backward_kernel<scalar_t, acc_t>, sample_grid(g, nb), kThreads, 0, stream, input, grad_columns,
         offset, mask, g, b0, nb, grad_input, grad_offset, grad_mask);
  return cudaGetLastError();
}

cudaError_t deform_fused_plan(const DeformGeometry& g, int64_t out_channels, int64_t groups, size_t element_size,
                              DeformFusedPlan* plan) {
  *plan = DeformFusedPlan{};
  const int64_t pixels = g.out_h * g.out_w;
  if (groups != 1 || g.batch * pixels * out_channels == 0) return cudaSuccess;
  DeviceLimits limits;
  const cudaError_t error = device_limits(&limits);
  if (error != cudaSuccess) return error;
  const int64_t acc_size = element_size == sizeof(double) ? sizeof(double) : sizeof(float);
  const int64_t forward_bytes = fused_layout(g, out_channels, false).elements * acc_size;
  const int64_t backward_bytes = fused_layout(g, out_channels, true).elements * acc_size;
  plan->forward = forward_bytes <= limits.shared_per_block;
  plan->backward = backward_bytes <= limits.shared_per_block;
  const int64_t tiles = g.batch * ceil_div(pixels, kTile);
  plan->backward_blocks = std::min<int64_t>(limits.sms, ceil_div(tiles, kMinTilesPerBlock));
  plan->partial_elements = plan->backward_blocks * out_channels * (g.channels * g.kh * g.kw + 1);
  return cudaSuccess;
}

template <typename scalar_t>
cudaError_t deform_fused_forward(const scalar_t* input, const scalar_t* offset, const scalar_t* mask,
                                 const scalar_t* weight, const scalar_t* bias, const DeformGeometry& g,
                                 int64_t out_channels, scalar_t* output, cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  auto kernel = fused_forward_kernel<scalar_t, acc_t>;
  const size_t bytes = fused_layout(g, out_channels, false).elements * sizeof(acc_t);
  const cudaError_t error = allow_shared(kernel, bytes);
  if (error != cudaSuccess) return error;
  const int64_t blocks = g.batch * ceil_div(g.out_h * g.out_w, kTile);
  launch(kernel, static_cast<unsigned>(blocks), kFusedThreads, bytes, stream, input, offset, mask, weight, bias, g,
         static_cast<int>(out_channels), output);
  return cudaGetLastError();
}

template <typename scalar_t, typename acc_t>
cudaError_t deform_fused_backward(const scalar_t* grad_output, const scalar_t* input, const scalar_t* offset,
                                  const scalar_t* mask, const scalar_t* weight, const DeformGeometry& g,
                                  int64_t out_channels, const DeformFusedPlan& plan, acc_t* grad_input,
                                  scalar_t* grad_offset, scalar_t* grad_mask, acc_t* partials, scalar_t* grad_weight,
                                  scalar_t* grad_bias, cudaStream_t stream) {
  auto kernel = fused_backward_kernel<scalar_t, acc_t>;
  const size_t bytes = fused_layout(g, out_channels, true).elements * sizeof(acc_t);
  const cudaError_t error = allow_shared(kernel, bytes);
  if (error != cudaSuccess) return error;
  launch(kernel, static_cast<unsigned>(plan.backward_blocks), kFusedThreads, bytes, stream, grad_output, input, offset,
         mask, weight, g, static_cast<int>(out_channels), grad_input, grad_offset, grad_mask, partials);
  const int64_t entries = out_channels * (g.channels * g.kh * g.kw + 1);
  launch(reduce_kernel<scalar_t, acc_t>, static_cast<unsigned>(ceil_div(entries, kThreads)), kThreads, 0, stream,
         partials, static_cast<int>(plan.backward_blocks), static_cast<int>(out_channels),
         static_cast<int>(g.channels * g.kh * g.kw + 1), grad_weight, grad_bias);
  return cudaGetLastError();
}

#define FASTSEG_INSTANTIATE(T)                                                                                    \
  template cudaError_t deform_im2col<T>(const T*, const T*, const T*, const DeformGeometry&, int64_t, int64_t, T*,  \
                                        cudaStream_t);                                                            \
  template cudaError_t deform_columns_backward<T, acc_type<T>>(const T*, const T*, const T*, const T*,             \
                                                               const DeformGeometry&, int64_t, int64_t,           \
                                                               acc_type<T>*, T*, T*, cudaStream_t);           \
  template cudaError_t deform_fused_forward<T>(const T*, const T*, const T*, const T*, const T*,                  \
                                               const DeformGeometry&, int64_t, T*, cudaStream_t);                 \
  template cudaError_t deform_fused_backward<T, acc_type<T>>(const T*, const T*, const T*, const T*, const T*,    \
                                                             const DeformGeometry&, int64_t,                      \
                                                             const DeformFusedPlan&, acc_type<T>*, T*, T*,        \
                                                             acc_type<T>*, T*, T*, cudaStream_t);
FASTSEG_FOR_FLOATING_TYPES(FASTSEG_INSTANTIATE)
#undef FASTSEG_INSTANTIATE

}  // namespace fastseg::cuda
