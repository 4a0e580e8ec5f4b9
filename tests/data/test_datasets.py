"""Each dataset on a tiny fixture in its real on-disk layout and label encoding."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fastseg.data import BadSampleError, build_dataset
from fastseg.data.datasets import (
    ADE20K,
    BDD100K,
    CamVid,
    Cityscapes,
    COCOStuff,
    FolderDataset,
    KittiSemantics,
    PascalContext,
)
from .fixtures import random_label, write_image, write_label

H, W = 6, 10


@pytest.fixture
def rng():
    return np.random.default_rng(torch.randint(2**31, ()).item())


def expected(stored: np.ndarray, mapping: dict[int, int]) -> torch.Tensor:
    return torch.from_numpy(np.vectorize(mapping.__getitem__)(stored).astype(np.int64))


def check_sample(dataset, index: int, pixels: np.ndarray | None, label: torch.Tensor) -> None:
    image, decoded = dataset[index]
    assert image.dtype == torch.float32 and image.shape == (3, H, W)
    assert decoded.dtype == torch.int64 and decoded.shape == (H, W)
    assert 0 <= image.min() and image.max() <= 1
    if pixels is not None:  # lossless PNG: exact
        torch.testing.assert_close(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    assert torch.equal(decoded, label)


def make_cityscapes(root: Path, rng, train_ids: bool = False):
    stored = random_label(rng, H, W, [0, 4, 7, 24, 26, 33])
    stem = "aachen_000000_000019"
    pixels = write_image(root / "leftImg8bit/train/aachen" / f"{stem}_leftImg8bit.png", H, W, rng)
    write_label(root / "gtFine/train/aachen" / f"{stem}_gtFine_labelIds.png", stored)
    mapped = expected(stored, {0: 255, 4: 255, 7: 0, 24: 11, 26: 13, 33: 18})
    if train_ids:
        write_label(root / "gtFine/train/aachen" / f"{stem}_gtFine_labelTrainIds.png", mapped.numpy())
    return pixels, mapped


def test_cityscapes_label_ids(tmp_path, rng):
    pixels, mapped = make_cityscapes(tmp_path, rng)
    dataset = Cityscapes(tmp_path, "train")
    assert len(dataset) == 1 and not dataset.uses_train_ids and len(dataset.classes) == 19
    assert dataset.classes[13] == "car" and dataset.palette[0] == (128, 64, 128)
    check_sample(dataset, 0, pixels, mapped)


def test_cityscapes_prefers_label_train_ids(tmp_path, rng):
    pixels, mapped = make_cityscapes(tmp_path, rng, train_ids=True)
    dataset = build_dataset("cityscapes", tmp_path, "train")
    assert dataset.uses_train_ids
    check_sample(dataset, 0, pixels, mapped)


def test_ade20k_reduces_zero_label(tmp_path, rng):
    base = tmp_path / "ADEChallengeData2016"
    stored = random_label(rng, H, W, [0, 1, 13, 150])
    write_image(base / "images/validation/ADE_val_00000001.jpg", H, W, rng)
    write_label(base / "annotations/validation/ADE_val_00000001.png", stored)
    dataset = build_dataset("ade20k", tmp_path, "val")
    assert isinstance(dataset, ADE20K)
    assert len(dataset.classes) == 150 and len(dataset.palette) == 150 and dataset.classes[12] == "person"
    check_sample(dataset, 0, None, expected(stored, {0: 255, 1: 0, 13: 12, 150: 149}))


def test_pascal_context_ignores_background(tmp_path, rng):
    base = tmp_path / "VOCdevkit/VOC2010"
    ids = ["2008_000002", "2008_000003"]
    labels = []
    for name in ids:
        stored = random_label(rng, H, W, [0, 1, 59, 30])
        write_image(base / "JPEGImages" / f"{name}.jpg", H, W, rng)
        write_label(base / "SegmentationClassContext" / f"{name}.png", stored, mode="P")
        labels.append(expected(stored, {0: 255, 1: 0, 59: 58, 30: 29}))
    (base / "ImageSets/SegmentationContext").mkdir(parents=True)
    (base / "ImageSets/SegmentationContext/val.txt").write_text("\n".join(ids) + "\n")
    dataset = PascalContext(tmp_path, "val")
    assert len(dataset) == 2 and len(dataset.classes) == 59 and dataset.classes[58] == "wood"
    for index, label in enumerate(labels):
        check_sample(dataset, index, None, label)


def test_coco_stuff_raw_ids(tmp_path, rng):
    stored = random_label(rng, H, W, [0, 12, 91, 181, 255])
    write_image(tmp_path / "images/val2017/000000000139.jpg", H, W, rng)
    write_label(tmp_path / "annotations/val2017/000000000139.png", stored)
    dataset = COCOStuff(tmp_path, "val")
    assert not dataset.uses_train_ids and len(dataset.classes) == 171
    # raw 12 follows the unused raw id 11; raw 91 is the first stuff class after 11 unused thing ids.
    check_sample(dataset, 0, None, expected(stored, {0: 0, 12: 11, 91: 80, 181: 170, 255: 255}))
    assert dataset.classes[80] == "banner" and dataset.classes[170] == "wood" and dataset.classes[11] == "stop sign"


def test_coco_stuff_unused_raw_id_is_an_error(tmp_path, rng):
    write_image(tmp_path / "images/val2017/000000000139.jpg", H, W, rng)
    label_path = tmp_path / "annotations/val2017/000000000139.png"
    write_label(label_path, random_label(rng, H, W, [0, 11]))
    with pytest.raises(BadSampleError, match=str(label_path)):
        COCOStuff(tmp_path, "val")[0]


def test_coco_stuff_train_ids(tmp_path, rng):
    stored = random_label(rng, H, W, [0, 170, 255, 42])
    write_image(tmp_path / "images/train2017/000000000009.jpg", H, W, rng)
    write_label(tmp_path / "annotations/train2017/000000000009_labelTrainIds.png", stored)
    dataset = build_dataset("coco_stuff", tmp_path, "train")
    assert dataset.uses_train_ids
    check_sample(dataset, 0, None, torch.from_numpy(stored.astype(np.int64)))


def test_camvid_void_ignored(tmp_path, rng):
    stored = random_label(rng, H, W, [0, 3, 10, 11])
    pixels = write_image(tmp_path / "test/0001TP_008550.png", H, W, rng)
    write_label(tmp_path / "testannot/0001TP_008550.png", stored)
    dataset = CamVid(tmp_path, "test")
    assert len(dataset.classes) == 11
    check_sample(dataset, 0, pixels, expected(stored, {0: 0, 3: 3, 10: 10, 11: 255}))


def test_kitti_uses_cityscapes_ids(tmp_path, rng):
    stored = random_label(rng, H, W, [0, 7, 21, 26])
    pixels = write_image(tmp_path / "training/image_2/000000_10.png", H, W, rng)
    write_label(tmp_path / "training/semantic/000000_10.png", stored)
    dataset = KittiSemantics(tmp_path, "training")
    check_sample(dataset, 0, pixels, expected(stored, {0: 255, 7: 0, 21: 8, 26: 13}))
    with pytest.raises(ValueError, match="training"):
        KittiSemantics(tmp_path, "testing")


def test_bdd100k_train_ids(tmp_path, rng):
    stored = random_label(rng, H, W, [0, 5, 18, 255])
    write_image(tmp_path / "images/10k/val/7d2f7975-e0c1c5a7.jpg", H, W, rng)
    write_label(tmp_path / "labels/sem_seg/masks/val/7d2f7975-e0c1c5a7.png", stored)
    dataset = BDD100K(tmp_path, "val")
    check_sample(dataset, 0, None, torch.from_numpy(stored.astype(np.int64)))


@pytest.mark.parametrize("split", ["train", ""])
def test_folder_dataset(tmp_path, rng, split):
    (tmp_path / "classes.txt").write_text("background\ncrack\nrust\n")
    stored = random_label(rng, H, W, [0, 1, 2, 255])
    pixels = write_image(tmp_path / split / "images/a.png", H, W, rng)
    write_label(tmp_path / split / "masks/a.png", stored)
    dataset = FolderDataset(tmp_path, split)
    assert dataset.classes == ("background", "crack", "rust") and len(dataset.palette) == 3
    check_sample(dataset, 0, pixels, torch.from_numpy(stored.astype(np.int64)))


def test_folder_value_out_of_range_names_file(tmp_path, rng):
    (tmp_path / "classes.txt").write_text("a\nb\n")
    write_image(tmp_path / "train/images/x.png", H, W, rng)
    write_label(tmp_path / "train/masks/x.png", random_label(rng, H, W, [0, 1, 2]))
    with pytest.raises(BadSampleError, match=r"x\.png.*\[2\]"):
        FolderDataset(tmp_path, "train")[0]


def make_camvid_split(root: Path, rng, count: int) -> list[np.ndarray]:
    labels = []
    for index in range(count):
        stored = random_label(rng, H, W, [0, 1, 2])
        write_image(root / "train" / f"img{index}.png", H, W, rng)
        write_label(root / "trainannot" / f"img{index}.png", stored)
        labels.append(stored)
    return labels


def test_missing_label_names_file(tmp_path, rng):
    make_camvid_split(tmp_path, rng, 2)
    missing = tmp_path / "trainannot/img1.png"
    missing.unlink()
    dataset = CamVid(tmp_path, "train")
    dataset[0]
    with pytest.raises(BadSampleError, match=str(missing)):
        dataset[1]


def test_corrupt_image_names_file(tmp_path, rng):
    make_camvid_split(tmp_path, rng, 2)
    corrupt = tmp_path / "train/img0.png"
    corrupt.write_bytes(corrupt.read_bytes()[:40])  # truncated PNG
    with pytest.raises(BadSampleError, match=str(corrupt)):
        CamVid(tmp_path, "train")[0]


def test_size_mismatch_names_both_files(tmp_path, rng):
    make_camvid_split(tmp_path, rng, 1)
    write_label(tmp_path / "trainannot/img0.png", np.zeros((H + 1, W), dtype=np.uint8))
    with pytest.raises(BadSampleError, match="img0.png.*img0.png"):
        CamVid(tmp_path, "train")[0]


def test_skip_bad_counts_and_replaces(tmp_path, rng):
    labels = make_camvid_split(tmp_path, rng, 4)
    (tmp_path / "train/img1.png").write_bytes(b"not an image")
    (tmp_path / "trainannot/img2.png").unlink()
    dataset = CamVid(tmp_path, "train", skip_bad=True)
    decoded = [dataset[index][1] for index in range(len(dataset))]
    assert dataset.num_skipped == 2
    # Bad samples 1 and 2 are replaced by the next readable one, sample 3.
    for index, source in enumerate([0, 3, 3, 3]):
        assert torch.equal(decoded[index], torch.from_numpy(labels[source].astype(np.int64)))


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        Cityscapes(tmp_path, "val")


def test_registry_rejects_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'mapillary'"):
        build_dataset("mapillary", tmp_path)
    with pytest.raises(ValueError, match="root"):
        build_dataset("ade20k")
    assert len(build_dataset("synthetic", split="val", length=3)) == 3
