"""`vertical_slash_attention`: MInference's vertical-slash with the columns gathered, exact.

A single block-sparse call (`pattern=VerticalSlash()`) is exact but visits
every tile that holds a kept column, and kept columns scatter over the whole
sequence. Here the two parts run separately and merge by log-sum-exp:

  1. diagonals: block-sparse over the tiles the kept diagonals cross, with the
     kept columns masked out (`VerticalSlashMask(include_vertical=False)`);
  2. columns: the kept keys of each head gathered into a compact sequence
     (`[B, n_vertical, H, D]`) with their original positions, attended with
     `PositionCausal` (ALGORITHMS.md P2, "column list").

The union is attended with one softmax (the two key sets are disjoint), so
the result equals the single call; its cost is the diagonals' tiles plus
`T x vertical_size`, not whole tile columns.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxsparse.methods import merge
from jaxsparse.ops import api, validate
from jaxsparse.patterns.dynamic import common, position_causal, vertical_slash, vertical_slash_mask
from jaxsparse.selection import sorting


def gather_columns(x, positions):
    """Keys `x [B, S, K, D]` at per-query-head positions `[B, H, N]` -> `[B, N, H, D]`."""
    b, _, kh, _ = x.shape
    h = positions.shape[1]
    b_idx = jnp.arange(b, dtype=jnp.int32)[:, None, None]
    kv_idx = (jnp.arange(h, dtype=jnp.int32) // (h // kh))[None, :, None]
    return jnp.moveaxis(x[b_idx, positions, kv_idx], 1, 2)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VerticalSlashPlan:
    """What `vertical_slash_attention` runs: the diagonal part and the gathered columns.

    diagonals / diagonal_sparsity: `VerticalSlashMask(include_vertical=False)`
    and its tiles; columns / column_sparsity: `PositionCausal` over the
    gathered keys and its tiles; positions `[B, H, n]` of those keys.
    """

    diagonals: Any
    diagonal_sparsity: Any
    columns: Any
    column_sparsity: Any
    positions: Any


def vertical_slash_plan(q, k, *, pattern: vertical_slash.VerticalSlash, config=None):
    """Select (MInference's online estimate) and build both parts' tile lists."""
    t, h, s = q.shape[1], q.shape[2], k.shape[1]
    q_offset = s - t
    pattern.bind(q_len=t, kv_len=s, q_offset=q_offset, num_heads=h)
    vert, slash = vertical_slash.vertical_slash_select(
        q,
        k,
        vertical_size=pattern.vertical_size,
        slash_size=pattern.slash_size,
        last_q=pattern.last_q,
        init_columns=pattern.init_columns,
        local_diagonals=pattern.local_diagonals,
        q_offset=q_offset,
    )
    diag = vertical_slash_mask.VerticalSlashMask(
        vert, slash, include_vertical=False, q_offset=q_offset
    )
    bq, bk = common.tiles(config, q_len=t, kv_len=s)
    diag_sp = vertical_slash_mask.vertical_slash_sparsity(
        diag, num_heads=h, block_q=bq, block_kv=bk, q_len=t, kv_len=s, q_offset=q_offset
    )
    # Kept columns in ascending position order: exactly n per head.
    n = min(s, max(pattern.vertical_size, pattern.init_columns))
    positions = sorting.argsort_rows(~vert, 2)[..., :n]
    cols = position_causal.PositionCausal(positions, q_offset=q_offset)
    bq, bk = common.tiles(config, q_len=t, kv_len=n)
    cols_sp = position_causal.position_causal_sparsity(
        cols, num_heads=h, block_q=bq, block_kv=bk, q_len=t, q_offset=q_offset
    )
    return VerticalSlashPlan(diag, diag_sp, cols, cols_sp, positions)


def vertical_slash_attention(
    q,
    k,
    v,
    *,
    pattern: vertical_slash.VerticalSlash | None = None,
    scale: float | None = None,
    implementation: str | None = None,
    config=None,
    return_lse: bool = False,
    plan: VerticalSlashPlan | None = None,
):
    """Vertical-slash attention with gathered columns; equals `attention(pattern=VerticalSlash())`.

    Args:
      q: `[B, T, H, D]`; k: `[B, S, K, D]`; v: `[B, S, K, Dv]` (queries are the
        last T positions).
      pattern: a `jaxsparse.patterns.VerticalSlash` (MInference defaults if None).
      scale, implementation, config: as in `jaxsparse.attention`.
      return_lse: also return lse `[B, H, T]`.
      plan: a precomputed `vertical_slash_plan(q, k, ...)` (to time selection apart).
    """
    pattern = vertical_slash.VerticalSlash() if pattern is None else pattern
    if not isinstance(pattern, vertical_slash.VerticalSlash):
        raise TypeError(
            f"vertical_slash_attention: pattern must be VerticalSlash, got {pattern!r}."
        )
    validate.check_batched_qkv("vertical_slash_attention", q, k, v)
    if plan is None:
        plan = vertical_slash_plan(q, k, pattern=pattern, config=config)
    kw = dict(
        scale=scale,
        implementation=implementation,
        config=config,
        q_offset=k.shape[1] - q.shape[1],
        return_lse=True,
    )
    o_diag, lse_diag = api.attention(
        q, k, v, pattern=plan.diagonals, sparsity=plan.diagonal_sparsity, **kw
    )
    o_col, lse_col = api.attention(
        q,
        gather_columns(k, plan.positions),
        gather_columns(v, plan.positions),
        pattern=plan.columns,
        sparsity=plan.column_sparsity,
        **kw,
    )
    out, lse = merge.lse_merge((o_diag, o_col), (lse_diag, lse_col))
    return (out, lse) if return_lse else out
