"""Run a per-query selection in chunks of rows, bounding peak memory.

Scores such as MoBA's gate or NSA's compressed probabilities are
`[B, H, T, N]`; at 128k tokens they do not fit at once, but each query's
selection only depends on its own row, so rows are processed in chunks.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Elements of one chunk's score array (float32): 64 MiB on a CPU host; 512 MiB on
# an accelerator, where each chunk is a sequential step and small steps leave
# the device idle (NSA's importance at 64k: 256 steps of 64 MiB took 70 ms).
DEFAULT_ELEMENTS = 1 << 24
ACCELERATOR_ELEMENTS = 1 << 27


def rows_per_chunk(per_row: int, elements: int | None = None) -> int:
    """Rows per step so that `rows * per_row <= elements` (at least 1).

    `elements` defaults to `DEFAULT_ELEMENTS` on CPU and `ACCELERATOR_ELEMENTS`
    on GPU / TPU (the default backend when traced).
    """
    if elements is None:
        cpu = jax.default_backend() == "cpu"
        elements = DEFAULT_ELEMENTS if cpu else ACCELERATOR_ELEMENTS
    return max(1, elements // max(1, per_row))


def map_query_rows(fn, xs, *, rows: int, q_offset: int):
    """`fn(*x_rows, q_pos) -> [B, X, n, ...]` over chunks of `rows` query rows.

    Args:
      fn: the per-chunk selection; `q_pos [n]` are absolute query positions.
      xs: an array or a tuple of arrays whose axis 1 is the query axis T
        (e.g. q `[B, T, H, D]` and its lse as `[B, T, H]`).
      rows: rows per chunk (static).
      q_offset: position of query row 0.

    Returns:
      The chunk outputs concatenated on axis 2, as if `fn` ran on all rows.
    """
    xs = xs if isinstance(xs, tuple) else (xs,)
    t = xs[0].shape[1]
    if t <= rows:
        return fn(*xs, q_offset + jnp.arange(t, dtype=jnp.int32))
    n = math.ceil(t / rows)
    pad = n * rows - t

    def split(x):
        x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
        return jnp.moveaxis(x.reshape((x.shape[0], n, rows) + x.shape[2:]), 1, 0)

    ps = (q_offset + jnp.arange(n * rows, dtype=jnp.int32)).reshape(n, rows)
    out = jax.lax.map(lambda a: fn(*a[0], a[1]), (tuple(split(x) for x in xs), ps))
    out = jnp.moveaxis(out, 0, 2)  # [B, X, n, rows, ...]
    out = out.reshape(out.shape[:2] + (n * rows,) + out.shape[4:])
    return out[:, :, :t]
