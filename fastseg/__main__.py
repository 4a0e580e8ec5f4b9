"""``python -m fastseg``: a check of the fused ops, and where the entry points are.

It runs the fused ops on synthetic CSFRNet-shaped inputs (embeddings of a 769 crop at output stride
8, 19 classes), checks each available backend against the reference and prints their forward+backward
times. The main job is ``python -m fastseg.train`` (then ``fastseg.evaluate`` and ``fastseg.predict``).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from fastseg import ops


ENTRY_POINTS = """fastseg entry points (each takes --help):
  python -m fastseg.train      train a recipe (no arguments: a small model on built-in synthetic data)
  python -m fastseg.evaluate   mIoU / accuracy / boundary F of a checkpoint, table + JSON
  python -m fastseg.predict    colourised masks and overlays of images or a folder
"""


def _blocky_labels(batch: int, size: int, num_classes: int) -> torch.Tensor:
    """Piecewise-constant label maps: a coarse random grid upsampled, some pixels ignored."""
    coarse = torch.randint(0, num_classes, (batch, 1, 12, 12)).float()
    labels = F.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long()
    labels[:, :2] = 255
    return labels


def _time(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fastseg", description=__doc__)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--size", type=int, default=97)
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    print(ENTRY_POINTS)
    print("fastseg build:", ops.build_info())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    features = torch.randn(args.batch, args.channels, args.size, args.size, device=device, requires_grad=True)
    labels = _blocky_labels(args.batch, args.size, args.classes).to(device)
    grad = torch.randn(args.batch, args.classes, args.channels, device=device)
    expected, _ = ops.class_avg_pool_reference(features, labels, args.classes)

    backends = ["reference", device.type] if ops.build_info()["loaded"] else ["reference"]
    print(f"class_avg_pool forward+backward, features {tuple(features.shape)}, K={args.classes}, {device}")
    for name in backends:
        centers, _ = ops.class_avg_pool(features, labels, args.classes, backend=name)
        error = (centers - expected).abs().max().item()

        def step(name=name):
            features.grad = None
            ops.class_avg_pool(features, labels, args.classes, backend=name)[0].backward(grad)
            if device.type == "cuda":
                torch.cuda.synchronize()

        print(f"  {name:>9}: {_time(step, args.repeats):8.2f} ms   max |diff| vs reference {error:.2e}")


if __name__ == "__main__":
    main()
