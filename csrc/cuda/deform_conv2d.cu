// CUDA sampling kernels of deformable convolution v1/v2 (CSFRNet Eq. 6), torchvision's semantics:
// a sample at (y, x) is the bilinear mix of its four neighbours, each neighbour outside the image
// contributing zero, and is zero when y <= -1, y >= H, x <= -1 or x >= W. All arithmetic in acc_t
// (fp32 for fp16/bf16/fp32, fp64 for fp64); int64 indexing, except the fused path's int32 indices
// within one NHWC image (the plan checks H*W*C < 2^31).
//
// Design, generic path: the input is channels-last (NHWC, a copy by the glue) and the columns
// pixel-major, (nb, groups, P, taps, C/groups). A warp takes 32 samples (image, pixel, offset group,
// tap), a lane computing one of them (bilinear neighbours, weights, mask: the only integer divisions),
// then runs them in turn, each broadcast by shuffles, its lanes on the channels of the sample's
// offset group (runs split at group boundaries), V adjacent channels per lane (channel_width): four
// (V = 4, 128 per warp step: 16-byte loads fp32, 8-byte fp16/bf16, float4 atomics on sm_90) when the
// channels per group and per offset group are multiples of 4 and the buffers 4-element aligned, else
// two (V = 2, 64 per step: pair loads, float2 atomics) when they are even and pair-aligned, else one
// (V = 1), the same code; fp64 takes at most two (four would be a 32-byte load). A neighbour load, a
// column store, a grad column load and an atomic into the NHWC grad_input are each one contiguous
// run of channels. im2col writes the columns; the backward kernel reads each grad column once,
// scatters it (4 fp32 atomics per channel; per V channels 4 vector ones on sm_90) and sums the offset and mask
// gradients over the channels, reduced over the lanes (warp_sums). The channel loops are the fused
// path's (sample_columns, sample_backward). The GEMMs are cuBLAS through the glue
// (csrc/cuda_glue/deform_conv2d.cpp) on transposed views of the columns: straight into the output,
// the bias as the C operand.
// Fused path (groups == 1 and its shared memory fits, see FusedLayout; the glue chooses): a block
// takes tiles of 64 output pixels of one image and keeps the kernels and the column tile in shared
// memory (acc_t; for fp16/bf16 the product operands in the input dtype, padded to 16), the bias as a
// row of ones. The input is channels-last (NHWC, a copy by the glue):
// per tile a sample pass (a thread per sample) stores the samples' records in shared memory, then a
// channel pass gives each sample to 32 / V lanes, each on V adjacent channels of its offset group
// (V from channel_width, as in the generic path): a quarter-warp for V = 4 (a warp runs four samples
// per step), a half-warp for V = 2 (two), a warp for V = 1, so that a neighbour load (and an atomic
// into the NHWC grad_input) is one contiguous run of channels; the channel loops are the generic
// path's (sample_columns, sample_backward) with channel stride 1.
// Forward, one launch: the tile, then output = kernels x tile (tile_product: fp32/fp64 FMAs, 4 x 2
// register tile per thread; fp16/bf16 wmma 16x16x16 tiles on the tensor cores, fp32 sums).
// Backward, one launch: grad tile = kernels^T x grad_out (the same product), the channel pass
// scatters it (atomics), sums the offset and mask gradients over the lanes (shuffles, fixed order)
// and leaves the column values in the tile, grad weight/bias sums += grad_out x tile^T per block in
// shared memory; then a block-ordered (deterministic) reduction of the per-block sums.
//
// Cost model at the GPU shapes of bench/bench_deform_conv2d.py (B=8, 97x97 -> P=9409 pixels per
// image, 3x3 taps, modulated, forward+backward; H200: 4.8 TB/s HBM, taken at 85% = 4.1 TB/s;
// 67 TFLOP/s fp32, 989 TFLOP/s dense bf16; 33 T lane-instructions/s; ~3 us per launch). The floor is
// max(bytes / bandwidth, FLOPs / peak) of the benchmark's byte and FLOP counts; bench/report.py reads
// the `predicted H200` lines (the one place these numbers live) into the "predicted" column of
// bench/RESULTS.md. With E = B*C*9*P column elements (C512: 347 M; C32: 21.7 M) and
// F = 2*B*P*C*C*9 FLOPs per GEMM (C512: 355 GFLOP):
// C512, generic path (S = B*P*9 = 677 K samples per pass; L1 sectors and issue counted as for the
// fused path below: 4 sectors per clock per SM = 1.045 T sectors/s, 4 warp-instructions per clock
// per SM = 1.045 T/s, 1 warp shuffle per clock per SM):
//   im2col (twice: forward, and again in the backward): HBM: write E columns + read input/offset/mask:
//     0.380 ms fp32, 0.190 ms bf16. L1: E/32 = 10.8 M warp steps of 32 channels, each 4 neighbour
//     loads of 128 B (4 sectors fp32; bf16 64 B, 2) and a column store: 217 M sectors, 0.207 ms fp32;
//     108 M, 0.104 ms bf16 (fours: E/128 = 2.71 M steps of 128 channels, the same sectors). Issue,
//     counted in the sm_90 SASS (cuobjdump -sass; im2col_kernel's inner loop, 4 steps unrolled, loads
//     predicated): fours (C/groups and C/offset_groups multiples of 4, as at C512) 158 instructions
//     per 4 steps fp32 (16 LDG.128, 64 FFMA, 16 FMUL, 16 STG), 273 bf16 (16 LDG.64; each 16-bit
//     value's PRMT/SHF/IMAD.U32 unpacking, 16 F2FP, 16 16-bit stores): 39.5 / 68.25 per step of 128
//     channels, 2.71 M x 39.5 / 1.045 T = 0.102 ms fp32, 0.177 ms bf16; plus per sample ~8
//     (load_sample's ~250, once per lane of 32) and ~36 for the broadcast (16 + 2 x 5 shuffles, 0.067
//     ms on the shuffle pipe) and loop: 0.031 ms (estimated, not SASS-counted): 0.133 / 0.208 ms. Per
//     pass: 0.380 ms fp32 (HBM-bound), 0.208 ms bf16 (issue-bound). Pairs (V = 2, what ran before):
//     92 / 154 per 4 steps of 64 channels, 23 / 38.5 per step (46 / 77 per 128 channels), 0.119 /
//     0.200 + 0.031 = 0.150 / 0.231 ms; fours save 14% / 11% of the loop's issue, not half: the
//     FFMAs, FMULs, conversions and stores stay per channel, only the loads and the loop's address
//     arithmetic are per vector (fp32 fours at 2 unrolled steps: 85 per 2 steps, 127 registers; at 4:
//     104). One channel per lane: 66 / 87 per 4 steps of 32 channels, 16.5 / 21.75 per step, 0.171 /
//     0.226 + 0.031 = 0.202 / 0.257 ms (the ~20 per step and ~0.24 ms estimated before). The
//     NCHW design before (lanes on 32 pixels of a channel plane) left the sectors out: 20.7 sectors
//     per neighbour load fp32, 15.3 bf16, 0.90 / 0.66 ms per pass, which bound it.
//   3 GEMMs (output, grad columns, grad weight as per-image products summed in fp32): each
//     max(F / rate, columns / HBM); rate = cuBLAS SGEMM at 70% of 67 TFLOP/s with TF32 off
//     (PyTorch's default; with torch.backends.cuda.matmul.allow_tf32 = True cuBLAS runs TF32 on its
//     own, ~300 TFLOP/s, and the fp32 C512 prediction drops to ~5.6 ms), bf16 at 60% of 989 TFLOP/s:
//     C512 7.6 ms each fp32, 0.61 ms each bf16. The bias costs one broadcast write of the output
//     (ATen's baddbmm copies C into the output, then the GEMM reads it with beta = 1).
//   backward sampling: HBM: read E grad columns + input: 0.380 ms fp32, 0.192 ms bf16, plus the fp32
//     grad_input atomics at ~2.5 T atomic instructions/s (an assumption: uncontended RED in L2, 128 B
//     contiguous per warp atomic; a float2 RED.F32x2 or float4 RED.F32x4 assumed to cost as one, not
//     measured: at the L2's rate per 4 bytes they would stay at 0.555 ms): fours (sm_90) E float4
//     atomics, 0.139 ms (pairs' 2*E float2 ones 0.277 ms, 4*E fp32 ones 0.555 ms): 0.519 ms fp32,
//     0.331 ms bf16 (pairs 0.657 / 0.469, one channel per lane 0.94 / 0.75). L1: per 32 channels 4
//     neighbour loads, 4 fp32 atomics of 128 B (4 sectors each, vectors the same sectors in 1/V of the
//     instructions) and the grad column load: 390 M sectors, 0.37 ms fp32; 282 M, 0.27 ms bf16. Issue
//     (SASS, columns_backward_kernel's inner loop, 2 steps unrolled, all four neighbours inside):
//     fours 302 / 329 instructions per 2 steps fp32 / bf16 (8 LDG.128 / LDG.64, 8 grad column loads,
//     8 REDG.F32x4, 64 FFMA, 64 FMUL, 32 FADD; bf16 also 56 unpacking), 151 / 164.5 per step of 128
//     channels: 2.71 M x 151 / 1.045 T = 0.392 ms fp32, 0.427 ms bf16, plus per sample the broadcast,
//     warp_sums (8 shuffles) and lane 0's writes, ~0.04 ms (estimated): 0.432 / 0.467 ms. Per pass:
//     0.519 ms fp32 (HBM and atomics), 0.467 ms bf16 (issue). Pairs (before): 211 / 214 per 2 steps of
//     64 channels (8 LDG.64, 4 grad column LDG, 8 REDG.F32x2, 32 FFMA, 32 FMUL, 16 FADD), 105.5 / 107
//     per step (211 / 214 per 128 channels; fours save 28% / 23%): 5.42 M x 105.5 / 1.045 T = 0.547
//     ms fp32, 0.555 ms bf16, + 0.04 = 0.587 / 0.595 ms; per pass 0.657 ms fp32 (HBM and atomics),
//     0.595 ms bf16 (issue). One channel per lane: 167 / 149 per 2 steps of 32
//     channels, 83.5 / 74.5 per step: 0.866 / 0.773 + 0.04 = 0.906 / 0.813 ms of issue (the ~0.66 ms
//     estimated before), against the 0.94 / 0.75 of HBM and atomics. The NCHW design's loads and
//     atomics at 20.7 sectors (15.3 for bf16 loads) were 1.76 / 1.52 ms of L1.
//   small passes (zeroed fp32 grad_input, its conversion back to NCHW in the input dtype (the cast
//     before), grad_bias): ~0.11-0.15 ms; the NHWC copy of the input, once per forward and once per
//     backward (154 MB fp32 read + written: 0.075 ms each fp32, 0.038 bf16); the weight reordered
//     tap-major per call (9.4 MB fp32 read + written, twice: 0.009 ms fp32, 0.005 bf16; its gradient's
//     permute replaces the cast before). Launches, 3 us each: 3 per forward chunk, 6 per backward
//     chunk, 9 more (the 1 GiB column workspace gives C512 2 + 3 chunks in fp32, 1 + 2 in bf16): 33 /
//     24 launches (29 / 20 before).
//   Total: the NCHW design's 24.691 ms fp32 (im2col HBM-bound as now, backward sampling 0.94 ms) +
//     NHWC copies 0.150 + weight reorder 0.009 + 4 launches 0.012 - (0.94 - 0.519) float4 atomics =
//     24.441 ms (pairs 24.579, one channel per lane 24.862); bf16 3.179 (im2col 0.190, backward
//     sampling 0.75) + 2 x (0.208 - 0.190) im2col issue - (0.75 - 0.467) backward + 0.075 + 0.005 +
//     0.012 = 3.024 ms (pairs: 3.179 + 2 x (0.231 - 0.190) - (0.75 - 0.595) + 0.092 = 3.198 ms; one
//     channel per lane, SASS-counted: 3.179 + 2 x (0.257 - 0.190) + (0.813 - 0.75) + 0.092 =
//     3.468 ms; the 3.371 that stood here took the ~0.24 / ~0.66 ms estimates). The NCHW design with
//     its sectors counted: 24.691 + 2 x (0.90 - 0.38) + (1.76 - 0.94) = ~26.55 ms fp32, 3.179 + 2 x
//     (0.66 - 0.19) + (1.52 - 0.75) = ~4.89 ms bf16.
// C32, fused path (C = C_out = 32, R = 289 tile rows; 148 tiles per image, 1184 in all; per tile 576
// samples, one offset group x 9 taps x 64 pixels), counted in clocks of one SM's L1/shared-memory data
// path (128 B = 1 wavefront per clock, 4 sectors per clock for global loads and atomics, 1 warp
// shuffle per clock) and of instruction issue (4 warp-instructions per clock); a phase takes the
// larger of the two:
//   products, fp32: block_product reads 3 shared wavefronts (one broadcast quad, two scalars) per 8
//     FMAs per warp and row r; its ~12 instructions per (warp, r) over 4 schedulers also take 3
//     clocks: 67% of the fp32 FMA peak. Per tile: forward 8 warps x 289 r x 3 = 6.9 K clocks;
//     backward grad tile 8 x 9 row quads x 32 x 3 = 6.9 K, grad weight 8 x 5 column blocks x 64 x 3
//     = 7.7 K (fp32 for every dtype before the tensor-core products).
//   products, bf16/fp16 (wmma_product): an mma_sync of 16x16x16 is 8192 FLOPs, 8 clocks at ~1024
//     dense FLOP/clk/SM (mma.sync-class, about half the wgmma peak), and loads 2 operand tiles of
//     512 B (4 wavefronts each, rows padded by 16 B: no bank conflicts): 8 clocks, so the tensor pipe
//     and the loads take the same time and overlap; each 16x16 output tile adds its fp32 staging
//     store (8 wavefronts), the lanes' reads of it (8 steps, 2-way: 16) and the epilogue's shared
//     stores. Forward (R = 289 -> 304, C_out 32): 8 tiles x 19 slices = 152 mma: 1.2 K clocks of
//     loads + 0.2 K staging = 1.4 K. Backward grad tile (288 x 64 over C_out = 32): 72 tiles x 2 =
//     144 mma, 1.15 K; staging 1.7 K; the bf16 column stores (2-way) 1.15 K: 4.0 K. Grad weight
//     (32 x 289 -> 304 over 64 pixels): 38 tiles x 4 = 152 mma, 1.2 K; staging 0.9 K; the fp32 sums'
//     read-add-write (2-way) 1.2 K: 3.3 K. Issue (~6 instructions per mma, ~10 per epilogue step)
//     stays below these.
//   sample pass: 576 samples, a thread each: ~120 instructions (load_sample, its int64 division
//     for (ho, wo) included) per warp of 32 samples, 18 warps: 0.54 K, plus the records' 3 quad
//     stores (4 wavefronts each), 0.22 K: 0.8 K clocks per tile.
//   channel pass (C = 32 is a multiple of 4: V = 4, a quarter-warp per sample, four samples per warp
//     step): per sample 3 broadcast record loads, 4 neighbour loads of 32 channels (four per lane:
//     128 B fp32, aligned, 4 sectors; bf16 64 B, 2 sectors; one instruction loads the four quarter-
//     warps' samples, 16 / 8 sectors; 20.7 / 15.3 sectors per load in the pixel-per-lane layout of
//     old) and 32 column entries, 4 stores per warp step; fp32 without bank conflicts (lane l of
//     quarter q on bank 4 l + q: forward channels 36 taps apart and pixels 289 apart, backward 36
//     rows of 65): 8 clocks fp32, 6 bf16 per sample. Issue, counted in the SASS of the sm_90 cubin
//     (cuobjdump -sass; the path of one warp step of C = 32 with all four neighbours inside: records,
//     predicates, 64-bit addresses, loads, FMAs, stores, loop): 123 instructions per warp step fp32,
//     148 bf16 (each value's unpacking), 30.75 / 37 per sample = 7.7 / 9.25 issue clocks, so the
//     forward pass now meets its data path: fp32 max(8, 7.7) = 8 clocks per sample, 576 x 8 = 4.6 K
//     per tile; bf16 (whose 16-bit stores conflict 4-way at V = 4: 4 wavefronts per sample, 2 at V =
//     2; 9 clocks) 9.25, 5.3 K. Backward: also the grad column loads, 4 float4 atomics (RED.F32x4)
//     of 4 x 128 B per step (4 clocks per sample), 6 shuffles per step (warp_sums of 8 lanes) for
//     four samples: 14.5 clocks per sample fp32; bf16 18.5 with its grad column loads and stores at 4
//     wavefronts per sample each (channels 36 rows of 144 B apart: 4-way, at V = 2 too); 289 / 325
//     instructions per step, 72.25 / 81.25 per sample (18.1 / 20.3 issue clocks): 10.4 / 11.7 K.
//     Pairs (V = 2, a half-warp per sample, what ran before; SASS the same way): 105 / 126 per warp
//     step of two samples forward, 52.5 / 63 per sample = 13.1 / 15.8 clocks: 7.6 / 9.1 K per tile;
//     backward 247 / 249 per step (7 shuffles, warp_sums of 16 lanes), 123.5 / 124.5 per sample
//     (30.9 / 31.1 clocks): 17.8 / 17.9 K. Fours cut the channel pass's issue by 41% forward, 42% /
//     35% backward: the record, 64-bit addresses, predicates, reduction and lane-0 writes are now paid
//     per quarter-warp of 32 channels. The one-channel loops (V = 1) count 86 / 96 SASS instructions
//     per (warp, sample) forward fp32 / bf16, 222 / 223 backward (the PTX estimate that once stood
//     here, ~50 / ~110, undercounted): 12.4 / 13.8 K and 32.0 / 32.1 K per tile.
//   smaller: the kernels' 4-way-conflicted transposing stores and weight loads 1.5 K (1.3 K bf16),
//     now after the channel pass (their region first holds the records); backward grad_out tile (two
//     layouts), offset and mask writes 1.6 K.
//   forward: 1184 blocks, two per SM (113.0 KB of shared memory each fp32, 76.0 KB bf16; the
//     kernel's launch bounds say so, its registers up to 128), 8.97 tiles per SM at 1.98 GHz: 0.8 +
//     4.6 + 1.5 + 6.9 = 13.8 K clocks per tile fp32 -> 62.5 us; bf16 0.8 + 5.3 + 1.3 + 1.4 = 8.8 K ->
//     39.9 us (pairs: 16.8 K -> 76.1 us fp32, 12.6 K -> 57.1 us bf16; one channel per lane,
//     SASS-counted: 21.6 K -> 97.9 us fp32, 17.3 K -> 78.4 us bf16).
//   backward: 132 blocks (one per SM: 190.1 KB fp32, 144.9 KB bf16), at most 9 tiles each: 0.8 +
//     1.6 + 14.6 + 10.4 = 27.4 K clocks per tile fp32 -> 124.5 us; bf16 0.8 + 1.6 + 4.0 + 3.3 +
//     11.7 = 21.4 K -> 97.3 us (pairs: 34.8 K -> 158.2 us fp32, 27.6 K -> 125.5 us bf16; one channel
//     per lane: 49.0 K -> 222.7 us fp32, 41.8 K -> 190.0 us bf16).
//   passes around the kernels: the NHWC copy of the input, once per forward and once per backward
//     (9.6 MB read + written fp32: 4.7 us each; 2.35 us bf16), the zeroed NHWC fp32 grad_input 2.3 us,
//     the reduction of the 132 x 9248 fp32 partial sums 1.2 us, grad_input back to NCHW in the input
//     dtype 4.7 us fp32 (new), 3.5 us bf16 (the cast it replaces): 17.6 / 11.7 us.
//   launches: forward 2 (copy, fused), backward 5 (copy, zeroing, fused, reduction, conversion):
//     7 x 3 us = 21 us (was 4 / 5 launches).
//   Total 62.5 + 124.5 + 17.6 + 21 = 226 us fp32, 39.9 + 97.3 + 11.7 + 21 = 170 us bf16 (pairs: 76.1 +
//   158.2 + 17.6 + 21 = 273 us fp32, 57.1 + 125.5 + 11.7 + 21 = 215 us bf16). One channel per lane
//   counted the same way (SASS): 97.9 + 222.7 + 17.6 + 21 = 359 us fp32, 78.4 + 190.0 + 11.7 + 21 =
//   301 us bf16; the 262 / 197 us that once stood here took the PTX estimate. The generic path's
//   0.254 / 0.163 ms C32 predictions (14-20 launches, column round trips through HBM, cuBLAS) left
//   the neighbour sectors out; counted the same way its four passes (im2col twice, backward reads,
//   atomics) add ~0.22 / ~0.17 ms: ~0.43 / ~0.30 ms. In bf16 the
//   fused path gains launches and HBM traffic and keeps the tensor cores for its products.
//   Risks: the channel pass's instruction counts are one path of the SASS (all neighbours inside;
//   an edge sample skips loads), issue at 4 per clock assumed (no dual issue, no stalls); the fp32
//   forward pass now sits at its data path (8 clocks per sample), so the 3 record loads per sample
//   (now 4 records per LDS.128, one per quarter-warp, assumed 1 wavefront each per sample) matter;
//   the float4 atomics' rate is assumed (above); the
//   products' counts are still PTX estimates; the NHWC copies are ATen
//   permute-copies, which may run well below HBM bandwidth (at half, +9 us fp32); the L2 traffic of
//   the loads and atomics and the latency of the backward's 8 warps per SM are not modelled; the
//   1024 FLOP/clk/SM of mma.sync and the wmma loads' wavefronts are assumed, not read off SASS.
// Bound: C512 fp32 by the SGEMMs (1.54x floor); C512 bf16 by the GEMMs at 60% of peak plus the column
// passes' issue, which the floor does not count (2.8x); C32 fp32 by the shared-memory products (6.9 K
// + 14.6 K clocks per tile), then the channel passes (their data path forward, issue backward); C32
// bf16 by the channel passes' issue (per-sample work per quarter-warp, 16-bit unpacking) and 4-way
// column-tile conflicts, then the wmma operand loads and fp32 staging (the tensor cores keep pace).
// predicted H200 | deform_conv2d csfrnet-C512 fp32 B=8 97x97 fwd+bwd | 24.441 ms | fp32 SGEMM, TF32 off (floor 15.903 ms)
// predicted H200 | deform_conv2d csfrnet-C512 bf16 B=8 97x97 fwd+bwd | 3.024 ms | bf16 GEMMs, column passes' issue (floor 1.077 ms)
// predicted H200 | deform_conv2d csfrnet-C32 fp32 B=8 97x97 fwd+bwd | 0.226 ms | shared-memory products, channel passes (floor 0.062 ms)
// predicted H200 | deform_conv2d csfrnet-C32 bf16 B=8 97x97 fwd+bwd | 0.170 ms | channel-pass issue, wmma operand loads and staging (floor 0.008 ms)
#include "cuda/common.cuh"
#include "cuda/deform_conv2d.h"

