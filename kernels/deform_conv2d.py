"""Triton kernels of deformable convolution v1/v2 (CSFRNet Eq. 6), torchvision's semantics.

Implicit GEMM, transposed so that the output pixels sit on the lanes: out^T (C_out x pixels) =
W (C_out x taps*C_in/g) @ columns (taps*C_in/g x pixels). A forward program owns (pixel tile, group
[, block of 512 bf16/fp16, 256 fp32 or 128 fp64 output channels], image) and walks the K axis in
chunks of (tap, BLOCK_K channels): each chunk of bilinear samples is gathered once, straight into a
(channels x pixels) tile, and multiplied into the accumulator of every output channel of the
program; the bias is added in the epilogue and the output stored once. The sampling coordinates,
corner weights and mask of a (pixel, tap) are computed once per offset-group segment
(gcd(C_in/groups, C_in/offset_groups) channels, inside which the conv group and the offset group are
constant) and reused by the segment's channels. The whole column block (64 pixels x 4608 bf16 at
the benchmark = 590 KB) does not fit in an SM (228 KB), so the K chunks, not the output-channel
blocks, form the outer loop.

Backward: the data kernel owns (pixel tile, image) and walks (tap, offset group): it builds each
grad_columns chunk = W^T chunk @ grad_out tile (with one conv group and a tile of at most 64 KB the
tile is loaded once per program and stays on chip, else it is reloaded per chunk), scatters it into
grad_input (atomics: pixels share input positions) and reduces it against the sampling derivative
into grad_offset/grad_mask, which it stores once (no atomics: the program covers every channel of the
offset group). The weight kernel owns (output-channel block, K chunk, split of the (image, pixel tile)
items) and accumulates grad_out @ columns^T, gathering each chunk once per program; splits are summed deterministically.
Because of the grad_input atomics the backward refuses torch.use_deterministic_algorithms(True).

Dots: fp16/bf16 operands with fp32 accumulation; fp32 in TF32 when
torch.backends.cuda.matmul.allow_tf32 is True, else "ieee"; fp64 in fp64 ("ieee", DMMA on sm_80+).
Under the interpreter (CPU tensors) fp16/bf16 products run in fp32 and fp32 in "ieee".

Cost model, H200 (4.8 TB/s HBM, 989 TFLOP/s dense bf16, 495 TF32, 67 fp32; 132 SMs at 1.98 GHz), at the
shapes of bench/bench_deform_conv2d.py: B=8, 97x97 -> P = 75272 output pixels, 3x3 kernel, modulated.
Assumed, to be measured: ~10 TB/s from L2 to the SMs; ~100 G sector atomics/s in L2; shared memory
128 B/clk/SM; a gather sample costs 4 loads (32 lanes/clk/SM) + ~12 ALU ops; Triton overlaps the gather
with the MMAs only partly (no warp specialisation), so a kernel is predicted as max(MMA, L2 traffic,
shared-memory traffic) + gather + atomics.
  csfrnet-C512 (512 -> 512, K = 9*512 = 4608):
    FLOPs: one GEMM = 2*P*512*4608 = 355 GFLOP; forward 1 GEMM, backward 2 (grad_columns, grad_weight).
    HBM bytes (bf16): input 77 MB + output 77 MB + offset/mask 4 MB + weight 5 MB = 163 MB per pass = 0.034 ms,
      plus 385 MB for the fp32 grad_input buffer (zeroing, atomics' final values, conversion) = 0.08 ms:
      compute bound (~2000 FLOP/B).
    floor: forward bf16 0.36 ms, TF32 0.72 ms, fp32 "ieee" 5.3 ms; forward+backward 1.08 / 2.15 / 15.9 ms.
    gather pass: 347 M (pixel, tap, channel) samples = 0.17 ms LSU + 0.12 ms ALU, ~0.2 ms.
    forward: W (4.7 MB) streamed from L2 by each of the 1176 pixel tiles = 5.5 GB = 0.55 ms; one gather pass
      in bf16 (512 output channels per program). Predicted bf16 0.55 + 0.2 = 0.75 ms (48% of the floor,
      bound by the weight stream: BLOCK_M=128 halves it at twice the accumulator). fp32: the stream doubles
      (11 GB = 1.1 ms) and so do the gather passes (256 channels per program): TF32 1.5 ms (48%).
    backward data: the program's 512 x 64 grad_out tile (64 KB bf16) is loaded once (77 MB in all, in the HBM
      bytes above) and only the W^T chunk (32 KB) comes from L2 per (tap, 32-channel chunk): N*K*P*2 B/64 =
      1176 tiles * 4.7 MB = 5.5 GB = 0.55 ms (the per-chunk reload added N*K*P*2 B/32 = 11.1 GB: 16.6 GB = 1.7 ms).
      On chip, shared memory: an sm_90 compile (Triton 3.9, offline) hoists the tile's local_alloc out of the loops;
      held in registers it would need 128 per thread at 8 warps (mma.sync's B layout repeats it on both channel
      warps) beside the ~230 of the chunk's gathers and scatters. The dots are mma.sync m16n8k16 (32 channels < 64,
      no wgmma), 8 warps as 2 x 4 over (channels, pixels): each warp ldmatrix-reads 16 W^T rows (16 KB) and 16
      tile columns (16 KB), plus the 32 KB W^T store = 288 KB per chunk; 1176*144 chunks / 132 SMs = 1283 per SM
      * 288 KB / 128 B/clk = 2.96 M clk = 1.49 ms (the reload path's 8 warps move the same 288 KB per chunk, hidden
      before under its 1.7 ms of L2). 128 KB of shared memory and 255 registers (sm_90 compile: 112 B spilled while
      the tile is staged, none in the loops) allow 1 program per SM.
      One gather pass 0.2 ms; grad_input scatter 1.39 G fp32 atomics, pixels on the lanes so a warp's 32 land in ~4
      sectors: 0.17 G sector atomics = 1.7 ms, as fire-and-forget REDG (sem="relaxed"; the default acq_rel compiles
      each of a thread's 32 atomics per chunk to MEMBAR.ALL.GPU + ATOMG + CCTL.IVALL, an L1 flush, in sm_90 SASS).
      Predicted max(MMA 0.36, L2 0.55, shared 1.49) + 0.2 + 1.7 = 3.4 ms (floor 0.36): bound by the shared-memory
      operand reads and the atomics. fp32 (TF32): the 128 KB tile exceeds the 64 KB bound, the reload path stays:
      3.3 + 0.2 + 1.7 = 5.2 ms.
    backward weight: grad_out (77 MB) streamed once per 64-channel K chunk: 72 x 77 MB = 5.5 GB = 0.55 ms; one
      gather pass (bf16). Predicted 0.75 ms (48%); fp32 (TF32) 1.1 + two gather passes = 1.5 ms.
    fp32 with allow_tf32 False (PyTorch's default, so the benchmark's fp32 rows): the dots run as FMAs on the
      CUDA cores, assumed at ~50% of 67 TFLOP/s: ~10.6 ms per GEMM, which hides the streams and the gather. Their
      reduction axis is 8 wide (FMA_K; forward chunks of 8 channels, weight-gradient items of 8 pixels, grad_columns
      steps of 8 grad_out rows): Triton holds (rows + columns per thread) x K operands in registers, and at K = 32
      the forward spilled 11.4 KB per thread (ptxas fell back to 32 registers) in the chunk loop. Unchanged: the
      FMAs, the operand reads per FMA (forward 16 + 4 per k for a thread's 64 accumulators) and the bytes (a
      256 x 8 fp32 tile row is one 32 B sector). Added: 4x the chunks, a barrier each: forward 1176*2*9*64 = 1.35 M
      chunks, each 256*64*8 = 131 k FMAs = 1024 clk of an SM's 128 FMA/clk, against ~20 clk (assumed) per barrier:
      ~2%, inside the ~34 ms below (3 x 10.6 + 1.7 = 33.5 ms). Triton before 3.8 (PyTorch 2.11's 3.6) refuses fp32
      dots narrower than 16: there K = 16 with output blocks of 64 channels on 8 warps (FMA_BLOCK_N), so the forward
      and weight-gradient gathers run 8 times per pixel tile instead of 2 (+12 gather passes, assumed at the
      bf16 pass's 0.2 ms x 2 for fp32: ~+5 ms, ~39 ms there; the predicted line below is Triton 3.9's).
    forward+backward predicted bf16 0.75 + 3.4 + 0.75 = ~4.9 ms vs floor 1.08 ms (22%); TF32 ~8.2 ms vs 2.15 ms
      (26%); fp32 "ieee" ~34 ms vs 15.9 ms (47%; the 3 GEMMs + the data kernel's 1.7 ms of atomics). The backward
      data kernel is still the gap: its dots with 64 pixels as M (wgmma reading the tile from shared memory, 192 KB
      per chunk at 8 warps = 1.0 ms) spill 104 B in the same compile, and the scatter needs to lose its atomics.
  csfrnet-C32 (32 -> 32, K = 288): 1.4 GFLOP per GEMM (1.4 us bf16); 14 MB per pass in bf16 (3 us);
    22 M samples (~13 us per gather pass), 87 M atomics (~0.1 ms): latency and atomics bound (the on-chip
    32 x 64 grad_out tile saves 8 reloads of 4 KB per program, 39 MB of L2: unchanged).
    Predicted forward ~20 us, forward+backward ~0.15 ms.
  predicted H200 triton | deform_conv2d csfrnet-C512 fp32 B=8 97x97 fwd+bwd | 34 ms | fp32 FMA dots (floor 15.9 ms)
  predicted H200 triton | deform_conv2d csfrnet-C512 bf16 B=8 97x97 fwd+bwd | 4.9 ms | smem, atomics (floor 1.08 ms)
  predicted H200 triton | deform_conv2d csfrnet-C32 bf16 B=8 97x97 fwd+bwd | 0.15 ms | atomics, latency (floor 0.008 ms)
Nothing here has run on a GPU: the predictions stand until measured.
"""
from __future__ import annotations

