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
    values, idx = jax.lax.top_k(scores, k)
    return jnp.where(values > -jnp.inf, idx.astype(jnp.int32), -1)


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
