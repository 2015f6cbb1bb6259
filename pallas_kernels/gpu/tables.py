"""Block tables for the GPU kernels, built with numpy (tests and benchmarks).

The library builds its own tables (jaxsparse.sparsity); these helpers exist
so that the kernels can be tested and timed without it. A block
classification `kind` is an int8 array [..., Tb, Sb]: 0 = empty (skipped),
1 = partial (mask evaluated in the tile), 2 = full (no mask math).
"""

from __future__ import annotations

import numpy as np


def lists_from_kind(kind: np.ndarray):
    """Row-major lists from a classification.

    Args:
      kind: int [..., R, C] with values 0/1/2.

    Returns:
      indices int32 [..., R, Kmax], counts int32 [..., R], full bool
      [..., R, Kmax]: for row r the columns with kind > 0, ascending; entries
      past the count repeat the last valid column (0 when the count is 0).
    """
    kind = np.asarray(kind)
    nz = kind > 0
    counts = nz.sum(-1).astype(np.int32)
    kmax = max(int(counts.max(initial=0)), 1)
    cols = np.arange(kind.shape[-1], dtype=np.int64)
    # Stable sort puts non-empty columns first, in ascending order.
    key = np.where(nz, cols, kind.shape[-1] + cols)
    order = np.argsort(key, axis=-1, kind="stable")[..., :kmax]
    pos = np.arange(kmax)
    last = np.take_along_axis(order, np.maximum(counts - 1, 0)[..., None], -1)
    last = np.where(counts[..., None] > 0, last, 0)
    indices = np.where(pos < counts[..., None], order, last).astype(np.int32)
    full = np.take_along_axis(kind, indices, -1) == 2
    full = full & (pos < counts[..., None])
    return indices, counts, full


def kind_from_dense(mask: np.ndarray, block_q: int, block_kv: int):
    """Classification of a dense boolean mask [..., Tp, Sp] (small sizes)."""
    *lead, tp, sp = mask.shape
    m = mask.reshape(*lead, tp // block_q, block_q, sp // block_kv, block_kv)
    anyv = m.any(axis=(-3, -1))
    allv = m.all(axis=(-3, -1))
    return np.where(allv, 2, np.where(anyv, 1, 0)).astype(np.int8)


def kind_causal_window(
    tb: int,
    sb: int,
    block_q: int,
    block_kv: int,
    *,
    q_offset: int = 0,
    kv_len: int | None = None,
    left: int | None = None,
):
    """Closed-form classification of causal (and left-window) masks.

    Allowed pairs: k <= q and (left is None or q - left <= k), k < kv_len,
    with q = q_offset + row.
    """
    kv_len = sb * block_kv if kv_len is None else kv_len
    q_lo = q_offset + np.arange(tb)[:, None] * block_q
    q_hi = q_lo + block_q - 1
    k_lo = np.arange(sb)[None, :] * block_kv
    k_hi = k_lo + block_kv - 1
    any_ok = k_lo <= np.minimum(q_hi, kv_len - 1)
    all_ok = (k_hi <= q_lo) & (k_hi < kv_len)
    if left is not None:
        any_ok &= k_hi >= q_lo - left
        all_ok &= k_lo >= q_hi - left
    return np.where(all_ok, 2, np.where(any_ok, 1, 0)).astype(np.int8)


def all_tables(kind: np.ndarray):
    """(q-major lists, kv-major lists) for a classification [..., Tb, Sb]."""
    return lists_from_kind(kind), lists_from_kind(np.swapaxes(kind, -1, -2))