import math
import warnings

import torch
import triton
import triton.language as tl

from . import triton_release


@triton.jit
def _sample_position(offset, mask, b, og, tap, offs_l, mask_l, L, W_out, kw, stride_h, stride_w, pad_h, pad_w,
                     dil_h, dil_w, taps, offset_groups, HAS_MASK: tl.constexpr, ACC: tl.constexpr):
    """Sampling coordinates (y, x) and modulation m (all (BM,) in ACC) of one tap, offset group and image."""
    row = (b * offset_groups + og) * taps + tap
    dy = tl.load(offset + (2 * row) * L + offs_l, mask=mask_l, other=0.0).to(ACC)
    dx = tl.load(offset + (2 * row + 1) * L + offs_l, mask=mask_l, other=0.0).to(ACC)
    ho = offs_l // W_out
    wo = offs_l % W_out
    i = tap // kw
    j = tap % kw
    y = (ho * stride_h - pad_h + i * dil_h).to(dy.dtype) + dy
    x = (wo * stride_w - pad_w + j * dil_w).to(dx.dtype) + dx
    if HAS_MASK:
        m = tl.load(mask + row * L + offs_l, mask=mask_l, other=0.0).to(ACC)
    else:
        m = tl.full(dy.shape, 1.0, dy.dtype)
    return y, x, m


