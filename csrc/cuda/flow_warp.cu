// CUDA flow_warp (DecoupleSegNet Eq. 1): bilinear sampling at base(p) + flow(p), grid_sample semantics.
//
// Forward: one thread per (image, output pixel, chunk of channels) computes the pixel's corners
// once (csrc/flow_warp_sampling.h) and gathers its channels; consecutive threads are consecutive
// pixels, so grad/outputs are coalesced and the corner reads mostly so.
// Backward: grad_flow is a sum over channels: each chunk of channels writes partial sums to its own
// slots and a last kernel adds the slots in a fixed order, so grad_flow is deterministic without
// atomics. grad_input is a bilinear splat; by default the input pixels own it, in three kernels:
//   1. tile_boxes_kernel, a block per (image, 32x8 output tile): the input box of the inside corners
//      of its pixels (padding modes map the corners first) and of each of its 8 rows (warp
//      shuffles, then across the warps), empty when none.
//   2. backward_owner_kernel, a block per (image, 32x8 tile of input pixels, chunk of 32 channels, 16
//      fp64): it loads the tile's input values into shared memory and zeroes a shared fp32 (fp64)
//      accumulator (72 KB fp32/fp64, 54 KB fp16/bf16, with a padding element per lane and channel,
//      + 2 KB of lists; three blocks per SM), tests 256 output tiles'
//      boxes at a time against its tile (one per thread), lists those that meet it and walks them in
//      order. In a walked tile thread t takes output pixel t: a row (warp) whose box misses the input
//      tile stops there, the others compute their corners; the pixels with a corner in the tile are
//      listed densely (ballots and a count per warp, two barriers), and the first threads take one
//      each, recompute its corners and, for each channel, add weight * grad (Eq. 1) at its corners in
//      the tile with shared-memory atomics (a corner elsewhere adds weight 0 to its lane's padding
//      element, which nothing reads, and its product with the value there is dropped: every lane runs
//      the same code, and an inf or NaN grad reaches only the corners it samples) and accumulate
//      sum_c grad * value per corner;
//      d(weight)/d(flow) times those sums is the pixel's grad_flow term from this tile, written to the
//      slot of the tile's quadrant among the (at most 2 x 2) input tiles its corners lie in. Last,
//      the block stores its tile of grad_input: every element once, converted once to the input's
//      dtype, zero where nothing landed. So no memset, no global atomics, no 16-bit atomics, no
//      deferred kernel, in any flow; fp16/bf16 elements are rounded once (of their fp32 sum).
//   3. sum_quadrant_slots_kernel: per output pixel, the slots of the quadrants that hold one of its
//      inside corners (recomputed: a slot no block owns is neither written nor read), in the order
//      chunk, quadrant.
// Only the order of the shared-memory additions (grad_input) depends on the thread timing.
// With deterministic=true one thread per (output pixel, chunk of 32 channels) adds fixed-point int64
// values instead: a first kernel sums |grad_output| over each (image, channel) plane in a fixed
// order, and a contribution w * g is added as llrint(w * g * 2^61 / that sum). A plane's total stays
// below 2^61 in magnitude (the weights of an output pixel sum to at most 1) plus the roundings, and
// integer addition is associative, so the sum has the same bits in any order; each contribution
// keeps acc_t's relative precision (better than float atomics, which round every partial sum). A
// last kernel divides by the scale (and rounds once to fp16/bf16). Planes whose sum is not finite
// (inf/NaN in grad_output) are splatted instead by one thread per plane in pixel order, with IEEE
// semantics (into an fp32 workspace plane for fp16/bf16).
//
// Cost model at the GPU shapes of bench/bench_flow_warp.py (forward+backward, B=8, C=256, its smooth
// flow, border padding, align_corners; H200: 4.8 TB/s HBM, taken at 80% = 3.84 TB/s, 50 MB L2, 132
// SMs at 1.98 GHz, 67 TFLOP/s fp32, 989 TFLOP/s dense bf16, ~3 us per dependent launch). The floor is
// max(bytes / bandwidth, FLOPs / peak) of the benchmark's byte and FLOP counts (5 passes over the
// features); the prediction is this design's, derived below. bench/report.py reads the `predicted
// H200` lines (the one place these numbers live) into the "predicted" column of bench/RESULTS.md.
// Rates: load/store-unit (LSU) warp instructions at one per clock per SM (shared loads, shared CAS,
// global loads; as the earlier model), and, counted here for the first time, issue at 4 warp
// instructions per clock per SM (1.05 T/s). Instruction counts are SASS (nvcc 12, sm_90) of the
// fp32 / bf16 instantiations; statistics of bench's flow are counted in Python (3 seeds, 8 images):
//   D, warps of the dense lists per output row of 32 (a pixel with corners in two tiles is listed by
//     both; lists round up to warps): 1.24 / 1.38 / 1.06 at 104 / 208 / 52->104;
//   P, input tiles an output tile's box meets (walked pairs): 4.87 / 4.71 / 2.55; R, walked rows whose
//     row box meets the input tile, per output row: 2.63 / 2.60 / 1.92; slots written per pixel and
//     chunk: 1.15 / 1.15 / 1.14.
// Owner kernel per (image, chunk of 32 channels), in issued / LSU warp instructions:
//   channel loop, per listed warp and channel: 48.3 / 53.0 issued (a grad load per channel, batches
//     of 8 in flight; per corner a shared load of the value, FFMA, FMUL, the CAS loop's shared load,
//     FADD, CAS, test, branch), 13 LSU; a CAS that loses to another lane of the warp retries (5
//     issued, 2 LSU): taken as 20% of the corner updates at equal sizes (the earlier model's x1.2),
//     all of them at 52->104, where two neighbouring pixels share each cell;
//   walked pair: 122 issued per row (tile origin, row box, list) and 124 more per row whose box meets
//     (its corners), ~9 LSU per row; listed warp: 330 issued (corners again, slot stores), 6 LSU;
//   block: load and zero (10 issued, 3 LSU per warp and channel), store (6, 2), box scan (~60 per warp).
// Per shape (fp32 | bf16), issue = loop + pass 1 + pass 2 + load/store:
//   104: 53 | 58 + 23 + 10 + 15 = 101 | 106 us issue; LSU 81 us (loop 59); DRAM 71 | 36 us (input
//     and grad read once, grad_input written once, slots 6.4 MB: 272 | 139 MB); 3328 blocks at 3 per
//     SM (8.4 waves, x1.07) -> 109 | 114 us;
//   208: 206 | 224 + 80 + 41 + 51 = 377 | 395 us; LSU 306; DRAM 284 | 145 (1089 | 557 MB) -> x1.02:
//     384 | 403 us;
//   52->104: 59 | 63 + 14 + 9 + 4 = 86 | 90 us; LSU 81 (loop 73, the CAS retries); DRAM 36 | 19 ->
//     896 blocks, 2.26 waves (x1.33) -> 114 | 120 us.
// The grad re-reads of overlapping walks (D x grad) come from L2 (110 MB at 104 fp32), and so do the
// flow reads (each walked row twice). Tile boxes: a flow read (0.2-0.7 us); slot sums: read the
// written slots and the flow, write grad_flow (2.2 / 8.8 / 2.2 us); forward: read input, write
// output (46 | 23, 185 | 92, 29 | 14 us); 4 launches (forward, boxes, owner, sums), 12 us.
//   decouple-104 fp32: 46 + 0.2 + 109 + 2.2 + 12 = 169 us (1.8x the floor: issue, then LSU)
//   decouple-104 bf16: 23 + 0.2 + 114 + 2.2 + 12 = 151 us (3.2x: the same issue, half the bytes)
//   decouple-208 fp32: 185 + 0.7 + 384 + 8.8 + 12 = 591 us (1.6x)
//   decouple-208 bf16: 92 + 0.7 + 403 + 8.8 + 12 = 517 us (2.8x)
//   sfnet-52to104 fp32: 29 + 0.2 + 114 + 2.2 + 12 = 157 us (3.1x: issue and LSU, and the last wave)
//   sfnet-52to104 bf16: 14 + 0.2 + 120 + 2.2 + 12 = 148 us (5.7x)
// DRAM now takes the floor's 5 feature passes (the output-tile design took 8: a memset and a
// read-modify-write of grad_input); what bounds the owner kernel is issue and the shared-memory
// atomics. The earlier predictions (0.177 / 0.101 / 0.670 / 0.351 / 0.099 / 0.085 ms) counted no
// issue: its splat loop issued 129 / 130 instructions per warp and channel (SASS), 105 us at 104 and
// 368 us at 208 by themselves, so counted this way it was ~0.19 / ~0.16 / ~0.67 / ~0.53 / ~0.15 /
// ~0.14 ms: this design gains ~10% at 104 and 208 fp32, 2-4% at bf16, and may lose 2-6% at
// 52->104. What would pay next: the walk's fixed cost per chunk (pass 1 and 2, a third of the issue
// at 104), e.g. 64 channels per block, and the last wave at 52->104.
// A wild flow (not benchmarked) makes every box the whole image: every owner block walks every
// output row (pass 1: B x input tiles x output rows x chunks x ~246 issued, quadratic in the image:
// ~0.33 ms at 104, ~4 ms at 208 fp32), while its channel loop stays about as above (a pixel's corners
// are adjacent cells: listed by one or two blocks). The direct splat (a global atomic per corner)
// counted the earlier way: 0.30 / 1.18 ms.
// Deterministic backward (not benchmarked by bench/bench_flow_warp.py), decouple-104 fp32: the
// direct splat's 234 us as counted before, less the fp32 grad_input memset (-23 us), plus the plane
// norms (one more read of grad_output, +23 us), the int64 memset (2 x 88.6 MB, +46 us) and the
// conversion (read 177 MB, write 88.6 MB, +69 us): ~350 us, 1.5x that splat if 64-bit L2 atomics
// run at the 32-bit rate (2.4x if at half of it). The per-plane serial splat it replaces: B x C =
// 2048 threads (64 warps for 132 SMs) walking 10816 pixels each at ~1000 cycles of dependent
// read-modify-writes per pixel: ~5 ms, ~20x the atomic path.
// predicted H200 | flow_warp decouple-104 fp32 B=8 fwd+bwd | 0.169 ms | issue and shared-memory atomics of the owner kernel (floor 0.093 ms)
// predicted H200 | flow_warp decouple-104 bf16 B=8 fwd+bwd | 0.151 ms | issue and shared-memory atomics of the owner kernel (floor 0.047 ms)
// predicted H200 | flow_warp decouple-208 fp32 B=8 fwd+bwd | 0.591 ms | issue of the owner kernel (floor 0.371 ms)
// predicted H200 | flow_warp decouple-208 bf16 B=8 fwd+bwd | 0.517 ms | issue of the owner kernel (floor 0.187 ms)
// predicted H200 | flow_warp sfnet-52to104 fp32 B=8 fwd+bwd | 0.157 ms | issue and shared-memory atomics (CAS retries), 2.26 waves (floor 0.051 ms)
// predicted H200 | flow_warp sfnet-52to104 bf16 B=8 fwd+bwd | 0.148 ms | issue and shared-memory atomics (CAS retries), 2.26 waves (floor 0.026 ms)
#include "cuda/common.cuh"
#include "cuda/flow_warp.h"

