"""`from_pattern`: closed-form block metadata on the host (numpy, cached).

The builder never looks at all T*S elements. For each query block it asks the
pattern for a candidate key range (`kv_range`), classifies only those tiles with
the pattern's closed-form classifier, checks the few UNSURE tiles element by
element with `mask_fn`, and compacts. The key-major lists are built the same
way from the transposed candidate ranges, so both orientations agree exactly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from jaxsparse.patterns import base as pbase
from jaxsparse.sparsity import block_sparsity

# Elements per classification chunk (bounds peak memory on long sequences).
_CHUNK_ELEMENTS = 1 << 21
# Elements per element-wise refinement batch.
_REFINE_ELEMENTS = 1 << 22


def from_pattern(
    pattern: pbase.Pattern,
    *,
    q_len: int,
    kv_len: int,
    block_q: int = 128,
    block_kv: int = 128,
    num_heads: int = 1,
    q_offset: int | None = None,
) -> block_sparsity.BlockSparsity:
    """Block metadata of a static pattern, built on the host in closed form.

    Args:
      pattern: a static pattern (no traced arrays).
      q_len, kv_len: sequence lengths T and S (need not be multiples of a block).
      block_q, block_kv: tile sizes.
      num_heads: query heads; the metadata has one list per head only when the
        pattern is head-dependent.
      q_offset: position of query row 0 (default `kv_len - q_len`).

    Returns:
      A `BlockSparsity` of numpy arrays with batch size 1. Results are cached
      for hashable patterns.
    """
    for name, value in dict(q_len=q_len, kv_len=kv_len, block_q=block_q, block_kv=block_kv,
                            num_heads=num_heads).items():
        pbase.check_int(name, value, minimum=1, owner="from_pattern")
    if q_offset is None:
        q_offset = kv_len - q_len
    pbase.check_int("q_offset", q_offset, minimum=-(2**30), owner="from_pattern")
    pattern = pattern.bind(q_len=q_len, kv_len=kv_len, q_offset=q_offset, num_heads=num_heads)
    hx = num_heads if pattern.head_dependent else 1
    key = (pattern, q_len, kv_len, int(q_offset), block_q, block_kv, hx)
    try:
        return _cached_build(*key)
    except TypeError:  # unhashable pattern (explicit masks): build without the cache
        return _build(*key)


@functools.lru_cache(maxsize=16)
def _cached_build(*key):
    return _build(*key)


def _build(pattern, q_len, kv_len, q_offset, block_q, block_kv, hx):
    geo = _Geometry(q_len, kv_len, q_offset, block_q, block_kv, hx)
    q_lo_pos, q_hi_pos = geo.q_bounds(np.arange(geo.tb))
    head = np.arange(hx)[:, None]
    lo, hi = pattern.kv_range(q_lo_pos[None, :], q_hi_pos[None, :], head)
    lo = np.broadcast_to(np.asarray(lo, np.int64), (hx, geo.tb))
    hi = np.broadcast_to(np.asarray(hi, np.int64), (hx, geo.tb))
    kv_lo, kv_width = _block_range(lo, hi, kv_len, block_kv)

    def classify_q_major(h, rows, cols):
        return geo.codes(pattern, h, rows, cols)

    def classify_kv_major(h, rows, cols):
        return geo.codes(pattern, h, cols, rows)

    kv_indices, kv_counts, kv_full = _lists(classify_q_major, kv_lo, kv_width, geo.sb)
    q_lo, q_width = _transpose_ranges(kv_lo, kv_width, geo.sb, geo.tb)
    q_indices, q_counts, q_full = _lists(classify_kv_major, q_lo, q_width, geo.tb)
    arrays = [kv_indices, kv_counts, kv_full, q_indices, q_counts, q_full]
    for a in arrays:
        a.flags.writeable = False  # cached: never mutate in place
    return block_sparsity.BlockSparsity(
        kv_indices=kv_indices[None], kv_counts=kv_counts[None], kv_full=kv_full[None],
        q_indices=q_indices[None], q_counts=q_counts[None], q_full=q_full[None],
        block_q=block_q, block_kv=block_kv, q_len=q_len, kv_len=kv_len, q_offset=q_offset,
    )


class _Geometry:
    """Tile positions and the element-wise check of UNSURE tiles."""

    def __init__(self, q_len, kv_len, q_offset, block_q, block_kv, hx):
        self.q_len, self.kv_len, self.q_offset = q_len, kv_len, q_offset
        self.bq, self.bk, self.hx = block_q, block_kv, hx
        self.tb, self.sb = math.ceil(q_len / block_q), math.ceil(kv_len / block_kv)

    def q_bounds(self, qb):
        """Inclusive positions of the *valid* rows of query blocks `qb`."""
        lo = self.q_offset + qb * self.bq
        hi = self.q_offset + np.minimum((qb + 1) * self.bq, self.q_len) - 1
        return lo, hi

    def k_bounds(self, kb):
        return kb * self.bk, np.minimum((kb + 1) * self.bk, self.kv_len) - 1

    def codes(self, pattern, h, qb, kb):
        """Codes of tiles (h, qb, kb) (broadcasting int arrays)."""
        q_lo, q_hi = self.q_bounds(qb)
        k_lo, k_hi = self.k_bounds(kb)
        codes = np.asarray(pattern.classify(q_lo, q_hi, k_lo, k_hi, h), np.int8)
        codes = np.broadcast_to(codes, np.broadcast_shapes(np.shape(h), qb.shape, kb.shape))
        unsure = codes == pbase.UNSURE
        if unsure.any():
            codes = codes.copy()
            hh, qq, kk = np.broadcast_arrays(h, qb, kb)
            codes[unsure] = self._check_tiles(pattern, hh[unsure], qq[unsure], kk[unsure])
        if self.kv_len % self.bk:  # the last key block holds padding: never FULL
            codes = np.where((kb == self.sb - 1) & (codes == pbase.FULL), np.int8(pbase.PARTIAL),
                             codes)
        return codes

    def _check_tiles(self, pattern, h, qb, kb):
        """Exact codes of a list of tiles, evaluating `mask_fn` on their elements."""
        out = np.empty(len(h), np.int8)
        step = max(1, _REFINE_ELEMENTS // (self.bq * self.bk))
        r, c = np.arange(self.bq), np.arange(self.bk)
        for s in range(0, len(h), step):
            sl = slice(s, s + step)
            rows = qb[sl, None] * self.bq + r  # [n, bq]
            cols = kb[sl, None] * self.bk + c  # [n, bk]
            m = pattern.mask_fn(
                (self.q_offset + rows)[:, :, None], cols[:, None, :], h[sl, None, None]
            )
            m = np.broadcast_to(np.asarray(m), (len(rows), self.bq, self.bk))
            valid = (rows < self.q_len)[:, :, None] & (cols < self.kv_len)[:, None, :]
            nvalid = valid.sum((1, 2))
            nkept = (m & valid).sum((1, 2))
            out[sl] = np.where(nkept == 0, pbase.EMPTY,
                               np.where(nkept == nvalid, pbase.FULL, pbase.PARTIAL))
        return out


def _block_range(lo, hi, length, block):
    """Inclusive position bounds -> (first block, number of blocks), clipped."""
    nonempty = (hi >= 0) & (lo <= length - 1) & (hi >= lo)
    first = np.clip(lo, 0, length - 1) // block
    last = np.clip(hi, 0, length - 1) // block
    return first.astype(np.int32), np.where(nonempty, last - first + 1, 0).astype(np.int32)


def _transpose_ranges(first, width, num_cols, num_rows):
    """Candidate row ranges per column from per-row column ranges.

    When the ranges move monotonically down the rows (causal, windows, chunks,
    prefixes...), the rows that may use column j form one contiguous run found
    by binary search; otherwise every row is a candidate.
    """
    hx = first.shape[0]
    last = first + width - 1
    cols = np.arange(num_cols)
    out_first = np.zeros((hx, num_cols), np.int32)
    out_width = np.full((hx, num_cols), num_rows, np.int32)
    for h in range(hx):
        f, l, w = first[h], last[h], width[h]
        if (w > 0).all() and (np.diff(f) >= 0).all() and (np.diff(l) >= 0).all():
            start = np.searchsorted(l, cols, side="left")
            stop = np.searchsorted(f, cols, side="right")
            out_first[h] = np.minimum(start, num_rows - 1)
            out_width[h] = np.maximum(stop - start, 0)
    return out_first, out_width


def _lists(classify: Callable, first, width, num_cols):
    """Compacted ascending lists from per-row candidate ranges.

    Works in row chunks so that temporaries stay small: on long sequences the
    tables themselves are the only large allocations.

    Args:
      classify: `(h [hx,1,1], rows [1,R,1], cols [hx,R,W]) -> codes`.
      first, width: candidate column range per (head, row), `[hx, R]`.
    """
    hx, num_rows = first.shape
    w = max(1, int(width.max()))
    e = np.arange(w, dtype=np.int32)
    step = max(1, _CHUNK_ELEMENTS // (hx * w))
    chunks = [slice(s, min(s + step, num_rows)) for s in range(0, num_rows, step)]
    head = np.arange(hx)[:, None, None]

    codes = np.empty((hx, num_rows, w), np.int8)
    for rows in chunks:
        cols = np.minimum(first[:, rows, None] + e, num_cols - 1)
        r = np.arange(rows.start, rows.stop)[None, :, None]
        c = classify(head, r, cols)
        codes[:, rows] = np.where(e < width[:, rows, None], c, np.int8(pbase.EMPTY))
    counts = (codes != pbase.EMPTY).sum(-1, dtype=np.int32)
    kmax = max(1, int(counts.max()))

    idx = np.empty((hx, num_rows, kmax), np.int32)
    full = np.empty((hx, num_rows, kmax), bool)
    dense_rows = counts == width  # every candidate non-empty: the list is the range
    for rows in chunks:
        n, f, cd = counts[:, rows], first[:, rows], codes[:, rows]
        if dense_rows[:, rows].all():
            out = np.minimum(e[:kmax], np.maximum(n - 1, 0)[..., None])
            out += f[..., None]
            out[n == 0] = 0
            idx[:, rows] = out
            full[:, rows] = cd[..., :kmax] == pbase.FULL
            continue
        # Stable compaction of the non-empty candidates by a counting sort.
        nonzero = cd != pbase.EMPTY
        order = np.argsort(~nonzero, axis=-1, kind="stable")[..., :kmax].astype(np.int32)
        out = np.minimum(f[..., None] + order, num_cols - 1)
        fl = np.take_along_axis(cd, order, axis=-1) == pbase.FULL
        valid = e[:kmax] < n[..., None]
        last = np.take_along_axis(out, np.maximum(n - 1, 0)[..., None], axis=-1)
        idx[:, rows] = np.where(valid, out, np.where(n[..., None] > 0, last, 0))
        full[:, rows] = fl & valid
    return idx, counts, full
