"""Explicit masks: `BlockMask` (per tile, fast) and `Mask` (per element, slow path)."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import numpy as np

from jaxsparse.patterns import base


def concrete(x: Any) -> np.ndarray | None:
    """`x` as a numpy array, or None when it is traced (only known on device)."""
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _summed_area(m: np.ndarray) -> np.ndarray:
    """Inclusive 2-D prefix sums over the last two axes, with a zero border."""
    sat = np.zeros(m.shape[:-2] + (m.shape[-2] + 1, m.shape[-1] + 1), np.int64)
    sat[..., 1:, 1:] = m.astype(np.int64).cumsum(-2).cumsum(-1)
    return sat


def _rect_codes(sat, head, r_lo, r_hi, c_lo, c_hi, ndim):
    """EMPTY/PARTIAL/FULL of the rectangles [r_lo, r_hi] x [c_lo, c_hi] of a 0/1 grid."""
    if ndim == 3:
        h = np.broadcast_to(
            head, np.broadcast_shapes(np.shape(head), np.shape(r_lo), np.shape(c_lo))
        )
        get = lambda r, c: sat[h, r, c]  # noqa: E731
    else:
        get = lambda r, c: sat[r, c]  # noqa: E731
    total = get(r_hi + 1, c_hi + 1) - get(r_lo, c_hi + 1) - get(r_hi + 1, c_lo) + get(r_lo, c_lo)
    area = (r_hi - r_lo + 1) * (c_hi - c_lo + 1)
    return base.codes_from(total == area, total == 0)


def _check_bool_array(owner: str, name: str, x: Any) -> None:
    dtype = getattr(x, "dtype", None)
    if dtype is None or dtype != np.bool_:
        raise TypeError(
            f"{owner}: {name} must be a boolean array, got "
            f"{type(x).__name__} with dtype {dtype}. Pass `np.asarray({name}, bool)` (or "
            f"`jnp.asarray({name}, bool)` for a traced one)."
        )
    if np.ndim(x) not in (2, 3):
        raise ValueError(
            f"{owner}: {name} must have shape [rows, cols] or [heads, rows, cols], "
            f"got shape {np.shape(x)}."
        )


def _check_offset(owner: str, mine: int | None, call: int) -> None:
    if mine is not None and mine != call:
        raise ValueError(
            f"{owner} was bound with q_offset={mine} but this call uses q_offset={call}; "
            "build a new pattern for this call."
        )


@base.pattern_dataclass
class BlockMask(base.Pattern):
    """An explicit block mask: tile `(i, j)` is kept when `block_mask[..., i, j]`.

    Tile `(i, j)` covers query rows `[i*block_q, (i+1)*block_q)` and keys
    `[j*block_kv, (j+1)*block_kv)`. `block_mask` is boolean `[Tb, Sb]` or
    per head `[H, Tb, Sb]` and may be a traced array (its metadata is then
    built on device). When the kernel tiles divide `block_q` / `block_kv`,
    no element mask is ever evaluated.

    ```
    BlockMask([[1, 0, 1],
               [0, 1, 0]], block_q=2, block_kv=2)
    ■ ■ · · ■ ■
    ■ ■ · · ■ ■
    · · ■ ■ · ·
    · · ■ ■ · ·
    ```
    """

    _dataclass_kwargs = {"eq": False}

    block_mask: Any = base.data_field()
    block_q: int = 128
    block_kv: int = 128
    q_offset: int | None = dataclasses.field(default=None, repr=False)

    def __repr__(self):  # the array by its shape (as the dynamic masks): it may reach a message
        return (
            f"BlockMask(block_mask{list(np.shape(self.block_mask))}, block_q={self.block_q}, "
            f"block_kv={self.block_kv})"
        )

    def __post_init__(self):
        base.check_int("block_q", self.block_q, minimum=1, owner="BlockMask")
        base.check_int("block_kv", self.block_kv, minimum=1, owner="BlockMask")

    @property
    def head_dependent(self) -> bool:  # type: ignore[override]
        return np.ndim(self.block_mask) == 3

    def mask_fn(self, q_pos, kv_pos, head):
        xp = base.array_module(self.block_mask, q_pos, kv_pos, head)
        m = xp.asarray(self.block_mask)
        rows = q_pos - (self.q_offset or 0)
        qb = xp.clip(rows // self.block_q, 0, m.shape[-2] - 1)
        kb = xp.clip(kv_pos // self.block_kv, 0, m.shape[-1] - 1)
        return m[head, qb, kb] if m.ndim == 3 else m[qb, kb]

    @functools.cached_property
    def _sat(self):
        m = concrete(self.block_mask)
        if m is None:
            raise base.TracedPatternError(self)
        return _summed_area(m)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        off = self.q_offset or 0
        return _rect_codes(
            self._sat,
            head,
            (q_lo - off) // self.block_q,
            (q_hi - off) // self.block_q,
            k_lo // self.block_kv,
            k_hi // self.block_kv,
            np.ndim(self.block_mask),
        )

    def needs_tile_mask(self, block_q, block_kv):
        return self.block_q % block_q != 0 or self.block_kv % block_kv != 0

    def bind(self, *, q_len, kv_len, q_offset, num_heads):
        _check_bool_array("BlockMask", "block_mask", self.block_mask)
        _check_offset("BlockMask", self.q_offset, q_offset)
        want = (math.ceil(q_len / self.block_q), math.ceil(kv_len / self.block_kv))
        shape = tuple(np.shape(self.block_mask))
        if shape[-2:] != want:
            raise ValueError(
                f"BlockMask: block_mask has shape {shape} but q_len={q_len}, kv_len={kv_len} "
                f"with block_q={self.block_q}, block_kv={self.block_kv} need "
                f"[..., {want[0]}, {want[1]}] (ceil(length / block))."
            )
        if len(shape) == 3 and shape[0] != num_heads:
            raise ValueError(
                f"BlockMask: a per-head block_mask has {shape[0]} heads but the call has "
                f"{num_heads} query heads; give one mask per query head or a 2-D mask."
            )
        return dataclasses.replace(self, q_offset=q_offset)

    @classmethod
    def examples(cls):
        rng = np.random.default_rng(0)
        return [BlockMask(rng.random((4, 5)) < 0.5, block_q=8, block_kv=6)]


@base.pattern_dataclass
class Mask(base.Pattern):
    """An explicit element mask `mask[..., i, j]` for query row i and key j (slow path).

    Boolean `[T, S]` or per head `[H, T, S]`; may be traced. Prefer a
    structured pattern or a `BlockMask`: an element mask costs O(T*S) memory and
    is evaluated inside every partial tile.
    """

    _dataclass_kwargs = {"eq": False}

    mask: Any = base.data_field()
    q_offset: int | None = dataclasses.field(default=None, repr=False)

    def __repr__(self):
        return f"Mask(mask{list(np.shape(self.mask))})"

    @property
    def head_dependent(self) -> bool:  # type: ignore[override]
        return np.ndim(self.mask) == 3

    def mask_fn(self, q_pos, kv_pos, head):
        xp = base.array_module(self.mask, q_pos, kv_pos, head)
        m = xp.asarray(self.mask)
        rows = xp.clip(q_pos - (self.q_offset or 0), 0, m.shape[-2] - 1)
        cols = xp.clip(kv_pos, 0, m.shape[-1] - 1)
        return m[head, rows, cols] if m.ndim == 3 else m[rows, cols]

    @functools.cached_property
    def _sat(self):
        m = concrete(self.mask)
        if m is None:
            raise base.TracedPatternError(self)
        return _summed_area(m)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        off = self.q_offset or 0
        return _rect_codes(self._sat, head, q_lo - off, q_hi - off, k_lo, k_hi, np.ndim(self.mask))

    def bind(self, *, q_len, kv_len, q_offset, num_heads):
        _check_bool_array("Mask", "mask", self.mask)
        _check_offset("Mask", self.q_offset, q_offset)
        shape = tuple(np.shape(self.mask))
        if shape[-2:] != (q_len, kv_len):
            raise ValueError(
                f"Mask: mask has shape {shape} but the call has q_len={q_len}, kv_len={kv_len}; "
                f"it must be [..., {q_len}, {kv_len}]."
            )
        if len(shape) == 3 and shape[0] != num_heads:
            raise ValueError(
                f"Mask: a per-head mask has {shape[0]} heads but the call has {num_heads} "
                "query heads; give one mask per query head or a 2-D mask."
            )
        return dataclasses.replace(self, q_offset=q_offset)

    @classmethod
    def examples(cls):
        rng = np.random.default_rng(1)
        return [Mask(rng.random((13, 11)) < 0.3)]