#include "flow_warp_sampling.h"

#include <algorithm>

namespace fastseg::cuda {
namespace {

using flow_warp::AxisMap;
using flow_warp::Padding;
using flow_warp::PixelCorners;

constexpr int kThreads = 256;
constexpr int64_t kChannelsPerThread = 32;
// The default backward's output tiles: kTileWidth x kTileHeight output pixels, one per thread, a warp per row.
constexpr int kTileWidth = 32;
constexpr int kTileHeight = kThreads / kTileWidth;
constexpr int kWarps = kThreads / 32;
// Its input tiles, owned by one block each: kInputTileWidth x kInputTileHeight input pixels, one per thread.
constexpr int kInputTileWidth = 32;
constexpr int kInputTileHeight = kThreads / kInputTileWidth;
// Channels per owner block: 32 (16 fp64); its accumulator (acc_t) and input values (scalar_t) per
// input tile pixel take 64 KB of dynamic shared memory for fp32/fp64, 48 KB for fp16/bf16.
constexpr int owner_channels(size_t element_size) { return element_size == sizeof(double) ? 16 : 32; }
// Channels whose global loads (input values, grad) a thread issues together before using them.
constexpr int kBatch = 8;
// Elements per channel of the owner block's shared arrays: the input tile's pixels, then one
// padding element per lane, where the corners outside the tile go (OwnedCorners).
constexpr int kChannelStride = kThreads + 32;
constexpr int kNoCorner = 0x7fffffff;  // min() identity of the box reduction

// Fixed-point units per unit of gradient for a plane whose |grad_output| sums to `norm` (finite).
template <typename acc_t>
__device__ __forceinline__ acc_t fixed_point_scale(acc_t norm) {
  return norm > acc_t(0) ? acc_t(2305843009213693952.0) / norm : acc_t(1);  // 2^61 / norm
}

// Input column and row of each corner of an output pixel (0 for a corner outside the image).
struct CornerCells {
  int column[4], row[4];
};

template <typename acc_t>
struct Sampler {
  AxisMap<acc_t> x, y;
  Padding padding;
  int64_t out_width, out_pixels;

