// CUDA flow_warp (DecoupleSegNet Eq. 1): bilinear sampling at base(p) + flow(p), grid_sample semantics.
//
// Forward: one thread per (image, output pixel, chunk of channels) computes the pixel's corners
// once (csrc/flow_warp_sampling.h) and gathers its channels; consecutive threads are consecutive
// pixels, so grad/outputs are coalesced and the corner reads mostly so.
// Backward: grad_flow is a sum over channels: each chunk of channels writes its partial sum to its
// own slot and a second kernel adds the slots in order, so grad_flow is deterministic without
// atomics. grad_input is a bilinear splat. By default (backward_tiles_kernel) a block owns a 32x8
// tile of output pixels (a warp per row) and a chunk of 32 channels; it reduces the bounding box of
// its pixels' inside corners (warp shuffles, then across the 8 warps) and, when the box has at most
// 1024 pixels (4 per tile pixel: the flush then never issues more global atomics than the direct
// splat), splats weight * grad into a shared fp32 (fp64) accumulator with shared-memory atomics,
// as many channels' boxes per pass as fit in 4096 elements (16 KB fp32, 32 KB fp64; >= 4 channels),
// then flushes the box straight into grad_input (zeroed, in the input's dtype): one global atomicAdd
// per (box pixel, channel) for fp32/fp64; for fp16/bf16 one per aligned pair of adjacent pixels of a
// box row (__half2 / __nv_bfloat162 atomics, native on sm_90; a row's odd first or last pixel takes
// a scalar 16-bit atomic), consecutive threads on consecutive columns (pairs), skipping units that
// are exactly +0 (nothing reached them; adding +0 changes nothing). A tile whose box is larger
// (large or wild flow) or empty adds each corner to grad_input with its own global atomic, as
// before, for fp32/fp64; for fp16/bf16 (where each such atomic would round) it leaves its splat to
// backward_deferred_kernel: a block per window of 1024 consecutive input elements and chunk of
// channels walks the image's deferred tiles, splats the corners that land in its window into shared
// fp32 and flushes the window once, with the same 16-bit atomics. Only the order of the additions
// (and for fp16/bf16 the roundings) differs between the paths. With deterministic=true one thread
// per (output pixel, chunk) adds fixed-point int64 values instead: a first kernel sums
// |grad_output| over each (image, channel) plane in a fixed order, and a contribution w * g is
// added as llrint(w * g * 2^61 / that sum). A plane's total stays below 2^61 in magnitude (the
// weights of an output pixel sum to at most 1) plus the roundings, and integer addition is
// associative, so the sum has the same bits in any order; each contribution keeps acc_t's relative
// precision (better than float atomics, which round every partial sum). A last kernel divides by
// the scale (and rounds once to fp16/bf16). Planes whose sum is not finite (inf/NaN in grad_output)
// are splatted instead by one thread per plane in pixel order, with IEEE semantics (into an fp32
// workspace plane for fp16/bf16).
// fp16/bf16 rounding (atomic path): the tile's sums stay fp32; each flush rounds the tile's sum once
// to the 16-bit type and the atomic rounds the new total once (to nearest even; exact for the first
// flush into +0), so an element flushed k times carries at most 2k - 1 roundings of 16-bit
// half-ulps of partial sums; k is at most the number of tiles whose boxes hold it, plus one for all
// deferred tiles together (bench's flow defers none: 1.6 on average and at most 5 at 104 and 208,
// 2.5 and at most 8 at 52->104, whose input is 4x smaller). Before, one fp32 buffer took every
// tile's sum and was rounded once. (Deferred tiles keep that bound; adding their corners with one
// 16-bit atomic each, two roundings per corner, reached the fp16/bf16 test tolerances.)
//
// Cost model at the GPU shapes of bench/bench_flow_warp.py (forward+backward, B=8, C=256, its smooth
// flow; H200: 4.8 TB/s HBM, taken at 80% = 3.84 TB/s, 50 MB L2, 132 SMs at 1.98 GHz, 67 TFLOP/s
// fp32, 989 TFLOP/s dense bf16, ~3 us per dependent launch). The floor is max(bytes / bandwidth,
// FLOPs / peak) of the benchmark's byte and FLOP counts (5 passes over the features); the
// prediction is this design's, derived below. bench/report.py reads the `predicted H200` lines (the
// one place these numbers live) into the "predicted" column of bench/RESULTS.md.
// Global atomics per (output pixel, channel): 4 before (one per corner, scattered); now flush atomics
// / tile pixels, measured on bench's flow (3 seeds, all tiles of 8 images). fp32, one per box pixel:
// 1.63 at 104x104 (boxes ~27x12, the last tile column is 8 wide), 1.44 at 208x208 (~31x11), 0.61 at
// 52->104 (~15x8). bf16, one per word of a box row ((parity of its first element + width + 1) / 2
// per row, 0.51-0.53 of the pixels): 0.84, 0.74, 0.32. No tile's box exceeded 756 pixels, so no
// tile falls back. Taken at ~400 G atomics/s whatever their width (the rate assumed before for
// scattered ones; a bf16x2 atomic is one 32-bit L2 atomic operation like an fp32 one, and a scalar
// bf16 head or tail one is counted the same; coalesced rows of 32 may go faster, not counted):
// 91 / 319 / 34 us fp32 and 47 / 164 / 18 us bf16 at 104 / 208 / 52->104.
// Shared-memory atomics: 4 per (output pixel, channel). PTX atom.shared.add.f32 (SASS may be a
// load / add / compare-and-swap loop): with the grad and 4 input loads, ~13 load/store-unit warp
// instructions per 32 (pixel, channel) at one per clock per SM: 22.2M pixel-channels at 104 -> 34
// us, x1.2 for lanes of a warp that hit the same box pixel at equal sizes (40 us; 160 us at 208),
// x1.5 at 52->104, where neighbouring lanes share their corners (50 us). The same for bf16 (the
// accumulator stays fp32).
// DRAM per phase (fp32, 104: 88.6 MB per feature tensor): forward reads input, writes output (177
// MB, 46 us); memset of grad_input (23 us); tile kernel reads grad and input and, grad_input being
// larger than L2, reads and writes back the accumulated grad_input (4 x 88.6 + 5.5 MB partials, 94
// us); chunk sums (2 us). bf16 halves every feature tensor, grad_input included: the flush adds into
// it, with no fp32 buffer (its memset, 4 B/element, and its 8 B/element read-modify-write) and no
// convert pass (4 B read + 2 B write per element, and a launch). Its 44.3 MB grad_input at 104 would
// fit the L2 alone, but grad and input stream through it: counted through DRAM (4 x 44.3 + 5.5 MB,
// 48 us). The deferred kernel finds no deferred tile (704 / 2752 / 192 blocks, each thread reading
// the image's 52 / 182 / 52 tile marks: ~1-2 us). 4 launches (5 for bf16: the deferred kernel, where
// the convert pass was), 3 us each.
// Per shape, tile kernel = max(DRAM, global atomics, shared/LSU), then the sum of the phases:
//   decouple-104 fp32: 46 + 23 + max(94, 91, 40) + 2 + 12 = 177 us (1.9x the floor: the grad_input
//     read-modify-write through DRAM and the flush atomics, ~92 us each)
//   decouple-104 bf16: 23 + 12 + max(48, 47, 40) + 1 (deferred) + 2 + 15 = 101 us (2.1x; with the
//     fp32 buffer it was 23 + 23 + max(71, 91, 40) + 35 (convert) + 2 + 15 = 189 us)
//   decouple-208 fp32: 185 + 92 + max(375, 319, 160) + 6 + 12 = 670 us (1.8x)
//   decouple-208 bf16: 92 + 46 + max(190, 164, 160) + 2 + 6 + 15 = 351 us (1.9x; was
//     92 + 92 + max(283, 319, 160) + 138 + 6 + 15 = 662 us)
//   sfnet-52to104 fp32: 29 + 6 + max(42, 34, 50) + 2 + 12 = 99 us (1.9x, shared atomics / LSU)
//   sfnet-52to104 bf16: 14 + 3 + max(22, 18, 50) + 1 + 2 + 15 = 85 us (3.3x, shared atomics / LSU;
//     was 14 + 6 + max(27, 34, 50) + 9 + 2 + 15 = 96 us)
// The direct splat, counted the same way: 304 / 1181 / 344 us fp32 at 104 / 208 / 52->104 (the
// earlier lines, 0.234 / 0.898 / 0.307 ms, counted only its atomics and launches). Still above 1.5x
// of the floor: the floor has 5 feature passes, this design 8 with the memset and the grad_input
// read-modify-write, and at 52->104 the shared-memory atomics, which do not shrink with the dtype,
// bound the tile kernel.
// A flow that defers every tile (not benchmarked): each window's block walks every output pixel for
// every channel, windows x B x C x Ho x Wo corner tests and (L2) grad reads, quadratic in the image:
// 104 bf16, 11 x 22.2M x ~15 instructions at 33 T lane-instructions/s ~ 110 us plus 11 x 44 MB of
// L2 reads, about the direct splat's 4 x 22.2M atomics (221 us); at 208 (43 windows, 4x the pixels)
// ~16x that, ~2x the direct splat's 886 us.
// Deterministic backward (not benchmarked by bench/bench_flow_warp.py), decouple-104 fp32: the
// direct splat's 234 us as counted before, less the fp32 grad_input memset (-23 us), plus the plane
// norms (one more read of grad_output, +23 us), the int64 memset (2 x 88.6 MB, +46 us) and the
// conversion (read 177 MB, write 88.6 MB, +69 us): ~350 us, 1.5x that splat if 64-bit L2 atomics
// run at the 32-bit rate (2.4x if at half of it). The per-plane serial splat it replaces: B x C =
// 2048 threads (64 warps for 132 SMs) walking 10816 pixels each at ~1000 cycles of dependent
// read-modify-writes per pixel: ~5 ms, ~20x the atomic path.
// predicted H200 | flow_warp decouple-104 fp32 B=8 fwd+bwd | 0.177 ms | DRAM (grad_input read-modify-write) and flush atomics (floor 0.093 ms)
// predicted H200 | flow_warp decouple-104 bf16 B=8 fwd+bwd | 0.101 ms | DRAM (grad_input read-modify-write) and flush atomics (floor 0.047 ms)
// predicted H200 | flow_warp decouple-208 fp32 B=8 fwd+bwd | 0.670 ms | DRAM (grad_input read-modify-write) (floor 0.371 ms)
// predicted H200 | flow_warp decouple-208 bf16 B=8 fwd+bwd | 0.351 ms | DRAM (grad_input read-modify-write) (floor 0.187 ms)
// predicted H200 | flow_warp sfnet-52to104 fp32 B=8 fwd+bwd | 0.099 ms | shared-memory atomics (load/store issue) (floor 0.051 ms)
// predicted H200 | flow_warp sfnet-52to104 bf16 B=8 fwd+bwd | 0.085 ms | shared-memory atomics (load/store issue) (floor 0.026 ms)
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

