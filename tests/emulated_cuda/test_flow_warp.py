"""flow_warp's CUDA kernels (forward; the default backward's three phases: output tile boxes, the blocks
that own an input tile and a chunk of channels, store its grad_input once and write grad_flow's slots
(one per pixel and owner tile), and the sum of those slots; the deterministic fixed-point splat with its
plane norms and the in-order splat of non-finite planes; chunk sums; the deterministic path's fp16/bf16
conversion) on the emulated-CUDA layer."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from coordinate_rounding import flow_gradient_slack
from fastseg.ops.flow_warp import flow_warp_reference

from .compare import DTYPES, check_every_order, on_device
from .extension import ORDERS, thread_order

pytestmark = pytest.mark.emulated_cuda

CASES = {
    # name: (B, C, Hi, Wi, Ho, Wo)
    "same-size": (2, 5, 11, 13, 11, 13),
    "upsample": (2, 4, 6, 7, 12, 14),
    "downsample": (2, 3, 13, 15, 7, 6),
    "batch1": (1, 7, 9, 10, 9, 10),
    "one-pixel-input": (2, 3, 1, 1, 4, 5),
    "70-channels": (2, 70, 5, 6, 5, 6),  # three chunks of 32 channels
}
# Inputs of several input tiles, cut by the image border; 37 channels: owner chunks of 32 + 5 (16 + 16 + 5
# fp64), and deterministic chunks of 32 + 5.
TILE_CASES = {
    "same-size": (2, 37, 36, 40, 36, 40),  # 2 x 5 tiles, the last column 8 wide, the last row 4 high
    # 52->104-like: output 4 x 6 tiles, cut at 16 (15) columns and 4 (3) rows, input 2 x 3 tiles cut at
    # 24 columns and 6 rows; without align_corners the output is 2x the input, with it 2x - 1, so that
    # the coordinate's scale is 1/2 (exact) in both
    "upsample": (2, 37, 22, 56, 44, 112),
}
TILE = (8, 32)  # csrc/cuda/flow_warp.cu: kTileHeight, kTileWidth (output tiles)
INPUT_TILE = (8, 32)  # kInputTileHeight, kInputTileWidth (the owner blocks' input tiles)


def _base(out_size, in_size, align_corners):
    """Input coordinate of every output index (float64), as flow_warp defines it."""
    index = torch.arange(out_size, dtype=torch.float64)
    if align_corners:
        return index * ((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
    return (index + 0.5) * (in_size / out_size) - 0.5


def _flow(batch, in_hw, out_hw, align_corners, dtype):
    """(B,2,Ho,Wo) flow whose samples cover about [-size, 2 size) per axis (many outside the image),
    kept 0.05 pixel away from the integer lattice, where the bilinear derivative jumps."""
    shape = (batch, out_hw[0], out_hw[1])

    def axis(in_size, out_size, view):
        whole = torch.randint(-in_size - 1, 2 * in_size + 1, shape)
        target = whole + 0.05 + 0.9 * torch.rand(shape, dtype=torch.float64)
        return target - _base(out_size, in_size, align_corners).view(view)

    flow = torch.stack((axis(in_hw[1], out_hw[1], (1, 1, -1)), axis(in_hw[0], out_hw[0], (1, -1, 1))), dim=1)
    return flow.to(dtype)


def _near_lattice_free(coord):
    """coord moved within its unit cell to 0.05..0.95 of it (order and smoothness kept), away from the
    integer lattice where the bilinear derivative jumps, on a grid of 2^-10: where the kernel's
    coordinate x * scale + shift + flow is exact in fp32 (scale 1 or 1/2), grad_flow sums C channels'
    terms without the coordinate's rounding (~1e-6 at 40 pixels, which would reach 1e-5 over 37 channels)."""
    low = coord.floor()
    return low + torch.round((0.05 + 0.9 * (coord - low)) * 1024) / 1024