#include <mma.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

namespace fastseg::cuda {
namespace {

constexpr int kThreads = 256;

// One sample's neighbours: indices from the group's first channel (int32 in the fused path's
// records: with the channel offset, within one NHWC image, H*W*C < 2^31), inside flags and bilinear
// weights.
template <typename acc_t, typename index_t = int64_t>
struct Sample {
  index_t index[4];
  acc_t weight[4];
  acc_t frac_y, frac_x, mask;
  bool inside[4];
  bool any;       // some neighbour is inside (the position is finite and within (-1, size))
  bool poisoned;  // the position is not finite: NaN column, no gradient (the NaN rule of fastseg.ops)

  // The factor of the sample's column values (mask * bilinear value): NaN when poisoned.
  __device__ acc_t column_scale() const { return poisoned ? acc_t(NAN) : mask; }
};

// A sample's image (b, and local_b within the generic path's chunk), offset group and tap.
struct SampleRow {
  int64_t local_b, b, og, tap;
};

// The sample of row r at output pixel p = (ho, wo): computed once per (image, offset group, tap,
// pixel) and reused for every channel of the offset group. Neighbour (yn, xn) is at index
// (yn * W + xn) * C of the group's first channel in the NHWC image (both paths read channels-last).
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
    s.index[n] = s.inside[n] ? (yn * g.width + xn) * g.channels : 0;
    const acc_t wy = (n >> 1) ? s.frac_y : acc_t(1) - s.frac_y;
    const acc_t wx = (n & 1) ? s.frac_x : acc_t(1) - s.frac_x;
    s.weight[n] = s.inside[n] ? wy * wx : acc_t(0);
  }
  return s;
}

