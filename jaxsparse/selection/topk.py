"""Top-k with stable ties and invalid entries (P4 selectors).

Ties are broken by the lower index (`lax.top_k` is stable), so a selection
is reproducible and testable index for index. Entries scored `-inf` are
never selected: they come back as index -1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def topk_indices(scores, k: int):
    """Indices `[..., min(k, n)]` of the largest scores, best first; -1 where the score is -inf.

    Args:
      scores: float `[..., n]`; `-inf` marks entries that may not be chosen and
        `+inf` entries that must be (forced blocks).
      k: how many to keep (clipped to n).
    """
    k = max(1, min(int(k), scores.shape[-1]))
    if k <= ITERATIVE_MAX_K:
        return _iterative_topk(scores, k)
    values, idx = jax.lax.top_k(scores, k)
    return jnp.where(values > -jnp.inf, idx.astype(jnp.int32), -1)


# Up to this k, `k` argmax passes (memory-bound reductions) beat `lax.top_k`, which
# XLA:GPU lowers to a sort of every row: MoBA's top-2 of 128 chunks over 1M rows
# took 3.5 ms as a top_k and is a few 0.1 ms as argmaxes (H100, 2026-11-22).
ITERATIVE_MAX_K = 8


def _iterative_topk(scores, k: int):
    """`topk_indices` by repeated argmax (first maximum: ties go to the lower index)."""
    col = jax.lax.broadcasted_iota(jnp.int32, scores.shape, scores.ndim - 1)
    out = []
    for _ in range(k):
        idx = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        best = jnp.take_along_axis(scores, idx[..., None], axis=-1)[..., 0]
        out.append(jnp.where(best > -jnp.inf, idx, -1))
        scores = jnp.where(col == idx[..., None], -jnp.inf, scores)
    return jnp.stack(out, axis=-1)


def indices_to_mask(indices, n: int):
    """Boolean `[..., n]` with True at every listed index (-1 entries ignored)."""
    onehot = jax.nn.one_hot(indices, n, dtype=jnp.bool_)  # index -1 gives an all-False row
    return onehot.any(axis=-2)


def topk_mask(scores, k: int):
    """Boolean `[..., n]`: the `k` best finite or forced scores of each row (ties: lower index)."""
    return indices_to_mask(topk_indices(scores, k), scores.shape[-1])


def rank_mask(scores, counts):
    """Boolean `[..., n]`: the `counts[...]` largest scores of each row (a per-row k).

    `counts` is an int array broadcastable to `scores.shape[:-1]`; entries
    scored -inf are never kept. Ties are broken by the lower index.
    """
    order = jnp.argsort(-scores, axis=-1, stable=True)
    rank = jnp.argsort(order, axis=-1, stable=True)  # rank of each entry, 0 = best
    return (rank < jnp.asarray(counts)[..., None]) & (scores > -jnp.inf)
