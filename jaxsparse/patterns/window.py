"""`Window`: non-overlapping (Swin-style) window attention, optionally shifted."""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxsparse.patterns import base, grid_pattern, tiling


@base.pattern_dataclass
class Window(grid_pattern.GridPattern):
    """Tokens attend exactly the tokens of their own window on a token grid.

    Per axis, coordinate `x` lies in window `(x + (w - shift) % w) // w`; a pair
    is kept iff both tokens lie in the same window on every axis. Windows start
    at 0 (`shift=0`, Swin's W-MSA) or, with a shift, the first window holds
    only `shift` tokens: that is Swin's shifted windows (SW-MSA: cyclic shift
    by `-shift`, window partition, and the attention mask that separates the
    wrapped-around parts) written without the roll. When the window does not
    divide an axis the last window is shorter.

    ```
    Window(grid=(6,), window=3)      Window(grid=(6,), window=3, shift=1)
    ■ ■ ■ · · ·                      ■ · · · · ·
    ■ ■ ■ · · ·                      · ■ ■ ■ · ·
    ■ ■ ■ · · ·                      · ■ ■ ■ · ·
    · · · ■ ■ ■                      · ■ ■ ■ · ·
    · · · ■ ■ ■                      · · · · ■ ■
    · · · ■ ■ ■                      · · · · ■ ■
    ```

    Token order, `tile` and `tiled_order` work as for `Neighborhood`: pass
    tokens in natural row-major order; `mask_fn` speaks of the tiled order.

    Args:
      grid: token grid shape, 1 to 3 ints.
      window: window size, an int or one per axis (at most the axis length).
      shift: 0 (default) or a shift in [0, window) per axis; Swin uses
        `window // 2` in every other block.
      tile: box shape, token budget or None (see `Neighborhood`).
      tiled_order: tokens arrive already in the tiled order (default False).
    """

    grid: Any
    window: Any
    shift: Any = 0
    tile: Any = None
    tiled_order: bool = False

    def __post_init__(self):
        grid = tiling.as_grid("Window", self.grid)
        n = len(grid)
        window = tiling.as_axes("Window", "window", self.window, n, minimum=1)
        shift = tiling.as_axes("Window", "shift", self.shift, n, minimum=0)
        for a in range(n):
            if window[a] > grid[a]:
                raise ValueError(
                    f"Window: window {window[a]} is larger than grid axis {a} of length "
                    f"{grid[a]}; use a window of at most {grid[a]} on that axis."
                )
            if shift[a] >= window[a]:
                raise ValueError(
                    f"Window: shift {shift[a]} on axis {a} must be smaller than the window "
                    f"{window[a]} (Swin shifts by window // 2)."
                )
        for name, value in (("grid", grid), ("window", window), ("shift", shift)):
            self._set(name, value)
        self._resolve_tile()

    def _offset(self, axis: int) -> int:
        w = self.window[axis]
        return (w - self.shift[axis]) % w

    def _axis_row(self, axis, xq):
        w, o = self.window[axis], self._offset(axis)
        return (tiling.div(xq + o, w),)

    def _axis_col(self, axis, xk):
        return self._axis_row(axis, xk)

    def _axis_combine(self, axis, row, col):
        return row[0] == col[0]

    def _ids(self, axis, lo, hi):
        w, o = self.window[axis], self._offset(axis)
        return (lo + o) // w, (hi + o) // w

    def _axis_codes(self, axis, ql, qh, kl, kh):
        q_first, q_last = self._ids(axis, ql, qh)
        k_first, k_last = self._ids(axis, kl, kh)
        some = np.maximum(q_first, k_first) <= np.minimum(q_last, k_last)
        every = (q_first == q_last) & (k_first == k_last) & (q_first == k_first)
        return some, every

    def _axis_reach(self, axis, ql, qh):
        w, o, n = self.window[axis], self._offset(axis), self.grid[axis]
        first, last = self._ids(axis, np.asarray(ql), np.asarray(qh))
        return np.maximum(first * w - o, 0), np.minimum(last * w + w - 1 - o, n - 1)

    @classmethod
    def examples(cls):
        return [
            Window((10,), 4),
            Window((6, 8), (3, 4), tile=(3, 4)),
            Window((6, 8), (3, 4), shift=(1, 2), tile=(2, 4)),
            Window((4, 6, 6), (2, 3, 3), shift=(1, 1, 1), tile=8),
        ]

    def __repr__(self):
        args = [f"grid={self.grid}", f"window={self.window}"]
        if any(self.shift):
            args.append(f"shift={self.shift}")
        args.append(f"tile={self.tile}")
        if self.tiled_order:
            args.append("tiled_order=True")
        return f"Window({', '.join(args)})"