@triton.jit
def _corners(y, x, H, W):
    """Top-left neighbour (y0, x0), fractions (fy, fx), whether the sample is inside (y, x in (-1, H) x (-1, W))
    and whether its position is finite (else its column is NaN: the NaN rule of fastseg.ops)."""
    inside = (y > -1.0) & (y < H) & (x > -1.0) & (x < W)
    finite = ((y - y) == 0.0) & ((x - x) == 0.0)
    y0f = tl.floor(y)
    x0f = tl.floor(x)
    fy = tl.where(inside, y - y0f, 0.0)
    fx = tl.where(inside, x - x0f, 0.0)
    y0 = tl.where(inside, y0f, -2.0).to(tl.int32)
    x0 = tl.where(inside, x0f, -2.0).to(tl.int32)
    return y0, x0, fy, fx, inside, finite


@triton.jit
def _neighbour(image, y0, x0, dy: tl.constexpr, dx: tl.constexpr, H, W, mask_c):
    """Values of neighbour (y0 + dy, x0 + dx) for the chunk's channels: (BK, BM), pixels on the lanes, zero outside
    the image; image (BK,) points at each channel plane."""
    r = y0 + dy
    c = x0 + dx
    ok = (r >= 0) & (r < H) & (c >= 0) & (c < W)
    return tl.load(image[:, None] + (r * W + c)[None, :], mask=mask_c[:, None] & ok[None, :], other=0.0)


@triton.jit
def _gather(input, channel_base, y0, x0, H, W, mask_c, ACC: tl.constexpr):
    """The four neighbours (BK, BM) in the accumulation dtype; channel_base (BK,) is each channel plane's offset."""
    image = input + channel_base
    v00 = _neighbour(image, y0, x0, 0, 0, H, W, mask_c).to(ACC)
    v01 = _neighbour(image, y0, x0, 0, 1, H, W, mask_c).to(ACC)
    v10 = _neighbour(image, y0, x0, 1, 0, H, W, mask_c).to(ACC)
    v11 = _neighbour(image, y0, x0, 1, 1, H, W, mask_c).to(ACC)
    return v00, v01, v10, v11


@triton.jit
def _bilinear(v00, v01, v10, v11, fy, fx):
    """Bilinear interpolation (BK, BM) of the four neighbours at fractions fy, fx (BM,)."""
    wy = fy[None, :]
    wx = fx[None, :]
    return (1 - wy) * ((1 - wx) * v00 + wx * v01) + wy * ((1 - wx) * v10 + wx * v11)


