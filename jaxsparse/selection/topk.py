"""Top-k with stable ties and invalid entries (P4 selectors).

Ties are broken by the lower index (`lax.top_k` is stable), so a selection
is reproducible and testable index for index. Entries scored `-inf` are
never selected: they come back as index -1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsparse.selection import sorting


def topk_indices(scores, k: int):
    """Indices `[..., min(k, n)]` of the largest scores, best first; -1 where the score is -inf.

    Args:
      scores: float `[..., n]`; `-inf` marks entries that may not be chosen and
        `+inf` entries that must be (forced blocks).
      k: how many to keep (clipped to n).
    """
    n = scores.shape[-1]
    k = max(1, min(int(k), n))
    if k <= ITERATIVE_MAX_K:
        return _iterative_topk(scores, k)
    if grouped_applies(n, k):
        return _grouped_topk(scores, k, GROUP_WIDTH)
    return _lax_topk(scores, k)


def grouped_applies(n: int, k: int, width: int | None = None) -> bool:
    """Whether `topk_indices` takes a row of `n` in two levels for this `k`.

    Only where both levels are at most half as wide as the row (`n / GROUP_WIDTH`
    group maxima, `k * GROUP_WIDTH` candidates): each recursive call then works on
    a narrower row, and the candidates are few enough to be worth gathering.
    With a large k (MInference's top-100 of 1,024 blocks, its 1,000 vertical
    columns) the candidates would be the whole row: one `lax.top_k` instead.
    """
    width = GROUP_WIDTH if width is None else width
    return n >= GROUPED_MIN_WIDTH and 2 * k * width <= n


# Up to this k, `k` argmax passes (memory-bound reductions) beat `lax.top_k`, which
# XLA:GPU lowers to a sort of every row: MoBA's top-2 of 128 chunks over 1M rows
# took 3.5 ms as a top_k and is a few 0.1 ms as argmaxes (H100, 2026-11-22).
ITERATIVE_MAX_K = 8


# Wide rows with a larger k (NSA: 16 of 1,024 blocks at 64k tokens) take two levels:
# XLA:GPU's top-k kernel took 11.8 ms for 131k rows of 1,024 (H100, 2026-11-22).
GROUPED_MIN_WIDTH = 256
GROUP_WIDTH = 8

# `kth_value`'s groups: narrower, so that its two levels also take BlockTopK's top-100 of
# 1,024 (400 candidates). Masks at 64k tokens, H200, 2026-12-04 (`bench/kth_value_gpu.py`):
# BlockTopK 0.56 ms against 0.82 with one value sort; Seer's top-53 0.41 against 0.50 with
# groups of 8 (groups of 2: 0.57 and 0.50).
KTH_GROUP_WIDTH = 4


def _lax_topk(scores, k: int):
    values, idx = jax.lax.top_k(scores, k)
    return jnp.where(values > -jnp.inf, idx.astype(jnp.int32), -1)


def _grouped_topk(scores, k: int, width: int):
    """`topk_indices` in two levels over groups of `width` neighbouring entries.

    The k best entries lie in the k groups with the best maxima (ties: lower
    group first), so those groups' entries, in index order, are the only
    candidates: level 1 picks groups by their maximum, level 2 picks entries
    among `k * width` candidates. Both levels break ties by the lower index,
    so the result equals `lax.top_k`'s, index for index.
    """
    safe, cand = _group_candidates(scores, k, width, index_order=True)
    pos = topk_indices(cand, k)  # positions among the candidates, best first
    p = jnp.maximum(pos, 0)
    idx = jnp.take_along_axis(safe, p // width, axis=-1) * width + p % width
    return jnp.where(pos >= 0, idx, -1).astype(jnp.int32)


def _group_candidates(scores, k: int, width: int, *, index_order: bool):
    """The entries of the k groups of `width` neighbours with the best maxima.

    Returns `(groups [..., k], candidates [..., k * width])`: the groups' ids
    (clipped to a valid group where fewer than k groups hold a finite entry;
    those candidates are -inf), best group first, or in index order with the
    empty ones last when `index_order` (which `topk_indices` needs for its
    ties; a k-th value does not).
    """
    *lead, n = scores.shape
    ng = -(-n // width)
    s = jnp.pad(scores, [(0, 0)] * len(lead) + [(0, ng * width - n)], constant_values=-jnp.inf)
    s = s.reshape(*lead, ng, width)
    groups = topk_indices(s.max(axis=-1), k)  # best first; -1: no finite entry
    groups = jnp.where(groups >= 0, groups, ng)
    if index_order:
        groups = sorting.sort_rows(groups, ng + 1)  # empty (ng) last
    safe = jnp.minimum(groups, ng - 1)
    cand = jnp.take_along_axis(s, safe[..., None], axis=-2)  # [..., k, width]
    cand = jnp.where((groups < ng)[..., None], cand, -jnp.inf).reshape(*lead, -1)
    return safe, cand


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
    """Boolean `[..., n]`: the `k` best finite or forced scores of each row (ties: lower index).

    The mask of `topk_indices`. Up to `ONEHOT_MAX_K`, the one-hot of those
    indices (k compares per entry, one fused pass); above it, built from the
    k-th best value (`kth_value`, `split_mask`): a pass over the row instead of
    `[..., k, n]` compares (1,000 columns of 64k at MInference's defaults).
    There values compare as numbers: `-0.0` and `0.0` tie (and go to the
    lower index), where `lax.top_k` would rank `0.0` first.
    """
    n = scores.shape[-1]
    k = max(1, min(int(k), n))
    if k <= ONEHOT_MAX_K:
        return indices_to_mask(topk_indices(scores, k), n)
    return split_mask(scores, kth_value(scores, k), k)


# Up to this k the one-hot of the indices is the cheaper mask: NSA's 16 of 1,024 blocks
# at 64k took 7.84 ms of selection with it and 8.76 ms with `split_mask`, whose count and
# tie prefix sum run over the whole row (H200, sessions 8 and 9, 2026-12-03).
ONEHOT_MAX_K = 16


def kth_value(scores, k: int):
    """Each row's `k`-th best value `[..., 1]` (ties counted; -inf if fewer than k are finite).

    Only the value, so no path needs a key-value sort of the whole row. Where
    `grouped_applies(n, k, KTH_GROUP_WIDTH)`, two levels: the k-th value of
    the candidates (the entries of the k groups of `KTH_GROUP_WIDTH` with the
    best maxima, which hold the row's k best values whichever tied groups
    level 1 picks); otherwise one value sort of the row. Narrower groups than
    `topk_indices`' take BlockTopK's top-100 of 1,024 in two levels too: its
    mask at 64k tokens took 0.56 ms against 0.82 ms with one sort, and a
    radix select in eight passes 1.33 ms (H200, `bench/kth_value_gpu.py`,
    2026-12-04).
    """
    n = scores.shape[-1]
    k = max(1, min(int(k), n))
    if not grouped_applies(n, k, KTH_GROUP_WIDTH):
        return descending(scores)[..., k - 1 : k]
    _, cand = _group_candidates(scores, k, KTH_GROUP_WIDTH, index_order=False)
    return kth_value(cand, k)


def rank_mask(scores, counts):
    """Boolean `[..., n]`: the `counts[...]` largest scores of each row (a per-row k).

    `counts` is an int array broadcastable to `scores.shape[:-1]`; entries
    scored -inf are never kept. Ties are broken by the lower index.
    """
    return ranked_mask(scores, descending(scores), counts)


def descending(scores):
    """Each row's values sorted best first (one value sort, no index payload)."""
    return -sort_values(-scores)


def sort_values(x):
    """Each row of `x` sorted ascending, as `jnp.sort` but not stable.

    Values alone carry nothing a stable order could keep, and a stable sort
    costs XLA:GPU an index payload: it sorts (value, iota) pairs. The Seer
    gate's candidates ([16, 1,024, 212] at 64k tokens) took 0.12 ms that way.
    """
    return jax.lax.sort(x, dimension=x.ndim - 1, is_stable=False)


def ranked_mask(scores, ranked, counts):
    """`rank_mask` given `ranked = descending(scores)`.

    The `c`-th best value `v` of a row splits it: every entry above `v` is
    kept, and of the entries equal to `v` the lowest-indexed ones that fill
    the row up to `c`. Exactly the first `c` entries of a stable descending
    argsort, without the two argsorts (key-value sorts) that cost XLA:GPU
    several times one value sort.
    """
    n = scores.shape[-1]
    counts = jnp.broadcast_to(jnp.asarray(counts, jnp.int32), scores.shape[:-1])[..., None]
    kth = jnp.take_along_axis(ranked, jnp.clip(counts - 1, 0, n - 1), axis=-1)
    return split_mask(scores, kth, counts)


def split_mask(scores, kth, counts):
    """The first `counts` entries of a row in stable descending order, given its `counts`-th
    value `kth` (`[..., 1]`): every entry above it, and the lowest-indexed entries equal to
    it that fill the count. Entries scored -inf are never kept."""
    above = scores > kth
    tied = scores == kth
    room = counts - above.sum(-1, keepdims=True, dtype=jnp.int32)
    first_tied = tied & (jnp.cumsum(tied, axis=-1, dtype=jnp.int32) <= room)
    return (above | first_tied) & (counts > 0) & (scores > -jnp.inf)
