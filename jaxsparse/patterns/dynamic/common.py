"""Shared pieces of the content-aware (dynamic) patterns: base class, checks, tile choice."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from jaxsparse.patterns import base


class DynamicPattern(base.Pattern, register=False):
    """A pattern whose selection is computed from q and k on device (`select`).

    Its token mask is only known after selection, so it cannot be combined
    with `&` / `|` or materialised directly: pass it alone as `pattern=`.
    """

    @property
    def is_dynamic(self) -> bool:
        return True

    def mask_fn(self, q_pos, kv_pos, head):
        raise TypeError(self._alone())

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        raise TypeError(self._alone())

    def _alone(self) -> str:
        return (
            f"{type(self).__name__} is a dynamic pattern: its mask exists only after it selects "
            "from q and k. Pass it alone as jaxsparse.attention(..., pattern=...), not combined "
            "with & or | and not to dense_mask."
        )


def check_causal_geometry(owner: str, *, q_len: int, kv_len: int, q_offset: int) -> None:
    """Causal-only methods need every query to sit within the keys (self-attention, cache)."""
    base.check_positions(owner, q_offset=q_offset, q_len=q_len, kv_len=kv_len)
    if q_offset < 0 or q_offset + q_len > kv_len:
        raise ValueError(
            f"{owner} is causal-only: queries must lie within the keys (0 <= q_offset and "
            f"q_offset + q_len <= kv_len), got q_len={q_len}, kv_len={kv_len}, "
            f"q_offset={q_offset}. Use it for self-attention, chunked prefill or decoding; "
            "for cross-attention use a non-causal pattern."
        )


def check_block_map(
    owner: str, name: str, x, *, q_len: int, kv_len: int, block_size: int, fix: str = ""
):
    """`x` must be a `[B, H, Tb, Sb]` array of `block_size` blocks over q_len x kv_len."""
    want = (-(-q_len // block_size), -(-kv_len // block_size))
    if np.ndim(x) != 4 or tuple(np.shape(x)[-2:]) != want:
        raise ValueError(
            f"{owner}: {name} has shape {tuple(np.shape(x))}; with q_len={q_len}, "
            f"kv_len={kv_len} and block_size={block_size} it must be [B, H, {want[0]}, "
            f"{want[1]}] (Tb = ceil(q_len / block_size), Sb = ceil(kv_len / block_size))."
            + (f" {fix}" if fix else "")
        )


def check_fraction(owner: str, name: str, value: Any, *, allow_zero: bool = False) -> None:
    """Thresholds are fractions: (0, 1] (or [0, 1] when 0 is meaningful)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}.")
    lo_ok = value >= 0 if allow_zero else value > 0
    if not (lo_ok and value <= 1):
        rng = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{owner}: {name}={value} must lie in {rng}.")


def default_tile(length: int, preferred: int = 128, minimum: int = 16) -> int:
    """The preferred tile, shrunk (a power of two >= minimum) for short sequences."""
    size = minimum
    while size < min(length, preferred):
        size *= 2
    return min(size, preferred)


def tiles(
    config: Any, *, q_len: int, kv_len: int, block_q: int | None = None, block_kv: int | None = None
) -> tuple[int, int]:
    """Kernel tiles for a selection: the call's Config, else the method's own, else a default."""
    bq = getattr(config, "block_q", None) or block_q or default_tile(q_len)
    bk = getattr(config, "block_kv", None) or block_kv or default_tile(kv_len)
    return bq, bk


def natural_tile(select_block: int, length: int, preferred: int = 128) -> int:
    """The largest power-of-two tile (16..preferred) dividing the selection block, if any.

    Then no tile straddles two selection blocks; otherwise the default tile.
    """
    tile = default_tile(length, preferred)
    t = tile
    while t > 16 and select_block % t:
        t //= 2
    return t if select_block % t == 0 else tile