def _smooth_flow(batch, in_hw, out_hw, align_corners, amplitude):
    """bench_flow_warp's kind of flow: coarse noise of `amplitude` pixels, bilinearly upsampled (float32)."""
    coarse = amplitude * torch.randn(batch, 2, 4, 4, dtype=torch.float64)
    flow = F.interpolate(coarse, size=out_hw, mode="bilinear", align_corners=True)
    base = (_base(out_hw[1], in_hw[1], align_corners).view(1, -1), _base(out_hw[0], in_hw[0], align_corners).view(-1, 1))
    coords = [_near_lattice_free(base[axis] + flow[:, axis]) - base[axis] for axis in range(2)]
    return torch.stack(coords, dim=1).float()


def _wild_flow(batch, in_hw, out_hw, align_corners):
    """Large flow: samples uniform over the input, except in each tile's first two columns (rows), which
    sample the input's first and last cell along x (y): every tile's box is the whole image (float32)."""
    def axis(in_size, out_size, tile, view):
        target = (in_size - 1) * torch.rand(batch, *out_hw, dtype=torch.float64)
        position = (torch.arange(out_size) % tile).view(view)
        target = torch.where(position == 0, target / in_size, target)  # first cell
        target = torch.where(position == 1, in_size - 2 + target / in_size, target)  # last cell
        return _near_lattice_free(target) - _base(out_size, in_size, align_corners).view(view)

    return torch.stack((axis(in_hw[1], out_hw[1], TILE[1], (1, 1, -1)), axis(in_hw[0], out_hw[0], TILE[0], (1, -1, 1))),
                       dim=1).float()


def _axis_corners(coord, size, padding):
    """Indices of an axis' two corners and whether each is inside (csrc/flow_warp_sampling.h)."""
    if padding == "border":
        coord = coord.clamp(0, size - 1)
    low = coord.floor()
    indices = (low, low + 1)
    return indices, [(i >= 0) & (i <= size - 1) for i in indices]


def _tile_boxes(flow, in_hw, padding, align_corners):
    """Per (image, tile) of the default backward, (image, box): the input box (x0, y0, x1, y1, inclusive) of
    its inside corners, None when no corner is inside."""
    out_h, out_w = flow.shape[2:]
    flow = flow.double()
    xs, x_in = _axis_corners(_base(out_w, in_hw[1], align_corners).view(1, -1) + flow[:, 0], in_hw[1], padding)
    ys, y_in = _axis_corners(_base(out_h, in_hw[0], align_corners).view(-1, 1) + flow[:, 1], in_hw[0], padding)
    inf = float("inf")
    bounds = [[], [], [], []]  # per corner: column, row, masked to +-inf where outside
    for j in range(2):
        for i in range(2):
            inside = x_in[i] & y_in[j]
            for which, (values, fill) in enumerate(((xs[i], inf), (ys[j], inf), (xs[i], -inf), (ys[j], -inf))):
                bounds[which].append(torch.where(inside, values, torch.full_like(values, fill)))
    low_x, low_y = torch.stack(bounds[0]).amin(0), torch.stack(bounds[1]).amin(0)
    high_x, high_y = torch.stack(bounds[2]).amax(0), torch.stack(bounds[3]).amax(0)
    boxes = []
    for b in range(flow.shape[0]):
        for y0 in range(0, out_h, TILE[0]):
            for x0 in range(0, out_w, TILE[1]):
                tile = (b, slice(y0, y0 + TILE[0]), slice(x0, x0 + TILE[1]))
                if low_x[tile].isinf().all():
                    boxes.append((b, None))
                    continue
                box = (low_x[tile].min(), low_y[tile].min(), high_x[tile].max(), high_y[tile].max())
                boxes.append((b, tuple(int(v) for v in box)))
    return boxes


