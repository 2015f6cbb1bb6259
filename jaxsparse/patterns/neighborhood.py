"""`Neighborhood`: NATTEN's generalized neighborhood attention on 1-D/2-D/3-D grids."""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxsparse.patterns import base, grid_pattern, tiling


@base.pattern_dataclass
class Neighborhood(grid_pattern.GridPattern):
    """Each token attends the `window` of keys around it on a token grid (NA / GNA).

    Exactly NATTEN's Generalized Neighborhood Attention rule, per axis (a pair
    is kept iff the rule holds on every axis), for a query at coordinate `x_q`
    and a key at `x_k` on an axis of length `L`, with window `w`, stride `s`
    and dilation `d`:

    * dilation: only keys of the same dilation group, `x_q % d == x_k % d`;
      work in group coordinates `u = x // d` over the group's length
      `L_g = ceil((L - x_q % d) / d)`.
    * non-causal: the stride group's leader `c = (u_q // s) * s + s // 2`
      (right-centre for even s), window start `clamp(c - w // 2, 0, L_g - w)`,
      keep the `w` keys from there. The window slides at the border instead of
      shrinking, so every query sees exactly `w` keys per axis.
    * causal: leader `c = min((u_q // s) * s + s - 1, L_g - 1)`, keep
      `u_k <= u_q` and `c - u_k < w`.

    `stride=1, dilation=1` is classic NA; `stride=window` is blocked
    (non-overlapping) attention when the window divides the axis; a window as
    long as the axis is full attention. Constraints (as NATTEN):
    `window * dilation <= L` and `stride <= window` on every axis.

    ```
    Neighborhood(grid=(6,), window=3)          causal=True
    ■ ■ ■ · · ·                                ■ · · · · ·
    ■ ■ ■ · · ·   <- border: window slides     ■ ■ · · · ·
    · ■ ■ ■ · ·                                ■ ■ ■ · · ·
    · · ■ ■ ■ ·                                · ■ ■ ■ · ·
    · · · ■ ■ ■                                · · ■ ■ ■ ·
    · · · ■ ■ ■                                · · · ■ ■ ■
    ```

    Token order: pass tokens in natural row-major order of `grid` (flatten
    `[B, *grid, H, D]` to `[B, prod(grid), H, D]`); outputs come back in that
    order. Inside the call tokens are reordered so that each box of shape
    `tile` is contiguous (`jaxsparse.patterns.tiling`), and `mask_fn` (and so
    `dense_mask`) speaks of positions in that *tiled* order.

    `tile`: the box shape. None (default) picks the largest box of at most 128
    tokens (the kernels' default block) whose sides divide the grid, preferring
    boxes whose neighbourhoods touch the fewest key boxes; an int sets that
    token budget (use the kernel's block size if you change `Config.block_q`);
    a tuple is used as given and must divide the grid.

    `tiled_order=True`: the caller already passes tokens in the tiled order
    (`x[:, pattern.permutation()]`, e.g. a model that keeps its activations
    tiled across layers) and gets outputs in that order: no gathers per call.

    Args:
      grid: token grid shape, 1 to 3 ints, e.g. `(H, W)` or `(T, H, W)`.
      window: kernel size, an int or one per axis.
      stride: an int or one per axis (default 1).
      dilation: an int or one per axis (default 1).
      causal: a bool or one per axis (default False).
      tile: box shape, token budget or None (see above).
      tiled_order: tokens arrive already in the tiled order (default False).
    """

    grid: Any
    window: Any
    stride: Any = 1
    dilation: Any = 1
    causal: Any = False
    tile: Any = None
    tiled_order: bool = False

    def __post_init__(self):
        grid = tiling.as_grid("Neighborhood", self.grid)
        n = len(grid)
        window = tiling.as_axes("Neighborhood", "window", self.window, n, minimum=1)
        stride = tiling.as_axes("Neighborhood", "stride", self.stride, n, minimum=1)
        dilation = tiling.as_axes("Neighborhood", "dilation", self.dilation, n, minimum=1)
        causal = tiling.as_flags("Neighborhood", "causal", self.causal, n)
        for a in range(n):
            if window[a] * dilation[a] > grid[a]:
                raise ValueError(
                    f"Neighborhood: window {window[a]} x dilation {dilation[a]} = "
                    f"{window[a] * dilation[a]} is larger than grid axis {a} of length "
                    f"{grid[a]}; use a window of at most {grid[a] // dilation[a]} on that axis "
                    "(or a smaller dilation)."
                )
            if stride[a] > window[a]:
                raise ValueError(
                    f"Neighborhood: stride {stride[a]} is larger than window {window[a]} on "
                    f"axis {a}; the stride must be at most the window (stride == window is "
                    "blocked attention)."
                )
        for name, value in (
            ("grid", grid),
            ("window", window),
            ("stride", stride),
            ("dilation", dilation),
            ("causal", causal),
        ):
            self._set(name, value)
        self._resolve_tile()

    def _axis(self, a: int):
        return self.grid[a], self.window[a], self.stride[a], self.dilation[a], self.causal[a]

    # --- the rule (any array module) ------------------------------------------------
    def _axis_row(self, axis, xq):
        """Query-side terms of NATTEN's rule: the first key `lo` and the number of keys
        `span` (dilation-group coordinates), and the query's dilation group (None
        without dilation).

        Per-row terms are evaluated once per tile row in the kernels, so the
        clamping lives here and a tile element costs one subtraction and one
        unsigned comparison per axis (`_axis_combine`).
        """
        n, w, s, d, causal = self._axis(axis)
        xp = base.array_module(xq)
        if d == 1:
            uq, size, group = xq, n, None
        else:
            group = tiling.mod(xq, d)
            uq, size = tiling.div(xq, d), tiling.div(n - group + d - 1, d)
        first = uq if s == 1 else tiling.div(uq, s) * s  # the stride group's first query
        if causal:
            # Keep uk <= uq and min(leader, size - 1) - uk < w: keys [leader - w + 1, uq].
            lo = xp.minimum(first + s - 1, size - 1) - w + 1
            return lo, xp.maximum(uq + 1 - lo, 0), group
        # start = max(0, min(leader - w//2, size - w)); keep start <= uk < start + w.
        start = xp.maximum(xp.minimum(first + s // 2 - w // 2, size - w), 0)
        return start, w, group

    def _axis_col(self, axis, xk):
        d = self.dilation[axis]
        return (xk, None) if d == 1 else (tiling.div(xk, d), tiling.mod(xk, d))

    def _axis_combine(self, axis, row, col):
        lo, span, group = row
        uk, gk = col
        ok = tiling.in_span(uk - lo, span)
        return ok if group is None else ok & (group == gk)

    # --- closed form on the host (numpy) --------------------------------------------
    def _start(self, axis, u, size):
        """First key (group coordinates) of a non-causal query `u`."""
        _, w, s, _, _ = self._axis(axis)
        return np.maximum(0, np.minimum((u // s) * s + s // 2 - w // 2, size - w))

    def _causal_first(self, axis, u, size):
        """First key (group coordinates) of a causal query `u`; the last is `u`."""
        _, w, s, _, _ = self._axis(axis)
        return np.maximum(np.minimum((u // s) * s + s - 1, size - 1) - w + 1, 0)

    def _reach_u(self, axis, u_lo, u_hi, size):
        """Keys reached by group queries [u_lo, u_hi] (one interval: stride <= window)."""
        w, causal = self.window[axis], self.causal[axis]
        if causal:
            return self._causal_first(axis, u_lo, size), u_hi
        return self._start(axis, u_lo, size), self._start(axis, u_hi, size) + w - 1

    def _groups(self, axis, lo, hi):
        """Per dilation group g: (g, group length, first and last group index in [lo, hi])."""
        n, _, _, d, _ = self._axis(axis)
        for g in range(d):
            size = (n - g + d - 1) // d
            yield g, size, (lo - g + d - 1) // d, (hi - g) // d

    def _axis_codes(self, axis, ql, qh, kl, kh):
        n, w, _, d, causal = self._axis(axis)
        some = np.zeros(np.shape(ql), bool)
        for (_, size, uq_lo, uq_hi), (_, _, uk_lo, uk_hi) in zip(
            self._groups(axis, ql, qh), self._groups(axis, kl, kh), strict=True
        ):
            r_lo, r_hi = self._reach_u(
                axis, np.clip(uq_lo, 0, size - 1), np.clip(uq_hi, 0, size - 1), size
            )
            hit = np.maximum(r_lo, uk_lo) <= np.minimum(r_hi, uk_hi)
            some |= (uq_lo <= uq_hi) & (uk_lo <= uk_hi) & hit
        if d > 1:  # neighbouring coordinates are in different groups
            every = (ql == qh) & (kl == kh) & self._axis_allowed(axis, ql, kl)
        elif causal:  # every query's window [first(x), x] covers [kl, kh]
            every = (self._causal_first(axis, qh, n) <= kl) & (kh <= ql)
        else:
            every = (self._start(axis, qh, n) <= kl) & (kh <= self._start(axis, ql, n) + w - 1)
        return some, every

    def _axis_reach(self, axis, ql, qh):
        d = self.dilation[axis]
        lo = np.full(np.shape(ql), np.iinfo(np.int64).max, np.int64)
        hi = np.full(np.shape(ql), -1, np.int64)
        for g, size, u_lo, u_hi in self._groups(axis, np.asarray(ql), np.asarray(qh)):
            r_lo, r_hi = self._reach_u(
                axis, np.clip(u_lo, 0, size - 1), np.clip(u_hi, 0, size - 1), size
            )
            has = u_lo <= u_hi
            lo = np.where(has, np.minimum(lo, g + d * r_lo), lo)
            hi = np.where(has, np.maximum(hi, g + d * r_hi), hi)
        return lo, hi

    @classmethod
    def examples(cls):
        return [
            Neighborhood((12,), 5),
            Neighborhood((6, 8), (3, 5), tile=(2, 4)),
            Neighborhood((7, 9), 3, stride=(1, 2), dilation=(2, 1), tile=8),
            Neighborhood((4, 5, 6), (3, 3, 2), causal=(True, False, False), tile=(2, 1, 3)),
        ]

    def __repr__(self):
        args = [f"grid={self.grid}", f"window={self.window}"]
        for name, default in (("stride", 1), ("dilation", 1), ("causal", False)):
            value = getattr(self, name)
            if any(v != default for v in value):
                args.append(f"{name}={value}")
        args.append(f"tile={self.tile}")
        if self.tiled_order:
            args.append("tiled_order=True")
        return f"Neighborhood({', '.join(args)})"
