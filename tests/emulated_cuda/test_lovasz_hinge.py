"""lovasz_hinge's CUDA kernels on the emulated-CUDA layer: the fused forward (rows of at most
FUSED_MAX_PIXELS in fp16/bf16/fp32: errors, block radix sort in shared memory, block scan in one
kernel), the packed path (longer fp16/bf16/fp32 rows: 64-bit keys of row, error, pixel and flags,
one device-wide radix sort, the layer's stand-in for CUB, and a scan of the sorted keys), the sort
path (errors, PyTorch's sort, block scan; fp64), and the backward streaming multiply. Every forward
writes the gradient weights in pixel order.

Gradients are compared with the per-row loop on tie-free rows: with equal errors every order of the
tied pixels is a valid subgradient (see tests/ops/test_lovasz_hinge.py). The glue's stable sort keeps
tied pixels in pixel order, as lovasz_hinge_reference does, so on tied rows the gradients match that one.
"""
from __future__ import annotations

import pytest
import torch

from fastseg.ops.lovasz_hinge import lovasz_hinge_per_row, lovasz_hinge_reference

from .compare import DTYPES, check_every_order, on_device

pytestmark = pytest.mark.emulated_cuda

FUSED_MAX_PIXELS = 2**14  # kLovaszFusedMaxPixels of csrc/cuda/lovasz_hinge.h
GLOBAL_SCAN_TILE = 512 * 8  # kScanThreads * kGlobalScanItems of csrc/cuda/lovasz_hinge.cu
# Rows of the fused path (the training shape 97x97, the limit) and one just above it (the packed
# path in fp16/bf16/fp32, the sort path in fp64).
LONG_ROWS = {"97x97": 97 * 97, "at-limit": FUSED_MAX_PIXELS, "above-limit": FUSED_MAX_PIXELS + 1}

CASES = {
    # name: (rows, pixels, fraction positive, fraction valid)
    "random": (7, 300, 0.3, 0.8),
    "all-positive": (3, 50, 1.0, 0.9),
    "all-negative": (3, 50, 0.0, 0.9),
    "one-pixel": (5, 1, 0.5, 1.0),
    "three-tiles": (1, 1100, 0.2, 0.7),  # the block scan carries its total across 512-pixel tiles
}


def _tie_free_rows(rows, pixels, positive, valid, dtype):
    """logits (in dtype), labels, valid whose hinge errors are distinct within each row."""
    while True:
        logits = (2 * torch.randn(rows, pixels)).to(dtype)
        labels = torch.rand(rows, pixels) < positive
        errors = 1 - logits.double() * (2 * labels.double() - 1)
        if all(row.unique().numel() == pixels for row in errors):
            return logits, labels, torch.rand(rows, pixels) < valid


