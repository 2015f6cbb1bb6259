"""Combining attention branches (P5): lse merge and gated sums."""

from __future__ import annotations

import jax.numpy as jnp


def lse_merge(outputs, lses):
    """One softmax over the union of disjoint key sets, from per-set `(out, lse)`.

    `out_i [B, T, H, Dv]`, `lse_i [B, H, T]` (-inf where a set is empty for a
    row). Returns `(out, lse)`; a row empty in every set gets 0 and -inf.
    Exact: `out = sum_i exp(lse_i - lse) out_i`, `lse = logsumexp_i lse_i`.
    """
    lse = jnp.stack(lses)  # [n, B, H, T]
    m = lse.max(0)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    w = jnp.exp(lse - m_safe[None])  # 0 for empty sets
    total = w.sum(0)
    has = total > 0
    w = w / jnp.where(has, total, 1.0)[None]
    out = sum(
        jnp.moveaxis(wi, 1, 2)[..., None] * oi.astype(jnp.float32)
        for wi, oi in zip(w, outputs, strict=True)
    )
    merged = jnp.where(has, m_safe + jnp.log(jnp.where(has, total, 1.0)), -jnp.inf)
    return out.astype(outputs[0].dtype), merged


def gated_sum(outputs, gates):
    """`sum_i gates[..., i] * out_i` (NSA's output: branches normalised separately).

    `out_i [B, T, H, Dv]`, `gates [B, T, H, n]` (already through a sigmoid).
    """
    gates = gates.astype(outputs[0].dtype)
    return sum(gates[..., i : i + 1] * o for i, o in enumerate(outputs))
