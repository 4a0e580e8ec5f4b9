"""predict_logits: sliding window vs whole image, exact count-averaging, multi-scale and flip."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastseg.engine.inference import inference_options, predict_logits, window_starts

K = 5


def pointwise_model() -> nn.Module:
    """Translation- and flip-equivariant: every output pixel depends on its input pixel only."""
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, K, 1)).eval()


class WindowMean(nn.Module):
    """Not translation-equivariant: every pixel gets the mean of its window's first channel (times k+1 in
    channel k), so a window's position changes its output."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, images):
        self.shapes.append(tuple(images.shape))
        mean = images[:, :1].mean((2, 3), keepdim=True).expand(-1, -1, *images.shape[-2:])
        return torch.cat([mean * (k + 1) for k in range(K)], 1)


def test_window_starts_cover_the_axis_and_end_at_the_border():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(8, 4, 4) == [0, 4]
    assert window_starts(3, 4, 2) == [0]
    assert window_starts(4, 4, 1) == [0]


@pytest.mark.parametrize(
    "size, crop, stride",
    [((16, 24), (8, 8), (8, 8)), ((16, 24), (8, 12), (5, 7)), ((13, 17), (6, 9), (4, 4)), ((10, 12), (16, 16), (8, 8))],
)
def test_slide_equals_whole_for_a_pointwise_model(size, crop, stride):
    model, images = pointwise_model(), torch.randn(2, 3, *size)
    with torch.no_grad():
        whole = predict_logits(model, images, K)
        slide = predict_logits(model, images, K, mode="slide", crop_size=crop, stride=stride)
    torch.testing.assert_close(slide, whole, rtol=1e-5, atol=1e-6)


def test_slide_count_averaging_is_exact_at_overlaps():
    # H=10, W=7, 4x4 windows every 3: rows start at 0, 3, 6 and columns at 0, 3 (hand-listed).
    images = torch.randn(2, 3, 10, 7, dtype=torch.float64)
    windows = [(top, left) for top in (0, 3, 6) for left in (0, 3)]
    total = torch.zeros(2, K, 10, 7, dtype=torch.float64)
    count = torch.zeros(10, 7, dtype=torch.float64)
    for top, left in windows:
        mean = images[:, 0, top : top + 4, left : left + 4].mean((1, 2))
        total[:, :, top : top + 4, left : left + 4] += (mean[:, None] * torch.arange(1, K + 1))[:, :, None, None]
        count[top : top + 4, left : left + 4] += 1
    model = WindowMean()
    slide = predict_logits(model, images, K, mode="slide", crop_size=(4, 4), stride=(3, 3))
    assert len(model.shapes) == len(windows)
    torch.testing.assert_close(slide, total / count, rtol=1e-12, atol=1e-12)


def test_slide_pads_small_images_to_the_crop_size():
    model, images = WindowMean(), torch.randn(1, 3, 5, 6)
    slide = predict_logits(model, images, K, mode="slide", crop_size=(8, 8), stride=(4, 4))
    assert model.shapes == [(1, 3, 8, 8)] and slide.shape == (1, K, 5, 6)
    # Zero padding: the window mean is the image's sum over the padded area.
    torch.testing.assert_close(slide[0, 0], images[0, 0].sum().div(64).expand(5, 6))


def test_one_view_is_the_whole_image_logits():
    model, images = pointwise_model(), torch.randn(2, 3, 12, 20)
    with torch.no_grad():
        assert torch.equal(predict_logits(model, images, K, scales=(1.0,), flip=False), model(images))


def test_flip_of_a_flip_equivariant_model_changes_nothing():
    model, images = pointwise_model(), torch.randn(2, 3, 12, 20)
    with torch.no_grad():
        flipped = predict_logits(model, images, K, flip=True)
        torch.testing.assert_close(flipped.softmax(1), model(images).softmax(1), rtol=1e-5, atol=1e-6)


def test_flip_averages_the_mirrored_view_of_a_non_equivariant_model():
    model = nn.Conv2d(3, K, (1, 3), padding=(0, 1)).eval()  # mixes left and right neighbours
    images = torch.randn(1, 3, 6, 9)
    with torch.no_grad():
        flipped = predict_logits(model, images, K, flip=True)
        expected = (model(images).softmax(1) + model(images.flip(-1)).flip(-1).softmax(1)) / 2
    torch.testing.assert_close(flipped.exp(), expected, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(flipped.softmax(1), model(images).softmax(1), atol=1e-3)


def test_multi_scale_averages_resized_probabilities():
    model, images = pointwise_model(), torch.randn(2, 3, 12, 16)
    scales = (0.5, 1.0, 1.5)
    with torch.no_grad():
        result = predict_logits(model, images, K, scales=scales, flip=True)
        probs = []
        for scale, size in zip(scales, [(6, 8), (12, 16), (18, 24)]):
            scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            for view in (scaled, scaled.flip(-1)):
                logits = model(view)
                logits = logits.flip(-1) if view is not scaled else logits
                probs.append(F.interpolate(logits, size=(12, 16), mode="bilinear", align_corners=False).softmax(1))
    expected = torch.stack(probs).mean(0)
    torch.testing.assert_close(result.exp(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(result.softmax(1), expected, rtol=1e-5, atol=1e-7)


def test_bad_options_are_named():
    model, images = pointwise_model(), torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="mode must be"):
        predict_logits(model, images, K, mode="tiles")
    with pytest.raises(ValueError, match="needs crop_size"):
        predict_logits(model, images, K, mode="slide")
    with pytest.raises(ValueError, match="expected num_classes=4"):
        predict_logits(model, images, 4)
    with pytest.raises(ValueError, match="at least one scale"):
        predict_logits(model, images, K, scales=())
    assert inference_options({"mode": "slide", "crop_size": [4, 4], "stride": None, "scales": [1, 2], "boundary": True}) == {
        "mode": "slide", "crop_size": [4, 4], "scales": (1.0, 2.0)
    }  # fmt: skip