  // Corners of output pixel (px, py) of image b.
  __device__ __forceinline__ PixelCorners<acc_t> corners_at(const acc_t* flow, int64_t b, int64_t px,
                                                            int64_t py) const {
    const acc_t* f = flow + b * 2 * out_pixels + py * out_width + px;
    return flow_warp::pixel_corners(x, y, px, py, f[0], f[out_pixels], padding);
  }

  // Corners of output pixel p of image b.
  __device__ __forceinline__ PixelCorners<acc_t> corners(const acc_t* flow, int64_t b, int64_t p) const {
    return corners_at(flow, b, p % out_width, p / out_width);
  }

  // Cells of the corners of output pixel (px, py) of image b, from the axis corners that corners_at
  // combines (the same calls on the same loads, merged by the compiler) rather than dividing offsets.
  __device__ __forceinline__ CornerCells cells_at(const acc_t* flow, int64_t b, int64_t px, int64_t py) const {
    const acc_t* f = flow + b * 2 * out_pixels + py * out_width + px;
    const flow_warp::AxisCorners<acc_t> cx = flow_warp::axis_corners(x, px, f[0], padding);
    const flow_warp::AxisCorners<acc_t> cy = flow_warp::axis_corners(y, py, f[out_pixels], padding);
    CornerCells cells;
#pragma unroll
    for (int k = 0; k < 4; ++k) {  // the order of pixel_corners
      cells.column[k] = static_cast<int>(cx.index[k % 2]);
      cells.row[k] = static_cast<int>(cy.index[k / 2]);
    }
    return cells;
  }
};

template <typename acc_t>
Sampler<acc_t> make_sampler(const FlowWarpShape& shape, int padding, bool align_corners) {
  Sampler<acc_t> sampler;
  sampler.x = flow_warp::make_axis_map<acc_t>(shape.in_width, shape.out_width, align_corners);
  sampler.y = flow_warp::make_axis_map<acc_t>(shape.in_height, shape.out_height, align_corners);
  sampler.padding = padding == 1 ? Padding::kBorder : Padding::kZeros;
  sampler.out_width = shape.out_width;
  sampler.out_pixels = shape.out_height * shape.out_width;
  return sampler;
}

dim3 pixel_grid(const FlowWarpShape& shape) {
  return dim3(static_cast<unsigned>(ceil_div(shape.out_height * shape.out_width, kThreads)),
              static_cast<unsigned>(ceil_div(shape.channels, kChannelsPerThread)),
              static_cast<unsigned>(shape.batch));
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ input, const acc_t* __restrict__ flow, Sampler<acc_t> s,
                               int64_t channels, int64_t in_pixels, scalar_t* __restrict__ output) {
  const int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t b = blockIdx.z, c0 = blockIdx.y * kChannelsPerThread;
  if (p >= s.out_pixels) return;
  const PixelCorners<acc_t> corners = s.corners(flow, b, p);
  const int64_t c1 = min(c0 + kChannelsPerThread, channels);
  for (int64_t c = c0; c < c1; ++c) {
    const scalar_t* plane = input + (b * channels + c) * in_pixels;
    acc_t value = acc_t(0);
#pragma unroll
    for (int k = 0; k < 4; ++k) {  // Eq. 1; only corners inside the input are read (the NaN rule)
      if (corners.inside[k]) value += corners.weight[k] * convert<acc_t>(plane[corners.offset[k]]);
    }
    output[(b * channels + c) * s.out_pixels + p] = convert<scalar_t>(corners.finite ? value : acc_t(NAN));
  }
}

// One channel of one output pixel's backward (Eq. 1 differentiated): adds the pixel's grad_flow
// terms to dx, dy and calls splat(k, weight_k * g) for each corner k inside the input (a corner
// outside is neither read nor splatted).
template <typename scalar_t, typename acc_t, typename Splat>
__device__ __forceinline__ void backward_channel(const PixelCorners<acc_t>& corners,
                                                 const scalar_t* __restrict__ input_plane, acc_t g, acc_t& dx,
                                                 acc_t& dy, const Splat& splat) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (!corners.inside[k]) continue;
    const acc_t v = convert<acc_t>(input_plane[corners.offset[k]]);
    dx += corners.grad_x[k] * v * g;
    dy += corners.grad_y[k] * v * g;
    splat(k, corners.weight[k] * g);
  }
}

// The chunk's partial grad_flow of output pixel p into partial[(chunk * B + b) * 2 * Po + {0, Po} + p].
template <typename acc_t>
__device__ __forceinline__ void store_partial(acc_t* __restrict__ partial, int64_t chunk, int64_t b, int64_t p,
                                              int64_t out_pixels, acc_t dx, acc_t dy) {
  acc_t* out = partial + (chunk * gridDim.z + b) * 2 * out_pixels + p;
  out[0] = dx;
  out[out_pixels] = dy;
}

// Inclusive input box [x0, x0 + width) x [y0, y0 + height) of the corners a tile touches; empty
// (width 0) when none is inside.
struct Box {
  int x0, y0, width, height;

  // Whether the box meets the input tile whose first column and row are x0, y0.
  __device__ __forceinline__ bool meets_input_tile(int tile_x0, int tile_y0) const {
    return width > 0 && x0 < tile_x0 + kInputTileWidth && x0 + width > tile_x0 && y0 < tile_y0 + kInputTileHeight &&
           y0 + height > tile_y0;
  }
};