@triton.jit
def _column_chunk(input, channel_base, y0, x0, fy, fx, m, finite, H, W, mask_c, ACC: tl.constexpr):
    """Modulated bilinear samples (BK channels, BM pixels) of one tap: a chunk of the column block; NaN where the
    sample position is not finite."""
    v00, v01, v10, v11 = _gather(input, channel_base, y0, x0, H, W, mask_c, ACC)
    value = _bilinear(v00, v01, v10, v11, fy, fx) * m[None, :]
    return tl.where(finite[None, :], value, float("nan"))


@triton.jit
def _scatter_corner(grad_input, channel_base, y0, x0, fy, fx, grad, H, W, mask_c, DY: tl.constexpr, DX: tl.constexpr):
    """grad_input[neighbour (y0 + DY, x0 + DX)] += its bilinear weight * grad, for a (BK, BM) chunk (atomics, relaxed:
    Triton's default acq_rel fences each one)."""
    r = y0 + DY
    c = x0 + DX
    weight = (fy * DY + (1 - fy) * (1 - DY)) * (fx * DX + (1 - fx) * (1 - DX))
    ok = (r >= 0) & (r < H) & (c >= 0) & (c < W)
    tl.atomic_add(grad_input + channel_base[:, None] + (r * W + c)[None, :], grad * weight[None, :],
                  mask=mask_c[:, None] & ok[None, :], sem="relaxed")


