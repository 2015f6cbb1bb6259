"""Tiled token order for 1-D/2-D/3-D grids: a kernel tile becomes a spatial box.

Tokens of a `grid` arrive in natural row-major order. The *tiled order* cuts
the grid into boxes of shape `tile` (each side divides the grid), lists the
boxes in row-major order and the tokens inside a box in row-major order. When
`prod(tile)` equals the kernel's block, every kernel tile is one box, so a
local pattern (neighborhood, window) touches few tiles and most of them are
FULL or EMPTY.

```
grid (4, 4), tile (2, 2): natural index -> tiled position
   0  1 |  2  3         0  1 |  4  5
   4  5 |  6  7   ->    2  3 |  6  7
  ------+------        ------+------
   8  9 | 10 11         8  9 | 12 13
  12 13 | 14 15        10 11 | 14 15
```

Everything here is integer arithmetic. `coords` (tiled position -> grid
coordinates) uses only `* +` and `div` / `mod` by static divisors, so it runs
in numpy, jnp and inside kernels; the rest is host-side numpy for metadata.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax import lax

MAX_AXES = 3


def div(x: Any, d: int) -> Any:
    """`x // d` for non-negative integers `x` and a static `d >= 1`.

    numpy values use `//`; jax values (also inside kernels, once per tile
    column) a shift for powers of two, else a truncating `lax.div`, which
    agree with `//` for `x >= 0` and skip its sign correction (about eight
    instructions per value on a GPU).
    """
    if d == 1:
        return x
    if not isinstance(x, jax.Array):
        return x // d
    if d & (d - 1) == 0:
        return x >> (d.bit_length() - 1)
    return lax.div(x, lax.full_like(x, d))


def mod(x: Any, d: int) -> Any:
    """`x % d` for non-negative integers `x` and a static `d >= 1` (see `div`)."""
    if d == 1:
        return x * 0
    if not isinstance(x, jax.Array):
        return x % d
    if d & (d - 1) == 0:
        return x & (d - 1)
    return lax.rem(x, lax.full_like(x, d))


def in_span(x: Any, n: Any) -> Any:
    """`(0 <= x) & (x < n)` for integers `x` and `n >= 0`.

    jax values (also inside kernels, once per tile element) use one unsigned
    comparison: a negative `x` wraps to a value `>= 2**31 > n`. A GPU kernel
    applies each predicate of a mask as its own select over the elements it
    covers, so one predicate per axis instead of two is a select fewer per
    element and axis.
    """
    if not isinstance(x, jax.Array) and not isinstance(n, jax.Array):
        return (x >= 0) & (x < n)
    unsigned = lambda v: lax.convert_element_type(v, np.uint32)  # noqa: E731
    return unsigned(x) < (unsigned(n) if isinstance(n, jax.Array) else np.uint32(n))


def as_axes(owner: str, name: str, value: Any, ndim: int, *, minimum: int) -> tuple[int, ...]:
    """`value` (an int or one int per axis) as a tuple of `ndim` ints >= minimum."""
    values = (value,) * ndim if _is_int(value) else value
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise TypeError(f"{owner}: {name} must be an int or a tuple of {ndim} ints, got {value!r}.")
    values = tuple(values)
    if len(values) != ndim or not all(_is_int(v) for v in values):
        raise ValueError(
            f"{owner}: {name}={value!r} must be an int or a tuple of {ndim} ints (one per grid "
            "axis)."
        )
    for axis, v in enumerate(values):
        if v < minimum:
            raise ValueError(
                f"{owner}: {name}={value!r} has {v} on axis {axis}; every entry must be >= "
                f"{minimum}."
            )
    return tuple(int(v) for v in values)


def as_flags(owner: str, name: str, value: Any, ndim: int) -> tuple[bool, ...]:
    """`value` (a bool or one bool per axis) as a tuple of `ndim` bools."""
    values = (value,) * ndim if isinstance(value, (bool, np.bool_)) else value
    if (
        not isinstance(values, Sequence)
        or len(values) != ndim
        or not all(isinstance(v, (bool, np.bool_)) for v in values)
    ):
        raise TypeError(
            f"{owner}: {name} must be a bool or a tuple of {ndim} bools, got {value!r}."
        )
    return tuple(bool(v) for v in values)


def as_grid(owner: str, grid: Any) -> tuple[int, ...]:
    """Validate a grid shape: 1 to 3 positive ints."""
    values = (grid,) if _is_int(grid) else grid
    if (
        not isinstance(values, Sequence)
        or not 1 <= len(values) <= MAX_AXES
        or not all(_is_int(v) for v in values)
    ):
        raise ValueError(
            f"{owner}: grid={grid!r} must be a tuple of 1, 2 or 3 ints (e.g. (H, W) for an "
            "image, (T, H, W) for a video)."
        )
    return as_axes(owner, "grid", tuple(values), len(values), minimum=1)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


# --- choosing the tile -------------------------------------------------------


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def choose_tile(
    grid: tuple[int, ...], tokens: int, axis_cost: Callable[[int, int], float]
) -> tuple[int, ...]:
    """The box shape used when the caller does not give one.

    The largest box of at most `tokens` tokens whose sides divide the grid;
    among equal volumes, the one whose queries touch the fewest key tiles
    (`axis_cost(axis, side)` is the average number of key tiles a query tile
    touches along one axis; axes are independent, so costs multiply).
    """
    options = [divisors(n) for n in grid]
    cost = [{t: axis_cost(a, t) for t in opts} for a, opts in enumerate(options)]
    best, best_key = None, None
    for tile in itertools.product(*options):
        volume = math.prod(tile)
        if volume > tokens:
            continue
        touched = math.prod(cost[a][t] for a, t in enumerate(tile))
        key = (volume, -touched, tile[::-1])  # ties: longer trailing (contiguous) sides
        if best_key is None or key > best_key:
            best, best_key = tile, key
    return best


def check_tile(owner: str, grid: tuple[int, ...], tile: Any) -> tuple[int, ...]:
    tile = as_axes(owner, "tile", tile, len(grid), minimum=1)
    bad = [a for a, (n, t) in enumerate(zip(grid, tile, strict=True)) if n % t]
    if bad:
        a = bad[0]
        raise ValueError(
            f"{owner}: tile={tile} does not divide grid={grid} on axis {a} ({grid[a]} % "
            f"{tile[a]} != 0); use a side from {divisors(grid[a])}, or tile=None / an int to "
            "let the pattern choose."
        )
    return tile


# --- positions <-> coordinates -----------------------------------------------


def _strides(shape: Sequence[int]) -> list[int]:
    return [math.prod(shape[a + 1 :]) for a in range(len(shape))]


def coords(pos: Any, grid: tuple[int, ...], tile: tuple[int, ...]) -> list[Any]:
    """Grid coordinates of tiled positions (numpy, jnp or in-kernel values).

    Positions past the grid (kernel padding) give in-range garbage; backends
    mask padding separately.
    """
    volume = math.prod(tile)
    boxes = [n // t for n, t in zip(grid, tile, strict=True)]
    box, offset = div(pos, volume), mod(pos, volume)
    out = []
    for t, nb, bs, ts in zip(tile, boxes, _strides(boxes), _strides(tile), strict=True):
        out.append(mod(div(box, bs), nb) * t + mod(div(offset, ts), t))
    return out


def positions(xs: Sequence[Any], grid: tuple[int, ...], tile: tuple[int, ...]) -> Any:
    """Tiled positions of grid coordinates `xs` (one array per axis); inverse of `coords`."""
    boxes = [n // t for n, t in zip(grid, tile, strict=True)]
    box = sum(x // t * s for x, t, s in zip(xs, tile, _strides(boxes), strict=True))
    inner = sum(x % t * s for x, t, s in zip(xs, tile, _strides(tile), strict=True))
    return box * math.prod(tile) + inner


def to_tiled(x: Any, grid: tuple[int, ...], tile: tuple[int, ...]) -> Any:
    """`[B, *grid, ...]` in natural order -> `[B, prod(grid), ...]` in tiled order.

    A reshape and a transpose (numpy or jax): splitting each axis into
    (box, in-box) and moving the in-box axes after the box axes lists the boxes
    in row-major order and each box's tokens in row-major order.
    """
    n = len(grid)
    lead, rest = x.shape[:1], x.shape[1 + n :]
    split = [d for g, t in zip(grid, tile, strict=True) for d in (g // t, t)]
    x = x.reshape(*lead, *split, *rest)
    order = [0, *(1 + 2 * a for a in range(n)), *(2 + 2 * a for a in range(n))]
    order += range(1 + 2 * n, x.ndim)
    return x.transpose(order).reshape(*lead, math.prod(grid), *rest)


def from_tiled(x: Any, grid: tuple[int, ...], tile: tuple[int, ...]) -> Any:
    """Inverse of `to_tiled`: `[B, prod(grid), ...]` tiled -> `[B, *grid, ...]` natural."""
    n = len(grid)
    lead, rest = x.shape[:1], x.shape[2:]
    boxes = [g // t for g, t in zip(grid, tile, strict=True)]
    x = x.reshape(*lead, *boxes, *tile, *rest)
    order = [0, *(d for a in range(n) for d in (1 + a, 1 + n + a)), *range(1 + 2 * n, x.ndim)]
    return x.transpose(order).reshape(*lead, *grid, *rest)


def permutation(grid: tuple[int, ...], tile: tuple[int, ...]) -> np.ndarray:
    """`perm[p]` = natural (row-major) index of the token at tiled position p."""
    natural = np.arange(math.prod(grid), dtype=np.int32).reshape(1, *grid)
    return np.ascontiguousarray(to_tiled(natural, grid, tile)[0])


# --- position ranges -> boxes (host metadata) ----------------------------------


def _row_major_box(lo: np.ndarray, hi: np.ndarray, shape: Sequence[int]):
    """Bounding box of the row-major index range [lo, hi] in an array of `shape`.

    Returns (lo per axis, hi per axis, exact) where `exact` says the range is
    the whole box.
    """
    box_lo, box_hi = [], []
    exact = np.ones(lo.shape, bool)
    same = np.ones(lo.shape, bool)  # leading coordinates of lo and hi agree so far
    for n, s in zip(shape, _strides(shape), strict=True):
        a, b = lo // s, hi // s
        box_lo.append(np.where(same, a, 0))
        box_hi.append(np.where(same, b, n - 1))
        split = same & (a != b)
        # Splitting here covers whole sub-blocks only if lo/hi sit on their edges.
        exact &= ~split | ((lo % s == 0) & (hi % s == s - 1))
        same &= a == b
        lo, hi = lo % s, hi % s
    return box_lo, box_hi, exact


def range_box(lo: Any, hi: Any, grid: tuple[int, ...], tile: tuple[int, ...]):
    """Per-axis coordinate bounds of the tokens at tiled positions [lo, hi].

    Returns `(lo_coords, hi_coords, exact)`: inclusive bounds per axis of a box
    containing every token of the range, and whether the range *is* that box
    (e.g. a kernel tile that coincides with one or more whole boxes).
    """
    lo, hi = np.broadcast_arrays(np.asarray(lo, np.int64), np.asarray(hi, np.int64))
    volume = math.prod(tile)
    boxes = [n // t for n, t in zip(grid, tile, strict=True)]
    b_lo, b_hi = lo // volume, hi // volume
    # Range inside one box: a row-major range of that box's cells.
    in_lo, in_hi, in_exact = _row_major_box(lo % volume, hi % volume, tile)
    origin = coords(b_lo * volume, grid, tile)  # first cell of the box
    # Range over several boxes: the bounding box of whole boxes.
    bx_lo, bx_hi, bx_exact = _row_major_box(b_lo, b_hi, boxes)
    one = b_lo == b_hi
    out_lo = [
        np.where(one, o + i, b * t) for o, i, b, t in zip(origin, in_lo, bx_lo, tile, strict=True)
    ]
    out_hi = [
        np.where(one, o + i, b * t + t - 1)
        for o, i, b, t in zip(origin, in_hi, bx_hi, tile, strict=True)
    ]
    whole = (lo % volume == 0) & (hi % volume == volume - 1)
    exact = np.where(one, in_exact, bx_exact & whole)
    return out_lo, out_hi, exact