__device__ __forceinline__ int warp_min(int value) {
#pragma unroll
  for (int lanes = 16; lanes > 0; lanes /= 2) value = min(value, __shfl_xor_sync(0xffffffffu, value, lanes));
  return value;
}

// Box of the bounds x0, y0, -x1, -y1 (kNoCorner when no corner).
__device__ __forceinline__ Box bounded_box(const int bounds[4]) {
  if (bounds[0] == kNoCorner) return {0, 0, 0, 0};
  return {bounds[0], bounds[1], -bounds[2] - bounds[0] + 1, -bounds[3] - bounds[1] + 1};
}

// The block's box: min and max (as min of the negation) of the inside corners' columns and rows,
// reduced in each warp (its box, to warp_box), then across the warps through shared memory. Every
// thread gets the box.
template <typename acc_t>
__device__ Box tile_box(const PixelCorners<acc_t>& corners, const CornerCells& cells, Box& warp_box) {
  __shared__ int warp_bounds[kWarps][4];
  int bounds[4] = {kNoCorner, kNoCorner, kNoCorner, kNoCorner};  // x0, y0, -x1, -y1
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (!corners.inside[k]) continue;
    bounds[0] = min(bounds[0], cells.column[k]);
    bounds[1] = min(bounds[1], cells.row[k]);
    bounds[2] = min(bounds[2], -cells.column[k]);
    bounds[3] = min(bounds[3], -cells.row[k]);
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) bounds[i] = warp_min(bounds[i]);
  warp_box = bounded_box(bounds);
  if (threadIdx.x % 32 == 0) {
#pragma unroll
    for (int i = 0; i < 4; ++i) warp_bounds[threadIdx.x / 32][i] = bounds[i];
  }
  __syncthreads();
  for (int warp = 0; warp < kWarps; ++warp) {
#pragma unroll
    for (int i = 0; i < 4; ++i) bounds[i] = min(bounds[i], warp_bounds[warp][i]);
  }
  return bounded_box(bounds);
}

// Output pixel (px, py) at index t (row-major) of output tile `tile` (row-major, tiles_x per row).
struct TilePixel {
  int64_t px, py;
};

__device__ __forceinline__ TilePixel tile_pixel(int64_t tile, int64_t tiles_x, int t) {
  return {(tile % tiles_x) * kTileWidth + t % kTileWidth, (tile / tiles_x) * kTileHeight + t / kTileWidth};
}

// Phase 1 of the default backward: boxes[b * tiles + tile] = the input box of the inside corners of
// output tile `tile` of image b (empty when none), and row_boxes[(b * tiles + tile) * kWarps + r]
// that of its row r (a warp's pixels); one block per (tile, image).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    tile_boxes_kernel(const acc_t* __restrict__ flow, Sampler<acc_t> s, int64_t out_height, int64_t tiles_x,
                      Box* __restrict__ boxes, Box* __restrict__ row_boxes) {
  const int64_t b = blockIdx.y;
  const TilePixel pixel = tile_pixel(blockIdx.x, tiles_x, threadIdx.x);
  PixelCorners<acc_t> corners = {};  // no corner inside for a thread beyond the border
  CornerCells cells = {};
  if (pixel.px < s.out_width && pixel.py < out_height) {
    corners = s.corners_at(flow, b, pixel.px, pixel.py);
    cells = s.cells_at(flow, b, pixel.px, pixel.py);
  }
  Box row_box;
  const Box box = tile_box(corners, cells, row_box);
  const int64_t tile = b * gridDim.x + blockIdx.x;
  if (threadIdx.x == 0) boxes[tile] = box;
  if (threadIdx.x % 32 == 0) row_boxes[tile * kWarps + threadIdx.x / 32] = row_box;
}

// The input tiles a pixel's inside corners lie in span at most 2 x 2; of(row, column) numbers the tile
// of the cell (row, column) among them, 2 * (its tile row - the lowest) + (its tile column - the
// leftmost): the owner block of that tile writes the pixel's grad_flow terms of its corners there to
// that quadrant's slot.
struct CornerQuadrants {
  int tile_row, tile_column;  // the lowest tile row and leftmost tile column of the inside corners

  __device__ __forceinline__ int of(int row, int column) const {
    return 2 * (row / kInputTileHeight - tile_row) + column / kInputTileWidth - tile_column;
  }
};

template <typename acc_t>
__device__ __forceinline__ CornerQuadrants corner_quadrants(const PixelCorners<acc_t>& corners,
                                                            const CornerCells& cells) {
  CornerQuadrants quadrants = {kNoCorner, kNoCorner};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (!corners.inside[k]) continue;
    quadrants.tile_row = min(quadrants.tile_row, cells.row[k] / kInputTileHeight);
    quadrants.tile_column = min(quadrants.tile_column, cells.column[k] / kInputTileWidth);
  }
  return quadrants;
}

// Slot of the chunk's grad_flow terms, in quadrant q, of output pixel p of image b (x; y is out_pixels
// further): partial[((chunk * B + b) * 4 + q) * 2 * Po + p].
template <typename acc_t>
__device__ __forceinline__ acc_t* quadrant_slot(acc_t* partial, int64_t chunk, int64_t batch, int64_t b, int q,
                                                int64_t p, int64_t out_pixels) {
  return partial + ((chunk * batch + b) * 4 + q) * 2 * out_pixels + p;
}

// Dynamic shared memory of backward_owner_kernel: the accumulator and the input tile, both
// [channel][kChannelStride], the lists of met output tiles and of a walked tile's pixels, a count per
// warp: 74 KB fp32/fp64, 56 KB fp16/bf16.
template <typename scalar_t>
constexpr size_t owner_shared_bytes() {
  constexpr size_t channels = owner_channels(sizeof(scalar_t));
  constexpr size_t lists = (2 * kThreads + kWarps) * sizeof(int);
  return channels * kChannelStride * (sizeof(acc_type<scalar_t>) + sizeof(scalar_t)) + lists;
}

