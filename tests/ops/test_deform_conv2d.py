"""deform_conv2d: identities with F.conv2d, torchvision's boundary rule, every backend vs the reference and vs
torchvision.ops.deform_conv2d itself (where torchvision is installed)."""
from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

from allow_tf32 import set_allow_tf32
from fastseg import ops
from fastseg.ops.deform_conv2d import DEFORM_CONV2D, deform_conv2d_reference, output_size


def _inputs(batch, channels, size, out_channels, kernel=3, stride=1, padding=1, dilation=1, groups=1,
            offset_groups=1, with_mask=True, spread=2.0, device="cpu", dtype=torch.float64):
    """Random input, offsets of about `spread` pixels (many samples fall outside), mask in (0, 1), weight, bias.

    No offset lies within 1e-3 of an integer: there the sample position's floor, and with it the
    bilinear gradient w.r.t. the offset, jumps, and fp32 rounding can land it on the other side of the
    jump than the float64 reference (seen once: position 2.99999991, exactly 3.0 in fp32).
    """
    height, width = (size, size) if isinstance(size, int) else size
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    stride, padding, dilation = (torch.nn.modules.utils._pair(v) for v in (stride, padding, dilation))
    out_h, out_w = output_size(height, width, (kh, kw), stride, padding, dilation)
    taps = kh * kw
    options = dict(device=device, dtype=dtype)
    offset = spread * torch.randn(batch, 2 * offset_groups * taps, out_h, out_w, **options)
    offset = torch.where((offset - offset.round()).abs() < 1e-3, offset + 2e-3, offset)
    return dict(
        input=torch.randn(batch, channels, height, width, **options),
        offset=offset,
        weight=torch.randn(out_channels, channels // groups, kh, kw, **options) / math.sqrt(channels // groups * taps),
        bias=torch.randn(out_channels, **options),
        mask=torch.rand(batch, offset_groups * taps, out_h, out_w, **options) if with_mask else None,
        stride=stride, padding=padding, dilation=dilation,
    )


DIFFERENTIABLE = ("input", "offset", "weight", "bias", "mask")


def _run(args, backend, device, dtype):
    """Output and the gradients of <output, fixed random cotangent> w.r.t. every tensor argument.

    ``backend``: a fastseg backend name, or a function with deform_conv2d's positional arguments (torchvision's).
    """
    conv = functools.partial(ops.deform_conv2d, backend=backend) if isinstance(backend, str) else backend
    tensors = {k: args[k].to(device=device, dtype=dtype).requires_grad_() for k in DIFFERENTIABLE if args[k] is not None}
    call = {**args, **tensors}
    out = conv(call["input"], call["offset"], call["weight"], call["bias"], call["stride"], call["padding"],
               call["dilation"], call["mask"])
    cotangent = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view(out.shape).to(device, dtype)
    grads = torch.autograd.grad(out, list(tensors.values()), cotangent)
    return out, dict(zip(tensors, grads))


def _compare(args, backend, device, dtype=torch.float32, atol=1e-4, rtol=1e-4, truth=("reference", "cpu")):
    """Output and gradients of ``backend`` in ``dtype`` against those of ``truth`` = (backend, device) in float64;
    returns the latter gradients by name."""
    out, grads = _run(args, backend, device, dtype)
    expected, expected_grads = _run(args, *truth, torch.float64)
    assert out.dtype == dtype and out.shape == expected.shape
    assert grads.keys() == expected_grads.keys()
    torch.testing.assert_close(out.cpu().double(), expected.cpu(), atol=atol, rtol=rtol)
    for name, grad in grads.items():
        torch.testing.assert_close(grad.cpu().double(), expected_grads[name].cpu(), atol=atol, rtol=rtol, msg=name)
    return expected_grads


CONV_CASES = {
    # name: (B, C_in, size, C_out, kernel, stride, padding, dilation, groups)
    "plain": (2, 4, 7, 6, 3, 1, 1, 1, 1),
    "stride2-pad0": (2, 3, (9, 8), 5, 3, 2, 0, 1, 1),
    "dilation2": (1, 4, 9, 4, 3, 1, 2, 2, 1),
    "groups2-rect-kernel": (2, 4, (6, 9), 6, (2, 3), 1, (1, 0), (2, 1), 2),
}


def _identity_backends(fused):
    return [("reference", torch.device("cpu")), fused]


@pytest.mark.parametrize("case", CONV_CASES)
def test_zero_offsets_unit_mask_is_conv2d(fused, case):
    batch, channels, size, out_channels, kernel, stride, padding, dilation, groups = CONV_CASES[case]
    args = _inputs(batch, channels, size, out_channels, kernel, stride, padding, dilation, groups, dtype=torch.float32)
    args["offset"].zero_()
    args["mask"].fill_(1.0)
    expected = F.conv2d(args["input"], args["weight"], args["bias"], args["stride"], args["padding"], args["dilation"],
                        groups)
    for backend, device in _identity_backends(fused):
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
        for mask in (moved["mask"], None):
            out = ops.deform_conv2d(moved["input"], moved["offset"], moved["weight"], moved["bias"], args["stride"],
                                    args["padding"], args["dilation"], mask, backend=backend)
            torch.testing.assert_close(out.cpu(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shift", [(1, 2), (-2, 1), (0, -3)])
def test_integer_offsets_are_a_shifted_conv2d(fused, shift):
    """A constant integer offset (dy, dx) samples input[y + dy, x + dx]: conv2d of the shifted, zero-filled input."""
    dy, dx = shift
    args = _inputs(2, 3, 8, 4, padding=1, with_mask=False, dtype=torch.float32)
    args["offset"] = torch.tensor([float(dy), float(dx)]).repeat(9).view(1, 18, 1, 1).expand(2, 18, 8, 8).contiguous()
    image = args["input"]
    height, width = image.shape[-2:]
    # padded-and-shifted image: shifted[u, v] = image[u - 1 + dy, v - 1 + dx], zero outside (padding 1)
    margin = 1 + max(abs(dy), abs(dx))
    big = F.pad(image, (margin,) * 4)
    shifted = big[..., margin - 1 + dy:margin + 1 + dy + height, margin - 1 + dx:margin + 1 + dx + width]
    expected = F.conv2d(shifted, args["weight"], args["bias"])
    for backend, device in _identity_backends(fused):
        out = ops.deform_conv2d(image.to(device), args["offset"].to(device), args["weight"].to(device),
                                args["bias"].to(device), padding=1, backend=backend)
        torch.testing.assert_close(out.cpu(), expected, atol=1e-5, rtol=1e-5)


def _bilinear_zero_padded(image, y, x):
    """torchvision's rule, written out: zero when y <= -1, y >= H, x <= -1 or x >= W, else neighbours inside."""
    height, width = image.shape
    if y <= -1 or y >= height or x <= -1 or x >= width:
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    total = 0.0
    for r, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for c, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= r < height and 0 <= c < width:
                total += wy * wx * float(image[r, c])
    return total


def test_offsets_outside_follow_the_zero_padding_rule(fused):
    """1x1 kernel, one channel, samples at and near the borders: y = -1, -1 + 1/4, H - 1, H - 1 + 1/4, H, ..."""
    size = 11
    image = torch.randn(1, 1, size, size)
    positions = torch.tensor([-1.5, -1.0, -0.75, -0.5, 0.0, 2.25, size - 1.0, size - 0.75, size - 0.25, float(size),
                              size + 0.5])  # multiples of 1/4: exact in binary
    ys = positions.view(-1, 1).expand(size, size)
    xs = positions[torch.randperm(size)].view(1, -1).expand(size, size)
    expected = torch.tensor([[_bilinear_zero_padded(image[0, 0], float(ys[i, j]), float(xs[i, j])) for j in range(size)]
                             for i in range(size)])
    assert expected.abs().sum() > 0 and (expected == 0).any()
    # output pixel (ho, wo) of a 1x1 stride-1 unpadded conv samples at (ho, wo) + offset
    grid = torch.arange(size, dtype=torch.float32)
    offset = torch.stack((ys - grid.view(-1, 1), xs - grid.view(1, -1))).unsqueeze(0)
    weight = torch.ones(1, 1, 1, 1)
    for backend, device in _identity_backends(fused):
        out = ops.deform_conv2d(image.to(device), offset.to(device), weight.to(device), backend=backend)
        torch.testing.assert_close(out[0, 0].cpu(), expected, atol=1e-6, rtol=1e-6)


RANDOM_CASES = {
    # name: (B, C_in, size, C_out, kernel, stride, padding, dilation, groups, offset_groups, mask)
    "batch1-v2": (1, 4, 6, 4, 3, 1, 1, 1, 1, 1, True),
    "batch1-v1": (1, 3, (5, 7), 2, 3, 1, 1, 1, 1, 1, False),
    "groups2-offset-groups2": (2, 4, 6, 6, 3, 1, 1, 1, 2, 2, True),
    "groups2-offset-groups4-stride2": (1, 8, 7, 4, 3, 2, 1, 1, 2, 4, True),
    "offset-groups3-dilation": (1, 6, 7, 4, (3, 2), 1, (2, 1), (2, 1), 1, 3, True),
    "batch33": (33, 4, 7, 5, 3, 1, 1, 1, 1, 2, True),
    # offset groups straddling conv groups (4 channels per group, 6 per offset group)
    "groups3-offset-groups2": (1, 12, 5, 6, 3, 1, 1, 1, 3, 2, True),
    # Triton tiles: 81 pixels = a full and a partial tile of 64 (3 tiles of 32 in the weight gradient); 72 channels
    # of one segment = 3 chunks of 32 (2 of 64 in the weight gradient), the last partial; 272 output channels = a
    # full and a partial block of 256 in fp32 (5 reduction chunks of 64 in grad_columns: over the 256 fp32 rows of
    # the on-chip grad_out tile, so the reload path); 200 output channels: one on-chip tile of 256 rows, 56 masked.
    # fp32 "ieee" (FMA dots, as here in fp32) reduces 8 at a time instead of 32/32/64: test_float64_tile_tails
    "pixel-tiles-channel-chunks": (1, 72, 9, 6, 3, 1, 1, 1, 1, 1, True),
    "two-output-channel-blocks": (1, 4, 4, 272, 2, 1, 0, 1, 1, 1, True),
    "resident-grad-out-tile": (1, 4, 4, 200, 2, 1, 0, 1, 1, 1, True),
    # fp32 "ieee" (FMA dots) reduce 8 at a time: 12 channels = a full and a partial chunk of 8 in the forward, 81
    # pixels = 10 full weight-gradient tiles of 8 and one of 1 pixel; 20 of the 32 on-chip grad_out rows
    "fma-reduction-tails": (1, 12, 9, 20, 3, 1, 1, 1, 1, 1, True),
}
CPP_ONLY_CASES = {"batch33"}  # large batch: the C++ backend only, to keep the interpreter's time short


@pytest.mark.parametrize("case", RANDOM_CASES)
def test_matches_reference(fused, case):
    backend, device = fused
    if case in CPP_ONLY_CASES and backend != "cpu":
        pytest.skip("batch 33 runs on the C++ backend only (time budget)")
    batch, channels, size, out_channels, kernel, stride, padding, dilation, groups, offset_groups, mask = RANDOM_CASES[case]
    args = _inputs(batch, channels, size, out_channels, kernel, stride, padding, dilation, groups, offset_groups, mask)
    _compare(args, backend, device)


def test_non_contiguous_inputs(fused):
    backend, device = fused
    args = _inputs(2, 4, 6, 4, kernel=2, offset_groups=2)  # output 7x7
    args["input"] = torch.randn(2, 6, 6, 8, dtype=torch.float64).transpose(1, 3)[:, :4]
    args["offset"] = torch.randn(2, 7, 7, 16, dtype=torch.float64).permute(0, 3, 1, 2)
    args["mask"] = torch.rand(2, 8, 7, 14, dtype=torch.float64)[..., ::2]
    args["weight"] = torch.randn(2, 2, 4, 4, dtype=torch.float64).permute(3, 2, 1, 0)
    for name in ("input", "offset", "mask", "weight"):
        assert not args[name].is_contiguous(), name
    _compare(args, backend, device)
    args["input"] = args["input"].contiguous(memory_format=torch.channels_last)
    _compare(args, backend, device)


def test_float64_matches_reference_closely(fused):
    backend, device = fused
    args = _inputs(2, 4, 6, 3, offset_groups=2)
    _compare(args, backend, device, dtype=torch.float64, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("case", ["pixel-tiles-channel-chunks", "two-output-channel-blocks"])
def test_float64_tile_tails(fused, case):
    """The partial tiles above at the tensor-core reduction widths (32-channel chunks, 32-pixel weight-gradient
    tiles, 64-row grad_columns steps), which fp64 keeps while fp32 "ieee" reduces 8 at a time (fp64 output blocks:
    128 channels, so 272 = 3 blocks)."""
    backend, device = fused
    args = _inputs(*RANDOM_CASES[case])
    _compare(args, backend, device, dtype=torch.float64, atol=1e-10, rtol=1e-10)


def test_low_precision(fused):
    backend, device = fused
    if backend == "triton" and device.type == "cpu":
        pytest.skip("fp16/bf16 Triton runs on GPU only (the interpreter's low-precision dot is not faithful)")
    args = _inputs(2, 8, 6, 8, offset_groups=2)
    # offsets exact in bf16 and never integers: at an integer position the sampling derivative has a kink
    # and the reference (grid_sample) may take either side
    whole = torch.randint(-6, 7, args["offset"].shape).double()
    args["offset"] = whole + torch.randint(1, 16, args["offset"].shape).double() / 16
    for dtype in (torch.float16, torch.bfloat16):
        rounded = {k: (v.to(dtype).double() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
        # the samples and products are rounded to dtype (8 or 11 bits); sums accumulate in fp32
        tolerance = 3e-2 if dtype == torch.bfloat16 else 5e-3
        _compare(rounded, backend, device, dtype=dtype, atol=tolerance, rtol=tolerance)


@pytest.mark.triton
@pytest.mark.parametrize("allow_tf32", [True, False])
def test_triton_dot_precision_follows_allow_tf32(allow_tf32):
    """The Triton dots on a GPU: fp32 in TF32 only when PyTorch allows it, native fp16/bf16 operands with fp32
    accumulation, fp64 in fp64; the interpreter multiplies in fp32/fp64 "ieee"."""
    kernels = pytest.importorskip("fastseg.kernels.deform_conv2d", reason="triton is not installed")
    tl = pytest.importorskip("triton.language", reason="triton is not installed")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    with set_allow_tf32(allow_tf32):
        float32 = kernels._dtypes(torch.float32, cuda)
    assert float32 == dict(ACC=tl.float32, DOT=tl.float32, PRECISION="tf32" if allow_tf32 else "ieee")
    assert kernels._dtypes(torch.bfloat16, cuda) == dict(ACC=tl.float32, DOT=tl.bfloat16, PRECISION=None)
    assert kernels._dtypes(torch.float16, cuda) == dict(ACC=tl.float32, DOT=tl.float16, PRECISION=None)
    assert kernels._dtypes(torch.float64, cuda) == dict(ACC=tl.float64, DOT=tl.float64, PRECISION="ieee")
    assert kernels._dtypes(torch.float16, cpu) == dict(ACC=tl.float32, DOT=tl.float32, PRECISION="ieee")


def test_tf32_matches_reference(fused):
    backend, device = fused
    if device.type != "cuda":
        pytest.skip("TF32 exists on a GPU only")
    args = _inputs(2, 8, 6, 8, offset_groups=2)
    # TF32 keeps 10 mantissa bits of each product's operands (relative 2^-11); 72 products per output
    with set_allow_tf32(True):
        _compare(args, backend, device, dtype=torch.float32, atol=1e-2, rtol=1e-2)


def test_gradcheck(differentiable):
    backend, device = differentiable
    # tiny (2x2 kernel, one image) so that the Triton interpreter stays fast; batches are covered above
    args = _inputs(1, 4, 4, 2, kernel=2, groups=2, offset_groups=2, spread=1.5, device=device)
    # sampling positions at least 0.1 from an integer, where the bilinear derivative has its kinks
    args["offset"] = args["offset"].floor() + 0.1 + 0.8 * (args["offset"] - args["offset"].floor())
    tensors = [args[k].requires_grad_() for k in DIFFERENTIABLE]

    def fn(input, offset, weight, bias, mask):
        return ops.deform_conv2d(input, offset, weight, bias, 1, 1, 1, mask, backend=backend)

    assert torch.autograd.gradcheck(fn, tensors, fast_mode=True)


@pytest.mark.parametrize("with_mask", [True, False])
def test_opcheck(fused, with_mask):
    backend, device = fused
    args = _inputs(2, 4, 4, 2, kernel=2, offset_groups=2, with_mask=with_mask, device=device, dtype=torch.float32)
    tensors = [args[k].requires_grad_() if args[k] is not None else None for k in ("input", "offset", "weight", "mask", "bias")]
    opcheck(DEFORM_CONV2D.pair(backend).forward, (*tensors, [1, 1], [1, 1], [1, 1]))


def test_compile_fullgraph_matches_eager(fused):
    backend, device = fused
    args = _inputs(2, 4, 5, 4, kernel=2, offset_groups=2, device=device, dtype=torch.float32)
    tensors = [args[k].requires_grad_() for k in DIFFERENTIABLE]

    def loss(input, offset, weight, bias, mask):
        out = ops.deform_conv2d(input, offset * 0.5, weight, bias, 1, 1, 1, torch.sigmoid(mask), backend=backend)
        return out.square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    eager_value = loss(*tensors)
    eager_grads = torch.autograd.grad(eager_value, tensors)
    value = compiled(*tensors)
    grads = torch.autograd.grad(value, tensors)
    torch.testing.assert_close(value, eager_value)
    for grad, eager_grad in zip(grads, eager_grads):
        torch.testing.assert_close(grad, eager_grad)


def test_deterministic_mode(fused):
    """The C++ backward is deterministic; CUDA and Triton scatter grad_input with atomics and must refuse."""
    backend, device = fused
    args = _inputs(1, 4, 5, 4, device=device, dtype=torch.float32)
    tensors = {k: args[k].requires_grad_() for k in DIFFERENTIABLE}
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        out = ops.deform_conv2d(tensors["input"], tensors["offset"], tensors["weight"], tensors["bias"], 1, 1, 1,
                                tensors["mask"], backend=backend)
        if backend == "cpu":
            first = torch.autograd.grad(out.sum(), list(tensors.values()), retain_graph=True)
            second = torch.autograd.grad(out.sum(), list(tensors.values()))
            for a, b in zip(first, second):
                assert torch.equal(a, b)
        else:
            with pytest.raises(RuntimeError, match="deterministic"):
                torch.autograd.grad(out.sum(), list(tensors.values()))
    finally:
        torch.use_deterministic_algorithms(previous)


def _torchvision_deform_conv2d():
    """torchvision.ops.deform_conv2d, or a skip saying why it cannot run here."""
    torchvision_ops = pytest.importorskip(
        "torchvision.ops", reason="torchvision is not installed (CI runs this in its venv with torchvision)")
    if not hasattr(torch.ops.torchvision, "deform_conv2d"):
        pytest.skip("torchvision is installed but its C++ ops did not load")
    return torchvision_ops.deform_conv2d


def _far_outside(offset):
    """A random fifth of the offsets moved to 10^2..10^4 pixels, either sign: about a third of the samples lie far
    outside the image, the others stay near it."""
    chosen = torch.rand_like(offset) < 0.2
    distance = 10 ** torch.empty_like(offset).uniform_(2, 4)
    return torch.where(chosen, offset.sign() * distance, offset)


def _strided(tensor):
    """The same values as a non-contiguous view: every other element of a buffer twice as wide."""
    buffer = tensor.new_empty(*tensor.shape[:-1], 2 * tensor.shape[-1])
    buffer[..., ::2] = tensor
    return buffer[..., ::2]


LAYOUTS = {
    "contiguous": lambda tensor: tensor,
    "strided": _strided,
    "channels-last": lambda tensor: tensor.contiguous(memory_format=torch.channels_last) if tensor.dim() == 4 else tensor,
}

TORCHVISION_CASES = {
    # name: (B, C_in, size, C_out, kernel, stride, padding, dilation, groups, offset_groups, mask, far, layout)
    "batch1-v2": (1, 4, 5, 4, 3, 1, 1, 1, 1, 1, True, False, "contiguous"),
    "batch1-v1-rect-kernel-far": (1, 3, (4, 6), 2, (2, 3), 1, (1, 0), 1, 1, 1, False, True, "contiguous"),
    "groups2-offset-groups2-stride2": (1, 4, (7, 6), 6, 3, 2, 1, 1, 2, 2, True, False, "contiguous"),
    "groups4-offset-groups2-rect-stride-v1": (1, 8, 6, 4, (3, 1), (2, 1), (0, 1), 1, 4, 2, False, False, "contiguous"),
    "offset-groups3-dilation-pad2": (1, 6, 7, 3, (2, 3), 1, (2, 1), (2, 1), 1, 3, True, True, "contiguous"),
    "groups3-dilation-v1": (1, 6, 6, 3, 2, (1, 2), 0, (1, 2), 3, 3, False, False, "contiguous"),
    "strided": (1, 4, (5, 6), 4, (2, 3), 1, 1, 1, 2, 2, True, True, "strided"),
    "channels-last": (1, 4, 5, 6, 3, 2, 1, 1, 2, 2, True, False, "channels-last"),
    # batch 33 kept tiny (3x3 image, 1x2 kernel): the Triton interpreter runs one program per image
    "batch33-far": (33, 2, 3, 2, (1, 2), 1, 0, 1, 1, 1, True, True, "contiguous"),
}


@pytest.mark.parametrize("case", TORCHVISION_CASES)
def test_matches_torchvision(differentiable, case):
    """Values and the five gradients in float64 against torchvision.ops.deform_conv2d, to float64 rounding."""
    backend, device = differentiable
    torchvision_deform_conv2d = _torchvision_deform_conv2d()
    (batch, channels, size, out_channels, kernel, stride, padding, dilation, groups, offset_groups, mask, far,
     layout) = TORCHVISION_CASES[case]
    args = _inputs(batch, channels, size, out_channels, kernel, stride, padding, dilation, groups, offset_groups, mask,
                   device=device)
    if far:
        args["offset"] = _far_outside(args["offset"])
    arrange = LAYOUTS[layout]
    args = {k: (arrange(v) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    if layout != "contiguous":
        assert not any(args[k].is_contiguous() for k in ("input", "offset", "mask"))
    expected_grads = _compare(args, backend, device, torch.float64, atol=1e-12, rtol=1e-12,
                              truth=(torchvision_deform_conv2d, device))
    for name, grad in expected_grads.items():  # not a case where every sample falls outside
        assert grad.count_nonzero() > 0, name


def test_large_batch_cuda_has_no_32_image_limit(fused):
    backend, device = fused
    if device.type != "cuda":
        pytest.skip("checks the CUDA batching on a GPU")
    args = _inputs(70, 4, 6, 4, offset_groups=2, device=device, dtype=torch.float32)
    _compare({k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}, backend, device)


def _bad(**changes):
    args = _inputs(2, 4, 6, 4, dtype=torch.float32)
    args.update(changes)
    return args


@pytest.mark.parametrize(
    "args, message",
    [
        (_bad(input=torch.randn(4, 6, 6)), "input must have 4 dimensions"),
        (_bad(input=torch.randint(0, 3, (2, 4, 6, 6))), "input must be a floating"),
        (_bad(offset=torch.randn(2, 17, 6, 6)), "offset has 17 channels"),
        (_bad(offset=torch.randn(2, 18, 5, 6)), "offset shape"),
        (_bad(offset=torch.randn(3, 18, 6, 6)), "offset shape"),
        (_bad(offset=torch.randn(2, 18, 6, 6, dtype=torch.float64)), "offset has dtype"),
        (_bad(weight=torch.randn(4, 3, 3, 3)), "weight shape"),
        (_bad(weight=torch.randn(3, 2, 3, 3)), "weight shape"),
        (_bad(mask=torch.rand(2, 8, 6, 6)), "mask shape"),
        (_bad(mask=torch.rand(2, 9, 6, 6, device="meta")), "mask is on meta"),
        (_bad(bias=torch.randn(5)), "bias has 5 elements"),
        (_bad(stride=0), "stride must be"),
        (_bad(padding=-1), "padding must be"),
        (_bad(dilation=(1, 0)), "dilation must be"),
        (_bad(input=torch.randn(2, 4, 1, 1), padding=0), "too small"),
        (_bad(offset=torch.randn(2, 36, 6, 6)), "offset_groups=2"),
    ],
)
def test_bad_input_names_the_argument(args, message):
    if "offset_groups=2" in message:
        args["input"] = torch.randn(2, 3, 6, 6)
        args["weight"] = torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match=message):
        ops.deform_conv2d(**args)


def test_deform_conv2d_module_with_zero_offsets_is_conv2d():
    module = ops.DeformConv2d(4, 6, 3, padding=1, groups=2, offset_groups=2)
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, groups=2)
    conv.load_state_dict(module.state_dict())
    x = torch.randn(2, 4, 7, 7)
    offset = torch.zeros(2, 36, 7, 7)
    torch.testing.assert_close(module(x, offset), conv(x))
    torch.testing.assert_close(module(x, offset, torch.ones(2, 18, 7, 7)), conv(x))
    assert "offset_groups=2" in repr(module)


def test_modulated_module_starts_as_plain_conv_and_learns_offsets():
    module = ops.ModulatedDeformConv2d(4, 5, 3, stride=2, padding=1, offset_groups=2, guide_channels=6)
    conv = torch.nn.Conv2d(4, 5, 3, stride=2, padding=1)
    conv.load_state_dict({k: v for k, v in module.state_dict().items() if not k.startswith("offset_conv")})
    x, guide = torch.randn(2, 4, 9, 9), torch.randn(2, 6, 9, 9)
    out = module(x, guide)
    torch.testing.assert_close(out, conv(x))
    out.square().sum().backward()
    assert module.offset_conv.weight.grad.abs().sum() > 0
