// CUDA deformable convolution v1/v2 (CSFRNet Eq. 6) on raw pointers: the sampling kernels around
// the GEMMs, which the glue runs with cuBLAS. Layouts (contiguous): input (B,C,H,W), offset
// (B, 2*G*taps, Ho, Wo) as (dy, dx) pairs per tap, mask (B, G*taps, Ho, Wo) or null, columns
// (nb, C*taps, Ho*Wo) with row c*taps + tap for the images [b0, b0 + nb).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastseg::cuda {

struct DeformGeometry {
  int64_t batch, channels, height, width;
  int64_t offset_groups, kh, kw, out_h, out_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
};

// columns[b - b0, c*taps + tap, p] = mask * bilinear(input[b, c], y, x).
template <typename scalar_t>
cudaError_t deform_im2col(const scalar_t* input, const scalar_t* offset, const scalar_t* mask,
                          const DeformGeometry& g, int64_t b0, int64_t nb, scalar_t* columns, cudaStream_t stream);

// One pass over grad_columns for the images [b0, b0 + nb): grad_input[b, c] += bilinear weight * mask *
// grad_columns (atomics: not deterministic), and, written in place (no atomics),
// grad_offset = mask * sum_c grad_columns * d(sample)/d(y, x) and grad_mask = sum_c grad_columns * sample
// (null when mask is). acc_t is float for float/__half/__nv_bfloat16 and double for double.
template <typename scalar_t, typename acc_t>
cudaError_t deform_columns_backward(const scalar_t* input, const scalar_t* grad_columns, const scalar_t* offset,
                                    const scalar_t* mask, const DeformGeometry& g, int64_t b0, int64_t nb,
                                    acc_t* grad_input, scalar_t* grad_offset, scalar_t* grad_mask,
                                    cudaStream_t stream);

}  // namespace fastseg::cuda