// Which of output pixel (px, py)'s corners lie inside the image and in the input tile at (x0, y0)
// (`mine`): corner k's pixel in the tile and weight for those; for the others the padding element of
// this thread's lane and weight 0, so that every lane of the channel loop runs the same instructions,
// without branches: what they add there (0 * grad: NaN for an infinite grad) is never read, and their
// products with the values read there are dropped.
template <typename acc_t>
struct OwnedCorners {
  int local[4];
  acc_t weight[4], grad_x[4], grad_y[4];  // d(weight)/d(flow)
  bool mine[4];
  bool any;      // some corner is in the tile
  int quadrant;  // the tile's quadrant among the pixel's (CornerQuadrants), when `any`
};

template <typename acc_t>
__device__ __forceinline__ OwnedCorners<acc_t> owned_corners(const Sampler<acc_t>& s, const acc_t* flow, int64_t b,
                                                             int64_t out_height, const TilePixel& pixel, int x0,
                                                             int y0) {
  PixelCorners<acc_t> corners = {};  // no corner inside for a pixel beyond the border
  CornerCells cells = {};
  if (pixel.px < s.out_width && pixel.py < out_height) {
    corners = s.corners_at(flow, b, pixel.px, pixel.py);
    cells = s.cells_at(flow, b, pixel.px, pixel.py);
  }
  OwnedCorners<acc_t> owned;
  owned.any = false;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int column = cells.column[k] - x0, row = cells.row[k] - y0;
    const bool mine =
        corners.inside[k] && column >= 0 && column < kInputTileWidth && row >= 0 && row < kInputTileHeight;
    owned.local[k] = mine ? row * kInputTileWidth + column : kThreads + static_cast<int>(threadIdx.x % 32);
    owned.weight[k] = mine ? corners.weight[k] : acc_t(0);
    owned.grad_x[k] = corners.grad_x[k];
    owned.grad_y[k] = corners.grad_y[k];
    owned.mine[k] = mine;
    owned.any = owned.any || mine;
  }
  owned.quadrant = corner_quadrants(corners, cells).of(y0, x0);
  return owned;
}

// Lists the threads whose `flag` is set, in thread order: list[i] = the index of the i-th; returns
// their number. Every thread of the block calls it (two barriers: warp_counts, kWarps ints, and the
// list may be rewritten at the next call).
__device__ __forceinline__ int list_threads(bool flag, int* list, int* warp_counts) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const unsigned ballot = __ballot_sync(0xffffffffu, flag);
  if (lane == 0) warp_counts[warp] = __popc(ballot);
  __syncthreads();  // also: the previous list has been read
  int count = 0, before = 0;
  for (int w = 0; w < kWarps; ++w) {
    before += w < warp ? warp_counts[w] : 0;
    count += warp_counts[w];
  }
  if (flag) list[before + __popc(ballot & ((1u << lane) - 1u))] = threadIdx.x;
  __syncthreads();  // the list is complete; warp_counts are read
  return count;
}

// Phase 2 of the default backward: a block owns a kInputTileWidth x kInputTileHeight tile of input
// pixels of image b and a chunk of owner_channels(sizeof(scalar_t)) channels; thread t holds tile
// pixel t while it loads the tile's input values into shared memory and zeroes its accumulator, and
// while it stores grad_input. In between it walks the image's output tiles in order; for each whose
// box meets the input tile, each thread takes the tile's output pixel t and, unless its row's box
// misses the input tile, tests whether a corner lies in it; those pixels are listed densely (warp
// ballots, then counts per warp), and
// the first `listed` threads each take one, recompute its corners and, for each channel, add Eq. 1's
// weight * grad to the accumulator at its corners in the input tile (shared-memory atomics) and sum
// their grad_flow terms, grad * d(weight_k) / d(flow) * input value, into the pixel's quadrant slot
// (one owner block per (pixel, quadrant, chunk)). Every element of the tile's grad_input is stored
// once, converted once to the input's dtype (zero where nothing lands). Three blocks per SM (what the
// fp32 shared memory allows; at the default register budget fp16/bf16 spilled a register).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, 3)
    backward_owner_kernel(const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ input,
                          const acc_t* __restrict__ flow, Sampler<acc_t> s, int64_t out_height, int64_t tiles_x,
                          int64_t tiles, const Box* __restrict__ boxes, const Box* __restrict__ row_boxes,
                          int64_t channels, int in_height, int in_width, int input_tiles_x,
                          scalar_t* __restrict__ grad_input, acc_t* __restrict__ partial) {
  constexpr int kChannels = owner_channels(sizeof(scalar_t));
  FASTSEG_DYNAMIC_SHARED(shared);
  acc_t* accumulator = reinterpret_cast<acc_t*>(shared);  // [channel][kChannelStride]
  scalar_t* values = reinterpret_cast<scalar_t*>(accumulator + kChannels * kChannelStride);  // the input tile, alike
  int* met_tiles = reinterpret_cast<int*>(values + kChannels * kChannelStride);  // [kThreads] output tiles - first
  int* listed = met_tiles + kThreads;  // [kThreads] output tile pixels
  int* warp_counts = listed + kThreads;  // [kWarps]
  const int64_t b = blockIdx.z, chunk = blockIdx.y, c0 = chunk * kChannels;
  const int pass_channels = static_cast<int>(min(int64_t(kChannels), channels - c0));
  const int x0 = static_cast<int>(blockIdx.x % input_tiles_x) * kInputTileWidth;
  const int y0 = static_cast<int>(blockIdx.x / input_tiles_x) * kInputTileHeight;
  const int ix = x0 + threadIdx.x % kInputTileWidth, iy = y0 + threadIdx.x / kInputTileWidth;
  const bool owns = ix < in_width && iy < in_height;  // tiles cut by the image border
  const int64_t in_pixels = int64_t(in_height) * in_width;
  const int64_t element = (b * channels + c0) * in_pixels + int64_t(iy) * in_width + ix;  // channel c0
  const scalar_t* in = input + element;  // channel c0, then + in_pixels each (read only where owns)
#pragma unroll
  for (int j0 = 0; j0 < kChannels; j0 += kBatch) {
    if (j0 >= pass_channels) break;
    scalar_t batch[kBatch];  // the batch's loads in flight together
#pragma unroll
    for (int i = 0; i < kBatch; ++i, in += in_pixels) {
      batch[i] = owns && j0 + i < pass_channels ? *in : convert<scalar_t>(acc_t(0));
    }
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      accumulator[(j0 + i) * kChannelStride + threadIdx.x] = acc_t(0);  // channels past pass_channels: unused
      values[(j0 + i) * kChannelStride + threadIdx.x] = batch[i];
    }
  }
  for (int64_t first = 0; first < tiles; first += kThreads) {  // kThreads output tiles' boxes at a time
    bool meets = false;
    if (first + threadIdx.x < tiles) {
      meets = boxes[b * tiles + first + threadIdx.x].meets_input_tile(x0, y0);
    }
    // the first time, the barriers also order the tile's loads before the atomics
    const int met = list_threads(meets, met_tiles, warp_counts);
    for (int i = 0; i < met; ++i) {
      const int64_t tile = first + met_tiles[i];
      // a row (warp) whose box misses the input tile computes no corners
      const bool row_meets = row_boxes[(b * tiles + tile) * kWarps + threadIdx.x / 32].meets_input_tile(x0, y0);
      const TilePixel own = tile_pixel(tile, tiles_x, threadIdx.x);
      const bool any = row_meets && owned_corners(s, flow, b, out_height, own, x0, y0).any;
      const int count = list_threads(any, listed, warp_counts);
      if (static_cast<int>(threadIdx.x) >= count) continue;  // whole warps but the last
      const TilePixel pixel = tile_pixel(tile, tiles_x, listed[threadIdx.x]);
      const OwnedCorners<acc_t> owned = owned_corners(s, flow, b, out_height, pixel, x0, y0);
      const int64_t p = pixel.py * s.out_width + pixel.px;
      const scalar_t* grad = grad_output + (b * channels + c0) * s.out_pixels + p;  // channel c0, then + Po each
      acc_t* sums[4];  // corner k's accumulator element of channel c0, then + kChannelStride each
      const scalar_t* value_at[4];
      acc_t products[4] = {};  // sum over the channels of grad * input value at corner k
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        sums[k] = accumulator + owned.local[k];
        value_at[k] = values + owned.local[k];
      }
#pragma unroll  // constant shared-memory offsets
      for (int j0 = 0; j0 < kChannels; j0 += kBatch) {
        if (j0 >= pass_channels) break;
        acc_t g[kBatch];  // the batch's grad loads in flight together
#pragma unroll
        for (int i = 0; i < kBatch; ++i, grad += s.out_pixels) {
          g[i] = j0 + i < pass_channels ? convert<acc_t>(*grad) : acc_t(0);
        }
#pragma unroll
        for (int i = 0; i < kBatch; ++i) {
          const int j = j0 + i;
          if (j == pass_channels) break;
#pragma unroll
          for (int k = 0; k < 4; ++k) {  // Eq. 1 differentiated
            products[k] += convert<acc_t>(value_at[k][j * kChannelStride]) * g[i];
            atomicAdd(sums[k] + j * kChannelStride, owned.weight[k] * g[i]);
          }
        }
      }
      acc_t dx = acc_t(0), dy = acc_t(0);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (!owned.mine[k]) continue;
        dx += owned.grad_x[k] * products[k];
        dy += owned.grad_y[k] * products[k];
      }
      acc_t* slot = quadrant_slot(partial, chunk, int64_t(gridDim.z), b, owned.quadrant, p, s.out_pixels);
      slot[0] = dx;
      slot[s.out_pixels] = dy;
    }
  }
  __syncthreads();
  if (!owns) return;
  scalar_t* out = grad_input + element;