// The channels of a run of a sample's offset group that one thread handles: c = first, first + step,
// ... below count (a warp's lane, lane + 32, ...), adjacent in the NHWC input (both paths). With V > 1
// adjacent channels per lane (V = 2 or 4, when aligned: channel_width) c is a multiple of V and the
// thread also takes c + 1, ..., c + V - 1.
struct ChannelRange {
  int64_t first, step, count;
};

// V adjacent elements, loaded (and, for fp32 on sm_90, added atomically) by one instruction of V *
// sizeof(T) <= 16 bytes at an address aligned to that size (V = 2: float2, a 16-bit pair as 32 bits,
// double2; V = 4: float4, four 16-bit values as 64 bits).
template <typename T, int V>
struct alignas(V * sizeof(T)) Vec {
  T v[V];
};

template <int V, typename T>
__device__ __forceinline__ Vec<T, V> load_vec(const T* address) {
#ifdef FASTSEG_EMULATED_CUDA
  // The host's loads do not fault where a GPU's would: the emulated layer checks (the launch fails),
  // and the load copies bytes (the host's aligned 16-byte load of a misaligned Vec would crash).
  ::fastseg::emulated::check_alignment(address, sizeof(Vec<T, V>), "vector load at an address not aligned to its size");
  Vec<T, V> value;
  std::memcpy(&value, static_cast<const void*>(address), sizeof(value));
  return value;
#else
  return *reinterpret_cast<const Vec<T, V>*>(address);
#endif
}

// address[0, V) += value[0, V) (atomics): one float2 / float4 atomic for V = 2 / 4 fp32 values on
// sm_90 (global memory, the address aligned to 8 / 16 bytes; the emulated layer has both), else one
// atomic per element.
template <int V, typename acc_t>
__device__ __forceinline__ void atomic_add_vec(acc_t* address, const acc_t (&value)[V]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  constexpr bool kVectorAtomics = false;
#else
  constexpr bool kVectorAtomics = true;
#endif
  if constexpr (kVectorAtomics && V == 2 && std::is_same_v<acc_t, float>) {
    atomicAdd(reinterpret_cast<float2*>(address), make_float2(value[0], value[1]));
  } else if constexpr (kVectorAtomics && V == 4 && std::is_same_v<acc_t, float>) {
    atomicAdd(reinterpret_cast<float4*>(address), make_float4(value[0], value[1], value[2], value[3]));
  } else {
#pragma unroll
    for (int v = 0; v < V; ++v) atomicAdd(address + v, value[v]);
  }
}

