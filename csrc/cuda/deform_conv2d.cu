// CUDA sampling kernels of deformable convolution v1/v2 (CSFRNet Eq. 6), torchvision's semantics:
// a sample at (y, x) is the bilinear mix of its four neighbours, each neighbour outside the image
// contributing zero, and is zero when y <= -1, y >= H, x <= -1 or x >= W. All arithmetic in acc_t
// (fp32 for fp16/bf16/fp32, fp64 for fp64); int64 indexing throughout.
//
// Cost model at the GPU shapes of
// bench/bench_deform_conv2d.py (forward+backward; H200: 4.8 TB/s HBM, 67 TFLOP/s fp32,
// 989 TFLOP/s dense bf16, ~3 us per dependent launch). The floor is max(bytes / bandwidth, FLOPs /
// peak) of the benchmark's byte and FLOP counts; the prediction is this design's, derived below.
// bench/report.py reads the `predicted H200` lines (the one place these numbers live) into the
// "predicted" column of bench/RESULTS.md.
// GEMM FLOPs = the floor's (forward + 2 backward GEMMs): fp32 SGEMM (no TF32) at ~70% of 67 TFLOP/s,
// bf16 on tensor cores at ~60% of 989 TFLOP/s; plus 3 sampling passes (im2col forward and backward,
// col2im) over C x 9 x pixels column elements at ~200 instructions each (8 int64 divisions) on
// 33 T instructions/s, and 4 column-buffer passes of traffic; ~10 launches.
// predicted H200 | deform_conv2d csfrnet-C512 fp32 B=8 97x97 fwd+bwd | 30.136 ms | fp32 GEMM (floor 15.903 ms)
// predicted H200 | deform_conv2d csfrnet-C512 bf16 B=8 97x97 fwd+bwd | 8.635 ms | im2col index math (floor 1.077 ms)
// predicted H200 | deform_conv2d csfrnet-C32 fp32 B=8 97x97 fwd+bwd | 0.580 ms | launches, im2col (floor 0.062 ms)
// predicted H200 | deform_conv2d csfrnet-C32 bf16 B=8 97x97 fwd+bwd | 0.463 ms | launches, im2col (floor 0.008 ms)
#include "cuda/common.cuh"
#include "cuda/deform_conv2d.h"

#include <algorithm>

namespace fastseg::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

unsigned blocks_for(int64_t work) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(ceil_div(work, kThreads), kMaxBlocks)));
}

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

// The sample of tap `tap`, offset group `og`, image b, output pixel p.
template <typename scalar_t, typename acc_t>
__device__ Sample<acc_t> load_sample(const scalar_t* offset, const scalar_t* mask, const DeformGeometry& g,
                                     int64_t b, int64_t og, int64_t tap, int64_t p) {
  const int64_t taps = g.kh * g.kw, pixels = g.out_h * g.out_w;
  const int64_t row = b * g.offset_groups * taps + og * taps + tap;
  const int64_t ho = p / g.out_w, wo = p % g.out_w, i = tap / g.kw, j = tap % g.kw;
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
    const int64_t r = y0 + (n >> 1), c = x0 + (n & 1);
    s.inside[n] = s.any && r >= 0 && r < g.height && c >= 0 && c < g.width;
    s.index[n] = s.inside[n] ? r * g.width + c : 0;
    const acc_t wy = (n >> 1) ? s.frac_y : acc_t(1) - s.frac_y;
    const acc_t wx = (n & 1) ? s.frac_x : acc_t(1) - s.frac_x;
    s.weight[n] = s.inside[n] ? wy * wx : acc_t(0);
  }
  return s;
}

// Entry `index` of the sampled columns (nb, C, taps, Ho*Wo) of the chunk starting at image b0:
// its image, its channel, and the sample it reads.
template <typename acc_t>
struct ColumnEntry {
  int64_t b, c;
  Sample<acc_t> s;
};

template <typename scalar_t, typename acc_t>
__device__ ColumnEntry<acc_t> column_entry(const scalar_t* offset, const scalar_t* mask, const DeformGeometry& g,
                                           int64_t b0, int64_t index) {
  const int64_t taps = g.kh * g.kw, pixels = g.out_h * g.out_w;
  const int64_t p = index % pixels, tap = (index / pixels) % taps, bc = index / (pixels * taps);
  const int64_t b = b0 + bc / g.channels, c = bc % g.channels;
  return {b, c, load_sample<scalar_t, acc_t>(offset, mask, g, b, c / (g.channels / g.offset_groups), tap, p)};
}

