"""python -m fastseg.predict: a subprocess smoke run, label maps equal to in-process predictions, bad inputs."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from test_evaluate_cli import run_cli, write_checkpoint

from fastseg.data import transforms
from fastseg.data.datasets.ade20k import ADE20K_PALETTE
from fastseg.data.synthetic import SYNTHETIC_PALETTE
from fastseg.engine.inference import predict_logits
from fastseg.predict import main


def write_images(folder, sizes=((32, 48), (40, 36))) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for size in sizes]
    for index, array in enumerate(arrays):
        Image.fromarray(array).save(folder / f"img{index}.png")
    (folder / "notes.txt").write_text("not an image, not listed")
    return arrays


def test_subprocess_smoke_folder_with_a_corrupt_image_skipped(tmp_path):
    write_checkpoint(tmp_path / "ck.pt")
    write_images(tmp_path / "in")
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    done = run_cli(
        "fastseg.predict", "--checkpoint", str(tmp_path / "ck.pt"), "--input", str(tmp_path / "in"),
        "--output", str(tmp_path / "out"), "--device", "cpu", "--skip-bad", "--opacity", "0.3",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "broken.jpg" in done.stderr and "wrote 2 prediction(s)" in done.stdout and "1 input(s) skipped" in done.stdout
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(f"img{i}_{kind}.png" for i in range(2) for kind in ("mask", "overlay", "labels"))


def test_labels_equal_in_process_prediction_and_palette_colours(tmp_path):
    model, config = write_checkpoint(tmp_path / "ck.pt")
    arrays = write_images(tmp_path / "in")
    argv = ["--checkpoint", str(tmp_path / "ck.pt"), "--input", str(tmp_path / "in" / "img1.png"), "--output",
            str(tmp_path / "out"), "--device", "cpu", "--mode", "slide", "--crop-size", "32", "32", "--stride", "16", "16"]  # fmt: skip
    assert main(argv) == 0
    image = torch.from_numpy(arrays[1]).permute(2, 0, 1).float() / 255
    normalized, _ = transforms.Normalize(**config["data"]["normalize"])(image, None)
    with torch.no_grad():
        logits = predict_logits(model, normalized[None], 9, mode="slide", crop_size=(32, 32), stride=(16, 16))
    expected = logits.argmax(1)[0].numpy()
    labels = np.asarray(Image.open(tmp_path / "out" / "img1_labels.png"))
    np.testing.assert_array_equal(labels, expected)
    mask = np.asarray(Image.open(tmp_path / "out" / "img1_mask.png"))
    np.testing.assert_array_equal(mask, np.array(SYNTHETIC_PALETTE, np.uint8)[expected])
    assert not (tmp_path / "out" / "img0_mask.png").exists()


def test_named_palette_colours_a_model_of_as_many_classes(tmp_path):
    """A folder dataset's classes are only on disk: a 150-class model takes the ADE20K colours."""
    write_checkpoint(tmp_path / "ck.pt", ["data.dataset=folder", "data.num_classes=150"])
    write_images(tmp_path / "in")
    argv = ["--checkpoint", str(tmp_path / "ck.pt"), "--input", str(tmp_path / "in" / "img0.png"), "--output",
            str(tmp_path / "out"), "--device", "cpu", "--palette", "ade20k"]  # fmt: skip
    assert main(argv) == 0
    labels = np.asarray(Image.open(tmp_path / "out" / "img0_labels.png"))
    mask = np.asarray(Image.open(tmp_path / "out" / "img0_mask.png"))
    np.testing.assert_array_equal(mask, np.array(ADE20K_PALETTE, np.uint8)[labels])


def test_bad_inputs_are_named(tmp_path, capsys):
    write_checkpoint(tmp_path / "ck.pt")
    base = ["--checkpoint", str(tmp_path / "ck.pt"), "--output", str(tmp_path / "out"), "--device", "cpu"]
    assert main([*base, "--input", str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([*base, "--input", str(tmp_path / "empty")]) == 2
    assert "no images" in capsys.readouterr().err
    write_images(tmp_path / "in")
    (tmp_path / "in" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert main([*base, "--input", str(tmp_path / "in")]) == 2
    assert "corrupt.png" in capsys.readouterr().err
