"""`GridPattern`: shared machinery of patterns over a 1-D/2-D/3-D token grid.

A grid pattern is a conjunction of per-axis rules: query `x_q` may attend key
`x_k` iff `axis_allowed(a, x_q[a], x_k[a])` holds on every axis `a`. The
pattern asks `jaxsparse.attention` to reorder tokens into the tiled order of
`tiling.py` (kernel tiles become boxes), and its `mask_fn` decodes tiled
positions back into coordinates with integer arithmetic.

Because the rule is a product over axes, a tile that is a box `Q x K` is
EMPTY iff some axis has no allowed pair and FULL iff every axis allows every
pair, so tiles are classified in closed form from per-axis interval checks
(`axis_codes`). A tile that is not exactly a box (block size not a multiple of
the box, or a box cut at a tile edge) is classified on its bounding box: EMPTY
and FULL stay sound there, anything else is UNSURE and checked element-wise.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from jaxsparse.patterns import base, tiling

# Default tokens per box: the kernels' default block (Config.block_q/block_kv).
DEFAULT_TILE_TOKENS = 128


class GridPattern(base.Pattern, register=False):
    """Base of `Neighborhood` and `Window`; subclasses have `grid`, `tile`, `tiled_order`.

    Subclasses implement the per-axis hooks `_axis_allowed` (any array
    module), `_axis_codes` and `_axis_reach` (numpy, host metadata).
    """

    grid: tuple[int, ...]
    tile: Any
    tiled_order: bool

    # --- per-axis hooks ---------------------------------------------------------
    # The rule on one axis is split into what depends on the query coordinate
    # (`_axis_row`), what depends on the key coordinate (`_axis_col`) and a cheap
    # comparison of the two (`_axis_combine`); only `+ - * // % < <= == & |`.
    # Kernels evaluate the first two once per tile row / column instead of once
    # per element (see `mask_factors`).
    def _axis_row(self, axis: int, xq: Any) -> tuple:
        raise NotImplementedError

    def _axis_col(self, axis: int, xk: Any) -> tuple:
        raise NotImplementedError

    def _axis_combine(self, axis: int, row: tuple, col: tuple) -> Any:
        raise NotImplementedError

    def _axis_allowed(self, axis: int, xq: Any, xk: Any) -> Any:
        """The rule on one axis for coordinates `xq`, `xk`."""
        return self._axis_combine(axis, self._axis_row(axis, xq), self._axis_col(axis, xk))

    def _axis_codes(self, axis: int, ql, qh, kl, kh) -> tuple[np.ndarray, np.ndarray]:
        """(some pair allowed, every pair allowed) for coordinate intervals [ql,qh] x [kl,kh]."""
        raise NotImplementedError

    def _axis_reach(self, axis: int, ql, qh) -> tuple[np.ndarray, np.ndarray]:
        """Inclusive key-coordinate bounds of everything queries in [ql, qh] may attend."""
        raise NotImplementedError

    # --- construction -------------------------------------------------------------
    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # frozen dataclass: normalise in __post_init__

    def _resolve_tile(self) -> None:
        """Turn `tile` (None, a token budget, or a shape) into a validated box shape."""
        owner = type(self).__name__
        if not isinstance(self.tiled_order, (bool, np.bool_)):
            raise TypeError(f"{owner}: tiled_order must be a bool, got {self.tiled_order!r}.")
        tile = DEFAULT_TILE_TOKENS if self.tile is None else self.tile
        if isinstance(tile, (int, np.integer)) and not isinstance(tile, bool):
            base.check_int(
                "tile",
                tile,
                minimum=1,
                owner=owner,
                fix="An int tile is the number of tokens per box (e.g. 128).",
            )
            tile = tiling.choose_tile(self.grid, int(tile), self._axis_cost)
        self._set("tile", tiling.check_tile(owner, self.grid, tile))

    def _axis_cost(self, axis: int, side: int) -> float:
        """Average number of key boxes a query box touches along `axis` (tile choice)."""
        start = np.arange(self.grid[axis] // side) * side
        lo, hi = self._axis_reach(axis, start, start + side - 1)
        return float(np.mean(hi // side - lo // side + 1))

    def axis_mask(self, axis: int) -> np.ndarray:
        """The rule on one grid axis, `[L, L]` bool over natural coordinates.

        The pattern's mask in natural row-major order is the Kronecker product
        of these over the axes (it is a conjunction of per-axis rules).
        """
        x = np.arange(self.grid[axis])
        return np.asarray(self._axis_allowed(axis, x[:, None], x[None, :]), bool)

    @property
    def num_tokens(self) -> int:
        """Tokens in the grid (the call's T and S)."""
        return math.prod(self.grid)

    # --- the one definition ---------------------------------------------------------
    def mask_fn(self, q_pos, kv_pos, head):
        """The rule at *tiled* positions (see `token_permutation`)."""
        return self._combine(self._rows(q_pos), self._cols(kv_pos), head)

    def _rows(self, q_pos) -> tuple:
        xq = tiling.coords(q_pos, self.grid, self.tile)
        return tuple(self._axis_row(a, xq[a]) for a in range(len(self.grid)))

    def _cols(self, kv_pos) -> tuple:
        xk = tiling.coords(kv_pos, self.grid, self.tile)
        return tuple(self._axis_col(a, xk[a]) for a in range(len(self.grid)))

    def _combine(self, rows: tuple, cols: tuple, head) -> Any:
        # Innermost axis first: in a kernel tile a thread's key columns share their
        # low in-box coordinates, so the conjunction of the inner axes has few
        # distinct values per thread (the compiler keeps one copy of each) and
        # only the outer axes cost a per-element operation.
        out = None
        for axis in reversed(range(len(rows))):
            m = self._axis_combine(axis, rows[axis], cols[axis])
            out = m if out is None else out & m
        return out

    def mask_factors(self):
        """`mask_fn` as (per-query features, per-key features, combine); see `Pattern`."""
        return base.MaskFactors(rows=self._rows, cols=self._cols, combine=self._combine)

    # --- closed-form metadata ---------------------------------------------------------
    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        q_lo, q_hi, k_lo, k_hi = np.broadcast_arrays(q_lo, q_hi, k_lo, k_hi)
        qa, qb, q_exact = tiling.range_box(q_lo, q_hi, self.grid, self.tile)
        ka, kb, k_exact = tiling.range_box(k_lo, k_hi, self.grid, self.tile)
        some, every = True, True
        for axis in range(len(self.grid)):
            s, e = self._axis_codes(axis, qa[axis], qb[axis], ka[axis], kb[axis])
            some, every = some & s, every & e
        # EMPTY / FULL hold for any subset of the boxes; PARTIAL only for exact boxes.
        middle = np.where(q_exact & k_exact, np.int8(base.PARTIAL), np.int8(base.UNSURE))
        codes = np.where(some, middle, np.int8(base.EMPTY))
        return np.where(every, np.int8(base.FULL), codes).astype(np.int8)

    def kv_range(self, q_lo, q_hi, head):
        qa, qb, _ = tiling.range_box(q_lo, q_hi, self.grid, self.tile)
        reach = [self._axis_reach(axis, qa[axis], qb[axis]) for axis in range(len(self.grid))]
        # Tiled positions grow with every coordinate inside a box and with the box
        # index, so the box's corners hold its smallest and largest positions.
        lo = tiling.positions([r[0] for r in reach], self.grid, self.tile)
        hi = tiling.positions([r[1] for r in reach], self.grid, self.tile)
        return lo, hi

    # --- binding and token order ----------------------------------------------------
    def bind(self, *, q_len, kv_len, q_offset, num_heads):
        n, name = self.num_tokens, type(self).__name__
        if q_len != n or kv_len != n:
            raise ValueError(
                f"{name}: grid={self.grid} holds {n} tokens but the call has q_len={q_len}, "
                f"kv_len={kv_len}; pass all {n} tokens of the grid in row-major order (reshape "
                f"[B, *grid, H, D] to [B, {n}, H, D]), or build the pattern with the grid of "
                "your input."
            )
        if q_offset != 0:
            raise ValueError(
                f"{name} is self-attention over the whole grid: q_offset must be 0, got "
                f"{q_offset}. Leave q_offset unset."
            )
        return self

    def token_permutation(self, *, q_len, kv_len):
        """Tokens in tiled order (None when that is the natural order, e.g. 1-D, or
        when the caller already passes tiled tokens: `tiled_order=True`)."""
        del q_len, kv_len
        return None if self.tiled_order else self._permutation

    def permutation(self) -> np.ndarray:
        """`perm[p]` = natural (row-major) index of the token at tiled position p.

        To keep activations in tiled order across layers (and skip the two
        gathers per call): `x_tiled = x[:, perm]`, attend with
        `tiled_order=True`, and restore with `y[:, np.argsort(perm)]`.
        """
        return tiling.permutation(self.grid, self.tile)

    @functools.cached_property
    def _permutation(self):
        perm = tiling.permutation(self.grid, self.tile)
        if np.array_equal(perm, np.arange(perm.size)):
            return None
        perm.flags.writeable = False
        return perm, perm
