// CPU kernels of flow_warp (DecoupleSegNet Eq. 1): bilinear sampling of the input at
// base(p) + flow(p), with F.grid_sample's padding and gradient conventions.
//
// The corners and weights of an output pixel do not depend on the channel, so they are computed
// once per (image, pixel) into a table; channels then gather (forward) or splat (backward) through
// it. Both passes run in parallel over (image, block of channels): a task owns its channels' output
// or grad_input planes, so the splat needs no atomics, and each task's share of grad_flow (a sum
// over channels) lands in its own buffer, added in a fixed order: results are deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "checks/flow_warp.h"
#include "flow_warp_sampling.h"

namespace fastseg::cpu {
namespace {

using flow_warp::Padding;
using flow_warp::PixelCorners;

constexpr int64_t kPixelTile = 256;  // pixels whose table entries stay in L1 while channels loop

// What the forward gather needs of a pixel's corners: offsets (int32, checked), weights, which
// corners are read, and whether the flow is finite.
template <typename acc_t>
struct GatherCorners {
  int32_t offset[4];
  acc_t weight[4];
  bool inside[4];
  bool finite;

  GatherCorners() = default;
  explicit GatherCorners(const PixelCorners<acc_t>& corners) : finite(corners.finite) {
    for (int k = 0; k < 4; ++k) {
      offset[k] = static_cast<int32_t>(corners.offset[k]);
      weight[k] = corners.weight[k];
      inside[k] = corners.inside[k];
    }
  }
};

// The shared checks, plus the int32 plane offsets of GatherCorners.
void check_inputs(const at::Tensor& input, const at::Tensor& flow) {
  checks::flow_warp_inputs(input, flow);
  TORCH_CHECK_VALUE(input.size(2) * input.size(3) <= INT32_MAX, "input planes must have at most 2^31-1 pixels, got ",
                    input.sizes());
}

// Corner table of every output pixel of every image: (B, Ho*Wo) entries of type Entry.
template <typename acc_t, typename Entry>
std::vector<Entry> corner_table(const at::Tensor& flow, int64_t in_height, int64_t in_width,
                                              Padding padding, bool align_corners) {
  const int64_t batch = flow.size(0), height = flow.size(2), width = flow.size(3), pixels = height * width;
  const auto map_x = flow_warp::make_axis_map<acc_t>(in_width, width, align_corners);
  const auto map_y = flow_warp::make_axis_map<acc_t>(in_height, height, align_corners);
  const acc_t* f = flow.const_data_ptr<acc_t>();
  std::vector<Entry> table(batch * pixels);
  at::parallel_for(0, batch * height, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / height, y = row % height;
      const acc_t* fx = f + (b * 2) * pixels + y * width;
      const acc_t* fy = fx + pixels;
      for (int64_t x = 0; x < width; ++x) {
        table[row * width + x] = Entry(flow_warp::pixel_corners(map_x, map_y, x, y, fx[x], fy[x], padding));
      }
    }
  });
  return table;
}

// Channel blocks per image: enough tasks for every thread, at most one block per channel.
int64_t channel_blocks(int64_t batch, int64_t channels) {
  const int64_t wanted = at::divup(4 * at::get_num_threads(), std::max<int64_t>(batch, 1));
  return std::max<int64_t>(1, std::min(channels, wanted));
}

