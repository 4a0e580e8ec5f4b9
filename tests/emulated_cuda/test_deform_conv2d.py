"""deform_conv2d's CUDA kernels and glue on the emulated-CUDA layer: the fused small-channel path
(groups == 1, shared memory fits: one-launch forward, one-launch backward plus the grad weight
reduction) and the generic path (channels-last im2col into pixel-major columns, a warp's lanes on the channels of
a sample, runs split at group boundaries; one backward pass for grad_input with atomic adds and the
offset and mask gradients, each sample computed once per offset group; GEMMs on transposed views of
the columns into the output, bias as the GEMM's C operand; the batch in chunks by workspace budget)."""
from __future__ import annotations

import math

import pytest
import torch

from fastseg.ops.deform_conv2d import deform_conv2d_reference, output_size

from .compare import DTYPES, check_every_order, on_device
from .extension import ORDERS, thread_order

pytestmark = pytest.mark.emulated_cuda

CASES = {
    # name: (B, C_in, (H, W), C_out, (kh, kw), stride, padding, dilation, groups, offset groups, mask)
    # groups == 1 and small channels: the fused path (64-pixel tiles; the backward's blocks take at least
    # 4 tiles each, so every case below with more than one tile loops over tiles in one block)
    "plain": (2, 4, (7, 7), 6, (3, 3), 1, 1, 1, 1, 1, True),
    "no-mask": (2, 4, (7, 7), 6, (3, 3), 1, 1, 1, 1, 1, False),
    "stride2-pad0": (2, 3, (9, 8), 5, (3, 3), 2, 0, 1, 1, 1, True),
    "dilation2-batch1": (1, 4, (9, 9), 4, (3, 3), 1, 2, 2, 1, 1, True),
    "partial-tile-offset-groups2": (2, 4, (9, 10), 7, (3, 3), 1, 1, 1, 1, 2, True),  # 90 pixels: 64 + 26
    "rect-kernel-stride-dilation": (3, 2, (8, 11), 3, (2, 3), (1, 2), (1, 0), (2, 1), 1, 1, False),
    # 3 images x 3 tiles (156 pixels: 64 + 64 + 28): 3 backward blocks of 3 tiles, 3 partial sums
    "several-blocks": (3, 2, (12, 13), 3, (3, 3), 1, 1, 1, 1, 1, True),
    "one-pixel": (2, 3, (1, 1), 2, (1, 1), 1, 0, 1, 1, 1, True),
    # fused forward and backward, a warp's lanes on the channels of a sample's offset group: 36 (lanes
    # loop: 32 + 4), 20 (past a half warp), 4 per group with 2 offset groups
    "group-channels-36": (2, 36, (5, 6), 12, (3, 3), 1, 1, 1, 1, 1, True),
    "group-channels-20": (2, 20, (6, 7), 6, (3, 3), 1, 1, 1, 1, 1, False),
    "offset-groups2-channels8": (2, 8, (7, 6), 5, (3, 3), 1, 1, 1, 1, 2, True),
    # the fused channel pass takes V adjacent channels per lane (32 / V lanes per sample, V samples per
    # warp step): four when the channels per offset group are a multiple of 4 (plain, dilation2-batch1,
    # the 36, 20 and 8 above; 49 pixels: the last step's other three quarter-warps idle), two when
    # they are even otherwise (partial-tile-offset-groups2, rect-kernel-stride-dilation, several-blocks,
    # and: 34, lanes loop 32 + 2; 6 per offset group of 12), one when they are odd: 33 (lanes loop
    # 32 + 1), and 3 per group with an even channel count (6, 2 offset groups)
    "even-channels-34": (2, 34, (5, 6), 5, (3, 3), 1, 1, 1, 1, 1, True),
    "offset-groups2-channels6": (2, 12, (5, 7), 4, (3, 3), 1, 1, 1, 1, 2, False),
    "odd-channels-33": (2, 33, (5, 6), 5, (3, 3), 1, 1, 1, 1, 1, True),
    "offset-groups2-odd-group-channels": (2, 6, (5, 7), 4, (3, 3), 1, 1, 1, 1, 2, False),
    # fp32: fused forward (its 50228 floats of shared memory fit 227 KB = 58112 floats), generic
    # backward (83172 do not)
    "fused-forward-only": (1, 48, (5, 6), 48, (3, 3), 1, 1, 1, 1, 1, True),
    # the generic path: groups > 1, or channels whose kernels and tile exceed shared memory
    "groups2-offset-groups2-rect": (2, 4, (6, 9), 6, (2, 3), 1, (1, 0), (2, 1), 2, 2, True),
    "groups2-offset-groups4": (2, 8, (5, 6), 4, (3, 3), 1, 1, 1, 2, 4, True),
    "groups4-offset-groups1": (3, 8, (6, 5), 8, (3, 3), 1, 1, 1, 4, 1, False),
    "large-channels": (2, 96, (4, 3), 8, (3, 3), 1, 1, 1, 1, 1, True),
    # generic path, a warp's lanes on the channels of a sample's offset group, split at the group
    # boundaries: 72 channels (lanes loop 32 + 32 + 8); groups of 40 (32 + 8); groups of 36 with offset
    # groups of 24, so that offset group 1 spans two groups (runs of 12 and 12)
    "large-channels-72": (2, 72, (4, 5), 6, (3, 3), 1, 1, 1, 1, 1, True),
    "groups2-channels40-offset-groups2": (2, 80, (4, 4), 4, (3, 3), 1, 1, 1, 2, 2, True),
    "groups2-channels36-offset-groups3": (3, 72, (3, 4), 4, (3, 3), 1, 1, 1, 2, 3, False),
    # the generic path takes V adjacent channels per lane (32 V per warp step), the largest of 4, 2, 1
    # that divides the channels per group and per offset group: four for 96 channels, groups of 40
    # (lanes loop 128 with 10 lanes) and groups of 36 with offset groups of 24 above; two for the
    # groups of 2 above, 98 channels (64 + 34), groups of 6 (offset groups of 12), offset groups of 6
    # (groups of 12); one when either is odd: 97 channels (lanes loop 32 x 3 + 1), groups of 3
    # (offset groups of 6), offset groups of 3 (groups of 6)
    "large-even-channels-98": (2, 98, (4, 3), 8, (3, 3), 1, 1, 1, 1, 1, False),
    "groups2-channels6": (2, 12, (5, 6), 4, (3, 3), 1, 1, 1, 2, 1, True),
    "groups2-channels12-offset-groups4": (2, 24, (4, 5), 4, (3, 3), 1, 1, 1, 2, 4, True),
    "large-odd-channels-97": (2, 97, (4, 3), 8, (3, 3), 1, 1, 1, 1, 1, True),
    "groups2-odd-group-channels": (2, 6, (5, 6), 4, (3, 3), 1, 1, 1, 2, 1, True),
    "groups2-odd-offset-group-channels": (2, 12, (4, 5), 4, (3, 3), 1, 1, 1, 2, 4, False),
}


