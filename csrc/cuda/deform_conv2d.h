// CUDA deformable convolution v1/v2 (CSFRNet Eq. 6) on raw pointers: the sampling kernels around
// the GEMMs, which the glue runs with cuBLAS (generic path), and the fused small-channel path, which
// does its products itself. Layouts (contiguous): input channels-last (B, H, W, C) (the glue's copy),
// offset (B, 2*G*taps, Ho, Wo) as (dy, dx) pairs per tap, mask (B, G*taps, Ho, Wo) or null, weight
// (C_out, C, kh, kw), generic columns (nb, groups, Ho*Wo, taps, C/groups), row k = tap * C/groups + c
// of each pixel, for the images [b0, b0 + nb).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastseg::cuda {

struct DeformGeometry {
  int64_t batch, channels, height, width;
  int64_t offset_groups, kh, kw, out_h, out_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
};

// columns[b - b0, c / Cg, p, tap, c % Cg] = mask * bilinear(input[b, :, :, c], y, x), Cg = C / groups.
template <typename scalar_t>
cudaError_t deform_im2col(const scalar_t* input, const scalar_t* offset, const scalar_t* mask,
                          const DeformGeometry& g, int64_t groups, int64_t b0, int64_t nb, scalar_t* columns,
                          cudaStream_t stream);

// One pass over grad_columns (the columns' layout) for the images [b0, b0 + nb): grad_input (B, H, W,
// C, acc_t) += bilinear weight * mask * grad_columns (atomics: not deterministic), and, written in
// place (no atomics), grad_offset = mask * sum_c grad_columns * d(sample)/d(y, x) and grad_mask =
// sum_c grad_columns * sample (null when mask is). acc_t is float for float/__half/__nv_bfloat16 and double for double.
template <typename scalar_t, typename acc_t>
cudaError_t deform_columns_backward(const scalar_t* input, const scalar_t* grad_columns, const scalar_t* offset,
                                    const scalar_t* mask, const DeformGeometry& g, int64_t groups, int64_t b0,
                                    int64_t nb, acc_t* grad_input, scalar_t* grad_offset, scalar_t* grad_mask,
                                    cudaStream_t stream);

// Fused small-channel path (groups == 1), one launch per pass: a block keeps the kernels (C_out x
// (C*taps + 1), the bias included), a column tile of 64 output pixels ((C*taps + 1) x 64, 65 in the
// backward) and one record per sample of the tile (12 acc_t per (offset group, tap, pixel); in the
// forward they share the kernels' place) in shared memory, in acc_t (fp16/bf16: the kernels, the
// tiles and the grad_output tile in the input dtype, padded to 16 for the tensor cores, plus fp32
// staging tiles); the backward also its grad weight sums (as large as the kernels, acc_t) and the
// grad_output tile (C_out x 64, twice). Its input, and the backward's grad_input, are channels-last
// (B, H, W, C). `forward` / `backward` say whether that fits the device's shared memory per block
// (227 KB on sm_90; at C_in = C_out = C, 3x3, one offset group: forward up to C = 52 in fp32, 79 in
// fp16/bf16 and 32 in fp64, backward up to 36, 46 and 20) and H*W*C < 2^31; otherwise, or with
// groups > 1, the glue runs the generic path.
struct DeformFusedPlan {
  bool forward = false, backward = false;
  int64_t backward_blocks = 0;   // at most one per SM, at least 4 tiles each
  int64_t partial_elements = 0;  // acc_t workspace of deform_fused_backward
};

cudaError_t deform_fused_plan(const DeformGeometry& g, int64_t out_channels, int64_t groups, size_t element_size,
                              DeformFusedPlan* plan);

// output = weight * columns + bias (Eq. 6), columns sampled in shared memory, never in HBM. input
// channels-last (B, H, W, C); bias may be null; weight (C_out, C, kh, kw).
template <typename scalar_t>
cudaError_t deform_fused_forward(const scalar_t* input, const scalar_t* offset, const scalar_t* mask,
                                 const scalar_t* weight, const scalar_t* bias, const DeformGeometry& g,
                                 int64_t out_channels, scalar_t* output, cudaStream_t stream);

// All gradients in one pass plus a reduction: grad_input += ... (atomics into the zeroed acc_t
// buffer, channels-last like input), grad_offset and grad_mask written in place (grad_mask null
// when mask is), grad_weight and grad_bias from per-block partial sums (`partials`,
// plan.partial_elements) added in block order (deterministic).
template <typename scalar_t, typename acc_t>
cudaError_t deform_fused_backward(const scalar_t* grad_output, const scalar_t* input, const scalar_t* offset,
                                  const scalar_t* mask, const scalar_t* weight, const DeformGeometry& g,
                                  int64_t out_channels, const DeformFusedPlan& plan, acc_t* grad_input,
                                  scalar_t* grad_offset, scalar_t* grad_mask, acc_t* partials, scalar_t* grad_weight,
                                  scalar_t* grad_bias, cudaStream_t stream);

}  // namespace fastseg::cuda