#pragma unroll
  for (int j = 0; j < kChannels; ++j, out += in_pixels) {
    if (j == pass_channels) break;
    *out = convert<scalar_t>(accumulator[j * kChannelStride + threadIdx.x]);
  }
}

// grad_flow of the default backward: per output pixel, the slots of the quadrants its inside corners
// lie in (recomputed: a quadrant with no inside corner has no owner and its slot was never written),
// in the order chunk, quadrant.
template <typename acc_t>
__global__ void sum_quadrant_slots_kernel(const acc_t* __restrict__ partial, const acc_t* __restrict__ flow,
                                          Sampler<acc_t> s, int64_t chunks, int64_t batch,
                                          acc_t* __restrict__ grad_flow) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < batch * s.out_pixels;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / s.out_pixels, p = i - b * s.out_pixels, px = p % s.out_width, py = p / s.out_width;
    const PixelCorners<acc_t> corners = s.corners_at(flow, b, px, py);
    const CornerCells cells = s.cells_at(flow, b, px, py);
    const CornerQuadrants quadrants = corner_quadrants(corners, cells);
    unsigned written = 0;  // bit q: quadrant q holds an inside corner
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (corners.inside[k]) written |= 1u << quadrants.of(cells.row[k], cells.column[k]);
    }
    acc_t dx = acc_t(0), dy = acc_t(0);
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        if (!(written >> q & 1u)) continue;
        const acc_t* slot = quadrant_slot(partial, chunk, batch, b, q, p, s.out_pixels);
        dx += slot[0];
        dy += slot[s.out_pixels];
      }
    }
    grad_flow[b * 2 * s.out_pixels + p] = dx;
    grad_flow[b * 2 * s.out_pixels + s.out_pixels + p] = dy;
  }
}

// Deterministic backward: one thread per (image, output pixel, chunk of channels); its partial
// grad_flow, and the fixed-point splat of grad_output into `fixed` for the planes of finite norm.
template <typename scalar_t, typename acc_t>
__global__ void backward_fixed_point_kernel(const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ input,
                                            const acc_t* __restrict__ flow, Sampler<acc_t> s, int64_t channels,
                                            int64_t in_pixels, const acc_t* __restrict__ norms,
                                            unsigned long long* __restrict__ fixed, acc_t* __restrict__ partial) {
  const int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t b = blockIdx.z, chunk = blockIdx.y, c0 = chunk * kChannelsPerThread;
  if (p >= s.out_pixels) return;
  const PixelCorners<acc_t> corners = s.corners(flow, b, p);
  const int64_t c1 = min(c0 + kChannelsPerThread, channels);
  acc_t dx = acc_t(0), dy = acc_t(0);
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t plane = (b * channels + c) * in_pixels;
    const acc_t g = convert<acc_t>(grad_output[(b * channels + c) * s.out_pixels + p]);
    const acc_t norm = norms[b * channels + c];
    const bool fixed_point = is_finite(norm);
    const acc_t scale = fixed_point_scale(norm);
    backward_channel(corners, input + plane, g, dx, dy, [&](int k, acc_t value) {
      if (!fixed_point) return;
      const long long units = llrint(value * scale);
      atomicAdd(fixed + plane + corners.offset[k], static_cast<unsigned long long>(units));  // two's complement
    });
  }
  store_partial(partial, chunk, b, p, s.out_pixels, dx, dy);
}

