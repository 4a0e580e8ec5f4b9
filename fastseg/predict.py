"""``python -m fastseg.predict``: segment images and write colourised masks, overlays and raw label maps.

    python -m fastseg.predict --checkpoint runs/default/latest.pt --input IMAGE_OR_FOLDER --output DIR
        [--palette dataset|cityscapes|ade20k] [--opacity 0.5] [--mode whole|slide] [--crop-size H W]
        [--stride H W] [--scales ...] [--flip] [--skip-bad] [--config ...] [--set k=v ...] [--device cpu|cuda]

For every input image ``<stem>.<ext>`` it writes ``<stem>_mask.png`` (prediction in the palette's
colours), ``<stem>_overlay.png`` (the mask blended on the image) and ``<stem>_labels.png`` (train ids).
Images are normalised as the run config's ``data.normalize`` says; a folder is read non-recursively.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from fastseg.data import BadSampleError, transforms
from fastseg.data.datasets.base import read_image
from fastseg.data.datasets.folder import IMAGE_SUFFIXES
from fastseg.engine.inference import inference_options, predict_logits
from fastseg.engine.visualize import get_palette, save_predictions
from fastseg.evaluate import add_inference_arguments, add_run_arguments, load_run


def input_images(path: Path) -> list[Path]:
    """``path`` itself, or the image files directly inside the folder ``path``, sorted."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input not found: {path}")
    images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    return images


def run(args: argparse.Namespace) -> tuple[int, int]:
    """Predict every input; returns (images written, inputs skipped as unreadable)."""
    paths = input_images(Path(args.input))
    model, config = load_run(args)
    data = config["data"]
    num_classes = data["num_classes"]
    palette = get_palette(args.palette, num_classes, data["dataset"])
    normalize = transforms.Normalize(**(data.get("normalize") or {}))
    options = inference_options(config["evaluate"])
    written, skipped = 0, 0
    for path in paths:
        try:
            image = read_image(path)
        except BadSampleError as error:
            if not args.skip_bad:
                raise
            print(f"skipping {error}", file=sys.stderr)
            skipped += 1
            continue
        normalized, _ = normalize(image, None)
        with torch.inference_mode():
            logits = predict_logits(model, normalized[None].to(args.device), num_classes, **options)
        prediction = logits.argmax(1).cpu()
        save_predictions(image[None], prediction, palette, args.output, names=[path.stem], opacity=args.opacity)
        written += 1
    print(f"wrote {written} prediction(s) to {args.output}; {skipped} input(s) skipped as unreadable")
    return written, skipped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastseg.predict", description=__doc__.split("\n")[0])
    add_run_arguments(parser)
    add_inference_arguments(parser)
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="folder for the <stem>_{mask,overlay,labels}.png files")
    parser.add_argument("--palette", default="dataset", help="dataset (the config's dataset), cityscapes or ade20k")
    parser.add_argument("--opacity", type=float, default=0.5, help="weight of the mask in the overlay")
    parser.add_argument("--skip-bad", action="store_true", help="skip and count unreadable images")
    args = parser.parse_args(argv)
    try:
        run(args)
    except (BadSampleError, FileNotFoundError) as error:
        print(f"fastseg.predict: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