@triton.jit
def _forward_kernel(
    input, offset, mask, weight_t, bias, output,
    C, H, W, L, W_out, C_out, kw, taps, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    offset_groups, group_channels, group_out, offset_group_channels, segment,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out^T (BN channels, BM pixels) of one image and group: sum over (tap, channel chunk) of
    W (BN, BK) @ columns (BK, BM), each chunk gathered once; weight_t is (C_out, taps, C_in/groups)."""
    n_blocks = tl.cdiv(group_out, BLOCK_N)
    group = tl.program_id(1) // n_blocks
    offs_n = (tl.program_id(1) % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < group_out
    b = tl.program_id(2).to(tl.int64)
    offs_l = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_l = offs_l < L
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=ACC)
    for tap in range(taps):
        for s0 in range(0, group_channels, segment):
            c_start = group * group_channels + s0
            og = c_start // offset_group_channels
            y, x, m = _sample_position(offset, mask, b, og, tap, offs_l, mask_l, L, W_out, kw, stride_h, stride_w,
                                       pad_h, pad_w, dil_h, dil_w, taps, offset_groups, HAS_MASK, ACC)
            y0, x0, fy, fx, inside, finite = _corners(y, x, H, W)
            for k0 in range(0, segment, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                mask_c = offs_k < segment
                channel_base = ((b * C + c_start + offs_k) * H).to(tl.int64) * W
                columns = _column_chunk(input, channel_base, y0, x0, fy, fx, m, finite, H, W, mask_c, ACC)
                w_tile = tl.load(weight_t + ((group * group_out + offs_n[:, None]) * taps + tap) * group_channels
                                 + s0 + offs_k[None, :], mask=mask_n[:, None] & mask_c[None, :], other=0.0)
                acc = tl.dot(w_tile.to(DOT), columns.to(DOT), acc, input_precision=PRECISION, out_dtype=ACC)
    if HAS_BIAS:
        acc += tl.load(bias + group * group_out + offs_n, mask=mask_n, other=0.0).to(ACC)[:, None]
    out = output + (b * C_out + group * group_out + offs_n[:, None]).to(tl.int64) * L + offs_l[None, :]
    tl.store(out, acc.to(output.dtype.element_ty), mask=mask_n[:, None] & mask_l[None, :])


@triton.jit
def _grad_out_tile(grad_output, b, group, offs_n, mask_n, offs_l, mask_l, L, C_out, group_out):
    """grad_out rows offs_n of the group (BN channels, BM pixels) of one image."""
    return tl.load(grad_output + (b * C_out + group * group_out + offs_n[:, None]).to(tl.int64) * L + offs_l[None, :],
                   mask=mask_n[:, None] & mask_l[None, :], other=0.0)


@triton.jit
def _grad_columns(grad_output, resident, weight_t, b, group, tap, local_c, mask_c, offs_l, mask_l, L, C_out, taps,
                  group_channels, group_out, ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
                  RESIDENT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """grad_columns chunk (BK channels, BM pixels) of one tap = W^T (BK, group_out) @ grad_out (group_out, BM); with
    RESIDENT the grad_out operand is `resident`, the program's whole tile (BLOCK_N >= group_out, one reduction step),
    else it is reloaded in BLOCK_N-row steps."""
    grad_col = tl.zeros([BLOCK_K, BLOCK_M], dtype=ACC)
    for n0 in range(0, group_out, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < group_out
        w_tile = tl.load(weight_t + ((group * group_out + offs_n[None, :]) * taps + tap) * group_channels
                         + local_c[:, None], mask=mask_c[:, None] & mask_n[None, :], other=0.0)
        if RESIDENT:
            g_tile = resident
        else:
            g_tile = _grad_out_tile(grad_output, b, group, offs_n, mask_n, offs_l, mask_l, L, C_out, group_out).to(DOT)
        grad_col = tl.dot(w_tile.to(DOT), g_tile, grad_col, input_precision=PRECISION, out_dtype=ACC)
    return grad_col


@triton.jit
def _backward_data_kernel(
    grad_output, input, offset, mask, weight_t, grad_input, grad_offset, grad_mask,
    C, H, W, L, W_out, C_out, kw, taps, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    offset_groups, group_channels, group_out, offset_group_channels, segment,
    HAS_MASK: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr, RESIDENT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One pixel tile of one image: for every (tap, offset group) the grad_columns chunks of the group's channels
    -> grad_input (atomics), and grad_offset / grad_mask of the (pixels, tap, offset group), stored once. RESIDENT
    (one conv group, BLOCK_N >= C_out): the program's grad_out tile is loaded once, before the loops."""
    b = tl.program_id(1).to(tl.int64)
    offs_l = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_l = offs_l < L
    resident = grad_output
    if RESIDENT:
        offs_n = tl.arange(0, BLOCK_N)
        resident = _grad_out_tile(grad_output, b, 0, offs_n, offs_n < C_out, offs_l, mask_l, L, C_out, C_out).to(DOT)
    for tap in range(taps):
        for og in range(offset_groups):
            y, x, m = _sample_position(offset, mask, b, og, tap, offs_l, mask_l, L, W_out, kw, stride_h, stride_w,
                                       pad_h, pad_w, dil_h, dil_w, taps, offset_groups, HAS_MASK, ACC)
            y0, x0, fy, fx, inside, finite = _corners(y, x, H, W)
            grad_y = tl.zeros([BLOCK_M], dtype=ACC)
            grad_x = tl.zeros([BLOCK_M], dtype=ACC)
            grad_m = tl.zeros([BLOCK_M], dtype=ACC)
            for c_start in range(og * offset_group_channels, (og + 1) * offset_group_channels, segment):
                group = c_start // group_channels
                for k0 in range(0, segment, BLOCK_K):
                    offs_k = k0 + tl.arange(0, BLOCK_K)
                    mask_c = offs_k < segment
                    grad_col = _grad_columns(grad_output, resident, weight_t, b, group, tap,
                                             c_start - group * group_channels + offs_k, mask_c, offs_l, mask_l, L,
                                             C_out, taps, group_channels, group_out, ACC, DOT, PRECISION, RESIDENT,
                                             BLOCK_M, BLOCK_N, BLOCK_K)
                    channel_base = ((b * C + c_start + offs_k) * H).to(tl.int64) * W
                    # grad_input: col2im scatter of mask * bilinear weight * grad_columns
                    scaled = grad_col * m[None, :]
                    _scatter_corner(grad_input, channel_base, y0, x0, fy, fx, scaled, H, W, mask_c, 0, 0)
                    _scatter_corner(grad_input, channel_base, y0, x0, fy, fx, scaled, H, W, mask_c, 0, 1)
                    _scatter_corner(grad_input, channel_base, y0, x0, fy, fx, scaled, H, W, mask_c, 1, 0)
                    _scatter_corner(grad_input, channel_base, y0, x0, fy, fx, scaled, H, W, mask_c, 1, 1)
                    # grad_offset / grad_mask: the sampling derivative, summed over the offset group's channels
                    v00, v01, v10, v11 = _gather(input, channel_base, y0, x0, H, W, mask_c, ACC)
                    d_y = (1 - fx)[None, :] * (v10 - v00) + fx[None, :] * (v11 - v01)
                    d_x = (1 - fy)[None, :] * (v01 - v00) + fy[None, :] * (v11 - v10)
                    grad_y += tl.sum(grad_col * d_y, axis=0)
                    grad_x += tl.sum(grad_col * d_x, axis=0)
                    grad_m += tl.sum(grad_col * _bilinear(v00, v01, v10, v11, fy, fx), axis=0)
            row = (b * offset_groups + og) * taps + tap
            # a sample with no neighbour inside has zero offset gradient, whatever its mask (as the reference)
            tl.store(grad_offset + (2 * row) * L + offs_l, tl.where(inside, m * grad_y, 0.0), mask=mask_l)
            tl.store(grad_offset + (2 * row + 1) * L + offs_l, tl.where(inside, m * grad_x, 0.0), mask=mask_l)
            if HAS_MASK:
                tl.store(grad_mask + row * L + offs_l, grad_m, mask=mask_l)


@triton.jit
def _backward_weight_kernel(
    grad_output, input, offset, mask, partial_weight,
    B, C, H, W, L, W_out, C_out, kw, taps, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    offset_groups, group_channels, group_out, offset_group_channels, segment, items_per_split,
    HAS_MASK: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """partial_weight[split, n, tap, c] = sum over this split's (image, pixel tile) items of
    grad_out (BN, BM) @ columns^T (BM, BK), each columns chunk gathered once per item."""
    k_blocks = tl.cdiv(segment, BLOCK_K)
    segments = group_channels // segment
    pid = tl.program_id(1)
    k0 = (pid % k_blocks) * BLOCK_K
    s0 = ((pid // k_blocks) % segments) * segment
    tap = (pid // (k_blocks * segments)) % taps
    group = pid // (k_blocks * segments * taps)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < group_out
    split = tl.program_id(2)
    offs_k = k0 + tl.arange(0, BLOCK_K)
    mask_c = offs_k < segment
    c_start = group * group_channels + s0
    og = c_start // offset_group_channels
    l_blocks = tl.cdiv(L, BLOCK_M)
    start = split * items_per_split
    end = tl.minimum(start + items_per_split, B * l_blocks)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=ACC)
    for item in range(start, end):
        b = item // l_blocks
        offs_l = (item % l_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_l = offs_l < L
        y, x, m = _sample_position(offset, mask, b, og, tap, offs_l, mask_l, L, W_out, kw, stride_h, stride_w,
                                   pad_h, pad_w, dil_h, dil_w, taps, offset_groups, HAS_MASK, ACC)
        y0, x0, fy, fx, inside, finite = _corners(y, x, H, W)
        channel_base = ((b * C + c_start + offs_k) * H).to(tl.int64) * W
        columns = _column_chunk(input, channel_base, y0, x0, fy, fx, m, finite, H, W, mask_c, ACC)
        g_tile = _grad_out_tile(grad_output, b, group, offs_n, mask_n, offs_l, mask_l, L, C_out, group_out)
        acc = tl.dot(g_tile.to(DOT), tl.trans(columns.to(DOT)), acc, input_precision=PRECISION, out_dtype=ACC)
    out = partial_weight + ((split * C_out + group * group_out + offs_n[:, None]) * taps + tap) * group_channels \
        + s0 + offs_k[None, :]
    tl.store(out, acc, mask=mask_n[:, None] & mask_c[None, :])


def _geometry(input, offset, weight, stride, padding, dilation) -> dict:
    """Integer launch arguments shared by the kernels."""
    batch, channels, height, width = input.shape
    out_channels, group_channels, kh, kw = weight.shape
    taps = kh * kw
    groups = channels // group_channels
    offset_groups = offset.shape[1] // (2 * taps)
    offset_group_channels = channels // offset_groups
    return dict(
        C=channels, H=height, W=width, L=offset.shape[2] * offset.shape[3], W_out=offset.shape[3], C_out=out_channels,
        kw=kw, taps=taps, stride_h=stride[0], stride_w=stride[1], pad_h=padding[0], pad_w=padding[1],
        dil_h=dilation[0], dil_w=dilation[1], offset_groups=offset_groups, group_channels=group_channels,
        group_out=out_channels // groups, offset_group_channels=offset_group_channels,
        segment=math.gcd(group_channels, offset_group_channels),
    )


def _dtypes(dtype: torch.dtype, device: torch.device) -> dict:
    """Accumulation dtype, dtype of the dot operands and dot precision: on a GPU native fp16/bf16 operands, fp32 in
    TF32 when torch.backends.cuda.matmul.allow_tf32 allows it, fp64 in fp64; the interpreter multiplies in ACC."""
    acc = tl.float64 if dtype == torch.float64 else tl.float32
    if device.type != "cuda":
        return dict(ACC=acc, DOT=acc, PRECISION="ieee")
    if dtype in (torch.float16, torch.bfloat16):
        return dict(ACC=acc, DOT=tl.float16 if dtype == torch.float16 else tl.bfloat16, PRECISION=None)
    tf32 = dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return dict(ACC=acc, DOT=acc, PRECISION="tf32" if tf32 else "ieee")


def _tiles(block_m: int, block_n: int, block_k: int, accumulator: int) -> dict:
    """Launch constants; as many warps (4..16) as keep the fp32 accumulator of `accumulator` elements at 64
    registers per thread."""
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=min(16, max(4, accumulator // 2048)))


def _pow2_block(count: int, most: int) -> int:
    """Block size along an axis of `count` elements: a power of two in [min(16, most), most], all of them when they
    fit."""
    return min(most, max(16, triton.next_power_of_2(count)))


def _fp32_min_dot_k() -> int:
    """Narrowest reduction axis Triton's NVIDIA backend accepts for an fp32 dot (its ``min_dot_size``): 16 before
    Triton 3.8 (3.6 is what PyTorch 2.11 ships), 8 since."""
    return 8 if triton_release() >= (3, 8) else 16


# Reduction width of a dot that runs as FMAs on the CUDA cores (fp32 "ieee"): Triton's FMA lowering keeps both
# operands' whole reduction axis in registers, (rows + columns per thread) x K, beside the accumulator. sm_90
# compile (Triton 3.9), C512 forward (64 accumulators, 16 + 4 operand values per k and thread): K = 32 spilled
# 11.4 KB, 16 0.97 KB, 8 60 B (scalars kept across the tap loop, reloaded outside the chunk loop). Where K = 8 is
# refused (Triton < 3.8), K = 16 with output blocks of at most FMA_BLOCK_N channels on FMA_WARPS warps (16
# accumulators per thread): sm_90 compile (Triton 3.6), C512 forward 250 registers and weight gradient 204, no
# spill, where the K = 8 tiles at K = 16 spilled 6.6 KB (ptxas fell back to 32 registers) and 0.9 KB.
FMA_K = _fp32_min_dot_k()
FMA_BLOCK_N, FMA_WARPS = (256, None) if FMA_K == 8 else (64, 8)


def _fma_tiles(blocks: dict) -> dict:
    """`blocks` of an FMA-dot kernel, narrowed to FMA_BLOCK_N output channels on FMA_WARPS warps where K = 16."""
    if FMA_WARPS is None:
        return blocks
    return dict(blocks, BLOCK_N=min(blocks["BLOCK_N"], FMA_BLOCK_N), num_warps=FMA_WARPS)


def _fma_dots(dtype: torch.dtype, dtypes: dict) -> bool:
    """Whether the dots run as FMAs: fp32 in "ieee" (as on a GPU with allow_tf32 False, and in the interpreter)."""
    return dtype == torch.float32 and dtypes["PRECISION"] == "ieee"


def _output_block(group_out: int, dot: tl.dtype) -> int:
    """Output channels of one program: the whole group when it fits, each K row of the pipelined operand tile
    kept at 1 KB (512 bf16/fp16, 256 fp32, 128 fp64 channels) so that 3 stages of 32-64 rows fit in shared memory."""
    return _pow2_block(group_out, 8192 // dot.primitive_bitwidth)


def _transposed_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in/groups, kh, kw) -> (C_out, kh*kw, C_in/groups): the K axis tap-major, channels contiguous."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1, weight.shape[1]).contiguous()


def forward(input, offset, weight, mask, bias, stride, padding, dilation) -> torch.Tensor:
    """(B, C_out, Ho, Wo); see fastseg.ops.deform_conv2d for the shapes."""
    input, offset = input.contiguous(), offset.contiguous()
    mask = mask.contiguous() if mask is not None else None
    bias = bias.contiguous() if bias is not None else None  # the kernel indexes it densely
    geo = _geometry(input, offset, weight, stride, padding, dilation)
    batch = input.shape[0]
    groups = geo["C"] // geo["group_channels"]
    output = torch.empty(batch, geo["C_out"], offset.shape[2], offset.shape[3], device=input.device, dtype=input.dtype)
    dtypes = _dtypes(input.dtype, input.device)
    block_n = _output_block(geo["group_out"], dtypes["DOT"])
    fma = _fma_dots(input.dtype, dtypes)
    block_k = _pow2_block(geo["segment"], FMA_K if fma else 32)
    # other dots (tensor cores; fp64): at least 8 warps, for the gather of each 64-pixel chunk (corners, masks,
    # weights) more than for the accumulator: sm_90, C32 bf16 at 4 warps spilled 372 B (Triton 3.6), at 8 none (218
    # registers; 106 in 3.9); the fp64 test case's 8 B (3.6) went too
    blocks = _tiles(64, block_n, block_k, accumulator=block_n * 64)
    blocks = _fma_tiles(blocks) if fma else dict(blocks, num_warps=max(8, blocks["num_warps"]))
    grid = (triton.cdiv(geo["L"], blocks["BLOCK_M"]), groups * triton.cdiv(geo["group_out"], blocks["BLOCK_N"]), batch)
    weight_t = _transposed_weight(weight)
    _forward_kernel[grid](
        input, offset, mask if mask is not None else offset, weight_t, bias if bias is not None else weight_t, output,
        **geo, HAS_MASK=mask is not None, HAS_BIAS=bias is not None, **dtypes, **blocks,
    )
    return output


def _refuse_nondeterminism() -> None:
    if torch.are_deterministic_algorithms_enabled():
        message = ("fastseg deform_conv2d backward with backend='triton' scatters grad_input with atomics and has no "
                   "deterministic implementation; use backend='cpu' or backend='reference'")
        if torch.is_deterministic_algorithms_warn_only_enabled():
            warnings.warn(message, stacklevel=3)
        else:
            raise RuntimeError(message)


def _num_splits(device: torch.device, programs: int, items: int) -> int:
    """(image, pixel tile) slices of the weight-gradient reduction: about four programs per SM on a GPU."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(items, triton.cdiv(4 * sms, programs)))


def backward(grad_output, input, offset, weight, mask, stride, padding, dilation):
    """(grad_input, grad_offset, grad_weight, grad_mask or an empty tensor, grad_bias)."""
    _refuse_nondeterminism()
    grad_output = grad_output.contiguous()
    input, offset = input.contiguous(), offset.contiguous()
    mask = mask.contiguous() if mask is not None else None
    geo = _geometry(input, offset, weight, stride, padding, dilation)
    batch = input.shape[0]
    groups = geo["C"] // geo["group_channels"]
    dtypes = _dtypes(input.dtype, input.device)
    acc_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    # grad_columns (32 channels x 64 pixels): output channels are the reduction. With one conv group and C_out within
    # _output_block's bound (tile <= 64 KB: 512 x 64 bf16/fp16, 256 fp32, 128 fp64) the program's grad_out tile stays
    # on chip (RESIDENT, one reduction step) and 8 warps hold the chunk (sm_90 compile, bf16: 222-255 registers per
    # thread, no spills; 4 warps spill); else the tile is reloaded 64 rows (FMA dots: 8) at a time, also at 8 warps (the
    # 32 x 64 accumulator alone would take 4: the chunk's gathers and scatters spilled 260-448 B in TF32)
    block_k = _pow2_block(geo["segment"], 32)
    fma = _fma_dots(input.dtype, dtypes)
    whole = _output_block(geo["C_out"], dtypes["DOT"])
    resident = groups == 1 and whole >= geo["C_out"]
    block_n = whole if resident else _pow2_block(geo["group_out"], FMA_K if fma else 64)
    blocks = dict(BLOCK_M=64, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=8)
    weight_t = _transposed_weight(weight)
    grad_input = torch.zeros(input.shape, device=input.device, dtype=acc_dtype)
    # every element of grad_offset / grad_mask is stored exactly once by the data kernel
    grad_offset = torch.empty(offset.shape, device=input.device, dtype=acc_dtype)
    grad_mask = torch.empty(mask.shape if mask is not None else (0,), device=input.device, dtype=acc_dtype)
    has_mask = mask is not None
    mask_arg = mask if has_mask else offset
    l_tiles = triton.cdiv(geo["L"], blocks["BLOCK_M"])
    _backward_data_kernel[(l_tiles, batch)](
        grad_output, input, offset, mask_arg, weight_t, grad_input, grad_offset, grad_mask if has_mask else grad_offset,
        **geo, HAS_MASK=has_mask, **dtypes, RESIDENT=resident, **blocks,
    )
    # grad_out is re-read once per K chunk: 64 channels per chunk halve that traffic (cost model above)
    block_n, block_k = _output_block(geo["group_out"], dtypes["DOT"]), _pow2_block(geo["segment"], 64)
    blocks = _tiles(FMA_K if fma else 32, block_n, block_k, accumulator=block_n * block_k)
    if fma:
        blocks = _fma_tiles(blocks)
    column_programs = groups * geo["taps"] * (geo["group_channels"] // geo["segment"]) * triton.cdiv(
        geo["segment"], blocks["BLOCK_K"])
    n_programs = triton.cdiv(geo["group_out"], blocks["BLOCK_N"])
    items = batch * triton.cdiv(geo["L"], blocks["BLOCK_M"])
    splits = _num_splits(input.device, n_programs * column_programs, items)
    items_per_split = triton.cdiv(items, splits)
    splits = triton.cdiv(items, items_per_split)
    partial_weight = torch.empty(splits, *weight_t.shape, device=input.device, dtype=acc_dtype)
    _backward_weight_kernel[(n_programs, column_programs, splits)](
        grad_output, input, offset, mask_arg, partial_weight, batch, **geo, items_per_split=items_per_split,
        HAS_MASK=has_mask, **dtypes, **blocks,
    )
    # (C_out, taps, C_in/groups) -> (C_out, C_in/groups, kh, kw)
    grad_weight = partial_weight.sum(dim=0).view(weight.shape[0], *weight.shape[2:], -1).permute(0, 3, 1, 2)
    grad_bias = grad_output.sum(dim=(0, 2, 3), dtype=acc_dtype)
    dtype = input.dtype
    return (grad_input.to(dtype), grad_offset.to(dtype), grad_weight.to(dtype).contiguous(), grad_mask.to(dtype),
            grad_bias.to(dtype))