// norms[plane] = sum over the plane's output pixels of |grad_output|, in a fixed order (one block per plane).
template <typename scalar_t, typename acc_t>
__global__ void plane_norms_kernel(const scalar_t* __restrict__ grad_output, int64_t out_pixels,
                                   acc_t* __restrict__ norms) {
  __shared__ acc_t sums[kThreads];
  const int t = threadIdx.x;
  const scalar_t* go = grad_output + blockIdx.x * out_pixels;
  acc_t sum = acc_t(0);
  for (int64_t p = t; p < out_pixels; p += kThreads) {
    const acc_t g = convert<acc_t>(go[p]);
    sum += g < acc_t(0) ? -g : g;  // NaN stays NaN
  }
  sums[t] = sum;
  for (int width = kThreads / 2; width > 0; width /= 2) {
    __syncthreads();
    if (t < width) sums[t] += sums[t + width];
  }
  if (t == 0) norms[blockIdx.x] = sums[0];
}

// Splat of the planes of non-finite norm: thread (b, c) zeroes grad_acc's plane (b, c) and visits
// the output pixels in order; it returns at once for a finite plane.
template <typename scalar_t, typename acc_t>
__global__ void splat_planes_kernel(const scalar_t* __restrict__ grad_output, const acc_t* __restrict__ flow,
                                    Sampler<acc_t> s, int64_t channels, int64_t in_pixels,
                                    const acc_t* __restrict__ norms, acc_t* __restrict__ grad_acc) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, b = blockIdx.y;
  if (c >= channels) return;
  const int64_t index = b * channels + c;
  if (is_finite(norms[index])) return;
  const scalar_t* go = grad_output + index * s.out_pixels;
  acc_t* plane = grad_acc + index * in_pixels;
  for (int64_t i = 0; i < in_pixels; ++i) plane[i] = acc_t(0);
  for (int64_t p = 0; p < s.out_pixels; ++p) {
    const PixelCorners<acc_t> corners = s.corners(flow, b, p);
    const acc_t g = convert<acc_t>(go[p]);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      // a corner outside the image receives nothing, as in the atomic splat (the NaN rule)
      if (corners.inside[k]) plane[corners.offset[k]] += corners.weight[k] * g;
    }
  }
}

template <typename acc_t>
__global__ void sum_chunks_kernel(const acc_t* __restrict__ partial, int64_t chunks, int64_t per_chunk,
                                  acc_t* __restrict__ grad_flow) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < per_chunk;
       i += int64_t(gridDim.x) * blockDim.x) {
    acc_t total = acc_t(0);
    for (int64_t chunk = 0; chunk < chunks; ++chunk) total += partial[chunk * per_chunk + i];
    grad_flow[i] = total;
  }
}

// grad_input from the fixed-point sums (finite planes) or the in-order splat in grad_acc (others);
// grad_acc may be grad_input itself.
template <typename scalar_t, typename acc_t>
__global__ void fixed_point_to_grad_kernel(const unsigned long long* __restrict__ fixed,
                                           const acc_t* __restrict__ norms, const acc_t* grad_acc, int64_t count,
                                           int64_t in_pixels, scalar_t* grad_input) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    const acc_t norm = norms[i / in_pixels];
    const acc_t value = is_finite(norm)
                            ? acc_t(static_cast<long long>(fixed[i])) / fixed_point_scale(norm)
                            : grad_acc[i];
    grad_input[i] = convert<scalar_t>(value);
  }
}

unsigned stride_blocks(int64_t count) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(count, kThreads), 65535)));
}

template <typename scalar_t>
constexpr bool accumulates_in_place() {
  // the deterministic path's in-order splat of non-finite planes: float and double write grad_input
  // itself, fp16/bf16 the workspace's fp32 accumulator
  return sizeof(scalar_t) >= sizeof(float);
}

}  // namespace

template <typename scalar_t>
cudaError_t flow_warp_forward(const scalar_t* input, const coord_t<scalar_t>* flow, const FlowWarpShape& shape,
                              int padding, bool align_corners, scalar_t* output, cudaStream_t stream) {
  using acc_t = coord_t<scalar_t>;
  if (shape.batch * shape.channels * shape.out_height * shape.out_width == 0) return cudaSuccess;
  const auto sampler = make_sampler<acc_t>(shape, padding, align_corners);
  launch(forward_kernel<scalar_t, acc_t>, pixel_grid(shape), kThreads, 0, stream, input, flow, sampler, shape.channels,
         shape.in_height * shape.in_width, output);
  return cudaGetLastError();
}

// Workspace element counts, in their order: the deterministic path's int64 fixed-point sums (first,
// so that they are 8-byte aligned) and its fp32 grad_input accumulator for the planes of non-finite
// norm (fp16/bf16 only), the per-chunk flow gradients (the deterministic path: per pixel; the default
// one: per pixel and quadrant, quadrant_slot), the deterministic path's plane norms, and the default
// path's output tile boxes, then their rows' boxes (kWarps per tile).
struct BackwardWorkspace {
  size_t fixed, accumulator, partial, norms, boxes;
};

int64_t tile_count(const FlowWarpShape& shape) {
  return ceil_div(shape.out_width, kTileWidth) * ceil_div(shape.out_height, kTileHeight);
}

// Channel chunks of the default backward's owner blocks.
int64_t owner_chunks(const FlowWarpShape& shape, size_t element_size) {
  return ceil_div(shape.channels, owner_channels(element_size));
}

BackwardWorkspace backward_workspace(const FlowWarpShape& shape, size_t element_size, bool deterministic) {
  const size_t input_count = size_t(shape.batch * shape.channels * shape.in_height * shape.in_width);
  const size_t per_pixel = size_t(shape.batch * shape.out_height * shape.out_width);
  const bool half = element_size < sizeof(float);
  if (deterministic) {
    const int64_t chunks = std::max<int64_t>(1, ceil_div(shape.channels, kChannelsPerThread));
    return {input_count, half ? input_count : 0, size_t(chunks) * 2 * per_pixel, size_t(shape.batch * shape.channels),
            0};
  }
  return {0, 0, size_t(owner_chunks(shape, element_size)) * 8 * per_pixel, 0,
          size_t(shape.batch * tile_count(shape)) * (1 + kWarps)};
}

