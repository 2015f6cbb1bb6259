"""Operand layouts and BlockSpecs: how HBM arrays are cut into per-head tiles.

With D and Dv multiples of 128 the operands keep the caller's layout, viewed
as `[B, L, N * D]` (a free reshape): a head's tile is a lane-aligned column
block. Otherwise they are transposed to `[B, N, L, D]`, where a tile spans
the full last dimension. Either way a kernel sees 2-D `[rows, D]` refs.
Per-row vectors (lse, delta, segment ids) travel as lane-dense `[1, L]` rows.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.tpu import common as cm


def to_kernel_layout(x, st: cm.Statics):
    """`[B, L, N, D]` -> `[B, L, N * D]` (heads minor, free) or `[B, N, L, D]`."""
    if st.heads_minor:
        return x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3])
    return jnp.swapaxes(x, 1, 2)


def from_kernel_layout(x, st: cm.Statics, heads: int):
    """Inverse of `to_kernel_layout`: back to `[B, L, N, D]`."""
    if st.heads_minor:
        return x.reshape(x.shape[0], x.shape[1], heads, x.shape[2] // heads)
    return jnp.swapaxes(x, 1, 2)


def kernel_shape(B: int, L: int, N: int, D: int, st: cm.Statics) -> tuple[int, ...]:
    return (B, L, N * D) if st.heads_minor else (B, N, L, D)


def tile_spec(st: cm.Statics, rows: int, width: int, index: Callable) -> pl.BlockSpec:
    """BlockSpec of a `[rows, width]` tile of a per-head operand.

    `index(*grid, *prefetch) -> (b, head, row_block)`; the kernel sees a 2-D ref
    in either layout.
    """
    if st.heads_minor:

        def index_map(*args):
            b, n, r = index(*args)
            return b, r, n

        return pl.BlockSpec((None, rows, width), index_map)

    def index_map_t(*args):
        b, n, r = index(*args)
        return b, n, r, 0

    return pl.BlockSpec((None, None, rows, width), index_map_t)


def row_spec(width: int, index: Callable) -> pl.BlockSpec:
    """BlockSpec of a `[1, width]` lane-dense row of a `[B, N, 1, L]` array (lse, delta).

    `index(*grid, *prefetch) -> (b, n, block)`.
    """

    def index_map(*args):
        b, n, r = index(*args)
        return b, n, 0, r

    return pl.BlockSpec((None, None, 1, width), index_map)


def segment_spec(width: int, index: Callable) -> pl.BlockSpec:
    """BlockSpec of a `[1, width]` row of `[B, 1, L]` segment ids; `index -> (b, block)`."""

    def index_map(*args):
        b, r = index(*args)
        return b, 0, r

    return pl.BlockSpec((None, 1, width), index_map)
