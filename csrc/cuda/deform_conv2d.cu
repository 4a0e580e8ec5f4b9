// CUDA sampling kernels of deformable convolution v1/v2 (CSFRNet Eq. 6), torchvision's semantics:
// a sample at (y, x) is the bilinear mix of its four neighbours, each neighbour outside the image
// contributing zero, and is zero when y <= -1, y >= H, x <= -1 or x >= W. All arithmetic in acc_t
// (fp32 for fp16/bf16/fp32, fp64 for fp64); int64 indexing throughout.
//
// Design: one thread per sample (image, offset group, tap, output pixel) computes the bilinear
// neighbours, weights and mask once (the only integer divisions, per sample) and loops over the
// channels of the offset group with pointer strides: im2col writes the column of each channel
// (coalesced over pixels); the backward kernel reads each grad column once, scatters it to grad_input
// (4 fp32 atomics) and sums the offset and mask gradients in registers. The GEMMs are cuBLAS through
// the glue (csrc/cuda_glue/deform_conv2d.cpp): straight into the output, the bias as the C operand.
//
// Cost model at the GPU shapes of bench/bench_deform_conv2d.py (B=8, 97x97 -> P=9409 pixels per
// image, 3x3 taps, modulated, forward+backward; H200: 4.8 TB/s HBM, taken at 85% = 4.1 TB/s;
// 67 TFLOP/s fp32, 989 TFLOP/s dense bf16; 33 T lane-instructions/s; ~3 us per launch). The floor is
// max(bytes / bandwidth, FLOPs / peak) of the benchmark's byte and FLOP counts; bench/report.py reads
// the `predicted H200` lines (the one place these numbers live) into the "predicted" column of
// bench/RESULTS.md. With E = B*C*9*P column elements (C512: 347 M; C32: 21.7 M) and
// F = 2*B*P*C*C*9 FLOPs per GEMM (C512: 355 GFLOP):
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
//     2 + 3 chunks in fp32, 1 + 2 in bf16; C32 1 + 1): 29 / 20 / 14 launches.
// Bound: fp32 by the SGEMMs (1.55x floor); bf16 by the GEMMs at 60% of peak plus the column passes
// and atomics, which the floor does not count (3.0x); C32 by launches and column passes.
// predicted H200 | deform_conv2d csfrnet-C512 fp32 B=8 97x97 fwd+bwd | 24.691 ms | fp32 SGEMM, TF32 off (floor 15.903 ms)
// predicted H200 | deform_conv2d csfrnet-C512 bf16 B=8 97x97 fwd+bwd | 3.179 ms | bf16 GEMMs, column passes, atomics (floor 1.077 ms)
// predicted H200 | deform_conv2d csfrnet-C32 fp32 B=8 97x97 fwd+bwd | 0.254 ms | launches, column passes, atomics (floor 0.062 ms)
// predicted H200 | deform_conv2d csfrnet-C32 bf16 B=8 97x97 fwd+bwd | 0.163 ms | launches, column passes, atomics (floor 0.008 ms)
#include "cuda/common.cuh"
#include "cuda/deform_conv2d.h"

#include <algorithm>

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
  const int64_t plane = g.height * g.width, column_stride = g.kh * g.kw * pixels;
  const int64_t group_channels = g.channels / g.offset_groups, rows = nb * g.offset_groups * g.kh * g.kw;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const SampleRow r = sample_row(g, b0, row);
    const Sample<acc_t> s = load_sample<scalar_t, acc_t>(offset, mask, g, r, ho, wo, p);
    const acc_t scale = s.poisoned ? acc_t(NAN) : s.mask;
    const GroupStart start = group_start(g, r, p);
    const scalar_t* image = input + start.image;
    scalar_t* column = columns + start.column;
#pragma unroll 4
    for (int64_t c = 0; c < group_channels; ++c, image += plane, column += column_stride) {
      acc_t value = acc_t(0);
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        if (s.inside[n]) value += s.weight[n] * convert<acc_t>(image[s.index[n]]);
      }
      *column = convert<scalar_t>(scale * value);
    }
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
  const int64_t taps = g.kh * g.kw, plane = g.height * g.width, column_stride = taps * pixels;
  const int64_t group_channels = g.channels / g.offset_groups, rows = nb * g.offset_groups * taps;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const SampleRow r = sample_row(g, b0, row);
    const Sample<acc_t> s = load_sample<scalar_t, acc_t>(offset, mask, g, r, ho, wo, p);
    acc_t sum_y = acc_t(0), sum_x = acc_t(0), sum_m = acc_t(0);
    if (s.any) {
      const GroupStart start = group_start(g, r, p);
      const scalar_t* image = input + start.image;
      acc_t* grad_image = grad_input + start.image;
      const scalar_t* grad_column = grad_columns + start.column;
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
        sum_m += grad * (s.weight[0] * v[0] + s.weight[1] * v[1] + s.weight[2] * v[2] + s.weight[3] * v[3]);
        sum_y += grad * ((acc_t(1) - s.frac_x) * (v[2] - v[0]) + s.frac_x * (v[3] - v[1]));
        sum_x += grad * ((acc_t(1) - s.frac_y) * (v[1] - v[0]) + s.frac_y * (v[3] - v[2]));
      }
    }
    const int64_t sample = (r.b * g.offset_groups + r.og) * taps + r.tap;
    grad_offset[(2 * sample) * pixels + p] = convert<scalar_t>(s.any ? s.mask * sum_y : acc_t(0));
    grad_offset[(2 * sample + 1) * pixels + p] = convert<scalar_t>(s.any ? s.mask * sum_x : acc_t(0));
    if (grad_mask) grad_mask[sample * pixels + p] = convert<scalar_t>(sum_m);
  }
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

#define FASTSEG_INSTANTIATE(T)                                                                                    \
  template cudaError_t deform_im2col<T>(const T*, const T*, const T*, const DeformGeometry&, int64_t, int64_t, T*,  \
                                        cudaStream_t);                                                            \
  template cudaError_t deform_columns_backward<T, acc_type<T>>(const T*, const T*, const T*, const T*,             \
                                                               const DeformGeometry&, int64_t, int64_t,           \
                                                               acc_type<T>*, T*, T*, cudaStream_t);
FASTSEG_FOR_FLOATING_TYPES(FASTSEG_INSTANTIATE)
#undef FASTSEG_INSTANTIATE

}  // namespace fastseg::cuda