def _input_tiles_met(box):
    """(columns, rows) of input tiles that an output tile's box (x0, y0, x1, y1, inclusive) meets."""
    x0, y0, x1, y1 = box
    return x1 // INPUT_TILE[1] - x0 // INPUT_TILE[1] + 1, y1 // INPUT_TILE[0] - y0 // INPUT_TILE[0] + 1


def _check(emulated, input, flow, padding, align, deterministic):
    reference_input = input.detach().double().requires_grad_()
    reference_flow = flow.detach().double().requires_grad_()
    output = flow_warp_reference(reference_input, reference_flow, padding, align)
    grad_output = torch.randn_like(output).to(input.dtype)
    grad_input, grad_flow = torch.autograd.grad(output, (reference_input, reference_flow), grad_output.double())
    coordinate = torch.promote_types(torch.promote_types(input.dtype, flow.dtype), torch.float32)
    slack = flow_gradient_slack(reference_input, reference_flow, grad_output.double(), padding, align,
                                torch.finfo(coordinate).eps / 2)

    input, flow, grad_output = on_device(emulated, input, flow, grad_output)

    def run():
        got = emulated.flow_warp(input, flow, padding, align)
        return (got, *emulated.flow_warp_backward(grad_output, input, flow, padding, align))

    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        # the atomic splat makes grad_input depend on the thread order; everything else is deterministic
        check_every_order(run, (output, grad_input, grad_flow), input.dtype, deterministic=(True, deterministic, True),
                          slack=(None, None, slack))
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("align", [True, False], ids=["align", "no-align"])
@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(emulated, case, padding, align, deterministic):
    batch, channels, in_h, in_w, out_h, out_w = CASES[case]
    input = torch.randn(batch, channels, in_h, in_w)
    flow = _flow(batch, (in_h, in_w), (out_h, out_w), align, torch.float32)
    _check(emulated, input, flow, padding, align, deterministic)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes_and_non_contiguous(emulated, dtype, deterministic):
    coord = torch.float64 if dtype == torch.float64 else torch.float32
    input = torch.randn(2, 6, 9, 7).to(dtype).transpose(2, 3)  # (2, 6, 7, 9), not contiguous
    flow = _flow(2, (7, 9), (8, 5), True, coord)
    _check(emulated, input, flow, "zeros", True, deterministic)
    _check(emulated, input, flow, "border", True, deterministic)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_deterministic_planes_with_inf_and_nan(emulated, dtype):
    """Planes whose grad_output holds inf or NaN cannot be summed in fixed point: they are splatted in
    pixel order with IEEE semantics (inf/NaN where the reference has them), the other planes as usual."""
    input = torch.randn(2, 3, 6, 7).to(dtype)
    flow = 0.3 * torch.randn(2, 2, 5, 8)  # samples inside the image: the inf and NaN reach grad_input
    grad_output = torch.randn(2, 3, 5, 8).to(dtype)
    grad_output[0, 1, 2, 3] = float("inf")
    grad_output[1, 2, 4, 0] = float("nan")
    reference_input = input.detach().double().requires_grad_()
    output = flow_warp_reference(reference_input, flow.double(), "zeros", True)
    (expected,) = torch.autograd.grad(output, reference_input, grad_output.double())
    assert expected[0, 1].isinf().any() and expected[1, 2].isnan().any() and expected.isfinite().any()
    input, flow, grad_output = on_device(emulated, input, flow, grad_output)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        results = []
        for order in ORDERS:
            with thread_order(order, seed=3):
                (grad_input, _) = emulated.flow_warp_backward(grad_output, input, flow, "zeros", True)
            atol, rtol = (1e-5, 1e-5) if dtype == torch.float32 else (1.6e-2, 1.6e-2)
            torch.testing.assert_close(grad_input.double(), expected, atol=atol, rtol=rtol, equal_nan=True)
            results.append(grad_input)
        assert all(torch.equal(r.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                               results[0].view(torch.int16 if dtype == torch.bfloat16 else torch.int32))
                   for r in results)
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.parametrize("align", [True, False], ids=["align", "no-align"])
@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("flow_kind", ["smooth", "wild"])
@pytest.mark.parametrize("case", TILE_CASES)
def test_owner_tiles(emulated, case, flow_kind, padding, align):
    """A smooth flow of about a pixel gives output tiles whose boxes meet several input tiles across and
    down (their pixels' corners split between owner blocks); samples spread over the whole input give
    every tile a box of the whole image, walked by every owner block: both agree with the reference."""
    batch, channels, in_h, in_w, out_h, out_w = TILE_CASES[case]
    if case == "upsample" and align:
        out_h, out_w = out_h - 1, out_w - 1
    if flow_kind == "smooth":
        flow = _smooth_flow(batch, (in_h, in_w), (out_h, out_w), align, amplitude=1.0)
    else:
        flow = _wild_flow(batch, (in_h, in_w), (out_h, out_w), align)
    met = [_input_tiles_met(box) for _, box in _tile_boxes(flow, (in_h, in_w), padding, align) if box is not None]
    whole = (-(-in_w // INPUT_TILE[1]), -(-in_h // INPUT_TILE[0]))
    if flow_kind == "smooth":
        assert any(columns > 1 for columns, _ in met) and any(rows > 1 for _, rows in met), met
    else:
        assert met and all(tiles == whole for tiles in met), met
    input = torch.randn(batch, channels, in_h, in_w)
    _check(emulated, input, flow, padding, align, deterministic=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_owner_tiles_dtypes(emulated, dtype):
    """Every dtype, in one backward: the left output tile column samples smoothly (boxes of a few input
    tiles), the rest all over the input (boxes of the whole image)."""
    batch, channels, in_h, in_w, out_h, out_w = TILE_CASES["same-size"]
    coord = torch.float64 if dtype == torch.float64 else torch.float32
    flow = _smooth_flow(batch, (in_h, in_w), (out_h, out_w), True, amplitude=1.0)
    flow[..., TILE[1]:] = _wild_flow(batch, (in_h, in_w), (out_h, out_w), True)[..., TILE[1]:]
    input = torch.randn(batch, channels, in_h, in_w).to(dtype)
    _check(emulated, input, flow.to(coord), "zeros", True, deterministic=False)


def test_owner_tiles_beyond_one_box_scan(emulated):
    """An image of 9 x 33 = 297 output tiles: an owner block tests the boxes of 256 output tiles at a time,
    so the tiles past the first 256 come from its second scan."""
    batch, channels, in_h, in_w = 1, 3, 72, 1056
    flow = _smooth_flow(batch, (in_h, in_w), (in_h, in_w), True, amplitude=1.0)
    assert -(-in_h // TILE[0]) * -(-in_w // TILE[1]) > 256
    input = torch.randn(batch, channels, in_h, in_w)
    _check(emulated, input, flow, "border", True, deterministic=False)


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_grad_input_written_where_nothing_lands(emulated, dtype, padding):
    """Every sample lands in the input's top-left 12 x 11 pixels (the image shrunk 4x towards its corner):
    the owner blocks of the other input tiles (all but the first column's first two) walk no output tile
    and still store their grad_input (zeros; at::empty on the emulated layer holds 0xFF bytes, NaN).
    Under "zeros" a second flow sends every sample outside the image: every box is empty, grad_input and
    grad_flow are all zeros."""
    batch, channels, in_h, in_w, out_h, out_w = TILE_CASES["same-size"]
    columns, rows = _base(out_w, in_w, True).view(1, -1), _base(out_h, in_h, True).view(-1, 1)
    base = torch.stack(torch.broadcast_tensors(columns, rows))
    target = base / 4 + 0.9 * torch.rand(batch, 2, out_h, out_w, dtype=torch.float64)
    flow = _near_lattice_free(target) - base
    boxes = [box for _, box in _tile_boxes(flow, (in_h, in_w), padding, True)]
    assert all(box[2] < INPUT_TILE[1] and box[3] < 2 * INPUT_TILE[0] for box in boxes), boxes
    input = torch.randn(batch, channels, in_h, in_w).to(dtype)
    _check(emulated, input, flow.float(), padding, True, deterministic=False)
    if padding == "zeros":
        grad_output = torch.randn(batch, channels, out_h, out_w).to(dtype)
        outside = (-3.5 - base).expand(batch, 2, out_h, out_w).float()
        grad_input, grad_flow = emulated.flow_warp_backward(*on_device(emulated, grad_output, input, outside), "zeros",
                                                            True)
        assert torch.equal(grad_input, torch.zeros_like(grad_input))
        assert torch.equal(grad_flow, torch.zeros_like(grad_flow))


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_owner_tiles_non_finite(emulated, padding):
    """An inf and a NaN in grad_output and an inf in the input reach exactly the elements they reach in the
    reference (a corner of a pixel outside the owner block's tile adds 0 * grad where nothing reads it, and
    its product with the value there is dropped); whether such an element is inf or NaN depends on the
    order of the sum (grad_flow adds its corners' terms after summing the channels)."""
    batch, channels, in_h, in_w, out_h, out_w = TILE_CASES["same-size"]
    input = torch.randn(batch, channels, in_h, in_w)
    input[0, 3, 5, 6] = float("inf")
    flow = _smooth_flow(batch, (in_h, in_w), (out_h, out_w), True, amplitude=1.0)
    grad_output = torch.randn(batch, channels, out_h, out_w)
    grad_output[0, 1, 3, 4] = float("inf")
    grad_output[1, 2, 10, 33] = float("nan")
    reference_input = input.double().requires_grad_()
    reference_flow = flow.double().requires_grad_()
    output = flow_warp_reference(reference_input, reference_flow, padding, True)
    expected = torch.autograd.grad(output, (reference_input, reference_flow), grad_output.double())
    assert all(e.isnan().any() and e.isfinite().any() for e in expected)
    got = emulated.flow_warp_backward(*on_device(emulated, grad_output, input, flow), padding, True)
    for g, e in zip(got, expected):
        assert torch.equal(g.isfinite(), e.isfinite())
        finite = e.isfinite()
        torch.testing.assert_close(g.double()[finite], e[finite], atol=1e-5, rtol=1e-5)


# Odd input widths and plane sizes; several output tiles' boxes overlap.
HALF_CASES = {
    "same-size": (2, 37, 27, 45, 27, 45),  # 4 x 2 tiles, the last column 13 wide, the last row 3 high
    "upsample": (2, 7, 13, 23, 25, 45),  # 2x - 1 with align_corners (scale 1/2): 4 x 2 tiles, input 4x smaller
}


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("case", HALF_CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_overlapping_tiles(emulated, dtype, case, padding):
    """fp16/bf16: elements in several output tiles' boxes sum every tile's corners in the owner block's
    fp32 accumulator and are rounded once; within the dtype's tolerance of the reference in every thread
    order."""
    batch, channels, in_h, in_w, out_h, out_w = HALF_CASES[case]
    flow = _smooth_flow(batch, (in_h, in_w), (out_h, out_w), True, amplitude=1.5)
    boxes = [(b, box) for b, box in _tile_boxes(flow, (in_h, in_w), padding, True) if box is not None]
    cover = torch.zeros(batch, in_h, in_w, dtype=torch.int64)
    for b, (x0, y0, x1, y1) in boxes:
        cover[b, y0:y1 + 1, x0:x1 + 1] += 1
    assert (cover >= 2).any(), cover.max()
    input = torch.randn(batch, channels, in_h, in_w).to(dtype)
    _check(emulated, input, flow, padding, True, deterministic=False)
