"""In-tile helpers shared by the kernel bodies: logits, masks, row/column statistics.

Vector shapes follow the TPU's (sublane, lane) = (8, 128) tiling: per-row
statistics (running max, denominator, lse, delta) live as `[rows, 128]`
lane-replicated columns in VMEM scratch; rows `[1, n]` become such columns
(and back) with one transpose.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import lax

from pallas_kernels.tpu import common as cm

# dot_general dimension numbers: A @ B and A @ B^T.
NN = (((1,), (0,)), ((), ()))
NT = (((1,), (1,)), ((), ()))


def row_to_column(row, rows: int):
    """A lane-dense `[1, n]` row -> `[n, 128]` lane-replicated column (one transpose)."""
    return jnp.broadcast_to(row, (cm.LANES, rows)).T


def column_to_row(col):
    """A `[n, 128]` lane-replicated column -> `[1, n]` row (one transpose)."""
    return col.T[:1, :]


def widen(col, width: int):
    """`[n, 128]` lane-replicated column broadcast to `[n, width]`."""
    return jnp.broadcast_to(col[:, :1], (col.shape[0], width))


def logits(st: cm.Statics, a, b):
    """`cap(scale * a @ b^T)` in f32 and its derivative w.r.t. `a @ b^T`.

    Returns `(s, dcap)`; `dcap` is None without a soft cap. The scale is left
    out of `dcap` (the backward applies it once, at the end).
    """
    s = lax.dot_general(a, b, NT, preferred_element_type=jnp.float32) * st.scale
    if st.logits_soft_cap is None:
        return s, None
    t = jnp.tanh(s / st.logits_soft_cap)
    return st.logits_soft_cap * t, 1.0 - t * t


def tile_mask(st: cm.Statics, *, partial: bool, q_pos, kv_pos, head, q_seg, kv_seg) -> Any:
    """Element mask of one tile, or None when nothing needs masking.

    `q_pos`, `kv_pos` are int32 arrays of the tile's shape (either
    orientation); `q_seg`, `kv_seg` broadcast to it. A full tile is allowed by
    the pattern and holds no key padding, so only segments may apply there.
    """
    mask = None
    if partial:
        mask = kv_pos < st.kv_len
        if st.mask_fn is not None:
            mask = mask & jnp.broadcast_to(st.mask_fn(q_pos, kv_pos, head), mask.shape)
    if st.has_segments and (partial or st.segments_on_full_tiles):
        same = q_seg == kv_seg
        mask = same if mask is None else mask & same
    return mask


def positions(shape: tuple[int, int], q_start, kv_start, *, q_axis: int):
    """int32 query and key positions of a tile; queries run along `q_axis`."""
    q_pos = q_start + lax.broadcasted_iota(jnp.int32, shape, q_axis)
    kv_pos = kv_start + lax.broadcasted_iota(jnp.int32, shape, 1 - q_axis)
    return q_pos, kv_pos


def dead_rows_to_inf(lse):
    """lse -inf (a row that attends nothing) -> +inf, so exp(s - lse) is 0, not NaN."""
    return jnp.where(lse == -jnp.inf, jnp.inf, lse)