// The channel loop of one sample: column[c * column_stride] = mask * bilinear(image + c) for
// the channels c of `range` (`image` at the group's first channel; NaN when the position is
// poisoned), V adjacent channels per step (vector loads). Serves im2col (scalar_t columns in HBM)
// and the fused forward (operand_type columns in shared memory). Four steps unrolled, two for fp64
// pairs with int64 indices (im2col's: four spill 4 bytes at ptxas' 128 registers).
template <int V, typename scalar_t, typename acc_t, typename index_t, typename column_t>
__device__ void sample_columns(const Sample<acc_t, index_t>& s, const ChannelRange& range, const scalar_t* image,
                               column_t* column, int64_t column_stride) {
  constexpr int kUnroll = sizeof(scalar_t) == 8 && V > 1 && sizeof(index_t) == 8 ? 2 : 4;
  const acc_t scale = s.column_scale();
#pragma unroll kUnroll
  for (int64_t c = range.first; c < range.count; c += range.step) {
    const index_t channel = static_cast<index_t>(c);
    acc_t value[V] = {};
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      if (s.inside[n]) {
        const Vec<scalar_t, V> x = load_vec<V>(image + (channel + s.index[n]));
#pragma unroll
        for (int v = 0; v < V; ++v) value[v] += s.weight[n] * convert<acc_t>(x.v[v]);
      }
    }
#pragma unroll
    for (int v = 0; v < V; ++v) column[(c + v) * column_stride] = convert<column_t>(scale * value[v]);
  }
}

// A sample's gradient sums over channels: d/dy, d/dx of the bilinear value (times the grad column)
// and the grad column times the value (the mask gradient).
template <typename acc_t>
struct SampleGrads {
  acc_t y, x, m;
};

// The totals over `kLanes` lanes (a warp, a half-warp or a quarter-warp: xor and width stay inside it)
// of their partial sums, in its first lane, in a fixed order (deterministic), 8 shuffles for a warp
// instead of 3 x 5 (7 for a half-warp instead of 3 x 4, 6 for a quarter instead of 3 x 3): the xor-H
// and xor-Q steps (H = kLanes / 2, Q = kLanes / 4) each halve the values a lane carries on (the lane
// with the step's bit carries the upper half), leaving y in lanes [0, Q), x in [Q, 2Q), m in [2Q,
// 3Q) (zero in the rest); log2(Q) more steps add within each Q lanes, two more bring x and m to the
// first lane.
template <int kLanes, typename acc_t>
__device__ SampleGrads<acc_t> warp_sums(const SampleGrads<acc_t>& partial) {
  constexpr unsigned kAll = 0xffffffffu;
  constexpr int kHalf = kLanes / 2, kQuarter = kLanes / 4;
  const bool upper_half = threadIdx.x & kHalf, upper_quarter = threadIdx.x & kQuarter;
  const acc_t keep_a = upper_half ? partial.m : partial.y, keep_b = upper_half ? acc_t(0) : partial.x;
  const acc_t send_a = upper_half ? partial.y : partial.m, send_b = upper_half ? partial.x : acc_t(0);
  const acc_t a = keep_a + __shfl_xor_sync(kAll, send_a, kHalf, kLanes);
  const acc_t b = keep_b + __shfl_xor_sync(kAll, send_b, kHalf, kLanes);
  acc_t v = (upper_quarter ? b : a) + __shfl_xor_sync(kAll, upper_quarter ? a : b, kQuarter, kLanes);
#pragma unroll
  for (int lanes = kQuarter / 2; lanes > 0; lanes /= 2) v += __shfl_xor_sync(kAll, v, lanes, kLanes);
  return {v, __shfl_sync(kAll, v, kQuarter, kLanes), __shfl_sync(kAll, v, 2 * kQuarter, kLanes)};
}

// The backward of one sample over the channels of `range` given its grad column (grad_column[c *
// column_stride]): grad_image[c] += bilinear weight * mask * grad (atomics, same indexing as image;
// V adjacent channels per step: vector loads and, for fp32 grad_image, vector atomics) and the returned
// partial sums of the offset and mask gradients (write_sample_grads). Serves the generic backward
// (const grad columns in HBM) and the fused one (grad columns in shared memory, mutable): there each
// entry is then replaced by the sample's column value (what sample_columns writes), from the
// neighbours this pass loads anyway, for the grad weight product.
template <int V, typename scalar_t, typename acc_t, typename index_t, typename column_t>
__device__ SampleGrads<acc_t> sample_backward(const Sample<acc_t, index_t>& s, const ChannelRange& range,
                                              const scalar_t* image, acc_t* grad_image, column_t* grad_column,
                                              int64_t column_stride) {
  constexpr bool kRebuildColumns = !std::is_const_v<column_t>;
  SampleGrads<acc_t> sums{acc_t(0), acc_t(0), acc_t(0)};
  if (s.any) {
#pragma unroll 2
    for (int64_t c = range.first; c < range.count; c += range.step) {
      const index_t channel = static_cast<index_t>(c);
      acc_t grad[V], masked_grad[V], v[4][V];
#pragma unroll
      for (int k = 0; k < V; ++k) {
        grad[k] = convert<acc_t>(grad_column[(c + k) * column_stride]);
        masked_grad[k] = s.mask * grad[k];
      }
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        if (s.inside[n]) {
          const Vec<scalar_t, V> x = load_vec<V>(image + (channel + s.index[n]));
          acc_t scattered[V];
#pragma unroll
          for (int k = 0; k < V; ++k) {
            v[n][k] = convert<acc_t>(x.v[k]);
            scattered[k] = s.weight[n] * masked_grad[k];
          }
          atomic_add_vec<V>(grad_image + (channel + s.index[n]), scattered);
        } else {
#pragma unroll
          for (int k = 0; k < V; ++k) v[n][k] = acc_t(0);
        }
      }
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const acc_t value =
            s.weight[0] * v[0][k] + s.weight[1] * v[1][k] + s.weight[2] * v[2][k] + s.weight[3] * v[3][k];
        sums.m += grad[k] * value;
        sums.y += grad[k] * ((acc_t(1) - s.frac_x) * (v[2][k] - v[0][k]) + s.frac_x * (v[3][k] - v[1][k]));
        sums.x += grad[k] * ((acc_t(1) - s.frac_y) * (v[1][k] - v[0][k]) + s.frac_y * (v[3][k] - v[2][k]));
        if constexpr (kRebuildColumns) {
          grad_column[(c + k) * column_stride] = convert<column_t>(s.column_scale() * value);
        }
      }
    }
  } else if constexpr (kRebuildColumns) {
    for (int64_t c = range.first; c < range.count; c += range.step) {
#pragma unroll
      for (int k = 0; k < V; ++k) grad_column[(c + k) * column_stride] = convert<column_t>(s.column_scale() * acc_t(0));
    }
  }
  return sums;
}

// The offset and mask gradients of sample (row r, pixel p) from its channel sums, written in place (no
// atomics; grad_mask null when mask is).
template <typename scalar_t, typename acc_t, typename index_t>
__device__ void write_sample_grads(const Sample<acc_t, index_t>& s, const SampleGrads<acc_t>& sums,
                                   const DeformGeometry& g, const SampleRow& r, int64_t p, scalar_t* grad_offset,
                                   scalar_t* grad_mask) {
  const int64_t taps = g.kh * g.kw, pixels = g.out_h * g.out_w;
  const int64_t sample = (r.b * g.offset_groups + r.og) * taps + r.tap;
  grad_offset[(2 * sample) * pixels + p] = convert<scalar_t>(s.any ? s.mask * sums.y : acc_t(0));
  grad_offset[(2 * sample + 1) * pixels + p] = convert<scalar_t>(s.any ? s.mask * sums.x : acc_t(0));
  if (grad_mask) grad_mask[sample * pixels + p] = convert<scalar_t>(sums.m);
}

// Samples of the generic path's chunk of nb images: one per (local image, output pixel, offset
// group, tap), tap fastest, so that consecutive warps write consecutive column runs.
__host__ __device__ inline int64_t chunk_samples(const DeformGeometry& g, int64_t nb) {
  return nb * g.out_h * g.out_w * g.offset_groups * g.kh * g.kw;
}

// The sample `item` of the chunk starting at image b0, and its output pixel p.
struct ChunkSample {
  SampleRow r;
  int64_t p;
};

__device__ ChunkSample chunk_sample(const DeformGeometry& g, int64_t b0, int64_t item) {
  const int64_t taps = g.kh * g.kw, pixels = g.out_h * g.out_w, per_pixel = g.offset_groups * taps;
  const int64_t image_pixel = item / per_pixel, og_tap = item - image_pixel * per_pixel;
  const int64_t local_b = image_pixel / pixels, og = og_tap / taps;
  return {SampleRow{local_b, b0 + local_b, og, og_tap - og * taps}, image_pixel - local_b * pixels};
}

