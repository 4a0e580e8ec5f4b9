"""``python -m fastseg.predict``: segment images and write colourised masks, overlays and raw label maps.

    python -m fastseg.predict --checkpoint CHECKPOINT.pt --input IMAGE_OR_FOLDER --output DIR
        [--palette dataset|cityscapes|ade20k] [--opacity 0.5] [--mode whole|slide] [--crop-size H W]
        [--stride H W] [--scales ...] [--flip] [--skip-bad] [--config ...] [--set k=v ...] [--device cpu|cuda]

For every input image ``<stem>.<ext>`` it writes ``<stem>_mask.png`` (prediction in the palette's
colours), ``<stem>_overlay.png`` (the mask blended on the image) and ``<stem>_labels.png`` (train ids).
Images are normalised as the run config's ``data.normalize`` says; a folder is read non-recursively.
A named palette (``cityscapes``, ``ade20k``) is refused when its classes are not the model's: its
colours would name other classes. Mistakes are one line on stderr and exit status 2 (``--debug`` shows
their traceback).
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
from fastseg.data.datasets.registry import FILE_DATASETS
from fastseg.data.synthetic import SyntheticStreetScenes
from fastseg.engine import cli
from fastseg.engine.inference import inference_options, predict_logits
from fastseg.engine.logging import ProgressBar
from fastseg.engine.visualize import PALETTES, get_palette, save_predictions

PROG = "python -m fastseg.predict"


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


def check_palette_fits(name: str, dataset: str, num_classes: int) -> None:
    """Raise :class:`~fastseg.engine.cli.UsageError` if palette ``name`` colours other classes than those
    of the model (trained on ``dataset``, ``num_classes`` classes): the same class names when the
    dataset's classes are known, else the same number of classes."""
    if name == "dataset":
        return
    palette_classes = tuple(FILE_DATASETS[name].classes)
    dataset_class = SyntheticStreetScenes if dataset == "synthetic" else FILE_DATASETS.get(dataset)
    model_classes = tuple(getattr(dataset_class, "classes", ()) or ())
    fits = palette_classes == model_classes if model_classes else len(palette_classes) == num_classes
    if not fits:
        shown = f" ({', '.join(model_classes)})" if model_classes else ""
        raise cli.UsageError(
            f"--palette {name} colours the {len(palette_classes)} classes of {name} ({', '.join(palette_classes[:3])}, "
            f"...), but the model predicts the {num_classes} classes of {dataset!r}{shown}: its colours would "
            f"name other classes; use --palette dataset (the default)"
        )


def run(args: argparse.Namespace) -> tuple[int, int]:
    """Predict every input; returns (images written, inputs skipped as unreadable)."""
    paths = input_images(Path(args.input))
    cli.set_threads(args.threads)
    model, config = cli.load_run(args)
    data = config["data"]
    num_classes = data["num_classes"]
    check_palette_fits(args.palette, data["dataset"], num_classes)
    with cli.config_errors():
        palette = get_palette(args.palette, num_classes, data["dataset"])
    normalize = transforms.Normalize(**(data.get("normalize") or {}))
    options = inference_options(config["evaluate"])
    written, skipped = 0, 0
    progress = ProgressBar(len(paths), label="image", unit="img")
    for done, path in enumerate(paths, 1):
        try:
            image = read_image(path)
        except BadSampleError as error:
            if not args.skip_bad:
                raise
            progress.end_line()
            print(f"skipping {error}", file=sys.stderr)
            skipped += 1
            continue
        normalized, _ = normalize(image, None)
        with torch.inference_mode():
            logits = predict_logits(model, normalized[None].to(args.device), num_classes, **options)
        prediction = logits.argmax(1).cpu()
        save_predictions(image[None], prediction, palette, args.output, names=[path.stem], opacity=args.opacity)
        written += 1
        progress.update(done)
    progress.close()
    print(f"wrote {written} prediction(s) to {args.output}; {skipped} input(s) skipped as unreadable")
    return written, skipped


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser(PROG, __doc__)
    cli.add_run_arguments(parser)
    cli.add_inference_arguments(parser)
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="folder for the <stem>_{mask,overlay,labels}.png files")
    parser.add_argument("--palette", default="dataset", choices=("dataset", *PALETTES),
                        help="colours: the config's dataset's (default), or those of cityscapes or ade20k")  # fmt: skip
    parser.add_argument("--opacity", type=float, default=0.5, help="weight of the mask in the overlay")
    parser.add_argument("--skip-bad", action="store_true", help="skip and count unreadable images")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_main(PROG, build_parser().parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
