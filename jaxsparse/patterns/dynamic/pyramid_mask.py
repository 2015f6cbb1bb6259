"""`PyramidMask`: PSA's multi-level block selection over a concatenated pyramid of keys.

Level h (1-based) pools keys by `f = 2**(h-1)` (mean of each group of f
consecutive keys; the last group may be shorter). The call's key sequence is
the concatenation `[K^1; K^2; ...; K^L]`; `levels[b, h, i, j]` says which
level query block i reads for key block j (0: skip). `mask_fn` allows a
concatenated key exactly when it belongs to the chosen level of its block
(and, for causal use, when the last original key it pools is in the past).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxsparse.patterns import base
from jaxsparse.selection import ranges
from jaxsparse.sparsity import block_sparsity, device


@dataclasses.dataclass(frozen=True)
class PyramidLayout:
    """Where each level sits in the concatenated key sequence (static, numpy)."""

    kv_len: int
    block_size: int
    num_levels: int

    def factor(self, h: int) -> int:
        return 2 ** (h - 1)

    def length(self, h: int) -> int:
        return -(-self.kv_len // self.factor(h))

    def start(self, h: int) -> int:
        return sum(self.length(g) for g in range(1, h))

    @property
    def total(self) -> int:
        return self.start(self.num_levels + 1)

    @property
    def num_blocks(self) -> int:
        return -(-self.kv_len // self.block_size)

    @functools.cached_property
    def columns(self) -> dict[str, np.ndarray]:
        """Per concatenated key: level, original block, pooled count, last original position."""
        level, block, count, last = [], [], [], []
        for h in range(1, self.num_levels + 1):
            f = self.factor(h)
            u = np.arange(self.length(h))
            end = np.minimum((u + 1) * f, self.kv_len)
            level.append(np.full(len(u), h))
            block.append((u * f) // self.block_size)
            count.append(end - u * f)
            last.append(end - 1)
        out = dict(level=level, block=block, count=count, last=last)
        return {name: np.concatenate(v).astype(np.int64) for name, v in out.items()}


@base.pattern_dataclass
class PyramidMask(base.Pattern):
    """Keys of the concatenated pyramid allowed by a per-(query block, key block) level choice.

    Attributes:
      levels: int8 `[B, Hx, Tb, Sb]`, 0 (skip) or the level 1..num_levels.
      block_size: query and key block of the selection (original positions).
      num_levels: pyramid depth L.
      kv_len: original key length S (the call's keys number `layout.total`).
      causal: a pooled key is visible once the last key it pools is past.
      q_offset: position of query row 0 (set by `bind`).
    """

    exact_given_lists = True  # its callers' lists are built from its arrays

    _dataclass_kwargs = {"eq": False}

    levels: Any = base.data_field()
    block_size: int = 128
    num_levels: int = 4
    kv_len: int = 0
    causal: bool = False
    q_offset: int | None = dataclasses.field(default=None, repr=False)

    @property
    def layout(self) -> PyramidLayout:
        return PyramidLayout(self.kv_len, self.block_size, self.num_levels)

    @property
    def batched(self) -> bool:
        return True

    @property
    def head_dependent(self) -> bool:  # type: ignore[override]
        return np.shape(self.levels)[-3] > 1

    def mask_fn(self, q_pos, kv_pos, head):
        xp = base.array_module(self.levels, q_pos, kv_pos, head)
        levels = xp.asarray(self.levels)
        hx, tb, sb = levels.shape[-3:]
        h = xp.minimum(head, hx - 1)
        row = xp.clip((q_pos - (self.q_offset or 0)) // self.block_size, 0, tb - 1)
        lay = self.layout
        out = None
        for lev in range(1, self.num_levels + 1):
            f, start, n = lay.factor(lev), lay.start(lev), lay.length(lev)
            u = kv_pos - start
            inside = (u >= 0) & (u < n)
            col = xp.clip((u * f) // self.block_size, 0, sb - 1)
            ok = inside & (levels[h, row, col] == lev)
            if self.causal:
                ok = ok & (xp.minimum((u + 1) * f, self.kv_len) - 1 <= q_pos)
            out = ok if out is None else out | ok
        return out

    def device_sparsity(self, *, kv_len, **geometry):
        del kv_len  # the keys are the pooled levels the mask was built for
        return pyramid_sparsity(self, **geometry)

    def bind(self, *, q_len, kv_len, q_offset, num_heads):
        lay = self.layout
        want = (-(-q_len // self.block_size), lay.num_blocks)
        shape = tuple(np.shape(self.levels))
        if kv_len != lay.total or shape[-2:] != want:
            raise ValueError(
                f"PyramidMask: levels {shape} over {self.kv_len} keys (pyramid of {lay.total}) "
                f"do not fit a call with q_len={q_len}, kv_len={kv_len}; build the keys with "
                "jaxsparse.pyramid_attention."
            )
        return dataclasses.replace(self, q_offset=q_offset)

    def __repr__(self):
        return f"PyramidMask(levels{list(np.shape(self.levels))}, L={self.num_levels})"


def pyramid_codes(pattern: PyramidMask, *, q_len: int, q_offset: int, block_q: int, block_kv: int):
    """Tile codes `[B, Hx, Tb', Sb']` over (query tiles, concatenated key tiles)."""
    lay = pattern.layout
    levels = jnp.asarray(pattern.levels)
    cols = lay.columns
    nl, sb = pattern.num_levels, lay.num_blocks
    # Segment (h, j): the keys of level h pooled from original block j, level-major.
    seg = jnp.stack([levels == h for h in range(1, nl + 1)], axis=-2)  # [B, Hx, Tb, L, Sb]
    seg = seg.reshape(levels.shape[:3] + (nl * sb,))
    seg_of_col = (cols["level"] - 1) * sb + cols["block"]
    total = lay.total
    tb_t, sb_t = -(-q_len // block_q), -(-total // block_kv)
    first = np.arange(sb_t) * block_kv
    last = np.minimum(first + block_kv, total) - 1
    r_lo, r_hi = ranges.uniform_ranges(tb_t, block_q, pattern.block_size, q_len)
    codes = []
    for op in ("any", "all"):
        x = ranges.reduce_ranges(seg, 2, r_lo, r_hi, op=op)
        codes.append(ranges.reduce_ranges(x, 3, seg_of_col[first], seg_of_col[last], op=op))
    touched, covered = codes
    out = jnp.where(
        covered,
        jnp.int8(base.FULL),
        jnp.where(touched, jnp.int8(base.PARTIAL), jnp.int8(base.EMPTY)),
    )
    if pattern.causal:
        lo = np.minimum.reduceat(cols["last"], first)
        hi = np.maximum.reduceat(cols["last"], first)
        i = np.arange(tb_t)[:, None]
        q_lo = q_offset + i * block_q
        q_hi = q_offset + np.minimum((i + 1) * block_q, q_len) - 1
        causal = base.codes_from(hi[None, :] <= q_lo, lo[None, :] > q_hi)
        out = device.intersect_codes(out, jnp.asarray(causal)[None, None])
    return out


def pyramid_sparsity(
    pattern: PyramidMask, *, num_heads: int, q_len: int, q_offset: int, block_q: int, block_kv: int
) -> block_sparsity.BlockSparsity:
    """Tile lists of a `PyramidMask` over the concatenated keys."""
    codes = pyramid_codes(
        pattern, q_len=q_len, q_offset=q_offset, block_q=block_q, block_kv=block_kv
    )
    if codes.shape[1] not in (1, num_heads):
        codes = jnp.repeat(codes, num_heads // codes.shape[1], axis=1)
    return device.from_block_codes(
        codes,
        block_q=block_q,
        block_kv=block_kv,
        q_len=q_len,
        kv_len=pattern.layout.total,
        q_offset=q_offset,
    )