// Lane `source`'s sample and pixel in every lane of the warp: 16 shuffles of 32 bits (index,
// weights, fractions, mask, flags) and 5 of 64 (row, pixel) per sample (fp32).
template <typename acc_t>
__device__ Sample<acc_t> shuffle_sample(const Sample<acc_t>& s, int source) {
  constexpr unsigned kAll = 0xffffffffu;
  int flags = int(s.any) | int(s.poisoned) << 1;
#pragma unroll
  for (int n = 0; n < 4; ++n) flags |= int(s.inside[n]) << (2 + n);
  flags = __shfl_sync(kAll, flags, source);
  Sample<acc_t> out;
#pragma unroll
  for (int n = 0; n < 4; ++n) {
    out.index[n] = __shfl_sync(kAll, s.index[n], source);
    out.weight[n] = __shfl_sync(kAll, s.weight[n], source);
    out.inside[n] = (flags >> (2 + n)) & 1;
  }
  out.frac_y = __shfl_sync(kAll, s.frac_y, source);
  out.frac_x = __shfl_sync(kAll, s.frac_x, source);
  out.mask = __shfl_sync(kAll, s.mask, source);
  out.any = flags & 1;
  out.poisoned = (flags >> 1) & 1;
  return out;
}

__device__ ChunkSample shuffle_chunk_sample(const ChunkSample& cs, int source) {
  constexpr unsigned kAll = 0xffffffffu;
  const int64_t local_b = __shfl_sync(kAll, cs.r.local_b, source);
  return {SampleRow{local_b, __shfl_sync(kAll, cs.r.b, source), __shfl_sync(kAll, cs.r.og, source),
                    __shfl_sync(kAll, cs.r.tap, source)},
          __shfl_sync(kAll, cs.p, source)};
}

// The generic path's warp-per-sample loop: warp w of the grid takes the samples [32 w, 32 w + 32),
// then 32 (w + warps), ...; each lane computes one of them (load_sample, its integer divisions
// paid once per sample, not once per lane), then the warp runs body(sample, row, pixel) on each in
// turn, broadcast by shuffles (warp-uniform, so that warp_sums may shuffle too).
template <typename scalar_t, typename acc_t, typename Body>
__device__ void for_chunk_samples(const scalar_t* offset, const scalar_t* mask, const DeformGeometry& g, int64_t b0,
                                  int64_t nb, Body body) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32), samples = chunk_samples(g, nb);
  for (int64_t first = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32 * 32; first < samples;
       first += warps * 32) {
    ChunkSample mine{};
    Sample<acc_t> sample{};
    if (first + lane < samples) {
      mine = chunk_sample(g, b0, first + lane);
      const int64_t ho = mine.p / g.out_w, wo = mine.p - ho * g.out_w;
      sample = load_sample<scalar_t, acc_t>(offset, mask, g, mine.r, ho, wo, mine.p);
    }
    const int count = static_cast<int>(std::min<int64_t>(samples - first, 32));
    for (int source = 0; source < count; ++source) {
      const ChunkSample cs = shuffle_chunk_sample(mine, source);
      body(shuffle_sample(sample, source), cs.r, cs.p);
    }
  }
}

// The channels of a sample's offset group split into runs at the group boundaries (each group's
// columns are its own GEMM operand), a warp's lanes on the channels of each run, V adjacent ones per
// lane (32 V per warp step; runs start at multiples of V): body(first channel of the run, the lane's channels of it, the run's
// column offset). Columns (nb, groups, P, taps,
// C/groups): row k = tap * C/groups + c of a pixel (k-major per pixel, contiguous over channels).
template <int V, typename Body>
__device__ void for_group_runs(const DeformGeometry& g, int64_t groups, const SampleRow& r, int64_t p, Body body) {
  const int64_t taps = g.kh * g.kw, pixels = g.out_h * g.out_w, group_channels = g.channels / groups;
  const int64_t og_channels = g.channels / g.offset_groups, end = (r.og + 1) * og_channels;
  for (int64_t c = r.og * og_channels; c < end;) {
    const int64_t group = c / group_channels, run_end = std::min<int64_t>(end, (group + 1) * group_channels);
    const int64_t column =
        (((r.local_b * groups + group) * pixels + p) * taps + r.tap) * group_channels + (c - group * group_channels);
    body(c, ChannelRange{V * (threadIdx.x % 32), 32 * V, run_end - c}, column);
    c = run_end;
  }
}

// Warp per sample: the columns of every channel of the sample's offset group, lanes on V adjacent
// channels each (contiguous NHWC neighbour loads and column stores).
template <typename scalar_t, typename acc_t, int V>
__global__ void __launch_bounds__(kThreads)
    im2col_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ offset,
                  const scalar_t* __restrict__ mask, DeformGeometry g, int64_t groups, int64_t b0, int64_t nb,
                  scalar_t* __restrict__ columns) {
  for_chunk_samples<scalar_t, acc_t>(offset, mask, g, b0, nb, [&](const Sample<acc_t>& s, const SampleRow& r, int64_t p) {
    const scalar_t* image = input + r.b * g.height * g.width * g.channels;
    for_group_runs<V>(g, groups, r, p, [&](int64_t c, const ChannelRange& range, int64_t column) {
      sample_columns<V>(s, range, image + c, columns + column, 1);
    });
  });
}

// Warp per sample: one pass over the channels of its offset group reads each grad column once,
// scatters it to the NHWC grad_input (atomics, contiguous over the lanes, V channels per lane) and
// sums the offset and mask gradients, reduced over the lanes (warp_sums) and written by lane 0.
template <typename scalar_t, typename acc_t, int V>
__global__ void __launch_bounds__(kThreads)
    columns_backward_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ grad_columns,
                            const scalar_t* __restrict__ offset, const scalar_t* __restrict__ mask, DeformGeometry g,
                            int64_t groups, int64_t b0, int64_t nb, acc_t* __restrict__ grad_input,
                            scalar_t* __restrict__ grad_offset, scalar_t* __restrict__ grad_mask) {
  for_chunk_samples<scalar_t, acc_t>(offset, mask, g, b0, nb, [&](const Sample<acc_t>& s, const SampleRow& r, int64_t p) {
    const int64_t image_start = r.b * g.height * g.width * g.channels;
    SampleGrads<acc_t> partial{acc_t(0), acc_t(0), acc_t(0)};
    for_group_runs<V>(g, groups, r, p, [&](int64_t c, const ChannelRange& range, int64_t column) {
      const SampleGrads<acc_t> run = sample_backward<V>(s, range, input + image_start + c, grad_input + image_start + c,
                                                     grad_columns + column, 1);
      partial.y += run.y;
      partial.x += run.x;
      partial.m += run.m;
    });
    const SampleGrads<acc_t> total = warp_sums<32>(partial);
    if (threadIdx.x % 32 == 0) write_sample_grads(s, total, g, r, p, grad_offset, grad_mask);
  });
}

// Blocks of the generic sample kernels: 32 samples per warp, at most 2^31 - 1 blocks (grid-stride).
unsigned chunk_blocks(const DeformGeometry& g, int64_t nb) {
  return static_cast<unsigned>(std::min<int64_t>(ceil_div(chunk_samples(g, nb), kThreads), INT32_MAX));
}

// Fused small-channel path (groups == 1): a block owns a tile of kTile output pixels of one image and
// keeps everything between the sampling and the output in shared memory (acc_t, the products'
// operands in operand_type): the kernels with
// R = C*taps + 1 rows (the last one the bias) and the column tile (R x kTile entries), whose last row
// is ones, so that the bias rides in the product (and its gradient in the grad weight product). The
// input (and the backward's grad_input) are channels-last (NHWC): per tile a sample pass stores one
// record per sample, then a channel pass gives each sample to a warp whose lanes take its channels,
// so that each neighbour load (and atomic) is one contiguous run of channels.
constexpr int kFusedThreads = 256;
constexpr int kTile = 64;
// The backward's blocks each take at least this many tiles (amortising their kernel load and their
// partial grad weight), and at most one block per SM.
constexpr int64_t kMinTilesPerBlock = 4;
// acc_t elements of a sample record: 3 aligned quads (see record_samples).
constexpr int kRecord = 12;

__host__ __device__ inline int64_t round_up(int64_t n, int64_t multiple) {
  return (n + multiple - 1) / multiple * multiple;
}

// Samples of a tile: one per (offset group, tap, pixel).
__host__ __device__ inline int64_t tile_samples(const DeformGeometry& g) {
  return g.offset_groups * g.kh * g.kw * kTile;
}

// The type of the products' operands in shared memory: the input dtype for fp16/bf16 (tensor-core
// products, the column tile rounded once to it as the generic path's im2col rounds its columns),
// acc_t otherwise.
template <typename scalar_t>
using operand_type = std::conditional_t<sizeof(scalar_t) == 2, scalar_t, acc_type<scalar_t>>;

// wmma's 16x16 staging tile of one warp: fp32, rows 20 floats apart (80 bytes, a multiple of the 16
// that store_matrix_sync asks).
constexpr int kStageStride = 20;
constexpr int64_t kStageBytes = int64_t(kFusedThreads / 32) * 16 * kStageStride * sizeof(float);

