"""Small image classification sets that need no download.

* `digits`: scikit-learn's 1,797 handwritten digits (8x8, 10 classes; the
  file ships inside the scikit-learn package), upsampled bilinearly, with
  random shifts of up to one source pixel as training augmentation.
* `shapes`: procedurally drawn shapes (disk, square, triangle, cross, ring,
  bar) at random positions, sizes and intensities, with noise; infinite.

Images are float32 `[B, H, W, 1]` in [-1, 1], labels int32 `[B]`.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from jaxsparse.patterns.base import check_int
from models.data.rng import check_batch
from models.registry import Registry

IMAGE_SETS = Registry("image task")
SHAPES = ("disk", "square", "triangle", "cross", "ring", "bar")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageTask:
    """Attributes: name (in `IMAGE_SETS`), image_size (side in pixels, >= 8)."""

    name: str
    image_size: int = 32

    def __post_init__(self):
        IMAGE_SETS.get(self.name)
        check_int("image_size", self.image_size, minimum=8, owner="ImageTask")

    @property
    def num_classes(self) -> int:
        return 10 if self.name == "digits" else len(SHAPES)

    def batch(self, rng: np.random.Generator, batch_size: int, split: str, index: int = 0) -> dict:
        """`{"images", "labels"}`; `index` is the batch number (eval batches use it)."""
        check_batch("ImageTask", batch_size, split)
        make = IMAGE_SETS.get(self.name)
        images, labels = make(rng, batch_size, self.image_size, split, index)
        return {"images": images.astype(np.float32), "labels": labels.astype(np.int32)}


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits task needs scikit-learn (pip install scikit-learn); or use --task shapes."
        ) from e
    d = load_digits()
    images = d.images.astype(np.float32) / 16.0  # [N, 8, 8] in [0, 1]
    order = np.random.default_rng(0).permutation(len(images))  # fixed train/eval split
    return images[order], d.target[order]


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize `[N, h, w] -> [N, size, size]` (align-corners sampling)."""
    n, h, w = images.shape
    ys, xs = np.linspace(0, h - 1, size), np.linspace(0, w - 1, size)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[None, :, None], (xs - x0)[None, None, :]
    top = images[:, y0][:, :, x0] * (1 - fx) + images[:, y0][:, :, x1] * fx
    bottom = images[:, y1][:, :, x0] * (1 - fx) + images[:, y1][:, :, x1] * fx
    return top * (1 - fy) + bottom * fy


@IMAGE_SETS.register("digits")
def digits(rng, b, size, split, index):
    """Upsampled scikit-learn digits; 1,497 for training, the last 300 for eval.

    Eval batches walk the 300 eval images in order (batch i starts at image
    i * b, wrapping), so a few eval batches cover the whole eval set.
    """
    images, labels = _digits()
    first_eval = len(images) - 300
    if split == "train":
        idx = rng.integers(0, first_eval, b)
    else:
        idx = first_eval + (index * b + np.arange(b)) % 300
    x = images[idx]
    if split == "train":  # shift by up to one source pixel (zero fill)
        dy, dx = rng.integers(-1, 2, (2, b))
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
        x = np.stack([padded[i, 1 + dy[i] : 9 + dy[i], 1 + dx[i] : 9 + dx[i]] for i in range(b)])
    return (_resize(x, size) * 2.0 - 1.0)[..., None], labels[idx]


def draw_shapes(kind: np.ndarray, cy, cx, radius, size: int) -> np.ndarray:
    """Masks `[B, size, size]` (float in [0, 1]) of shapes `kind` (indices into `SHAPES`)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    y = (yy[None] - cy[:, None, None]) / radius[:, None, None]
    x = (xx[None] - cx[:, None, None]) / radius[:, None, None]
    r = np.sqrt(x * x + y * y)
    masks = np.stack(
        [
            r <= 1.0,  # disk
            (np.abs(x) <= 0.8) & (np.abs(y) <= 0.8),  # square
            (y <= 0.8) & (y >= 2 * np.abs(x) - 1.0),  # triangle
            (np.minimum(np.abs(x), np.abs(y)) <= 0.3) & (np.maximum(np.abs(x), np.abs(y)) <= 1.0),
            (r <= 1.0) & (r >= 0.55),  # ring
            (np.abs(x) <= 1.0) & (np.abs(y) <= 0.3),  # bar
        ],
        axis=1,
    )  # [B, kinds, size, size]
    return masks[np.arange(len(kind)), kind].astype(np.float32)


@IMAGE_SETS.register("shapes")
def shapes(rng, b, size, split, index):
    """Random shapes (class = shape) at random places, sizes and brightness, plus noise."""
    kind = rng.integers(0, len(SHAPES), b)
    radius = rng.uniform(0.18, 0.32, b) * size
    cy, cx = rng.uniform(radius, size - 1 - radius, (2, b))
    brightness = rng.uniform(0.6, 1.0, b)[:, None, None]
    x = draw_shapes(kind, cy, cx, radius, size) * brightness
    x = x + rng.normal(0.0, 0.05, x.shape)
    return (np.clip(x, 0.0, 1.0) * 2.0 - 1.0)[..., None], kind