// The input tiles a pixel's inside corners lie in span at most 2 x 2; quadrant_of(k) numbers corner k's
// tile among them, 2 * (its tile row - the lowest) + (its tile column - the leftmost): the owner block
// of that tile writes the pixel's grad_flow terms of all its corners in that tile to that quadrant's slot.
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
// [channel][tile pixel], the lists of met output tiles and of a walked tile's pixels, a count per warp.
template <typename scalar_t>
constexpr size_t owner_shared_bytes() {
  constexpr size_t channels = owner_channels(sizeof(scalar_t));
  constexpr size_t lists = (2 * kThreads + kWarps) * sizeof(int);
  return channels * kThreads * (sizeof(acc_type<scalar_t>) + sizeof(scalar_t)) + lists;
}

// Which of output pixel (px, py)'s corners lie inside the image and in the input tile at (x0, y0):
// corner k's pixel in the tile, weight and d(weight)/d(flow) for those; for the others this thread's
// own tile pixel and zeros (adding +0 changes no sum: a sum that starts at +0 is never -0), so that
// every lane of the channel loop runs the same instructions, without branches.
template <typename acc_t>
struct OwnedCorners {
  int local[4];
  acc_t weight[4], grad_x[4], grad_y[4];
  bool any;        // some corner is in the tile
  int quadrant;    // the tile's quadrant among the pixel's (CornerQuadrants), when `any`
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
    owned.local[k] = mine ? row * kInputTileWidth + column : static_cast<int>(threadIdx.x);
    owned.weight[k] = mine ? corners.weight[k] : acc_t(0);
    owned.grad_x[k] = mine ? corners.grad_x[k] : acc_t(0);
    owned.grad_y[k] = mine ? corners.grad_y[k] : acc_t(0);
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
// box meets the input tile, each thread takes the tile's output pixel t and tests whether a corner
// lies in the input tile; those pixels are listed densely (warp ballots, then counts per warp), and
// the first `listed` threads each take one, recompute its corners and, for each channel, add Eq. 1's
// weight * grad to the accumulator at its corners in the input tile (shared-memory atomics) and sum
// their grad_flow terms, grad * d(weight_k) / d(flow) * input value, into the pixel's quadrant slot
// (one owner block per (pixel, quadrant, chunk)). Every element of the tile's grad_input is stored
// once, converted once to the input's dtype (zero where nothing lands).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, 3)
    backward_owner_kernel(const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ input,
                          const acc_t* __restrict__ flow, Sampler<acc_t> s, int64_t out_height, int64_t tiles_x,
                          int64_t tiles, const Box* __restrict__ boxes, const Box* __restrict__ row_boxes,
                          int64_t channels, int in_height, int in_width,
                          int input_tiles_x, scalar_t* __restrict__ grad_input, acc_t* __restrict__ partial) {
  constexpr int kChannels = owner_channels(sizeof(scalar_t));
  FASTSEG_DYNAMIC_SHARED(shared);
  acc_t* accumulator = reinterpret_cast<acc_t*>(shared);                // [channel][tile pixel]
  scalar_t* values = reinterpret_cast<scalar_t*>(accumulator + kChannels * kThreads);  // the input tile, same layout
  int* met_tiles = reinterpret_cast<int*>(values + kChannels * kThreads);  // [kThreads] output tiles - first
  int* listed = met_tiles + kThreads;                                      // [kThreads] output tile pixels
  int* warp_counts = listed + kThreads;                                    // [kWarps]
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
      accumulator[(j0 + i) * kThreads + threadIdx.x] = acc_t(0);  // channels past pass_channels: unused
      values[(j0 + i) * kThreads + threadIdx.x] = batch[i];
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
      acc_t* sums[4];  // corner k's accumulator element of channel c0, then + kThreads each
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
            products[k] += convert<acc_t>(value_at[k][j * kThreads]) * g[i];
            atomicAdd(sums[k] + j * kThreads, owned.weight[k] * g[i]);
          }
        }
      }
      acc_t dx = acc_t(0), dy = acc_t(0);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
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
    *out = convert<scalar_t>(accumulator[j * kThreads + threadIdx.x]);
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
  }
  if (!splat) {
    cudaError_t error = cudaMemsetAsync(grad_flow, 0, size_t(flow_count) * sizeof(acc_t), stream);
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
