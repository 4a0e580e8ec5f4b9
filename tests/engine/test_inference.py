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


def mmseg_slide_inference(model: nn.Module, images: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """mmsegmentation's EncoderDecoder.slide_inference, line for line (one batch, logits at window size)."""
    (h_stride, w_stride), (h_crop, w_crop) = stride, crop
    batch_size, _, h_img, w_img = images.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = images.new_zeros((batch_size, K, h_img, w_img))
    count_mat = images.new_zeros((batch_size, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * h_stride, w_idx * w_stride
            y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            crop_seg_logit = model(images[:, :, y1:y2, x1:x2])
            preds += F.pad(crop_seg_logit, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
            count_mat[:, :, y1:y2, x1:x2] += 1
    assert (count_mat == 0).sum() == 0
    return preds / count_mat


@pytest.mark.parametrize("size", [(5, 6), (5, 13), (11, 6)])
def test_slide_runs_patches_smaller_than_the_crop_as_they_are_like_mmseg(size):
    model, images = WindowMean(), torch.randn(2, 3, *size, dtype=torch.float64)
    slide = predict_logits(model, images, K, mode="slide", crop_size=(8, 8), stride=(4, 4))
    assert all(shape[2] <= size[0] and shape[3] <= size[1] for shape in model.shapes), "no window is padded"
    torch.testing.assert_close(slide, mmseg_slide_inference(WindowMean(), images, (8, 8), (4, 4)), rtol=1e-12, atol=1e-12)
    if size == (5, 6):
        assert model.shapes == [(2, 3, 5, 6)]
        # The window is the whole image: its mean, not a zero-padded sum / 64.
        torch.testing.assert_close(slide[:, 0], images[:, 0].mean((1, 2))[:, None, None].expand(2, *size))


def test_slide_stride_larger_than_the_crop_is_an_error():
    with pytest.raises(ValueError, match="uncovered"):
        predict_logits(WindowMean(), torch.randn(1, 3, 16, 16), K, mode="slide", crop_size=(4, 4), stride=(4, 5))


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
