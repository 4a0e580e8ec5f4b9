"""Test-time inference: whole-image or sliding-window, multi-scale and horizontal flip.

The semantics are mmsegmentation's: a sliding window of ``crop_size`` moves by ``stride``; the last
window of each row and column is shifted back to end at the image border, so windows overlap and
cover every pixel; each window's logits are added into place and divided by how many windows covered
each pixel. Views (scales x flips) are averaged as softmax probabilities.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fastseg.models.layers import resize


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis of length ``size``: every ``stride``, the last
    one moved back to end at ``size`` (a single window at 0 when ``size <= crop``)."""
    count = max(size - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride + crop, size) - crop, 0) for i in range(count)]


def slide_logits(model: nn.Module, images: Tensor, num_classes: int, crop_size: Sequence[int], stride: Sequence[int]) -> Tensor:
    """Count-averaged logits (B, K, H, W) of overlapping ``crop_size`` windows every ``stride`` pixels.

    mmsegmentation's ``slide_inference`` rule: along an axis shorter than the crop the window is the
    whole axis, and the patch runs as it is (no padding). A stride larger than the crop would leave
    pixels no window covers: a ValueError.
    """
    (crop_h, crop_w), (stride_h, stride_w) = crop_size, stride
    if min(crop_h, crop_w, stride_h, stride_w) < 1:
        raise ValueError(f"crop_size {tuple(crop_size)} and stride {tuple(stride)} must be positive")
    if stride_h > crop_h or stride_w > crop_w:
        raise ValueError(f"stride {tuple(stride)} larger than crop_size {tuple(crop_size)} leaves pixels uncovered")
    batch, _, height, width = images.shape
    dtype = torch.promote_types(images.dtype, torch.float32)
    logits = images.new_zeros(batch, num_classes, height, width, dtype=dtype)
    count = images.new_zeros(1, 1, height, width, dtype=dtype)
    for top in window_starts(height, crop_h, stride_h):
        for left in window_starts(width, crop_w, stride_w):
            window = images[:, :, top : top + crop_h, left : left + crop_w]
            h, w = window.shape[-2:]
            logits[:, :, top : top + h, left : left + w] += model(window)
            count[:, :, top : top + h, left : left + w] += 1
    return logits / count


def view_logits(model: nn.Module, images: Tensor, num_classes: int, mode: str, crop_size, stride) -> Tensor:
    """Logits (B, K, H, W) of one view, whole-image or sliding-window."""
    if mode == "whole":
        logits = model(images)
        if logits.shape[1] != num_classes:
            raise ValueError(f"the model returned {logits.shape[1]} channels, expected num_classes={num_classes}")
        # Low-precision (autocast) logits are averaged and resized in float32.
        return resize(logits.to(torch.promote_types(logits.dtype, torch.float32)), images.shape[-2:])
    if mode == "slide":
        if crop_size is None:
            raise ValueError("mode='slide' needs crop_size")
        return slide_logits(model, images, num_classes, crop_size, stride if stride is not None else crop_size)
    raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")


def predict_logits(
    model: nn.Module,
    images: Tensor,
    num_classes: int,
    mode: str = "whole",
    crop_size: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> Tensor:
    """Logits (B, K, H, W) of ``model`` (in eval mode, returning logits at input size) on normalised
    ``images`` (B, 3, H, W).

    With one view (``scales=(1.0,)``, ``flip=False``) these are the model's logits (``mode="whole"``) or
    the count-averaged window logits (``"slide"``, ``stride`` defaults to ``crop_size``). With several
    views (each scale s: the image resized bilinearly to round(s*H) x round(s*W); with ``flip`` also
    mirrored left-right), each view's logits are resized back to H x W, and the result is
    log(mean of the views' softmax): logits whose softmax is the average probability.
    """
    if not scales:
        raise ValueError("scales must name at least one scale")
    height, width = images.shape[-2:]
    views = [(scale, flipped) for scale in scales for flipped in ((False, True) if flip else (False,))]
    prob_sum = None
    for scale, flipped in views:
        view = resize(images, (max(round(height * scale), 1), max(round(width * scale), 1)))
        logits = view_logits(model, view.flip(-1) if flipped else view, num_classes, mode, crop_size, stride)
        logits = resize(logits.flip(-1) if flipped else logits, (height, width))
        if len(views) == 1:
            return logits
        # A running sum, not a list of views: memory stays at two (B, K, H, W) tensors.
        prob_sum = logits.softmax(1) if prob_sum is None else prob_sum + logits.softmax(1)
    probs = prob_sum / len(views)
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


INFERENCE_KEYS = ("mode", "crop_size", "stride", "scales", "flip")


def inference_options(section: dict | None) -> dict:
    """The :func:`predict_logits` options in a config's ``evaluate`` section (its ``boundary`` key is the
    evaluator's); an unknown key is an error naming it."""
    section = dict(section or {})
    unknown = sorted(set(section) - {*INFERENCE_KEYS, "boundary"})
    if unknown:
        raise ValueError(f"unknown evaluate option(s) {unknown}; known: {[*INFERENCE_KEYS, 'boundary']}")
    options = {key: section[key] for key in INFERENCE_KEYS if section.get(key) is not None}
    if "scales" in options:
        options["scales"] = tuple(float(s) for s in options["scales"])
    return options
