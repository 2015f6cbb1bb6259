"""Logits and masks of a chunk of tiles, shared by the forward and backward passes."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from jaxsparse.ops.xla import pairs as pairs_lib


@dataclasses.dataclass(frozen=True, kw_only=True)
class Static:
    """Everything static about one XLA attention call (hashable)."""

    block_q: int
    block_kv: int
    q_len: int
    kv_len: int
    q_offset: int
    scale: float
    logits_soft_cap: float | None
    use_mask_fn: bool
    chunk: int


def chunk_logits(st: Static, pattern: Any, head: Any, q, k, qb, kb, code, q_seg, kv_seg):
    """Logits, mask and soft-cap derivative for a chunk of C tiles (one head).

    Args:
      q: `[C, block_q, D]` query tiles; k: `[C, block_kv, D]` key tiles.
      qb, kb, code: `[C]` tile coordinates and codes (PAD / PARTIAL / FULL).
      q_seg, kv_seg: `[C, block_q]`, `[C, block_kv]` segment ids or None.

    Returns:
      `(s, mask, dcap)`: f32 logits `[C, bq, bk]` after scale and soft cap,
      the boolean mask, and `d s / d s_raw` (None without a soft cap).
    """
    s = jnp.einsum("cqd,ckd->cqk", q, k, preferred_element_type=jnp.float32) * st.scale
    dcap = None
    if st.logits_soft_cap is not None:
        t = jnp.tanh(s / st.logits_soft_cap)
        s = st.logits_soft_cap * t
        dcap = 1.0 - t * t
    kv_pos = kb[:, None, None] * st.block_kv + jnp.arange(st.block_kv)[None, None, :]
    mask = (code != pairs_lib.PAD)[:, None, None] & (kv_pos < st.kv_len)
    if st.use_mask_fn:
        q_pos = st.q_offset + qb[:, None, None] * st.block_q + jnp.arange(st.block_q)[None, :, None]
        allowed = pattern.mask_fn(q_pos, kv_pos, head)
        mask = mask & ((code == pairs_lib.FULL)[:, None, None] | allowed)
    if q_seg is not None:
        mask = mask & (q_seg[:, :, None] == kv_seg[:, None, :])
    return s, mask, dcap
