"""Brute-force statements of the grid patterns' rules, in natural token order.

Written from NATTEN's description (ALGORITHMS.md section 9) and Swin's
shifted-window mask, independently of `jaxsparse.patterns.neighborhood` /
`window`: explicit clamps, centres and region labels, token by token.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from jaxsparse import patterns as P


def na_axis(xq: int, xk: int, length: int, w: int, s: int, d: int, causal: bool) -> bool:
    """NATTEN's per-axis rule for one (query, key) coordinate pair."""
    if xq % d != xk % d:
        return False
    group = xq % d
    group_len = math.ceil((length - group) / d)
    uq, uk = xq // d, xk // d
    if causal:
        leader = min((uq // s) * s + s - 1, group_len - 1)
        return uk <= uq and leader - uk < w
    leader = min((uq // s) * s + s // 2, group_len - 1)
    left, right = w // 2, w // 2 + w % 2 - 1
    centre = min(max(leader, left), group_len - 1 - right)
    return -left <= uk - centre <= right


def swin_axis(xq: int, xk: int, length: int, w: int, shift: int) -> bool:
    """Swin SW-MSA on one axis: roll by -shift, same window, same region label."""
    yq, yk = (xq - shift) % length, (xk - shift) % length
    if yq // w != yk // w:
        return False
    if shift == 0:
        return True

    def region(y):  # Swin's slices (0:-w), (-w:-shift), (-shift:)
        return 0 if y < length - w else (1 if y < length - shift else 2)

    return region(yq) == region(yk)


def cut_window_axis(xq: int, xk: int, length: int, w: int, shift: int) -> bool:
    """Windows as intervals: cuts at 0 and at shift, shift + w, ...; the last may be short."""
    cuts = sorted({0, *range(shift, length, w)})

    def index(x):
        return sum(c <= x for c in cuts)

    return index(xq) == index(xk)


def natural_mask(pattern) -> np.ndarray:
    """`[N, N]` bool mask in natural row-major order, pair by pair."""
    grid = pattern.grid
    cells = list(itertools.product(*(range(n) for n in grid)))
    out = np.zeros((len(cells), len(cells)), bool)
    for i, xq in enumerate(cells):
        for j, xk in enumerate(cells):
            out[i, j] = all(_axis(pattern, a, xq[a], xk[a]) for a in range(len(grid)))
    return out


def _axis(pattern, a, xq, xk):
    n = pattern.grid[a]
    if isinstance(pattern, P.Neighborhood):
        return na_axis(
            xq, xk, n, pattern.window[a], pattern.stride[a], pattern.dilation[a], pattern.causal[a]
        )
    if isinstance(pattern, P.Window):
        w, shift = pattern.window[a], pattern.shift[a]
        if n % w == 0:
            return swin_axis(xq, xk, n, w, shift)
        # Not Swin's setting (Swin pads the grid): the last window is short.
        return cut_window_axis(xq, xk, n, w, shift)
    raise NotImplementedError(type(pattern).__name__)


def tiled_to_natural(pattern, mask: np.ndarray) -> np.ndarray:
    """A mask in the pattern's tiled order `[N, N]`, rewritten in natural order."""
    perm = pattern.token_permutation(q_len=mask.shape[0], kv_len=mask.shape[1])
    if perm is None:
        return mask
    out = np.zeros_like(mask)
    out[np.ix_(perm[0], perm[1])] = mask
    return out
