"""Combining attention branches (P5): lse merge and gated sums."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def lse_merge(outputs, lses):
    """One softmax over the union of disjoint key sets, from per-set `(out, lse)`.

    `out_i [B, T, H, Dv]`, `lse_i [B, H, T]` (-inf where a set is empty for a
    row). Returns `(out, lse)`; a row empty in every set gets 0 and -inf.
    Exact: `out = sum_i exp(lse_i - lse) out_i`, `lse = logsumexp_i lse_i`.
    """
    out, lse = lse_merge_sets(
        [o[:, :, :, None] for o in outputs], [jnp.moveaxis(x, 1, 2)[..., None] for x in lses], 3
    )
    return out, jnp.moveaxis(lse, 1, 2)


def lse_merge_sets(outputs, lses, axis: int):
    """`lse_merge` of sets laid along an axis: `out_i [..., n_i, ..., Dv]`, `lse_i [..., n_i, ...]`.

    `lse_i` has `out_i`'s shape without the last axis; the `n_i` sets of each
    lie along `axis` (counted from the front) of both. Returns `(out, lse)`
    with that axis reduced. Each partial output is read once, in its own
    layout (the routed selections merge their per-slot results this way).
    """
    lse = jnp.concatenate(lses, axis=axis)
    m = lse.max(axis, keepdims=True)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    w = jnp.exp(lse - m_safe)  # 0 for empty sets
    total = w.sum(axis, keepdims=True)
    has = total > 0
    w = w / jnp.where(has, total, 1.0)
    out, start = 0.0, 0
    for o in outputs:
        n = o.shape[axis]
        wi = jax.lax.slice_in_dim(w, start, start + n, axis=axis)[..., None]
        out = out + (wi * o.astype(jnp.float32)).sum(axis)
        start += n
    merged = jnp.where(has, m_safe + jnp.log(jnp.where(has, total, 1.0)), -jnp.inf)
    return out.astype(outputs[0].dtype), merged.squeeze(axis)


def gated_sum(outputs, gates):
    """`sum_i gates[..., i] * out_i` (NSA's output: branches normalised separately).

    `out_i [B, T, H, Dv]`, `gates [B, T, H, n]` (already through a sigmoid).
    """
    gates = gates.astype(outputs[0].dtype)
    return sum(gates[..., i : i + 1] * o for i, o in enumerate(outputs))
