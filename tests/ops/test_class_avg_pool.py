"""class_avg_pool and downsample_labels: every fused backend against the PyTorch reference."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

from fastseg import ops
from fastseg.ops.class_avg_pool import CLASS_AVG_POOL, class_avg_pool_reference

IGNORE = 255


def _labels(batch, height, width, num_classes, device, present=None, ignored=0.2):
    """Random labels drawn from `present` classes (default: all but the last two), with ignored pixels."""
    present = present if present is not None else num_classes - 2
    labels = torch.randint(0, present, (batch, height, width), device=device)
    labels[torch.rand(batch, height, width, device=device) < ignored] = IGNORE
    return labels


CASES = {
    # name: (B, C, H, W, K)
    "absent-classes": (3, 37, 11, 13, 7),
    "batch1": (1, 16, 9, 9, 19),
    "one-pixel": (2, 5, 1, 1, 4),
    "many-classes": (2, 8, 16, 20, 150),
    "large": (2, 64, 33, 47, 19),
}


def _compare(backend, device, features, labels, num_classes, dtype=torch.float32, atol=1e-5, rtol=1e-5):
    features = features.to(device=device, dtype=dtype).requires_grad_()
    labels = labels.to(device)
    expected_features = features.detach().double().requires_grad_()
    centers, counts = ops.class_avg_pool(features, labels, num_classes, IGNORE, backend=backend)
    expected, expected_counts = class_avg_pool_reference(expected_features, labels, num_classes, IGNORE)
    assert centers.dtype == dtype and centers.shape == expected.shape
    assert counts.dtype == torch.int64
    torch.testing.assert_close(counts, expected_counts)
    torch.testing.assert_close(centers.double(), expected, atol=atol, rtol=rtol)
    grad = torch.randn_like(expected)
    (grad_features,) = torch.autograd.grad(centers, features, grad.to(dtype))
    (expected_grad,) = torch.autograd.grad(expected, expected_features, grad)
    torch.testing.assert_close(grad_features.double(), expected_grad, atol=atol, rtol=rtol)


@pytest.mark.parametrize("case", CASES)
def test_matches_reference(fused, case):
    backend, device = fused
    batch, channels, height, width, num_classes = CASES[case]
    features = torch.randn(batch, channels, height, width)
    labels = _labels(batch, height, width, num_classes, "cpu")
    _compare(backend, device, features, labels, num_classes)


def test_all_ignored_image_gives_zero_centers(fused):
    backend, device = fused
    features = torch.randn(2, 6, 7, 5, device=device)
    labels = _labels(2, 7, 5, 4, device)
    labels[1] = IGNORE
    centers, counts = ops.class_avg_pool(features, labels, 4, IGNORE, backend=backend)
    assert torch.all(counts[1] == 0) and torch.all(centers[1] == 0)
    _compare(backend, device, features, labels, 4)


def test_empty_batch_and_empty_image(fused):
    backend, device = fused
    centers, counts = ops.class_avg_pool(torch.randn(0, 3, 4, 5, device=device),
                                         torch.zeros(0, 4, 5, dtype=torch.long, device=device), 6, backend=backend)
    assert centers.shape == (0, 6, 3) and counts.shape == (0, 6)
    centers, counts = ops.class_avg_pool(torch.randn(2, 3, 0, 5, device=device),
                                         torch.zeros(2, 0, 5, dtype=torch.long, device=device), 6, backend=backend)
    assert centers.shape == (2, 6, 3) and not centers.any() and not counts.any()


def test_non_contiguous_and_channels_last(fused):
    backend, device = fused
    base = torch.randn(2, 9, 12, 20)
    labels = _labels(2, 10, 12, 5, "cpu")
    sliced = base.transpose(2, 3)[:, :, :10]  # (2, 9, 10, 12) non-contiguous view
    assert not sliced.is_contiguous()
    _compare(backend, device, sliced, labels, 5)
    channels_last = torch.randn(2, 9, 10, 12).to(memory_format=torch.channels_last)
    _compare(backend, device, channels_last, labels, 5)


def test_float64_and_low_precision(fused):
    backend, device = fused
    features = torch.randn(2, 40, 10, 14)  # two fp64 channel blocks of the Triton kernel
    labels = _labels(2, 10, 14, 6, "cpu")
    _compare(backend, device, features, labels, 6, dtype=torch.float64, atol=1e-12, rtol=1e-12)
    for dtype in (torch.float16, torch.bfloat16):
        # inputs rounded to the low precision; the sums accumulate in fp32, one rounding at the end
        rounded = features.to(dtype).float()
        _compare(backend, device, rounded, labels, 6, dtype=dtype, atol=2e-2, rtol=2e-2)


def test_gradcheck(differentiable):
    backend, device = differentiable
    features = torch.randn(2, 3, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    labels = _labels(2, 4, 5, 4, device)
    assert torch.autograd.gradcheck(lambda x: ops.class_avg_pool(x, labels, 4, IGNORE, backend=backend)[0], (features,))


def test_opcheck(fused):
    backend, device = fused
    features = torch.randn(2, 5, 6, 7, device=device, requires_grad=True)
    labels = _labels(2, 6, 7, 4, device)
    opcheck(CLASS_AVG_POOL.pair(backend).forward, (features, labels, 4, IGNORE))


def test_compile_fullgraph_matches_eager(fused):
    backend, device = fused
    features = torch.randn(2, 8, 9, 10, device=device, requires_grad=True)
    labels = _labels(2, 9, 10, 5, device)

    def loss(x):
        centers, counts = ops.class_avg_pool(x, labels, 5, IGNORE, backend=backend)
        return (centers.square().sum(-1) * counts).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    eager_value, (eager_grad,) = loss(features), torch.autograd.grad(loss(features), features)
    value = compiled(features)
    (grad,) = torch.autograd.grad(value, features)
    torch.testing.assert_close(value, eager_value)
    torch.testing.assert_close(grad, eager_grad)


def test_compile_inductor_cpu():
    """Inductor (not only aot_eager) around the C++ op: no graph break, same values."""
    if not ops.build_info()["loaded"]:
        pytest.skip("fastseg._C is not usable: " + ops.build_info()["reason"])
    features = torch.randn(2, 8, 9, 10, requires_grad=True)
    labels = _labels(2, 9, 10, 5, "cpu")

    def fn(x):
        return ops.class_avg_pool(torch.relu(x) * 2, labels, 5, IGNORE, backend="cpu")[0].sum(-1)

    compiled = torch.compile(fn, fullgraph=True)
    torch.testing.assert_close(compiled(features), fn(features))


@pytest.mark.parametrize(
    "features, labels, message",
    [
        (torch.randn(2, 3, 4, 5), torch.zeros(3, 4, 5, dtype=torch.long), "labels batch size"),
        (torch.randn(2, 3, 4, 5), torch.zeros(2, 4, 6, dtype=torch.long), "spatial size"),
        (torch.randn(2, 3, 4, 5), torch.full((2, 4, 5), 7), "outside"),
        (torch.randn(2, 3, 4, 5), torch.full((2, 4, 5), -1), "outside"),
        (torch.randint(0, 3, (2, 3, 4, 5)), torch.zeros(2, 4, 5, dtype=torch.long), "features must be a floating"),
        (torch.randn(2, 3, 4, 5), torch.zeros(2, 4, 5), "labels must be an integer"),
        (torch.randn(3, 4, 5), torch.zeros(2, 4, 5, dtype=torch.long), "features must have 4 dimensions"),
        (torch.randn(2, 3, 4, 5), torch.zeros(2, 20, dtype=torch.long), "labels must have 3 dimensions"),
        (torch.randn(2, 3, 4, 5), torch.zeros(2, 4, 5, dtype=torch.long, device="meta"),
         "labels is on meta but features is on cpu"),
        (torch.randn(2, 0, 4, 5), torch.zeros(2, 4, 5, dtype=torch.long), "at least one channel"),
    ],
)
def test_bad_input_names_the_argument(features, labels, message):
    with pytest.raises(ValueError, match=message):
        ops.class_avg_pool(features, labels, 5, IGNORE)


def test_kernels_never_read_outside_for_bad_labels(fused):
    """Called directly (as under torch.compile, which skips the eager label check), every backend's
    kernels follow one rule: a label outside [0, K) counts nowhere, as in the reference."""
    backend, device = fused
    features = torch.randn(1, 4, 3, 5, device=device)
    labels = torch.randint(0, 3, (1, 3, 5), device=device)
    labels[0, 0, :3] = torch.tensor([-7, 3, 10**9])
    centers, counts = CLASS_AVG_POOL.pair(backend).forward(features, labels, 3, IGNORE)
    expected, expected_counts = class_avg_pool_reference(features, labels, 3, IGNORE)
    torch.testing.assert_close(counts, expected_counts)
    torch.testing.assert_close(centers, expected)
    if device.type == "cpu":  # the one validation, in the front end (a device-side assert on a GPU)
        with pytest.raises(ValueError, match="labels holds -7, outside"):
            ops.class_avg_pool(features, labels, 3, IGNORE, backend=backend)


@pytest.mark.parametrize("size", [(7, 9), (13, 13), (97, 97), (1, 1), (40, 100)])
def test_downsample_labels_is_nearest(size):
    labels = torch.randint(0, 19, (2, 97, 131))
    labels[:, :5] = IGNORE
    out = ops.downsample_labels(labels, size)
    expected = F.interpolate(labels[:, None].double(), size=size, mode="nearest")[:, 0].long()
    assert out.dtype == labels.dtype and out.shape == (2, *size)
    assert torch.equal(out, expected)


def test_module_downsamples_then_pools():
    module = ops.ClassAvgPool(num_classes=6)
    features = torch.randn(2, 4, 12, 16)
    labels = torch.randint(0, 6, (2, 48, 64))
    centers, counts = module(features, labels)
    expected = class_avg_pool_reference(features, ops.downsample_labels(labels, (12, 16)), 6)
    torch.testing.assert_close(centers, expected[0])
    assert "num_classes=6" in repr(module)