size_t flow_warp_backward_workspace(const FlowWarpShape& shape, size_t element_size, bool deterministic) {
  const size_t acc_size = element_size == sizeof(double) ? sizeof(double) : sizeof(float);
  const BackwardWorkspace counts = backward_workspace(shape, element_size, deterministic);
  return sizeof(unsigned long long) * counts.fixed + acc_size * (counts.accumulator + counts.partial + counts.norms) +
         sizeof(Box) * counts.boxes;
}

template <typename scalar_t>
cudaError_t flow_warp_backward(const scalar_t* grad_output, const scalar_t* input, const coord_t<scalar_t>* flow,
                               const FlowWarpShape& shape, int padding, bool align_corners, bool deterministic,
                               void* workspace, scalar_t* grad_input, coord_t<scalar_t>* grad_flow,
                               cudaStream_t stream) {
  using acc_t = coord_t<scalar_t>;
  const int64_t in_pixels = shape.in_height * shape.in_width;
  const int64_t out_pixels = shape.out_height * shape.out_width;
  const int64_t input_count = shape.batch * shape.channels * in_pixels;
  const int64_t flow_count = shape.batch * 2 * out_pixels;
  const int64_t planes = shape.batch * shape.channels;
  const BackwardWorkspace counts = backward_workspace(shape, sizeof(scalar_t), deterministic);
  unsigned long long* fixed = static_cast<unsigned long long*>(workspace);
  acc_t* grad_acc = reinterpret_cast<acc_t*>(fixed + counts.fixed);
  acc_t* partial = grad_acc + counts.accumulator;
  acc_t* norms = partial + counts.partial;
  Box* boxes = reinterpret_cast<Box*>(norms + counts.norms);  // then the row boxes
  if constexpr (accumulates_in_place<scalar_t>()) grad_acc = reinterpret_cast<acc_t*>(grad_input);
  const bool splat = shape.channels > 0 && flow_count > 0;
  if (!splat) {
    cudaError_t error = cudaMemsetAsync(grad_input, 0, size_t(input_count) * sizeof(scalar_t), stream);
    if (error != cudaSuccess) return error;
    error = cudaMemsetAsync(grad_flow, 0, size_t(flow_count) * sizeof(acc_t), stream);
    if (error != cudaSuccess) return error;
  } else {
    const auto sampler = make_sampler<acc_t>(shape, padding, align_corners);
    const dim3 grid = pixel_grid(shape);
    if (deterministic) {
      cudaError_t error = cudaMemsetAsync(fixed, 0, size_t(input_count) * sizeof(unsigned long long), stream);
      if (error != cudaSuccess) return error;
      launch(plane_norms_kernel<scalar_t, acc_t>, static_cast<unsigned>(planes), kThreads, 0, stream, grad_output,
             out_pixels, norms);
      launch(backward_fixed_point_kernel<scalar_t, acc_t>, grid, kThreads, 0, stream, grad_output, input, flow,
             sampler, shape.channels, in_pixels, norms, fixed, partial);
      const dim3 plane_grid(static_cast<unsigned>(ceil_div(shape.channels, 64)), static_cast<unsigned>(shape.batch));
      launch(splat_planes_kernel<scalar_t, acc_t>, plane_grid, 64, 0, stream, grad_output, flow, sampler,
             shape.channels, in_pixels, norms, grad_acc);
      launch(sum_chunks_kernel<acc_t>, stride_blocks(flow_count), kThreads, 0, stream, partial, grid.y, flow_count,
             grad_flow);
    } else {
      const int64_t tiles_x = ceil_div(shape.out_width, kTileWidth), tiles = tile_count(shape);
      const int64_t input_tiles_x = ceil_div(shape.in_width, kInputTileWidth);
      const int64_t input_tiles = input_tiles_x * ceil_div(shape.in_height, kInputTileHeight);
      const int64_t chunks = owner_chunks(shape, sizeof(scalar_t));
      launch(tile_boxes_kernel<acc_t>, dim3(static_cast<unsigned>(tiles), grid.z), kThreads, 0, stream, flow, sampler,
             shape.out_height, tiles_x, boxes, boxes + grid.z * tiles);
      const auto owner_kernel = backward_owner_kernel<scalar_t, acc_t>;
      cudaError_t error = allow_shared(owner_kernel, owner_shared_bytes<scalar_t>());
      if (error != cudaSuccess) return error;
      launch(owner_kernel, dim3(static_cast<unsigned>(input_tiles), static_cast<unsigned>(chunks), grid.z), kThreads,
             owner_shared_bytes<scalar_t>(), stream, grad_output, input, flow, sampler, shape.out_height, tiles_x,
             tiles, boxes, boxes + grid.z * tiles, shape.channels, static_cast<int>(shape.in_height),
             static_cast<int>(shape.in_width), static_cast<int>(input_tiles_x), grad_input, partial);
      launch(sum_quadrant_slots_kernel<acc_t>, stride_blocks(shape.batch * out_pixels), kThreads, 0, stream, partial,
             flow, sampler, chunks, shape.batch, grad_flow);
    }
  }
  if (input_count > 0 && splat && deterministic) {
    launch(fixed_point_to_grad_kernel<scalar_t, acc_t>, stride_blocks(input_count), kThreads, 0, stream, fixed, norms,
           grad_acc, input_count, in_pixels, grad_input);
  }
  return cudaGetLastError();
}

#define FASTSEG_INSTANTIATE(T)                                                                                    \
  template cudaError_t flow_warp_forward<T>(const T*, const coord_t<T>*, const FlowWarpShape&, int, bool, T*,    \
                                            cudaStream_t);                                                        \
  template cudaError_t flow_warp_backward<T>(const T*, const T*, const coord_t<T>*, const FlowWarpShape&, int,   \
                                             bool, bool, void*, T*, coord_t<T>*, cudaStream_t);
FASTSEG_FOR_FLOATING_TYPES(FASTSEG_INSTANTIATE)
#undef FASTSEG_INSTANTIATE

}  // namespace fastseg::cuda
