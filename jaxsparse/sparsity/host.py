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
# More key intervals than this per row: use the pattern's single envelope.
_MAX_INTERVALS = 8
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
    if not isinstance(pattern, pbase.Pattern):
        raise TypeError(
            f"from_pattern: pattern must be a jaxsparse pattern, got {pattern!r} "
            f"({type(pattern).__name__}); build one with e.g. jaxsparse.patterns.Causal(), or "
            'from text with jaxsparse.patterns.parse("causal").'
        )
    pbase.check_int("num_heads", num_heads, minimum=1, owner="from_pattern")
    q_offset = block_sparsity.check_geometry(
        "from_pattern",
        q_len=q_len,
        kv_len=kv_len,
        block_q=block_q,
        block_kv=block_kv,
        q_offset=q_offset,
    )
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
    args = (q_lo_pos[None, :], q_hi_pos[None, :], head)
    ranges = pattern.kv_ranges(*args)
    if len(ranges) > _MAX_INTERVALS:  # deep compositions: use the single envelope
        ranges = [pattern.kv_range(*args)]
    kv_intervals = [
        _block_range(
            np.broadcast_to(np.asarray(lo, np.int64), (hx, geo.tb)),
            np.broadcast_to(np.asarray(hi, np.int64), (hx, geo.tb)),
            kv_len,
            block_kv,
        )
        for lo, hi in ranges
    ]

    def classify_q_major(h, rows, cols):
        return geo.codes(pattern, h, rows, cols)

    def classify_kv_major(h, rows, cols):
        return geo.codes(pattern, h, cols, rows)

    kv_indices, kv_counts, kv_full = _lists(
        classify_q_major, _Candidates(kv_intervals, geo.sb), geo.sb
    )
    q_intervals = [_transpose_range(f, w, geo.sb, geo.tb) for f, w in kv_intervals]
    q_indices, q_counts, q_full = _lists(
        classify_kv_major, _Candidates(q_intervals, geo.tb), geo.tb
    )
    arrays = [kv_indices, kv_counts, kv_full, q_indices, q_counts, q_full]
    for a in arrays:
        a.flags.writeable = False  # cached: never mutate in place
    return block_sparsity.BlockSparsity(
        kv_indices=kv_indices[None],
        kv_counts=kv_counts[None],
        kv_full=kv_full[None],
        q_indices=q_indices[None],
        q_counts=q_counts[None],
        q_full=q_full[None],
        block_q=block_q,
        block_kv=block_kv,
        q_len=q_len,
        kv_len=kv_len,
        q_offset=q_offset,
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
            codes = np.where(
                (kb == self.sb - 1) & (codes == pbase.FULL), np.int8(pbase.PARTIAL), codes
            )
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
            out[sl] = np.where(
                nkept == 0, pbase.EMPTY, np.where(nkept == nvalid, pbase.FULL, pbase.PARTIAL)
            )
        return out


def _block_range(lo, hi, length, block):
    """Inclusive position bounds -> (first block, number of blocks), clipped."""
    nonempty = (hi >= 0) & (lo <= length - 1) & (hi >= lo)
    first = np.clip(lo, 0, length - 1) // block
    last = np.clip(hi, 0, length - 1) // block
    return first.astype(np.int32), np.where(nonempty, last - first + 1, 0).astype(np.int32)


def _transpose_range(first, width, num_cols, num_rows):
    """Candidate row range per column from one per-row column interval.

    When the interval moves monotonically down its non-empty rows (causal,
    windows, chunks, sinks...), the rows that may use column j form one
    contiguous run found by binary search; otherwise every row is a candidate.
    """
    hx = first.shape[0]
    out_first = np.zeros((hx, num_cols), np.int32)
    out_width = np.full((hx, num_cols), num_rows, np.int32)
    cols = np.arange(num_cols)
    for h in range(hx):
        rows = np.flatnonzero(width[h] > 0)
        if rows.size == 0:
            out_width[h] = 0
            continue
        f, l = first[h, rows], first[h, rows] + width[h, rows] - 1
        contiguous = rows[-1] - rows[0] + 1 == rows.size
        if contiguous and (np.diff(f) >= 0).all() and (np.diff(l) >= 0).all():
            start = np.searchsorted(l, cols, side="left")
            stop = np.searchsorted(f, cols, side="right")
            out_first[h] = rows[0] + np.minimum(start, rows.size - 1)
            out_width[h] = np.maximum(stop - start, 0)
    return out_first, out_width


class _Candidates:
    """Ascending, disjoint candidate columns per row from a union of intervals."""

    def __init__(self, intervals, num_cols):
        first = np.stack([f for f, _ in intervals]).astype(np.int64)  # [m, hx, R]
        width = np.stack([w for _, w in intervals]).astype(np.int64)
        first = np.where(width > 0, first, np.iinfo(np.int32).max)
        order = np.argsort(first, axis=0, kind="stable")
        first = np.take_along_axis(first, order, 0)
        width = np.take_along_axis(width, order, 0)
        # Clip each interval to start after everything before it (sorted by start).
        starts, widths = [], []
        covered = np.full(first.shape[1:], -1, np.int64)  # last column already listed
        for f, w in zip(first, width, strict=True):
            s = np.maximum(f, covered + 1)
            w2 = np.where(w > 0, np.maximum(f + w - s, 0), 0)
            starts.append(s)
            widths.append(w2)
            covered = np.where(w > 0, np.maximum(covered, f + w - 1), covered)
        start, width = np.stack(starts), np.stack(widths)  # [m, hx, R]
        keep = (width > 0).any(axis=(1, 2))
        keep[0] = True
        start, width = start[keep], width[keep]
        offset = np.cumsum(width, axis=0) - width
        # Slot e of interval j holds column e + (start_j - offset_j).
        self.offset = offset.astype(np.int32)
        self.delta = (start - offset).astype(np.int32)
        self.total = width.sum(0).astype(np.int32)  # [hx, R]
        self.num_cols = num_cols
        self.max_width = max(1, int(self.total.max()))

    def cols(self, rows: slice, e: np.ndarray) -> np.ndarray:
        """Candidate column of slot e for rows `rows`: `[hx, R, W]` (clipped in range)."""
        out = e + self.delta[0, :, rows, None]
        for o, d in zip(self.offset[1:], self.delta[1:], strict=True):
            out = np.where(e >= o[:, rows, None], e + d[:, rows, None], out)
        return np.minimum(out, self.num_cols - 1, out=out)


def _lists(classify: Callable, cand: _Candidates, num_cols):
    """Compacted ascending lists from per-row candidate columns.

    Works in row chunks so that temporaries stay small: on long sequences the
    tables themselves are the only large allocations.

    Args:
      classify: `(h [hx,1,1], rows [1,R,1], cols [hx,R,W]) -> codes`.
      cand: the candidate columns of every (head, row).
    """
    hx, num_rows = cand.total.shape
    w = cand.max_width
    e = np.arange(w, dtype=np.int32)
    step = max(1, _CHUNK_ELEMENTS // (hx * w))
    chunks = [slice(s, min(s + step, num_rows)) for s in range(0, num_rows, step)]
    head = np.arange(hx)[:, None, None]

    codes = np.empty((hx, num_rows, w), np.int8)
    for rows in chunks:
        c = classify(head, np.arange(rows.start, rows.stop)[None, :, None], cand.cols(rows, e))
        codes[:, rows] = np.where(e < cand.total[:, rows, None], c, np.int8(pbase.EMPTY))
    counts = (codes != pbase.EMPTY).sum(-1, dtype=np.int32)
    kmax = max(1, int(counts.max()))

    idx = np.empty((hx, num_rows, kmax), np.int32)
    full = np.empty((hx, num_rows, kmax), bool)
    ek = e[:kmax]
    for rows in chunks:
        n, cd = counts[:, rows], codes[:, rows]
        if (n == cand.total[:, rows]).all():  # every candidate non-empty: no compaction
            # Slots past the count read the last candidate again (codes there are EMPTY).
            out = idx[:, rows]
            out[...] = cand.cols(rows, np.minimum(ek, np.maximum(n - 1, 0)[..., None]))
            out[n == 0] = 0
            np.equal(cd[..., :kmax], pbase.FULL, out=full[:, rows])
            continue
        # Stable compaction of the non-empty candidates.
        order = np.argsort(cd == pbase.EMPTY, axis=-1, kind="stable")[..., :kmax]
        out = np.take_along_axis(cand.cols(rows, e), order, axis=-1)
        fl = np.take_along_axis(cd, order, axis=-1) == pbase.FULL
        valid = ek < n[..., None]
        last = np.take_along_axis(out, np.maximum(n - 1, 0)[..., None], axis=-1)
        idx[:, rows] = np.where(valid, out, np.where(n[..., None] > 0, last, 0))
        full[:, rows] = fl & valid
    return idx, counts, full
