"""Reduce a per-cell selection over the tiles of a kernel (P4 list conversions).

A selection made on one grid (per token, per 64-key block, per pyramid level)
is visited on another (the kernel's tiles). Each tile covers a static,
contiguous range of cells; a tile is *touched* when any of its cells is
selected and *covered* when all are.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def uniform_ranges(num_out: int, out_size: int, in_size: int, length: int):
    """Cells of size `in_size` overlapping each group of `out_size` positions.

    Group o covers positions `[o*out_size, min((o+1)*out_size, length))`.
    Returns inclusive numpy `(lo, hi)`, each `[num_out]`.
    """
    o = np.arange(num_out)
    first = o * out_size
    last = np.minimum((o + 1) * out_size, length) - 1
    return first // in_size, np.maximum(last, first) // in_size


def reduce_ranges(x, axis: int, lo: np.ndarray, hi: np.ndarray, *, op: str):
    """`any` / `all` of boolean `x` over the static cell ranges `[lo[o], hi[o]]` along `axis`.

    Returns `x` with `axis` replaced by `len(lo)` groups.
    """
    if op not in ("any", "all"):
        raise ValueError(f"reduce_ranges: op={op!r} must be 'any' or 'all'.")
    axis = axis % x.ndim
    lo, hi = np.asarray(lo), np.asarray(hi)
    width = int((hi - lo).max()) + 1 if len(lo) else 1
    if width == 1:
        if np.array_equal(lo, np.arange(x.shape[axis])):
            return x  # one cell per group (tiles of the selection's blocks): no gather
        return jnp.take(x, jnp.asarray(lo, jnp.int32), axis=axis)
    step = np.arange(width)
    idx = np.minimum(lo[:, None] + step[None, :], hi[:, None])  # repeats the last cell: harmless
    if np.all(idx == lo[:, None] + step[None, :]) and np.all(
        lo == lo[0] + width * np.arange(len(lo))
    ):
        # Aligned groups of equal width: a reshape, no gather.
        n = x.shape[axis]
        stop = int(lo[0]) + width * len(lo)
        if stop <= n:
            sl = [slice(None)] * x.ndim
            sl[axis] = slice(int(lo[0]), stop)
            g = x[tuple(sl)].reshape(x.shape[:axis] + (len(lo), width) + x.shape[axis + 1 :])
            return g.any(axis + 1) if op == "any" else g.all(axis + 1)
    g = jnp.take(x, jnp.asarray(idx.reshape(-1), jnp.int32), axis=axis)
    g = g.reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1 :])
    return g.any(axis + 1) if op == "any" else g.all(axis + 1)


def max_cells(out_size: int, in_size: int, length: int) -> int:
    """Most cells of size `in_size` that one group of `out_size` positions overlaps (static)."""
    lo, hi = uniform_ranges(math.ceil(length / out_size), out_size, in_size, length)
    return int((hi - lo).max()) + 1