def _inputs(batch, channels, size, out_channels, kernel, stride, padding, dilation, groups, offset_groups,
            with_mask, dtype):
    """Random input; offsets within 6 pixels (many samples fall outside the image), multiples of 1/16
    (exact in bf16) but never whole, since the sampling derivative has a kink at whole positions;
    mask in (0, 1)."""
    pair = torch.nn.modules.utils._pair
    stride, padding, dilation = pair(stride), pair(padding), pair(dilation)
    out_h, out_w = output_size(*size, kernel, stride, padding, dilation)
    taps = kernel[0] * kernel[1]
    offset_shape = (batch, 2 * offset_groups * taps, out_h, out_w)
    tensors = dict(
        input=torch.randn(batch, channels, *size),
        offset=torch.randint(-6, 6, offset_shape) + torch.randint(1, 16, offset_shape) / 16,
        weight=torch.randn(out_channels, channels // groups, *kernel) / math.sqrt(channels // groups * taps),
        mask=torch.rand(batch, offset_groups * taps, out_h, out_w) if with_mask else None,
        bias=torch.randn(out_channels),
    )
    return {k: None if v is None else v.to(dtype) for k, v in tensors.items()}, (stride, padding, dilation)


def _channels_last_at(emulated, tensor, offset):
    """A channels_last copy of `tensor` in device memory, `offset` elements into its buffer (1: not
    aligned to a pair of elements; 2: to a pair, not to four)."""
    batch, channels, height, width = tensor.shape
    buffer = emulated.to_device(torch.zeros(offset + tensor.numel(), dtype=tensor.dtype))
    view = buffer[offset:].view(batch, height, width, channels).permute(0, 3, 1, 2)
    view.copy_(tensor)
    return view


def _check(emulated, tensors, geometry, input_offset=None):
    dtype = tensors["input"].dtype
    names = [k for k, v in tensors.items() if v is not None]
    reference = {k: v.detach().double().requires_grad_() for k, v in tensors.items() if v is not None}
    output = deform_conv2d_reference(reference["input"], reference["offset"], reference["weight"],
                                     reference.get("bias"), *geometry, reference.get("mask"))
    grad_output = torch.randn_like(output).to(dtype)
    grads = dict(zip(names, torch.autograd.grad(output, [reference[k] for k in names], grad_output.double())))
    order = ["input", "offset", "weight", "mask", "bias"]
    expected = [output] + [grads[k] for k in order if k in grads]
    t = dict(zip(tensors, on_device(emulated, *tensors.values())))
    if input_offset is not None:
        t["input"] = _channels_last_at(emulated, tensors["input"], input_offset)
    (grad_output,) = on_device(emulated, grad_output)

    def run():
        got = emulated.deform_conv2d(t["input"], t["offset"], t["weight"], t["mask"], t["bias"], *geometry)
        backward = emulated.deform_conv2d_backward(grad_output, t["input"], t["offset"], t["weight"], t["mask"],
                                                   *geometry)
        return [got] + [g for k, g in zip(order, backward) if k in grads]

    # col2im scatters grad_input with atomic adds: only it depends on the thread order
    bitwise = [name != "input" for name in ["output"] + [k for k in order if k in grads]]
    check_every_order(run, expected, dtype, deterministic=bitwise, atol_of_max=True)


@pytest.mark.parametrize("case", CASES)
def test_matches_reference(emulated, case):
    _check(emulated, *_inputs(*CASES[case], dtype=torch.float32))


@pytest.mark.parametrize("case", ["partial-tile-offset-groups2", "groups2-offset-groups4",
                                  "groups2-channels40-offset-groups2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes_and_non_contiguous(emulated, dtype, case):
    """Every dtype on the fused path and on the generic one."""
    tensors, geometry = _inputs(*CASES[case], dtype=dtype)
    tensors["input"] = tensors["input"].transpose(2, 3).contiguous().transpose(2, 3)  # not contiguous
    _check(emulated, tensors, geometry)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("case", ["no-mask", "several-blocks", "group-channels-36", "offset-groups2-channels8"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fused_tensor_core_products(emulated, dtype, case, bias):
    """fp16/bf16 on the fused path, whose products run on (emulated) wmma tiles of 16: C_out (6, 3, 12,
    5) and R = C*taps + 1 (37, 19, 325, 73) padded to 16, partial pixel tiles, mask and no mask, one
    and several tiles per backward block."""
    tensors, geometry = _inputs(*CASES[case], dtype=dtype)
    if not bias:
        tensors["bias"] = None
    _check(emulated, tensors, geometry)


@pytest.mark.parametrize("case", ["plain", "no-mask", "stride2-pad0", "groups2-offset-groups4", "large-channels-72"])
def test_without_bias(emulated, case):
    """No bias: the fused forward's bias row carries zeros; the generic forward GEMM is a plain batched
    product into the output."""
    tensors, geometry = _inputs(*CASES[case], dtype=torch.float32)
    tensors["bias"] = None
    _check(emulated, tensors, geometry)


@pytest.mark.parametrize("images_per_chunk", [1, 2])
@pytest.mark.parametrize("case", ["groups2-channels36-offset-groups3", "large-channels-72"])
def test_generic_chunks(emulated, monkeypatch, case, images_per_chunk):
    """The generic path in several chunks of the batch (a workspace budget of one or two images'
    forward columns; the backward's budget also holds the grad columns: one image per chunk)."""
    batch, channels, size, out_channels, kernel, stride, padding, dilation = CASES[case][:8]
    pair = torch.nn.modules.utils._pair
    out_h, out_w = output_size(*size, kernel, pair(stride), pair(padding), pair(dilation))
    column_bytes = channels * kernel[0] * kernel[1] * out_h * out_w * 4
    monkeypatch.setenv("FASTSEG_DEFORM_CONV2D_WORKSPACE_BYTES", str(images_per_chunk * column_bytes))
    tensors, geometry = _inputs(*CASES[case], dtype=torch.float32)
    _check(emulated, tensors, geometry)


@pytest.mark.parametrize("case", ["group-channels-36", "groups2-channels40-offset-groups2"])
def test_channels_last_input(emulated, case):
    """An input already channels_last: both paths read it as it lies (the glue's NHWC copy is a no-op)."""
    tensors, geometry = _inputs(*CASES[case], dtype=torch.float32)
    tensors["input"] = tensors["input"].contiguous(memory_format=torch.channels_last)
    _check(emulated, tensors, geometry)


@pytest.mark.parametrize("case", ["even-channels-34", "offset-groups2-channels6", "odd-channels-33",
                                  "groups2-channels6", "groups2-channels12-offset-groups4",
                                  "groups2-odd-group-channels"])
def test_channel_widths_bf16(emulated, case):
    """bf16 (four channels per lane: 8-byte loads) through the narrower channel widths of both paths:
    fused two (34 channels, offset groups of 6) and one (33), generic two (groups of 6, offset groups
    of 6) and one (groups of 3); the fours run in bf16 in test_fused_tensor_core_products (fused) and
    test_dtypes_and_non_contiguous (generic), every case in fp32 in test_matches_reference."""
    _check(emulated, *_inputs(*CASES[case], dtype=torch.bfloat16))


@pytest.mark.parametrize("input_offset", [1, 2], ids=["offset1", "offset2"])
@pytest.mark.parametrize("case", ["plain", "group-channels-36", "groups2-channels40-offset-groups2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_channels_last_input_not_aligned(emulated, dtype, case, input_offset):
    """A channels_last input one or two elements into its buffer, read as it lies: channel counts that
    are multiples of 4, but four-channel loads would be misaligned, so the channel loops (fused and
    generic) take two channels per lane at offset 2, one at offset 1 (pair loads misaligned too)."""
    tensors, geometry = _inputs(*CASES[case], dtype=dtype)
    _check(emulated, tensors, geometry, input_offset=input_offset)


@pytest.mark.parametrize("order", ORDERS)
def test_emulated_float2_atomic_add(emulated, order):
    """The layer's float2 atomicAdd (sm_90's vector atomic, the fused backward's fp32 grad_input
    pairs): 64 threads add pairs onto 10 pairs of a vector, many onto the same pair; each element
    gets every value aimed at it (multiples of 1/16: exact in any order)."""
    target = torch.randint(-64, 64, (20,)) / 16
    index = torch.randint(0, 10, (64,)) * 2
    values = torch.randint(-64, 64, (128,)) / 16
    expected = target.index_add(0, index, values[0::2]).index_add(0, index + 1, values[1::2])
    with thread_order(order, 1):
        got = emulated.atomic_add_float2(target, index, values)
    assert torch.equal(got, expected)


def test_emulated_float2_atomic_add_misaligned(emulated):
    """A float2 atomic at an odd element (4 bytes past an 8-byte boundary) fails the launch, as on a GPU."""
    with pytest.raises(RuntimeError, match="float2 atomicAdd"):
        emulated.atomic_add_float2(torch.zeros(8), torch.tensor([0, 3]), torch.ones(4))


@pytest.mark.parametrize("ldm", [16, 24, 40])
@pytest.mark.parametrize("c_col_major", [False, True], ids=["c-row", "c-col"])
@pytest.mark.parametrize("b_col_major", [False, True], ids=["b-row", "b-col"])
@pytest.mark.parametrize("a_col_major", [False, True], ids=["a-row", "a-col"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_emulated_wmma(emulated, dtype, a_col_major, b_col_major, c_col_major, ldm):
    """The layer's nvcuda::wmma (the fused path's 16-bit products): load a, b and c in every layout
    with a leading dimension ldm, a x b + c, store: products exact, summed in fp32 (17 terms)."""
    a, b = torch.randn(16, 16).to(dtype), torch.randn(16, 16).to(dtype)
    c = torch.randn(16, 16)
    got = emulated.wmma_product(a, b, c, a_col_major, b_col_major, c_col_major, ldm)
    expected = a.double() @ b.double() + c.double()
    bound = 17 * 2.0**-24 * (a.double().abs() @ b.double().abs() + c.double().abs())
    assert ((got.double() - expected).abs() <= bound).all()


def test_emulated_wmma_misaligned_ldm(emulated):
    """A 16-bit ldm that is not a multiple of 8 elements (16 bytes) fails the launch, as on a GPU."""
    a = torch.randn(16, 16).half()
    with pytest.raises(RuntimeError, match="wmma"):
        emulated.wmma_product(a, a, torch.randn(16, 16), False, False, False, 20)
