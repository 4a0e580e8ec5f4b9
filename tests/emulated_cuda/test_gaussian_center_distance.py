"""gaussian_center_distance's CUDA kernels (forward; backward in one launch: one pass per pixel tile and
channel group over class chunks, per-slice center sums register-tiled 4 classes x 4 channels, the last
block per (image, group, chunk) adding the slices' sums) on the emulated-CUDA layer (132 SMs: the
backward plans about 3 x 132 blocks over the batch, one pixel slice of 128-pixel tiles each)."""
from __future__ import annotations

import pytest
import torch

from fastseg.ops.gaussian_center_distance import gaussian_center_distance_reference

from .compare import DTYPES, check_every_order, on_device

pytestmark = pytest.mark.emulated_cuda

DELTA = 10.0
CASES = {
    # name: (B, C', H, W, K)
    "cityscapes-like": (2, 16, 7, 9, 19),  # two class chunks of 16
    "batch1": (1, 8, 9, 9, 5),
    "one-pixel": (2, 5, 1, 1, 4),
    "one-class": (2, 6, 7, 9, 1),
    "K150": (1, 3, 4, 5, 150),
    "many-pixels": (1, 2, 17, 40, 2),  # several 128-pixel tiles
    "two-channel-groups": (2, 40, 6, 7, 18),  # backward registers hold 32 channels: two groups, two chunks
    # K and C' not multiples of the 4 x 4 center-sum tile nor of the 16-class chunk / 32-channel group;
    # last chunks of 7 and 13 classes (2 and 4 class quads; 19 and 150 give 1 and 2)
    "ragged-tiles": (2, 37, 6, 7, 23),
    "three-channel-groups": (1, 70, 5, 6, 29),
    # 15 tiles per image, one slice each: the last block of each (image, group, chunk) adds 15 slots
    "many-slices": (2, 37, 40, 48, 19),
}
# 60 tiles per image over 9 images: 44 blocks wanted per image, so 30 slices of 2 tiles (the second tile
# adds into the block's slot), each last block adding 30 slots
MULTI_TILE_SLICES = (9, 5, 60, 128, 3)


def _inputs(batch, channels, height, width, num_classes):
    """Embeddings ~ N(0, 1); centers are embeddings of random pixels plus noise (phi from ~0 to ~1);
    margins in [-0.5, 0.5]; a tenth of the pixels sit exactly on their image's first center."""
    embeddings = torch.randn(batch, channels, height, width)
    flat = embeddings.flatten(2)
    picks = torch.randint(0, height * width, (batch, num_classes))
    centers = torch.gather(flat, 2, picks[:, None, :].expand(-1, channels, -1)).transpose(1, 2)
    centers = centers + 0.3 * torch.randn_like(centers)
    exact = torch.rand(batch, height * width) < 0.1
    flat.transpose(1, 2)[exact] = centers[:, :1].expand(-1, height * width, -1)[exact]
    return embeddings, centers, torch.rand(batch, num_classes) - 0.5


def _check(emulated, embeddings, centers, margins):
    dtype = embeddings.dtype
    reference_inputs = [t.detach().double().requires_grad_() for t in (embeddings, centers, margins)]
    phi = gaussian_center_distance_reference(*reference_inputs, DELTA)
    grad_phi = torch.randn_like(phi).to(dtype)
    grads = torch.autograd.grad(phi, reference_inputs, grad_phi.double())

    embeddings, centers, margins, grad_phi = on_device(emulated, embeddings, centers, margins, grad_phi)

    def run():
        got = emulated.gaussian_center_distance(embeddings, centers, margins, DELTA)
        return (got, *emulated.gaussian_center_distance_backward(grad_phi, embeddings, centers, margins, DELTA))

    check_every_order(run, (phi, *grads), dtype, atol_of_max=True)


@pytest.mark.parametrize("case", CASES)
def test_matches_reference(emulated, case):
    _check(emulated, *_inputs(*CASES[case]))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes_and_non_contiguous(emulated, dtype):
    embeddings, centers, margins = (t.to(dtype) for t in _inputs(2, 7, 9, 6, 18))
    _check(emulated, embeddings.transpose(2, 3), centers, margins)


def test_slices_of_several_tiles(emulated):
    _check(emulated, *_inputs(*MULTI_TILE_SLICES))


def test_consecutive_calls(emulated):
    """The arrival counters are left at zero by each backward: calls of other shapes (other counters,
    other slice counts) in between, and a repeat of the first shape, all match the reference."""
    for shape in ((2, 37, 6, 7, 23), (1, 5, 40, 48, 40), (2, 37, 6, 7, 23)):
        embeddings, centers, margins = _inputs(*shape)
        inputs = [t.double().requires_grad_() for t in (embeddings, centers, margins)]
        phi = gaussian_center_distance_reference(*inputs, DELTA)
        grad_phi = torch.randn_like(phi)
        expected = torch.autograd.grad(phi, inputs, grad_phi)
        device = on_device(emulated, embeddings, centers, margins, grad_phi.float())
        got = emulated.gaussian_center_distance_backward(device[3], *device[:3], DELTA)
        for name, value, want in zip(("embeddings", "centers", "margins"), got, expected):
            largest = max(1.0, want.abs().max().item())
            torch.testing.assert_close(value.double(), want, atol=1e-5 * largest, rtol=1e-5,
                                       msg=lambda text: f"{shape} grad {name}: {text}")
