"""Materialise a pattern's element mask (oracle, tests, pictures)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxsparse.patterns import base


def dense_mask(
    pattern: base.Pattern,
    *,
    q_len: int,
    kv_len: int,
    q_offset: int | None = None,
    num_heads: int = 1,
    xp: Any = jnp,
) -> Any:
    """The boolean mask `[Hx, q_len, kv_len]` of `pattern` (Hx = num_heads or 1).

    Args:
      pattern: any pattern; it is bound to these lengths first.
      q_len, kv_len: query and key lengths.
      q_offset: position of query row 0 (default `kv_len - q_len`).
      num_heads: number of query heads (matters for head-dependent patterns).
      xp: `jax.numpy` (default, works with traced patterns) or `numpy`.
    """
    if not isinstance(pattern, base.Pattern):
        raise TypeError(
            "dense_mask: pattern must be a jaxsparse pattern (e.g. jaxsparse.patterns.Causal()), "
            f"got {type(pattern).__name__}."
        )
    for name, value in dict(q_len=q_len, kv_len=kv_len, num_heads=num_heads).items():
        base.check_int(name, value, minimum=1, owner="dense_mask")
    if q_offset is None:
        q_offset = kv_len - q_len
    base.check_positions("dense_mask", q_offset=q_offset, q_len=q_len, kv_len=kv_len)
    pattern = pattern.bind(q_len=q_len, kv_len=kv_len, q_offset=q_offset, num_heads=num_heads)
    hx = num_heads if pattern.head_dependent else 1
    q_pos = xp.arange(q_len, dtype=np.int32)[:, None] + q_offset
    kv_pos = xp.arange(kv_len, dtype=np.int32)[None, :]
    head = xp.arange(hx, dtype=np.int32)[:, None, None]
    m = pattern.mask_fn(q_pos[None], kv_pos[None], head)
    return xp.broadcast_to(m, (hx, q_len, kv_len))
