// CUDA flow_warp (DecoupleSegNet Eq. 1) on raw pointers. Layouts, all contiguous: input (B,C,Hi,Wi),
// flow (B,2,Ho,Wo) in input pixels (channel 0 = dx, 1 = dy), output and grad_output (B,C,Ho,Wo),
// grad_input like input, grad_flow like flow. The flow is fp32 (fp64 for fp64 input): coord_t.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/common.cuh"

namespace fastseg::cuda {

struct FlowWarpShape {
  int64_t batch = 0, channels = 0;
  int64_t in_height = 0, in_width = 0;
  int64_t out_height = 0, out_width = 0;
};

template <typename scalar_t>
using coord_t = acc_type<scalar_t>;

// padding: 0 = zeros, 1 = border (fastseg::flow_warp::Padding).
template <typename scalar_t>
cudaError_t flow_warp_forward(const scalar_t* input, const coord_t<scalar_t>* flow, const FlowWarpShape& shape,
                              int padding, bool align_corners, scalar_t* output, cudaStream_t stream);

// Bytes of workspace the backward needs: per-channel-chunk partial flow gradients; with
// `deterministic` the int64 fixed-point sums of grad_input, the per-plane norms of grad_output and,
// for fp16/bf16, an fp32 grad_input accumulator; without it the input boxes of the output tiles and
// of their rows.
size_t flow_warp_backward_workspace(const FlowWarpShape& shape, size_t element_size, bool deterministic);

// deterministic: splat grad_input with order-independent fixed-point int64 atomics instead of
// floating-point ones (same bits in every run; for torch.use_deterministic_algorithms(True)).
template <typename scalar_t>
cudaError_t flow_warp_backward(const scalar_t* grad_output, const scalar_t* input, const coord_t<scalar_t>* flow,
                               const FlowWarpShape& shape, int padding, bool align_corners, bool deterministic,
                               void* workspace, scalar_t* grad_input, coord_t<scalar_t>* grad_flow,
                               cudaStream_t stream);

}  // namespace fastseg::cuda