// Shared-memory layout of the fused kernels, offsets in bytes, every region 128-byte aligned (wmma
// tiles need 32 bytes, block_product's quads 16). Operands in operand_type (element_size bytes, 2 for
// the tensor-core products), records in acc_t, the backward's grad weight sums in acc_t, the wmma
// staging tiles in fp32. out_rows and k_rows are C_out and R = C*taps + 1, rounded up to 16 for the
// tensor-core products, whose padding rows are zero in both operands of a sum (k) and ignored
// elsewhere. Column tile entry (k, t) is at k * row_step + t * pixel_step. Forward: kernels (k_rows
// rows of out_stride, channel-contiguous: wmma's matrix_a col_major), whose region first holds the
// tile's sample records (the kernels are loaded after the channel pass), and the column tile
// pixel-major (matrix_b col_major), pixel_step R rounded up to odd fp32 (the product reads it along R
// with lanes on pixels, the channel pass writes it with lanes on channels, taps apart: no bank
// conflicts either way for odd taps), k_rows + 8 for 16-bit (16 bytes of padding per row against the
// wmma loads' bank conflicts). Backward: kernels (out_rows, rows_stride), grad weight sums (C_out,
// R), the column tile row-major with rows padded to kTile + 1 (kTile + 8 for 16-bit), grad_out
// (out_rows, grad_out_stride), grad_out_t (kTile, out_stride) and the sample records. out_stride is
// C_out rounded up to 4, plus 4 (fp32: the transposing stores into those operands, lanes along R or
// along pixels, then conflict 4-way, not 32-way), out_rows + 8 for 16-bit. C_in = C_out = 32, 3x3:
// fp32 113.0 KB forward, two blocks per SM; 190.1 KB backward, one. bf16/fp16: 76.0 KB forward (the
// records' 27.6 KB over the kernels' 24.3 KB, 39.9 KB of columns, 10.2 KB of staging), two blocks
// per SM; 144.9 KB backward, one (the plan's blocks).
struct FusedLayout {
  int64_t rows, out_rows, k_rows, out_stride, rows_stride, row_step, pixel_step, grad_out_stride;
  int64_t records, sums, columns, grad_out, grad_out_t, staging, bytes;
};

__host__ __device__ inline FusedLayout fused_layout(const DeformGeometry& g, int64_t out_channels, bool backward,
                                                    int64_t element_size) {
  constexpr int64_t kAlign = 128;
  const bool tensor_cores = element_size == 2;
  const int64_t acc_size = element_size == 8 ? 8 : 4, operand_size = tensor_cores ? 2 : acc_size;
  FusedLayout l{};
  l.rows = g.channels * g.kh * g.kw + 1;
  l.out_rows = tensor_cores ? round_up(out_channels, 16) : out_channels;
  l.k_rows = tensor_cores ? round_up(l.rows, 16) : l.rows;
  l.out_stride = tensor_cores ? l.out_rows + 8 : round_up(out_channels, 4) + 4;
  const int64_t record_bytes = tile_samples(g) * kRecord * acc_size;
  if (!backward) {
    l.row_step = 1;
    l.pixel_step = tensor_cores ? l.k_rows + 8 : l.rows | 1;
    l.columns = round_up(std::max(l.k_rows * l.out_stride * operand_size, record_bytes), kAlign);
    l.staging = round_up(l.columns + kTile * l.pixel_step * operand_size, kAlign);
    l.bytes = l.staging + (tensor_cores ? kStageBytes : 0);
    return l;
  }
  l.rows_stride = tensor_cores ? l.k_rows + 8 : round_up(l.rows, 4);
  l.row_step = tensor_cores ? kTile + 8 : kTile + 1;
  l.pixel_step = 1;
  l.grad_out_stride = tensor_cores ? kTile + 8 : kTile;
  l.sums = round_up(l.out_rows * l.rows_stride * operand_size, kAlign);
  l.columns = round_up(l.sums + out_channels * l.rows * acc_size, kAlign);
  l.grad_out = round_up(l.columns + l.k_rows * l.row_step * operand_size, kAlign);
  l.grad_out_t = round_up(l.grad_out + l.out_rows * l.grad_out_stride * operand_size, kAlign);
  l.records = round_up(l.grad_out_t + kTile * l.out_stride * operand_size, kAlign);
  l.staging = round_up(l.records + record_bytes, kAlign);
  l.bytes = l.staging + (tensor_cores ? kStageBytes : 0);
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

// block_product's C on the tensor cores (16-bit A and B, fp32 sums): a warp takes 16x16 output tiles
// (warp-uniform loop: every wmma call is warp-collective), sums the 16-deep slices of r with
// mma_sync (A col_major with ldm ar; B col_major with ldm bj, or row_major with ldm br, by
// LayoutB), stores the tile to its fp32 staging tile, and its lanes hand the entries inside (ni, nj)
// to the epilogue, 8 each (deterministic: fixed tiles and slices). The operands must be readable up
// to i, j, r rounded up to 16, ldm a multiple of 8, the tiles 32-byte aligned; rows r in [nr,
// round_up(nr, 16)) zero in both operands.
template <typename LayoutB, typename T, typename Epilogue>
__device__ void wmma_product(const T* a, int ar, const T* b, int ldb, int ni, int nj, int nr, float* staging,
                             Epilogue epilogue) {
  namespace wmma = nvcuda::wmma;
  constexpr bool kBColMajor = std::is_same_v<LayoutB, wmma::col_major>;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int tiles_j = (nj + 15) / 16, tiles = (ni + 15) / 16 * tiles_j;
  float* stage = staging + warp * 16 * kStageStride;
  for (int tile = warp; tile < tiles; tile += warps) {
    const int i0 = tile / tiles_j * 16, j0 = (tile - tile / tiles_j * tiles_j) * 16;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> sum;
    wmma::fill_fragment(sum, 0.0f);
    for (int r0 = 0; r0 < nr; r0 += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LayoutB> fb;
      wmma::load_matrix_sync(fa, a + r0 * ar + i0, ar);
      wmma::load_matrix_sync(fb, b + (kBColMajor ? j0 * ldb + r0 : r0 * ldb + j0), ldb);
      wmma::mma_sync(sum, fa, fb, sum);
    }
    wmma::store_matrix_sync(stage, sum, kStageStride, wmma::mem_row_major);
    __syncwarp();
    for (int e = lane; e < 256; e += 32) {
      const int i = i0 + e / 16, j = j0 + e % 16;
      if (i < ni && j < nj) epilogue(i, j, stage[e / 16 * kStageStride + e % 16]);
    }
    __syncwarp();  // the staging tile is read before the next tile's store
  }
}

// The one product of the fused kernels: block_product (fp32 FMAs) for fp32/fp64 operands, wmma_product
// (tensor cores, staging in `staging`) for 16-bit ones, with block_product's operand and epilogue
// contract (B's layout from its strides: bj == 1 is row_major, else br == 1 is col_major).
template <typename T, typename Epilogue>
__device__ void tile_product(const T* a, int ar, const T* b, int bj, int br, int ni, int nj, int nr, float* staging,
                             Epilogue epilogue) {
  if constexpr (sizeof(T) == 2) {
    if (bj == 1) {
      wmma_product<nvcuda::wmma::row_major>(a, ar, b, br, ni, nj, nr, staging, epilogue);
    } else {
      wmma_product<nvcuda::wmma::col_major>(a, ar, b, bj, ni, nj, nr, staging, epilogue);
    }
  } else {
    block_product(a, ar, b, bj, br, ni, nj, nr, epilogue);
  }
}

// kernels[i * i_stride + k * k_stride] = weight[i, k] for k < C*taps and bias[i] (0 when null) at
// k = C*taps, zero for the padding i in [out_channels, out_rows) and k in [rows, k_rows); weight read
// in order (coalesced).
template <typename scalar_t, typename operand_t>
__device__ void load_kernels(const scalar_t* weight, const scalar_t* bias, int out_channels, int rows, int out_rows,
                             int k_rows, int i_stride, int k_stride, operand_t* kernels) {
  using acc_t = acc_type<scalar_t>;
  const int sampled = rows - 1;
  for (int e = threadIdx.x; e < out_rows * k_rows; e += blockDim.x) {
    const int i = e / k_rows, k = e - i * k_rows;
    const acc_t value = i >= out_channels || k >= rows ? acc_t(0)
                        : k < sampled                  ? convert<acc_t>(weight[int64_t(i) * sampled + k])
                        : bias                         ? convert<acc_t>(bias[i])
                                                       : acc_t(0);
    kernels[i * i_stride + k * k_stride] = convert<operand_t>(value);
  }
}

// The sample pass of a tile (pixels [p0, p0 + kTile) of image b, those below `valid`): one thread per
// sample computes it once (load_sample, NHWC indices) and stores its record at item (og * taps +
// tap) * kTile + t: the 4 neighbours' indices within the image (int32, the plan checks H*W*C <
// 2^31; -1 outside), their bilinear weights, then frac_y, frac_x and the column scale (mask, NaN
// when poisoned), 3 aligned quads that the channel pass reads by broadcast.
template <typename scalar_t, typename acc_t>
__device__ void record_samples(const scalar_t* offset, const scalar_t* mask, const DeformGeometry& g, int64_t b,
                               int64_t p0, int valid, acc_t* records) {
  const int taps = static_cast<int>(g.kh * g.kw);
  for (int item = threadIdx.x; item < tile_samples(g); item += blockDim.x) {
    const int t = item % kTile, og_tap = item / kTile, og = og_tap / taps, tap = og_tap - og * taps;
    if (t >= valid) continue;
    const int64_t p = p0 + t, ho = p / g.out_w, wo = p - ho * g.out_w;
    const Sample<acc_t> s = load_sample<scalar_t, acc_t>(offset, mask, g, SampleRow{0, b, og, tap}, ho, wo, p);
    acc_t* record = records + int64_t(item) * kRecord;
    Quad<int> index;
    Quad<acc_t> weight;
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      index.v[n] = s.inside[n] ? static_cast<int>(s.index[n]) : -1;
      weight.v[n] = s.weight[n];
    }
    *reinterpret_cast<Quad<int>*>(record) = index;
    *reinterpret_cast<Quad<acc_t>*>(record + 4) = weight;
    *reinterpret_cast<Quad<acc_t>*>(record + 8) = Quad<acc_t>{{s.frac_y, s.frac_x, s.column_scale(), acc_t(0)}};
  }
}

