// Bilinear sampling arithmetic of flow_warp (DecoupleSegNet Eq. 1), shared by the C++ CPU kernels
// and the CUDA kernels: plain C++ without includes beyond <cstdint>, host+device under nvcc.
//
// Along one axis, output index x with flow f (input pixels) samples the input at
//   coord = x * scale + shift + f
// (scale/shift encode the align_corners mapping of the output grid onto the input). The corner
// weights and their derivatives follow F.grid_sample(mode="bilinear") exactly, including its
// gradient conventions: "border" clips the coordinate to [0, size-1] and a clipped coordinate has
// zero gradient; with align_corners=True an input axis of size 1 is sampled at 0 whatever the flow,
// again with zero gradient.
//
// Non-finite values (the NaN rule of fastseg/ops/__init__.py): only corners inside the input are
// read, zero weight or not (as grid_sample: an Inf there makes the sample NaN, an Inf elsewhere
// cannot); a pixel whose flow is NaN/Inf has no corner inside, `finite` false, and its output is NaN
// while it sends no gradient to input or flow.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define FASTSEG_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTSEG_HOST_DEVICE inline
#endif

namespace fastseg::flow_warp {

enum class Padding : int { kZeros = 0, kBorder = 1 };

// Output index -> input coordinate along one axis (grid_sample's align_corners convention).
template <typename acc_t>
struct AxisMap {
  acc_t scale;
  acc_t shift;
  int64_t size;    // input size along this axis
  bool collapsed;  // align_corners=True with size 1: coordinate 0, zero gradient
};

template <typename acc_t>
AxisMap<acc_t> make_axis_map(int64_t in_size, int64_t out_size, bool align_corners) {
  AxisMap<acc_t> map;
  map.size = in_size;
  map.collapsed = align_corners && in_size == 1;
  if (align_corners) {
    map.scale = out_size > 1 ? acc_t(in_size - 1) / acc_t(out_size - 1) : acc_t(0);
    map.shift = acc_t(0);
  } else {
    map.scale = acc_t(in_size) / acc_t(out_size);
    map.shift = acc_t(0.5) * map.scale - acc_t(0.5);
  }
  return map;
}

// The two corners of one axis: indices (0 where outside), weights and d(weight)/d(flow), both
// zero for a corner outside the input, and which corners are inside.
template <typename acc_t>
struct AxisCorners {
  int64_t index[2];
  acc_t weight[2];
  acc_t grad[2];
  bool inside[2];
};

template <typename acc_t>
FASTSEG_HOST_DEVICE acc_t floor_of(acc_t value) {
  const acc_t truncated = static_cast<acc_t>(static_cast<int64_t>(value));
  return truncated > value ? truncated - acc_t(1) : truncated;
}

template <typename acc_t>
FASTSEG_HOST_DEVICE bool is_finite(acc_t value) {
  return value - value == acc_t(0);  // false for NaN and +-Inf, without <cmath> on the device
}

template <typename acc_t>
FASTSEG_HOST_DEVICE AxisCorners<acc_t> axis_corners(const AxisMap<acc_t>& map, int64_t x, acc_t flow, Padding padding) {
  const bool finite = is_finite(flow);
  acc_t coord = map.collapsed ? acc_t(0) : acc_t(x) * map.scale + map.shift + flow;
  acc_t slope = map.collapsed ? acc_t(0) : acc_t(1);
  const acc_t last = acc_t(map.size - 1);
  if (padding == Padding::kBorder) {
    if (coord < acc_t(0)) {
      coord = acc_t(0);
      slope = acc_t(0);
    } else if (coord > last) {
      coord = last;
      slope = acc_t(0);
    }
  }
  // Beyond [-1, size] no corner is inside: clamping there changes nothing and keeps the integer
  // conversion defined (a NaN coordinate lands at -2, outside).
  coord = coord > acc_t(-2) ? coord : acc_t(-2);
  coord = coord < last + acc_t(2) ? coord : last + acc_t(2);
  const acc_t low = floor_of(coord);
  const acc_t t = coord - low;
  AxisCorners<acc_t> corners;
  for (int k = 0; k < 2; ++k) {
    const acc_t position = low + acc_t(k);
    const bool inside = finite && position >= acc_t(0) && position <= last;
    corners.inside[k] = inside;
    corners.index[k] = inside ? static_cast<int64_t>(position) : 0;
    corners.weight[k] = inside ? (k == 0 ? acc_t(1) - t : t) : acc_t(0);
    corners.grad[k] = inside ? (k == 0 ? -slope : slope) : acc_t(0);
  }
  return corners;
}

// The four corners of one output pixel, ordered (y0,x0), (y0,x1), (y1,x0), (y1,x1): offsets into
// the input plane, bilinear weights, d(weight)/d(flow_x), d(weight)/d(flow_y), which corners are
// inside (only those are read), and whether the flow is finite (else the output is NaN).
template <typename acc_t>
struct PixelCorners {
  int64_t offset[4];
  acc_t weight[4];
  acc_t grad_x[4];
  acc_t grad_y[4];
  bool inside[4];
  bool finite;
};

template <typename acc_t>
FASTSEG_HOST_DEVICE PixelCorners<acc_t> pixel_corners(const AxisMap<acc_t>& map_x, const AxisMap<acc_t>& map_y,
                                                      int64_t x, int64_t y, acc_t flow_x, acc_t flow_y,
                                                      Padding padding) {
  const AxisCorners<acc_t> cx = axis_corners(map_x, x, flow_x, padding);
  const AxisCorners<acc_t> cy = axis_corners(map_y, y, flow_y, padding);
  PixelCorners<acc_t> corners;
  corners.finite = is_finite(flow_x) && is_finite(flow_y);
  for (int j = 0; j < 2; ++j) {
    for (int i = 0; i < 2; ++i) {
      const int k = 2 * j + i;
      corners.offset[k] = cy.index[j] * map_x.size + cx.index[i];
      corners.weight[k] = cy.weight[j] * cx.weight[i];
      corners.grad_x[k] = cy.weight[j] * cx.grad[i];
      corners.grad_y[k] = cy.grad[j] * cx.weight[i];
      corners.inside[k] = corners.finite && cy.inside[j] && cx.inside[i];
    }
  }
  return corners;
}

}  // namespace fastseg::flow_warp
