"""Cumulative-mass selection: budgets by coverage (FlexPrefill, PSA bands, top-p).

Entries are ranked by score, best first (ties: lower index first), and each
entry learns the mass ranked before it (`exclusive`) and up to and including it
(`inclusive`), in its original position.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxsparse.selection import topk


def sorted_cumsum(scores):
    """`(inclusive, exclusive)` cumulative mass of each entry in descending-score order.

    Args:
      scores: float `[..., n]`, non-negative (probabilities or masses).

    Returns:
      Two float32 arrays shaped like `scores`.
    """
    scores = scores.astype(jnp.float32)
    order = jnp.argsort(-scores, axis=-1, stable=True)
    ranked = jnp.take_along_axis(scores, order, axis=-1)
    inclusive = jnp.cumsum(ranked, axis=-1)
    inverse = jnp.argsort(order, axis=-1, stable=True)
    inclusive = jnp.take_along_axis(inclusive, inverse, axis=-1)
    return inclusive, inclusive - scores


def cover_count(scores, mass):
    """Entries needed to cover `mass`: `#(sorted cumsum <= mass) + 1` (FlexPrefill's budget rule).

    `mass` broadcasts against `scores.shape[:-1]`. The result is int32 and may
    exceed n by one when the whole row sums to at most `mass`; callers clamp it.
    """
    return _covered(scores, topk.descending(scores.astype(jnp.float32)), mass) + 1


def cover_mask(scores, mass):
    """Boolean mask of the best entries whose sorted cumulative sum stays `<= mass`.

    FlexPrefill's query-aware block set (`score_cover_idx`): the entry that
    crosses `mass` is not kept. Scores are non-negative, so the kept entries
    are the first `#(sorted cumsum <= mass)` in rank order.
    """
    scores = scores.astype(jnp.float32)
    ranked = topk.descending(scores)
    return topk.ranked_mask(scores, ranked, _covered(scores, ranked, mass))


def _covered(scores, ranked, mass):
    """`#(cumsum of the ranked scores <= mass)` per row, int32."""
    inclusive = jnp.cumsum(ranked, axis=-1)
    return (inclusive <= _row_mass(mass, scores)).sum(-1, dtype=jnp.int32)


def _row_mass(mass, scores):
    """`mass` (scalar or per row) as `[..., 1]`, broadcastable against `scores`."""
    return jnp.broadcast_to(jnp.asarray(mass, jnp.float32), scores.shape[:-1])[..., None]
