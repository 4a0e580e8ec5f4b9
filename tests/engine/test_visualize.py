"""Palettes, colourised masks, overlays and the PNG files written for predictions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fastseg.data.datasets.ade20k import ADE20K_PALETTE
from fastseg.data.datasets.cityscapes import CITYSCAPES_PALETTE
from fastseg.data.synthetic import SYNTHETIC_PALETTE
from fastseg.engine.visualize import colorize, denormalize, get_palette, overlay, save_predictions, to_uint8_image


def test_palettes_by_name_and_dataset():
    assert get_palette("cityscapes", 19) == CITYSCAPES_PALETTE
    assert get_palette("ade20k", 150) == ADE20K_PALETTE
    assert get_palette("dataset", 9, dataset="synthetic") == SYNTHETIC_PALETTE
    assert get_palette("dataset", 19, dataset="kitti") == CITYSCAPES_PALETTE
    folder = get_palette("dataset", 5, dataset="folder")
    assert len(folder) == 5 and len(set(folder)) == 5
    with pytest.raises(ValueError, match="has 19 colours but the model predicts 20"):
        get_palette("cityscapes", 20)
    with pytest.raises(ValueError, match="unknown palette 'voc'"):
        get_palette("voc", 3)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        get_palette("dataset", 3, dataset="mnist")


def test_colorize_looks_up_every_pixel_and_blacks_out_ignored():
    palette = ((10, 20, 30), (40, 50, 60), (70, 80, 90))
    labels = torch.randint(0, 3, (2, 5, 7))
    labels[0, 0, 0], labels[1, 2, 3] = 255, 9
    rgb = colorize(labels, palette)
    assert rgb.shape == (2, 5, 7, 3) and rgb.dtype == torch.uint8
    expected = np.array([*palette, (0, 0, 0)], np.uint8)[np.where(labels.numpy() < 3, labels.numpy(), 3)]
    np.testing.assert_array_equal(rgb.numpy(), expected)


def test_overlay_blends_and_denormalize_inverts_normalize():
    image = torch.randint(0, 256, (4, 6, 3), dtype=torch.uint8)
    mask = torch.randint(0, 256, (4, 6, 3), dtype=torch.uint8)
    assert torch.equal(overlay(image, mask, 0.0), image) and torch.equal(overlay(image, mask, 1.0), mask)
    half = overlay(image, mask, 0.5).int()
    assert ((half - (image.int() + mask.int()) / 2).abs() <= 0.5).all()
    with pytest.raises(ValueError, match="opacity"):
        overlay(image, mask, 1.5)
    rgb = torch.rand(2, 3, 4, 5)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    normalized = (rgb - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(denormalize(normalized, mean, std), rgb)


def test_save_predictions_writes_mask_overlay_labels_and_target(tmp_path):
    images, predictions = torch.rand(2, 3, 8, 12), torch.randint(0, 9, (2, 8, 12))
    targets = torch.randint(0, 9, (2, 8, 12))
    paths = save_predictions(images, predictions, SYNTHETIC_PALETTE, tmp_path / "out", names=["a", "b"], targets=targets, opacity=0.25)
    assert sorted(p.name for p in paths) == sorted(f"{n}_{k}.png" for n in "ab" for k in ("mask", "overlay", "labels", "target"))
    labels = np.asarray(Image.open(tmp_path / "out" / "b_labels.png"))
    np.testing.assert_array_equal(labels, predictions[1].numpy())
    mask = np.asarray(Image.open(tmp_path / "out" / "a_mask.png"))
    np.testing.assert_array_equal(mask, np.array(SYNTHETIC_PALETTE, np.uint8)[predictions[0].numpy()])
    blended = np.asarray(Image.open(tmp_path / "out" / "a_overlay.png")).astype(float)
    expected = 0.75 * to_uint8_image(images[0]).numpy() + 0.25 * mask
    assert np.abs(blended - expected).max() <= 0.5
    target = np.asarray(Image.open(tmp_path / "out" / "b_target.png"))
    np.testing.assert_array_equal(target, np.array(SYNTHETIC_PALETTE, np.uint8)[targets[1].numpy()])
    with pytest.raises(ValueError, match="predictions"):
        save_predictions(images, predictions[:, :4], SYNTHETIC_PALETTE, tmp_path)