// The sample of a record. Its mask is the column scale: the same column values, and a poisoned
// sample has no neighbours, so that its offset and mask gradients are zero either way.
template <typename acc_t>
__device__ Sample<acc_t, int> read_record(const acc_t* record) {
  const Quad<int> index = *reinterpret_cast<const Quad<int>*>(record);
  const Quad<acc_t> weight = *reinterpret_cast<const Quad<acc_t>*>(record + 4);
  const Quad<acc_t> rest = *reinterpret_cast<const Quad<acc_t>*>(record + 8);
  Sample<acc_t, int> s;
  s.any = false;
#pragma unroll
  for (int n = 0; n < 4; ++n) {
    s.inside[n] = index.v[n] >= 0;
    s.index[n] = index.v[n];  // read only when inside
    s.weight[n] = weight.v[n];
    s.any = s.any || s.inside[n];  // load_sample's `any`: a position within (-1, size) has a neighbour inside
  }
  s.frac_y = rest.v[0];
  s.frac_x = rest.v[1];
  s.mask = rest.v[2];
  s.poisoned = false;
  return s;
}

// The channel pass of a tile, V channels per lane: a sample takes 32 / V lanes (a warp, a half-warp
// for V = 2, a quarter-warp for V = 4), which cover 32 channels per step, V samples per warp step.
// For each (offset group, tap), warp w takes the pixels t = V w + h, then V (w + warps) + h, ... (h
// the lane's part of the warp, lane / (32 / V); warp-uniform steps, so that warp_sums may shuffle),
// its lanes the channels V * (lane % (32 / V)) + 32 j of the offset group: body(record, t, og, tap,
// lane channels); for t >= valid (past the last pixel in the last step) the lanes' channel range is
// empty.
template <int V, typename acc_t, typename Body>
__device__ void for_warp_samples(const DeformGeometry& g, int valid, const acc_t* records, Body body) {
  constexpr int kLanes = 32 / V;
  const int taps = static_cast<int>(g.kh * g.kw), warps = blockDim.x / 32;
  const int lane = threadIdx.x % kLanes, part = threadIdx.x % 32 / kLanes;
  const int64_t group_channels = g.channels / g.offset_groups;
  for (int og_tap = 0; og_tap < g.offset_groups * taps; ++og_tap) {
    const int og = og_tap / taps, tap = og_tap - og * taps;
    for (int t0 = threadIdx.x / 32 * V; t0 < valid; t0 += warps * V) {
      const int t = t0 + part;
      body(records + (int64_t(og_tap) * kTile + t) * kRecord, t, og, tap,
           ChannelRange{V * lane, 32, t < valid ? group_channels : 0});
    }
  }
}

// The widest channel loops of an input dtype: V elements in one load of at most 16 bytes (fp64: 2).
template <typename scalar_t>
constexpr int kMaxChannelWidth = 16 / sizeof(scalar_t) < 4 ? int(16 / sizeof(scalar_t)) : 4;

// Channels per lane of the channel loops (both paths): the widest V in {4, 2, 1} (4 up to
// kMaxChannelWidth) for which every V-vector load (and grad_input vector atomic) is aligned, that is
// channels-last with channel counts per offset group and per group multiples of V (run starts and
// pixel strides too) and `input` and `buffers` aligned to V elements; V = 1 always is (the same code).
template <typename scalar_t, typename... T>
int channel_width(const DeformGeometry& g, int64_t groups, const scalar_t* input, const T*... buffers) {
  const auto aligned_to = [&](int64_t v) {
    const bool aligned = reinterpret_cast<uintptr_t>(input) % (v * sizeof(scalar_t)) == 0 &&
                         ((reinterpret_cast<uintptr_t>(buffers) % (v * sizeof(T)) == 0) && ...);
    return (g.channels / g.offset_groups) % v == 0 && (g.channels / groups) % v == 0 && aligned;
  };
  return kMaxChannelWidth<scalar_t> == 4 && aligned_to(4) ? 4 : aligned_to(2) ? 2 : 1;
}

// kernel_of(std::integral_constant<int, V>{}) for V = width (1, 2, or 4 up to kMaxChannelWidth):
// the instance of a channel-loop kernel for channel_width's choice.
template <typename scalar_t, typename KernelOf>
auto kernel_for_width(int width, KernelOf kernel_of) {
  if constexpr (kMaxChannelWidth<scalar_t> == 4) {
    if (width == 4) return kernel_of(std::integral_constant<int, 4>{});
  }
  return width == 2 ? kernel_of(std::integral_constant<int, 2>{}) : kernel_of(std::integral_constant<int, 1>{});
}

// Block per tile (image blockIdx.x / tiles, tile blockIdx.x % tiles): the sample pass, the channel
// pass into the column tile, then, the records consumed, the kernels in their place and
// output(i, p) = sum_k kernels(i, k) * columns(k, p) with the bias row included (Eq. 6). input NHWC.
// Two blocks per SM (their shared memory at C32 allows no more): up to 128 registers, which the
// 16-bit four-channel loops need (at ptxas' default of 64 they spilled 8 bytes).
template <typename scalar_t, typename acc_t, int V>
__global__ void __launch_bounds__(kFusedThreads, 2)
    fused_forward_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ offset,
                         const scalar_t* __restrict__ mask, const scalar_t* __restrict__ weight,
                         const scalar_t* __restrict__ bias, DeformGeometry g, int out_channels,
                         scalar_t* __restrict__ output) {
  using operand_t = operand_type<scalar_t>;
  FASTSEG_DYNAMIC_SHARED(shared);
  const FusedLayout l = fused_layout(g, out_channels, false, sizeof(scalar_t));
  const int rows = static_cast<int>(l.rows), k_rows = static_cast<int>(l.k_rows);
  const int out_stride = static_cast<int>(l.out_stride), pixel_step = static_cast<int>(l.pixel_step);
  const int taps = static_cast<int>(g.kh * g.kw), group_channels = static_cast<int>(g.channels / g.offset_groups);
  operand_t* kernels = reinterpret_cast<operand_t*>(shared);
  acc_t* records = reinterpret_cast<acc_t*>(shared);
  operand_t* columns = reinterpret_cast<operand_t*>(shared + l.columns);
  float* staging = reinterpret_cast<float*>(shared + l.staging);
  const int64_t pixels = g.out_h * g.out_w, tiles = (pixels + kTile - 1) / kTile;
  const int64_t b = blockIdx.x / tiles, p0 = (blockIdx.x - b * tiles) * kTile;
  const int valid = static_cast<int>(pixels - p0 < kTile ? pixels - p0 : kTile);
  record_samples(offset, mask, g, b, p0, valid, records);
  // The bias row of ones, then the zero padding rows of the tensor-core products.
  const int tail = k_rows - rows + 1;
  for (int e = threadIdx.x; e < kTile * tail; e += blockDim.x) {
    const int t = e / tail, k = rows - 1 + (e - t * tail);
    columns[t * pixel_step + k] = convert<operand_t>(acc_t(k == rows - 1 ? 1 : 0));
  }
  __syncthreads();
  const scalar_t* image = input + b * g.height * g.width * g.channels;
  for_warp_samples<V>(g, valid, records, [&](const acc_t* record, int t, int og, int tap, const ChannelRange& range) {
    sample_columns<V>(read_record(record), range, image + og * group_channels,
                   columns + (og * group_channels * taps + tap) + t * pixel_step, int64_t(taps));
  });
  __syncthreads();  // the records are consumed
  load_kernels(weight, bias, out_channels, rows, static_cast<int>(l.out_rows), k_rows, 1, out_stride, kernels);
  __syncthreads();
  scalar_t* out = output + b * out_channels * pixels + p0;
  tile_product(kernels, out_stride, columns, pixel_step, 1, out_channels, valid, rows, staging,
               [&](int i, int t, acc_t value) { out[i * pixels + t] = convert<scalar_t>(value); });
}