template <typename scalar_t, typename acc_t>
__global__ void im2col_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ offset,
                              const scalar_t* __restrict__ mask, DeformGeometry g, int64_t b0, int64_t nb,
                              scalar_t* __restrict__ columns) {
  const int64_t plane = g.height * g.width;
  const int64_t total = nb * g.channels * g.kh * g.kw * g.out_h * g.out_w;
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;
       index += int64_t(gridDim.x) * blockDim.x) {
    const auto [b, c, s] = column_entry<scalar_t, acc_t>(offset, mask, g, b0, index);
    const scalar_t* image = input + (b * g.channels + c) * plane;
    acc_t value = acc_t(0);
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      if (s.inside[n]) value += s.weight[n] * convert<acc_t>(image[s.index[n]]);
    }
    columns[index] = convert<scalar_t>(s.poisoned ? acc_t(NAN) : s.mask * value);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void col2im_kernel(const scalar_t* __restrict__ grad_columns, const scalar_t* __restrict__ offset,
                              const scalar_t* __restrict__ mask, DeformGeometry g, int64_t b0, int64_t nb,
                              acc_t* __restrict__ grad_input) {
  const int64_t plane = g.height * g.width;
  const int64_t total = nb * g.channels * g.kh * g.kw * g.out_h * g.out_w;
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;
       index += int64_t(gridDim.x) * blockDim.x) {
    const auto [b, c, s] = column_entry<scalar_t, acc_t>(offset, mask, g, b0, index);
    if (!s.any) continue;
    const acc_t grad = s.mask * convert<acc_t>(grad_columns[index]);
    acc_t* image = grad_input + (b * g.channels + c) * plane;
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      if (s.inside[n]) atomicAdd(image + s.index[n], s.weight[n] * grad);
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void offset_mask_grads_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ grad_columns,
                                         const scalar_t* __restrict__ offset, const scalar_t* __restrict__ mask,
                                         DeformGeometry g, int64_t b0, int64_t nb, scalar_t* __restrict__ grad_offset,
                                         scalar_t* __restrict__ grad_mask) {
  const int64_t taps = g.kh * g.kw, pixels = g.out_h * g.out_w, plane = g.height * g.width;
  const int64_t group_channels = g.channels / g.offset_groups;
  const int64_t total = nb * g.offset_groups * taps * pixels;
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;
       index += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = index % pixels, tap = (index / pixels) % taps;
    const int64_t og = (index / (pixels * taps)) % g.offset_groups, local_b = index / (pixels * taps * g.offset_groups);
    const int64_t b = b0 + local_b;
    const Sample<acc_t> s = load_sample<scalar_t, acc_t>(offset, mask, g, b, og, tap, p);
    acc_t sum_y = acc_t(0), sum_x = acc_t(0), sum_m = acc_t(0);
    if (s.any) {
      for (int64_t c = og * group_channels; c < (og + 1) * group_channels; ++c) {
        const scalar_t* image = input + (b * g.channels + c) * plane;
        acc_t v[4];
#pragma unroll
        for (int n = 0; n < 4; ++n) v[n] = s.inside[n] ? convert<acc_t>(image[s.index[n]]) : acc_t(0);
        const acc_t grad = convert<acc_t>(grad_columns[((local_b * g.channels + c) * taps + tap) * pixels + p]);
        sum_m += grad * (s.weight[0] * v[0] + s.weight[1] * v[1] + s.weight[2] * v[2] + s.weight[3] * v[3]);
        sum_y += grad * ((acc_t(1) - s.frac_x) * (v[2] - v[0]) + s.frac_x * (v[3] - v[1]));
        sum_x += grad * ((acc_t(1) - s.frac_y) * (v[1] - v[0]) + s.frac_y * (v[3] - v[2]));
      }
    }
    const int64_t row = b * g.offset_groups * taps + og * taps + tap;
    grad_offset[(2 * row) * pixels + p] = convert<scalar_t>(s.any ? s.mask * sum_y : acc_t(0));
    grad_offset[(2 * row + 1) * pixels + p] = convert<scalar_t>(s.any ? s.mask * sum_x : acc_t(0));
    if (grad_mask) grad_mask[row * pixels + p] = convert<scalar_t>(sum_m);
  }
}

}  // namespace

template <typename scalar_t>
cudaError_t deform_im2col(const scalar_t* input, const scalar_t* offset, const scalar_t* mask,
                          const DeformGeometry& g, int64_t b0, int64_t nb, scalar_t* columns, cudaStream_t stream) {
  const int64_t work = nb * g.channels * g.kh * g.kw * g.out_h * g.out_w;
  if (work == 0) return cudaSuccess;
  launch(im2col_kernel<scalar_t, acc_type<scalar_t>>, blocks_for(work), kThreads, 0, stream, input, offset, mask, g, b0,
         nb, columns);
  return cudaGetLastError();
}

template <typename scalar_t, typename acc_t>
cudaError_t deform_col2im(const scalar_t* grad_columns, const scalar_t* offset, const scalar_t* mask,
                          const DeformGeometry& g, int64_t b0, int64_t nb, acc_t* grad_input, cudaStream_t stream) {
  const int64_t work = nb * g.channels * g.kh * g.kw * g.out_h * g.out_w;
  if (work == 0) return cudaSuccess;
  launch(col2im_kernel<scalar_t, acc_t>, blocks_for(work), kThreads, 0, stream, grad_columns, offset, mask, g, b0, nb,
         grad_input);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t deform_offset_mask_grads(const scalar_t* input, const scalar_t* grad_columns, const scalar_t* offset,
                                     const scalar_t* mask, const DeformGeometry& g, int64_t b0, int64_t nb,
                                     scalar_t* grad_offset, scalar_t* grad_mask, cudaStream_t stream) {
  const int64_t work = nb * g.offset_groups * g.kh * g.kw * g.out_h * g.out_w;
  if (work == 0) return cudaSuccess;
  launch(offset_mask_grads_kernel<scalar_t, acc_type<scalar_t>>, blocks_for(work), kThreads, 0, stream, input,
         grad_columns, offset, mask, g, b0, nb, grad_offset, grad_mask);
  return cudaGetLastError();
}

#define FASTSEG_INSTANTIATE(T)                                                                                   \
  template cudaError_t deform_im2col<T>(const T*, const T*, const T*, const DeformGeometry&, int64_t, int64_t, T*, \
                                        cudaStream_t);                                                           \
  template cudaError_t deform_col2im<T, acc_type<T>>(const T*, const T*, const T*, const DeformGeometry&, int64_t, \
                                                     int64_t, acc_type<T>*, cudaStream_t);                       \
  template cudaError_t deform_offset_mask_grads<T>(const T*, const T*, const T*, const T*, const DeformGeometry&,  \
                                                   int64_t, int64_t, T*, T*, cudaStream_t);
FASTSEG_FOR_FLOATING_TYPES(FASTSEG_INSTANTIATE)
#undef FASTSEG_INSTANTIATE

}  // namespace fastseg::cuda
