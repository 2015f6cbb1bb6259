"""Short procedurally generated videos: one shape moving in a straight line.

A clip is `[F, S, S, 1]` in [-1, 1]; its label is the shape (as in
`images.SHAPES`), so a class-conditional video DiT learns both what to draw
and that it should move smoothly from frame to frame.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxsparse.patterns.base import check_int
from models.data import images
from models.data.rng import check_batch


@dataclasses.dataclass(frozen=True, kw_only=True)
class VideoTask:
    """Attributes: frames F (>= 2), image_size S (>= 8)."""

    frames: int = 8
    image_size: int = 16
    name: str = "moving_shapes"

    def __post_init__(self):
        check_int("frames", self.frames, minimum=2, owner="VideoTask")
        check_int("image_size", self.image_size, minimum=8, owner="VideoTask")

    @property
    def num_classes(self) -> int:
        return len(images.SHAPES)

    def batch(self, rng: np.random.Generator, batch_size: int, split: str, index: int = 0) -> dict:
        """`{"images": [B, F, S, S, 1], "labels": [B]}` (split, index: only the stream)."""
        check_batch("VideoTask", batch_size, split)
        b, f, s = batch_size, self.frames, self.image_size
        kind = rng.integers(0, len(images.SHAPES), b)
        radius = rng.uniform(0.2, 0.3, b) * s
        lo, hi = radius, s - 1 - radius
        start = rng.uniform(lo, hi, (2, b))
        end = rng.uniform(lo, hi, (2, b))
        frac = np.linspace(0.0, 1.0, f)[:, None]
        cy = start[0] + (end[0] - start[0]) * frac  # [F, B]
        cx = start[1] + (end[1] - start[1]) * frac
        clips = np.stack([images.draw_shapes(kind, cy[i], cx[i], radius, s) for i in range(f)], 1)
        clips = clips * 2.0 - 1.0
        return {"images": clips[..., None].astype(np.float32), "labels": kind.astype(np.int32)}