// Blocks over tiles blockIdx.x + k * gridDim.x. Per tile: load the grad_output tile (zero past the
// last pixel and in the padding rows), channel-major and pixel-major, and the sample pass;
// grad_columns(k, p) = sum_i kernels(i, k) * grad_out(i, p) into the column tile (in operand_t: the
// input dtype for fp16/bf16, as the generic path's grad columns); the channel pass (the only
// neighbour loads of the tile) scatters them to the NHWC grad_input (atomics, lanes on channels:
// contiguous; V channels per lane), sums the offset and mask gradients over the sample's 32 / V lanes
// (warp_sums), its first lane writes them (no atomics), and leaves the column values in the tile;
// then grad_kernels(i, k) += sum_p grad_out(i, p) * columns(k, p) into the block's shared sums (the
// tile's row of ones gives grad_bias). At the end the block's sums go to partials[blockIdx.x]
// (reduced by reduce_kernel). At most one block per SM
// (the plan): ptxas may use the registers of the whole SM (fp64 spilled at its default).
template <typename scalar_t, typename acc_t, int V>
__global__ void __launch_bounds__(kFusedThreads, 1)
    fused_backward_kernel(const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ input,
                          const scalar_t* __restrict__ offset, const scalar_t* __restrict__ mask,
                          const scalar_t* __restrict__ weight, DeformGeometry g, int out_channels,
                          acc_t* __restrict__ grad_input, scalar_t* __restrict__ grad_offset,
                          scalar_t* __restrict__ grad_mask, acc_t* __restrict__ partials) {
  using operand_t = operand_type<scalar_t>;
  FASTSEG_DYNAMIC_SHARED(shared);
  const FusedLayout l = fused_layout(g, out_channels, true, sizeof(scalar_t));
  const int rows = static_cast<int>(l.rows), out_rows = static_cast<int>(l.out_rows);
  const int out_stride = static_cast<int>(l.out_stride), rows_stride = static_cast<int>(l.rows_stride);
  const int row_step = static_cast<int>(l.row_step), grad_out_stride = static_cast<int>(l.grad_out_stride);
  const int taps = static_cast<int>(g.kh * g.kw), group_channels = static_cast<int>(g.channels / g.offset_groups);
  operand_t* kernels = reinterpret_cast<operand_t*>(shared);
  acc_t* sums = reinterpret_cast<acc_t*>(shared + l.sums);
  operand_t* columns = reinterpret_cast<operand_t*>(shared + l.columns);
  operand_t* grad_out = reinterpret_cast<operand_t*>(shared + l.grad_out);
  operand_t* grad_out_t = reinterpret_cast<operand_t*>(shared + l.grad_out_t);
  acc_t* records = reinterpret_cast<acc_t*>(shared + l.records);
  float* staging = reinterpret_cast<float*>(shared + l.staging);
  const int64_t pixels = g.out_h * g.out_w, tiles = (pixels + kTile - 1) / kTile;
  const int64_t image_elements = g.height * g.width * g.channels;
  load_kernels(weight, static_cast<const scalar_t*>(nullptr), out_channels, rows, out_rows,
               static_cast<int>(l.k_rows), rows_stride, 1, kernels);
  for (int e = threadIdx.x; e < out_channels * rows; e += blockDim.x) sums[e] = acc_t(0);
  for (int t = threadIdx.x; t < kTile; t += blockDim.x) {
    columns[(rows - 1) * row_step + t] = convert<operand_t>(acc_t(1));
  }
  for (int64_t tile = blockIdx.x; tile < g.batch * tiles; tile += gridDim.x) {
    const int64_t b = tile / tiles, p0 = (tile - b * tiles) * kTile;
    const int valid = static_cast<int>(pixels - p0 < kTile ? pixels - p0 : kTile);
    __syncthreads();  // the previous tile's columns, grad_out and records are consumed
    for (int e = threadIdx.x; e < out_rows * kTile; e += blockDim.x) {
      const int i = e / kTile, t = e - i * kTile;
      const operand_t value = convert<operand_t>(
          i < out_channels && p0 + t < pixels ? convert<acc_t>(grad_output[(b * out_channels + i) * pixels + p0 + t])
                                              : acc_t(0));
      grad_out[i * grad_out_stride + t] = value;
      grad_out_t[t * out_stride + i] = value;
    }
    record_samples(offset, mask, g, b, p0, valid, records);
    __syncthreads();
    tile_product(kernels, rows_stride, grad_out, 1, grad_out_stride, rows - 1, kTile, out_channels, staging,
                 [&](int k, int t, acc_t value) {
                   columns[k * row_step + t] = convert<operand_t>(t < valid ? value : acc_t(0));
                 });
    __syncthreads();
    const scalar_t* image = input + b * image_elements;
    acc_t* grad_image = grad_input + b * image_elements;
    for_warp_samples<V>(g, valid, records, [&](const acc_t* record, int t, int og, int tap, const ChannelRange& range) {
      const Sample<acc_t, int> s = read_record(record);
      const int start = og * group_channels;
      const SampleGrads<acc_t> partial = sample_backward<V>(s, range, image + start, grad_image + start,
                                                         columns + (start * taps + tap) * row_step + t,
                                                         int64_t(taps) * row_step);
      const SampleGrads<acc_t> total = warp_sums<32 / V>(partial);
      if (range.first == 0 && t < valid) {
        write_sample_grads(s, total, g, SampleRow{0, b, og, tap}, p0 + t, grad_offset, grad_mask);
      }
    });
    __syncthreads();
    tile_product(grad_out_t, out_stride, columns, row_step, 1, out_channels, rows, kTile, staging,
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

}  // namespace

template <typename scalar_t>
cudaError_t deform_im2col(const scalar_t* input, const scalar_t* offset, const scalar_t* mask,
                          const DeformGeometry& g, int64_t groups, int64_t b0, int64_t nb, scalar_t* columns,
                          cudaStream_t stream) {
  if (chunk_samples(g, nb) == 0) return cudaSuccess;
  using acc_t = acc_type<scalar_t>;
  auto kernel = kernel_for_width<scalar_t>(
      channel_width(g, groups, input), [](auto v) { return im2col_kernel<scalar_t, acc_t, decltype(v)::value>; });
  launch(kernel, chunk_blocks(g, nb), kThreads, 0, stream, input, offset, mask, g, groups, b0, nb, columns);
  return cudaGetLastError();
}

template <typename scalar_t, typename acc_t>
cudaError_t deform_columns_backward(const scalar_t* input, const scalar_t* grad_columns, const scalar_t* offset,
                                    const scalar_t* mask, const DeformGeometry& g, int64_t groups, int64_t b0,
                                    int64_t nb, acc_t* grad_input, scalar_t* grad_offset, scalar_t* grad_mask,
                                    cudaStream_t stream) {
  if (chunk_samples(g, nb) == 0) return cudaSuccess;
  auto kernel = kernel_for_width<scalar_t>(channel_width(g, groups, input, grad_input), [](auto v) {
    return columns_backward_kernel<scalar_t, acc_t, decltype(v)::value>;
  });
  launch(kernel, chunk_blocks(g, nb), kThreads, 0, stream, input, grad_columns, offset, mask, g, groups, b0, nb,
         grad_input, grad_offset, grad_mask);
  return cudaGetLastError();
}

cudaError_t deform_fused_plan(const DeformGeometry& g, int64_t out_channels, int64_t groups, size_t element_size,
                              DeformFusedPlan* plan) {
  *plan = DeformFusedPlan{};
  const int64_t pixels = g.out_h * g.out_w;
  // The sample records index within one NHWC image in int32.
  if (groups != 1 || g.batch * pixels * out_channels == 0 || g.height * g.width * g.channels > INT32_MAX) {
    return cudaSuccess;
  }
  DeviceLimits limits;
  const cudaError_t error = device_limits(&limits);
  if (error != cudaSuccess) return error;
  const int64_t size = static_cast<int64_t>(element_size);
  const int64_t forward_bytes = fused_layout(g, out_channels, false, size).bytes;
  const int64_t backward_bytes = fused_layout(g, out_channels, true, size).bytes;
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
  auto kernel = kernel_for_width<scalar_t>(channel_width(g, 1, input), [](auto v) {
    return fused_forward_kernel<scalar_t, acc_t, decltype(v)::value>;
  });
  const size_t bytes = fused_layout(g, out_channels, false, sizeof(scalar_t)).bytes;
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
  auto kernel = kernel_for_width<scalar_t>(channel_width(g, 1, input, grad_input), [](auto v) {
    return fused_backward_kernel<scalar_t, acc_t, decltype(v)::value>;
  });
  const size_t bytes = fused_layout(g, out_channels, true, sizeof(scalar_t)).bytes;
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
  template cudaError_t deform_im2col<T>(const T*, const T*, const T*, const DeformGeometry&, int64_t, int64_t,       \
                                        int64_t, T*, cudaStream_t);                                               \
  template cudaError_t deform_columns_backward<T, acc_type<T>>(const T*, const T*, const T*, const T*,             \
                                                               const DeformGeometry&, int64_t, int64_t, int64_t,  \
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
