"""Built-in synthetic street scenes: the default data, generated on the fly, deterministic by seed and index.

Each scene has a sky, a row of buildings with window grids, trees in front of them, a road in perspective
with lane markings flanked by tiled sidewalks, and objects drawn far-to-near so that nearer ones occlude
farther ones: cars on the road, people on the sidewalks, thin poles carrying small signs. Classes differ
in colour and in texture, but colours overlap (grey poles and grey buildings, cars and people of any
colour, white lane marks on the road) and every pixel carries noise, so telling them apart needs shape,
texture and context, not colour alone. Samples are ``(image, label)``: float32 (3,H,W) in [0, 1] and
int64 (H,W) with every pixel labelled (no ignored pixels).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from fastseg.data.datasets.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE

SYNTHETIC_CLASSES = ("road", "sidewalk", "building", "vegetation", "sky", "car", "person", "pole", "traffic sign")
SYNTHETIC_PALETTE = tuple(CITYSCAPES_PALETTE[CITYSCAPES_CLASSES.index(name)] for name in SYNTHETIC_CLASSES)
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, CAR, PERSON, POLE, SIGN = range(len(SYNTHETIC_CLASSES))
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_DEFAULT_LENGTHS = {"train": 2000, "val": 200, "test": 200}


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Value noise in [0, 1]: a random grid with ``cell``-pixel spacing, bilinearly interpolated, (H,W)."""
    grid = rng.random((int(height / cell) + 2, int(width / cell) + 2))
    gy = np.arange(height) / cell
    gx = np.arange(width) / cell
    y0, x0 = gy.astype(int), gx.astype(int)
    fy, fx = (gy - y0)[:, None], (gx - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


@dataclass
class _Region:
    """A bounding window of the canvas (``rows``, ``cols``) and the shape's mask inside it (h,w)."""

    rows: slice
    cols: slice
    mask: np.ndarray


class _Canvas:
    """An RGB image (H,W,3) and its label map (H,W) painted together, later paint over earlier.

    Shapes are ``_Region``s, so that painting costs the shape's bounding box rather than the whole frame.
    """

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.rng = rng
        self.height, self.width = height, width
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.image = np.zeros((height, width, 3), dtype=np.float32)
        self.label = np.zeros((height, width), dtype=np.int64)
        self._noise: dict[float, np.ndarray] = {}

    def coords(self, region: _Region) -> tuple[np.ndarray, np.ndarray]:
        """Row and column coordinates (h,w) of the pixels of ``region``'s window."""
        return self.yy[region.rows, region.cols], self.xx[region.rows, region.cols]

    def paint(self, region: _Region, cls: int, colour: np.ndarray) -> None:
        """Label the region's mask ``cls`` and colour it with ``colour``: (3,), a (H,W,3) texture, or (h,w,3)."""
        if colour.ndim == 3 and colour.shape[:2] == (self.height, self.width):
            colour = colour[region.rows, region.cols]
        np.copyto(self.label[region.rows, region.cols], cls, where=region.mask)
        np.copyto(self.image[region.rows, region.cols], colour, where=region.mask[..., None])

    def darken(self, region: _Region, cls: int, factor: float) -> None:
        """Scale the colour of the region's pixels that are labelled ``cls`` by ``factor``."""
        image = self.image[region.rows, region.cols]
        np.copyto(image, image * factor, where=(region.mask & (self.label[region.rows, region.cols] == cls))[..., None])

    def jitter(self, rgb: tuple[float, float, float], amount: float = 0.08) -> np.ndarray:
        return np.clip(np.asarray(rgb, dtype=np.float32) + self.rng.uniform(-amount, amount, 3), 0, 1)

    def shaded(self, rgb: np.ndarray, cell: float, depth: float, region: _Region | None = None) -> np.ndarray:
        """``rgb`` modulated by value noise of scale ``cell`` pixels and relative ``depth``: (H,W,3), or
        (h,w,3) over ``region``'s window. One noise field per scale and scene, shared by its textures."""
        if cell not in self._noise:
            self._noise[cell] = _smooth_noise(self.rng, self.height, self.width, cell).astype(np.float32)
        noise = self._noise[cell] if region is None else self._noise[cell][region.rows, region.cols]
        return rgb[None, None, :] * (1 - depth + 2 * depth * noise)[..., None]

    def _window(self, top: float, bottom: float, left: float, right: float) -> tuple[slice, slice]:
        """Rows ceil(top) .. ceil(bottom)-1 and columns likewise, clipped to the canvas."""
        rows = slice(min(max(0, math.ceil(top)), self.height), min(max(0, math.ceil(bottom)), self.height))
        cols = slice(min(max(0, math.ceil(left)), self.width), min(max(0, math.ceil(right)), self.width))
        return rows, cols

    def box(self, top: float, bottom: float, left: float, right: float) -> _Region:
        """Pixels (y, x) with top <= y < bottom and left <= x < right."""
        rows, cols = self._window(top, bottom, left, right)
        return _Region(rows, cols, np.ones((rows.stop - rows.start, cols.stop - cols.start), dtype=bool))

    def ellipse(self, cy: float, cx: float, ry: float, rx: float) -> _Region:
        rows, cols = self._window(cy - ry, cy + ry + 1, cx - rx, cx + rx + 1)
        yy, xx = self.yy[rows, cols], self.xx[rows, cols]
        return _Region(rows, cols, ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1)


def render_street_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene drawn with ``rng``: image float32 (H,W,3) in [0, 1], label int64 (H,W) in [0, 9)."""
    c = _Canvas(rng, height, width)
    horizon = int(height * rng.uniform(0.38, 0.5))

    # Sky: blue, brighter towards the horizon, with soft clouds.
    sky = c.jitter((0.45, 0.62, 0.88))[None, None, :] * (0.8 + 0.25 * (c.yy / horizon))[..., None]
    clouds = np.clip(_smooth_noise(rng, height, width, 24) * 2 - 1.1, 0, 1)[..., None]
    c.paint(c.box(0, height, 0, width), SKY, (sky * (1 - clouds) + 0.95 * clouds).astype(np.float32))

    # Buildings: blocks of random width and height with window grids; gaps show the sky.
    left = 0.0
    while left < width:
        right = left + width * rng.uniform(0.1, 0.3)
        if rng.random() < 0.85:
            top = rng.uniform(0.05 * height, horizon - 0.12 * height)
            wall = c.jitter(((0.55, 0.5, 0.45), (0.5, 0.5, 0.52), (0.6, 0.45, 0.35))[rng.integers(3)], 0.1)
            block = c.box(top, horizon, left, right)
            texture = c.shaded(wall, 6, 0.12, block)
            period_y, period_x = rng.integers(6, 12), rng.integers(6, 12)
            yy, xx = c.coords(block)
            windows = ((yy - top) % period_y < period_y / 2) & ((xx - left) % period_x < period_x / 2)
            glass = texture * 0.35 + np.array([0.1, 0.15, 0.25], dtype=np.float32)
            np.copyto(texture, glass, where=windows[..., None])
            c.paint(block, BUILDING, texture)
        left = right

    # Ground: a road in perspective towards a vanishing point, sidewalks outside it.
    vanish_x = width * rng.uniform(0.35, 0.65)
    ground = c.box(horizon, height, 0, width)
    yy, xx = c.coords(ground)
    depth = (yy - horizon) / (height - horizon)  # 0 at the horizon, 1 at the bottom row
    centre = vanish_x + depth * (width / 2 - vanish_x)
    half_width = width * (0.03 + rng.uniform(0.4, 0.6) * depth)
    tiles = ((yy.astype(int) % 7 == 0) | ((xx + 3 * yy).astype(int) % 11 == 0))[..., None]
    pavement = c.shaded(c.jitter((0.62, 0.56, 0.55)), 3, 0.08, ground) * np.where(tiles, 0.75, 1.0)
    c.paint(ground, SIDEWALK, pavement.astype(np.float32))
    asphalt = c.shaded(c.jitter((0.3, 0.3, 0.32), 0.05), 2, 0.15, ground)
    marks = (np.abs(xx - centre) < 0.5 + 0.012 * width * depth) & ((yy.astype(int) // 5) % 2 == 0)
    np.copyto(asphalt, np.float32(0.9), where=marks[..., None])
    c.paint(_Region(ground.rows, ground.cols, np.abs(xx - centre) < half_width), ROAD, asphalt)

    # Trees in front of the buildings: noisy green crowns.
    foliage = c.shaded(c.jitter((0.22, 0.45, 0.15)), 2, 0.35)
    for _ in range(rng.integers(1, 4)):
        ry, rx = height * rng.uniform(0.07, 0.15), width * rng.uniform(0.04, 0.09)
        c.paint(c.ellipse(rng.uniform(0.15, 0.4) * height + ry / 2, rng.uniform(0, width), ry, rx), VEGETATION, foliage)

    # Objects stand on the ground at a random depth; drawn far to near, so nearer ones occlude.
    def road_x(base: float) -> tuple[float, float]:
        t = (base - horizon) / (height - horizon)
        return vanish_x + t * (width / 2 - vanish_x), width * (0.03 + 0.5 * t)

    objects = [(CAR, rng.uniform(horizon + 4, height)) for _ in range(rng.integers(1, 4))]
    objects += [(PERSON, rng.uniform(horizon + 4, height)) for _ in range(rng.integers(1, 4))]
    objects += [(POLE, rng.uniform(horizon + 2, height)) for _ in range(rng.integers(1, 4))]
    for kind, base in sorted(objects, key=lambda obj: obj[1]):
        scale = (base - horizon) / (height - horizon)
        middle, half = road_x(base)
        if kind == CAR:
            tall = 4 + 0.3 * height * scale
            long = tall * rng.uniform(1.5, 2.2)
            cx = middle + rng.uniform(-0.6, 0.6) * half
            body = c.shaded(c.jitter(tuple(rng.uniform(0.05, 0.95, 3)), 0), 4, 0.1)
            lower = c.box(base - 0.6 * tall, base, cx - long / 2, cx + long / 2)
            cabin = c.box(base - tall, base - 0.55 * tall, cx - 0.3 * long, cx + 0.3 * long)
            c.paint(lower, CAR, body)
            c.paint(cabin, CAR, body)
            c.darken(cabin, CAR, 0.35)
            for wheel_x in (cx - 0.3 * long, cx + 0.3 * long):
                wheel = c.ellipse(base - 0.1 * tall, wheel_x, 0.15 * tall, 0.1 * long)
                c.paint(wheel, CAR, np.array([0.05, 0.05, 0.05], dtype=np.float32))
        elif kind == PERSON:
            tall = 6 + 0.45 * height * scale
            cx = np.clip(middle + rng.choice([-1, 1]) * (half + rng.uniform(1, 0.15 * width)), 2, width - 3)
            shirt, trousers = c.jitter(tuple(rng.uniform(0.1, 0.9, 3)), 0), c.jitter((0.15, 0.15, 0.25))
            c.paint(c.ellipse(base - 0.25 * tall, cx, 0.25 * tall, 0.09 * tall), PERSON, trousers)
            c.paint(c.ellipse(base - 0.6 * tall, cx, 0.22 * tall, 0.13 * tall), PERSON, shirt)
            c.paint(c.ellipse(base - 0.9 * tall, cx, 0.1 * tall, 0.08 * tall), PERSON, c.jitter((0.85, 0.65, 0.5)))
        else:
            tall = 12 + 0.75 * height * scale
            thick = max(1.0, round(3 * scale))
            cx = np.clip(middle + rng.choice([-1, 1]) * (half + rng.uniform(2, 0.2 * width)), 2, width - 6)
            c.paint(c.box(base - tall, base, cx, cx + thick), POLE, c.jitter((0.5, 0.5, 0.52), 0.05))
            size = 2 + 6 * scale
            plate = ((0.9, 0.75, 0.1), (0.8, 0.1, 0.1), (0.1, 0.3, 0.8))[rng.integers(3)]
            sign_cy, sign_cx = base - tall + size, cx + thick / 2
            shape = c.ellipse(sign_cy, sign_cx, size, size) if rng.random() < 0.5 else c.box(
                sign_cy - size, sign_cy + size, sign_cx - size, sign_cx + size
            )
            c.paint(shape, SIGN, c.jitter(plate, 0.05))

    lighting = rng.uniform(0.75, 1.2)
    image = c.image * lighting + rng.normal(0, 0.03, c.image.shape).astype(np.float32)
    return np.clip(image, 0, 1), c.label


class SyntheticStreetScenes(Dataset):
    """Synthetic street scenes, 9 classes; sample ``i`` of split ``s`` depends only on (seed, s, i).

    Args:
        split: "train", "val" or "test" (different scenes for the same index).
        length: number of samples (default 2000 for train, 200 otherwise).
        size: (H, W) of every sample, default (128, 256).
        seed: base seed of the generator.
        transforms: joint ``transforms(image, label)``.
    """

    classes = SYNTHETIC_CLASSES
    palette = SYNTHETIC_PALETTE
    ignore_index = 255

    def __init__(
        self,
        split: str = "train",
        length: int | None = None,
        size: tuple[int, int] = (128, 256),
        seed: int = 0,
        transforms: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    ) -> None:
        if split not in _SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
        if size[0] < 32 or size[1] < 32:
            raise ValueError(f"size must be at least 32x32, got {size}")
        self.split = split
        self.length = _DEFAULT_LENGTHS[split] if length is None else length
        self.size = tuple(size)
        self.seed = seed
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        rng = np.random.default_rng((self.seed, _SPLIT_IDS[self.split], index))
        image, label = render_street_scene(rng, *self.size)
        image_t, label_t = torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(label)
        if self.transforms is not None:
            image_t, label_t = self.transforms(image_t, label_t)
        return image_t, label_t