at::Tensor flow_warp_cpu(const at::Tensor& input, const at::Tensor& flow, c10::string_view padding_mode,
                         bool align_corners) {
  check_inputs(input, flow);
  const Padding padding = checks::flow_warp_padding(padding_mode);
  const int64_t batch = input.size(0), channels = input.size(1);
  const int64_t in_pixels = input.size(2) * input.size(3);
  const int64_t out_pixels = flow.size(2) * flow.size(3);
  const at::Tensor in = input.contiguous();
  const at::Tensor coords = flow.contiguous();
  at::Tensor output = at::empty({batch, channels, flow.size(2), flow.size(3)}, input.options());
  if (output.numel() == 0) return output;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "flow_warp_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto table =
        corner_table<acc_t, GatherCorners<acc_t>>(coords, input.size(2), input.size(3), padding, align_corners);
    const scalar_t* src = in.const_data_ptr<scalar_t>();
    scalar_t* dst = output.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p0 = 0; p0 < out_pixels; p0 += kPixelTile) {
        const int64_t p1 = std::min(p0 + kPixelTile, out_pixels);
        for (int64_t index = begin; index < end; ++index) {
          const GatherCorners<acc_t>* corners = table.data() + (index / channels) * out_pixels;
          const scalar_t* plane = src + index * in_pixels;
          scalar_t* out = dst + index * out_pixels;
          for (int64_t p = p0; p < p1; ++p) {
            const GatherCorners<acc_t>& c = corners[p];
            acc_t value = acc_t(0);
            for (int k = 0; k < 4; ++k) {
              const acc_t v = static_cast<acc_t>(plane[c.offset[k]]);
              value += c.inside[k] ? c.weight[k] * v : acc_t(0);
            }
            out[p] = static_cast<scalar_t>(c.finite ? value : std::numeric_limits<acc_t>::quiet_NaN());
          }
        }
      }
    });
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor> flow_warp_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                                          const at::Tensor& flow, c10::string_view padding_mode,
                                                          bool align_corners) {
  check_inputs(input, flow);
  const Padding padding = checks::flow_warp_padding(padding_mode);
  const int64_t batch = input.size(0), channels = input.size(1);
  const int64_t in_pixels = input.size(2) * input.size(3);
  const int64_t out_pixels = flow.size(2) * flow.size(3);
  checks::flow_warp_grad_output(grad_output, input, flow);
  const at::Tensor in = input.contiguous();
  const at::Tensor grad = grad_output.contiguous();
  const at::Tensor coords = flow.contiguous();
  at::Tensor grad_input = at::empty_like(in);
  at::Tensor grad_flow = at::empty_like(coords);
  const int64_t blocks = channel_blocks(batch, channels);
  const int64_t block_size = channels > 0 ? at::divup(channels, blocks) : 0;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "flow_warp_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr bool kExactAccumulator = std::is_same_v<scalar_t, acc_t>;
    const auto table =
        corner_table<acc_t, PixelCorners<acc_t>>(coords, input.size(2), input.size(3), padding, align_corners);
    const scalar_t* src = in.const_data_ptr<scalar_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* grad_in = grad_input.mutable_data_ptr<scalar_t>();
    // per task: d(loss)/d(flow_x), d(loss)/d(flow_y) summed over the task's channels
    std::vector<acc_t> partial(batch * blocks * 2 * out_pixels, acc_t(0));
    at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
      // fp32 accumulators of the block's grad_input planes for fp16/bf16 input
      std::vector<acc_t> plane_sums(kExactAccumulator ? 0 : block_size * in_pixels);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / blocks, c0 = (task % blocks) * block_size;
        const int64_t c1 = std::min(c0 + block_size, channels);
        const PixelCorners<acc_t>* corners = table.data() + b * out_pixels;
        acc_t* flow_x = partial.data() + task * 2 * out_pixels;
        acc_t* flow_y = flow_x + out_pixels;
        for (int64_t c = c0; c < c1; ++c) {
          acc_t* sums = kExactAccumulator ? reinterpret_cast<acc_t*>(grad_in + (b * channels + c) * in_pixels)
                                          : plane_sums.data() + (c - c0) * in_pixels;
          std::fill(sums, sums + in_pixels, acc_t(0));
        }
        for (int64_t p0 = 0; p0 < out_pixels; p0 += kPixelTile) {
          const int64_t p1 = std::min(p0 + kPixelTile, out_pixels);
          for (int64_t c = c0; c < c1; ++c) {
            const int64_t index = b * channels + c;
            const scalar_t* plane = src + index * in_pixels;
            const scalar_t* go = g + index * out_pixels;
            acc_t* sums = kExactAccumulator ? reinterpret_cast<acc_t*>(grad_in + index * in_pixels)
                                            : plane_sums.data() + (c - c0) * in_pixels;
            for (int64_t p = p0; p < p1; ++p) {
              const PixelCorners<acc_t>& corner = corners[p];
              const acc_t go_p = static_cast<acc_t>(go[p]);
              acc_t dx = acc_t(0), dy = acc_t(0);
              for (int k = 0; k < 4; ++k) {
                if (!corner.inside[k]) continue;
                const acc_t v = static_cast<acc_t>(plane[corner.offset[k]]);
                sums[corner.offset[k]] += corner.weight[k] * go_p;  // Eq. 1 transposed: bilinear splat
                dx += corner.grad_x[k] * v;
                dy += corner.grad_y[k] * v;
              }
              flow_x[p] += dx * go_p;
              flow_y[p] += dy * go_p;
            }
          }
        }
        if constexpr (!kExactAccumulator) {
          for (int64_t c = c0; c < c1; ++c) {
            const acc_t* sums = plane_sums.data() + (c - c0) * in_pixels;
            scalar_t* out = grad_in + (b * channels + c) * in_pixels;
            for (int64_t q = 0; q < in_pixels; ++q) out[q] = static_cast<scalar_t>(sums[q]);
          }
        }
      }
    });
    acc_t* grad_f = grad_flow.mutable_data_ptr<acc_t>();
    at::parallel_for(0, batch * 2 * out_pixels, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / (2 * out_pixels), rest = i % (2 * out_pixels);
        acc_t total = acc_t(0);
        for (int64_t block = 0; block < blocks; ++block) total += partial[(b * blocks + block) * 2 * out_pixels + rest];
        grad_f[i] = total;
      }
    });
  });
  return {grad_input, grad_flow};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CPU, m) {
  m.impl("flow_warp", &flow_warp_cpu);
  m.impl("flow_warp_backward", &flow_warp_backward_cpu);
}

}  // namespace fastseg::cpu