def _check(emulated, logits, labels, valid, reference=lovasz_hinge_per_row):
    reference_logits = logits.detach().double().requires_grad_()
    losses = reference(reference_logits, labels, valid)
    grad_loss = torch.randn_like(losses).to(logits.dtype)
    (grad_logits,) = torch.autograd.grad(losses, reference_logits, grad_loss.double())

    logits, labels, valid, grad_loss = on_device(emulated, logits, labels, valid, grad_loss)

    def run():
        got_losses, weights = emulated.lovasz_hinge(logits, labels, valid)
        return got_losses, emulated.lovasz_hinge_backward(grad_loss, weights)

    check_every_order(run, (losses, grad_logits), logits.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(emulated, case, dtype):
    rows, pixels, positive, valid = CASES[case]
    if dtype in (torch.float16, torch.bfloat16):
        pixels = min(pixels, 40)  # more distinct errors than 16-bit floats near 1 can hold would tie
    _check(emulated, *_tie_free_rows(rows, pixels, positive, valid, dtype))


def test_all_invalid_row_no_mask_and_non_contiguous(emulated):
    logits, labels, valid = _tie_free_rows(4, 90, 0.4, 0.8, torch.float32)
    valid[2] = False
    _check(emulated, logits, labels, valid)
    _check(emulated, logits, labels, None)
    _check(emulated, logits.t().contiguous().t(), labels, valid)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ties_match_the_vectorised_reference(emulated, dtype):
    """Rows with many equal errors (7 logit values, some errors exactly 0) over three scan tiles."""
    logits = (torch.randint(-3, 4, (3, 1100)) / 2).to(dtype)
    labels, valid = torch.rand(3, 1100) < 0.4, torch.rand(3, 1100) < 0.8
    _check(emulated, logits, labels, valid, reference=lovasz_hinge_reference)
    _check(emulated, logits, labels, None, reference=lovasz_hinge_reference)


def _distinct_exact_errors(rows, pixels, positive, valid):
    """Rows whose hinge errors are distinct and exact in fp32 and fp64: a random permutation of
    multiples of 2^-10 around 0 (both signs, so every key bit of the sort varies), logits built back
    from them."""
    errors = torch.stack([torch.randperm(pixels) for _ in range(rows)]).double() - pixels / 2
    errors = errors / 1024
    labels = torch.rand(rows, pixels) < positive
    logits = (1 - errors) * (2 * labels.double() - 1)
    return logits, labels, torch.rand(rows, pixels) < valid


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("valid", [0.9, 0.01], ids=["dense", "sparse"])
@pytest.mark.parametrize("row", LONG_ROWS)
def test_long_rows_distinct_errors(emulated, row, valid, dtype):
    """With ~1% valid pixels the union is ~100, so two valid pixels in the wrong order move their
    weights by ~1/100^2, far above the tolerance (with 90% valid, by ~1e-8 only)."""
    logits, labels, valid = _distinct_exact_errors(2, LONG_ROWS[row], 0.3, valid)
    _check(emulated, logits.to(dtype), labels, valid, reference=lovasz_hinge_reference)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("row", LONG_ROWS)
def test_long_rows_with_ties(emulated, row, dtype):
    """129 logit values (exact in every dtype), so most errors tie: the stable sort must keep tied
    pixels in pixel order as the reference does. Row 0 is all ignored, row 1 has no positive."""
    pixels = LONG_ROWS[row]
    logits = (torch.randint(-64, 65, (4, pixels)) / 16).to(dtype)
    labels, valid = torch.rand(4, pixels) < 0.2, torch.rand(4, pixels) < 0.9
    valid[0] = False
    labels[1] = False
    _check(emulated, logits, labels, valid, reference=lovasz_hinge_reference)
    _check(emulated, logits[2:], labels[2:], None, reference=lovasz_hinge_reference)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_many_long_rows_with_ties(emulated, dtype):
    """Nine rows (four row bits of the packed key) whose last scan tile is nearly full, quantised
    logits so that most errors tie (stable order), sparse valid pixels (a misplaced pixel moves the
    weights far above the tolerance), an all-ignored row and a row without positives."""
    rows, pixels = 9, 5 * GLOBAL_SCAN_TILE - 7
    logits = (torch.randint(-40, 41, (rows, pixels)) / 8).to(dtype)
    labels, valid = torch.rand(rows, pixels) < 0.3, torch.rand(rows, pixels) < 0.05
    valid[3] = False
    labels[5] = False
    _check(emulated, logits, labels, valid, reference=lovasz_hinge_reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("pixels", [31, 33, 511, 513, 2**14 - 1])
def test_fused_row_ends_with_ties(emulated, pixels, dtype):
    """Fused rows ending inside a warp's last 32 keys, with quantised logits (most errors tie in every
    radix digit), a row of all-equal errors (logit 0) and an all-ignored row: the per-warp ranking of
    the block sort must keep tied pixels in pixel order, which the gradients show."""
    logits = (torch.randint(-8, 9, (4, pixels)) / 4).to(dtype)
    labels, valid = torch.rand(4, pixels) < 0.3, torch.rand(4, pixels) < 0.9
    logits[1] = 0
    valid[3] = False
    _check(emulated, logits, labels, valid, reference=lovasz_hinge_reference)
    _check(emulated, logits[1:2], labels[1:2], None, reference=lovasz_hinge_reference)


@pytest.mark.parametrize("mask", [0xFFFFFFFF, 0x8F0F00F1], ids=["full", "partial"])
def test_emulated_match_any_sync(emulated, mask):
    """The layer's __match_any_sync: each lane of the mask gets the lanes of the mask whose value has
    its bits (all 64 of an int64: values also differ above bit 32), per warp of a 64-thread block."""
    values = torch.randint(0, 3, (64,)) + (torch.randint(0, 2, (64,)) << 40)
    got = emulated.match_any(values, mask)
    lanes = [lane for lane in range(32) if (mask >> lane) & 1]
    for t in range(64):
        warp, lane = t - t % 32, t % 32
        want = sum(1 << other for other in lanes if values[warp + other] == values[t]) if lane in lanes else 0
        assert got[t].item() == want, (t, hex(got[t].item()), hex(want))
