"""`VerticalSlashMask`: selected key columns ("vertical") and diagonals ("slash"), exact.

`vertical[b, h, j]` keeps key j for every query of head h; `slash[b, h, o]`
keeps every pair at offset `o = query position - key position`. Both are
causal. The mask is exact at the token level; MInference's kernel instead
widens each diagonal to 64-aligned key blocks (a superset).

Cost note: a block-sparse kernel visits whole tiles, so a tile is visited
when it holds any selected column or crosses any selected diagonal. The
result is exact (`mask_fn` drops the rest), but scattered vertical columns
make most tile columns visited; `jaxsparse.vertical_slash_attention` gathers
the columns instead (ALGORITHMS.md P2). The GPU kernels read `vertical` and
`slash` as bitmaps (`jaxsparse.ops.bitmaps`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxsparse.patterns import base
from jaxsparse.patterns.dynamic import token_block_mask
from jaxsparse.selection import ranges
from jaxsparse.sparsity import block_sparsity, device


@base.pattern_dataclass
class VerticalSlashMask(base.Pattern):
    """Causal attention to selected columns and diagonals: `k <= q and (V[k] or S[q - k])`.

    ```
    vertical = {0}, slash = {0, 2}
    ■ · · · · ·
    ■ ■ · · · ·
    ■ · ■ · · ·
    ■ ■ · ■ · ·
    ■ · ■ · ■ ·
    ■ · · ■ · ■
    ```

    Attributes:
      vertical: bool `[B, Hx, S]` selected key positions.
      slash: bool `[B, Hx, S]` selected offsets `q - k` (0 is the diagonal).
      include_vertical: False keeps the diagonals only, minus the vertical
        columns (the part left when the columns are attended separately,
        gathered; see `jaxsparse.methods.vertical_slash_attention`).
      q_offset: position of query row 0 (set by `bind`).
    """

    exact_given_lists = True  # its callers' lists are built from its arrays

    _dataclass_kwargs = {"eq": False}

    vertical: Any = base.data_field()
    slash: Any = base.data_field()
    include_vertical: bool = True
    q_offset: int | None = dataclasses.field(default=None, repr=False)

    @property
    def batched(self) -> bool:
        return True

    @property
    def head_dependent(self) -> bool:  # type: ignore[override]
        return np.shape(self.vertical)[-2] > 1

    def device_sparsity(self, **geometry):  # the builder takes the same keywords
        return vertical_slash_sparsity(self, **geometry)

    def mask_fn(self, q_pos, kv_pos, head):
        xp = base.array_module(self.vertical, q_pos, kv_pos, head)
        vert, slash = xp.asarray(self.vertical), xp.asarray(self.slash)
        hx, s = vert.shape[-2:]
        h = xp.minimum(head, hx - 1)
        col = xp.clip(kv_pos, 0, s - 1)
        off = xp.clip(q_pos - kv_pos, 0, slash.shape[-1] - 1)
        if self.include_vertical:
            return (kv_pos <= q_pos) & (vert[h, col] | slash[h, off])
        return (kv_pos <= q_pos) & slash[h, off] & ~vert[h, col]

    def bind(self, *, q_len, kv_len, q_offset, num_heads):
        for name in ("vertical", "slash"):
            shape = tuple(np.shape(getattr(self, name)))
            if len(shape) not in (2, 3) or shape[-1] != kv_len or shape[-2] not in (1, num_heads):
                raise ValueError(
                    f"VerticalSlashMask: {name} has shape {shape}; this call needs "
                    f"[B, {num_heads} or 1, {kv_len}]."
                )
        return dataclasses.replace(self, q_offset=q_offset)

    def __repr__(self):
        return f"VerticalSlashMask(vertical{list(np.shape(self.vertical))})"


def vertical_slash_codes(
    vertical,
    slash,
    *,
    q_len: int,
    kv_len: int,
    q_offset: int,
    block_q: int,
    block_kv: int,
    include_vertical: bool = True,
):
    """Tile codes `[B, Hx, Tb, Sb]` of a vertical-slash selection (causality included).

    With `include_vertical=False` only the diagonals count, and a tile holding
    an (excluded) vertical column is never FULL.
    """
    tb, sb = -(-q_len // block_q), -(-kv_len // block_kv)
    c_lo, c_hi = ranges.uniform_ranges(sb, block_kv, 1, kv_len)
    touched = ranges.reduce_ranges(vertical, 2, c_lo, c_hi, op="any")[:, :, None, :]
    covered = ranges.reduce_ranges(vertical, 2, c_lo, c_hi, op="all")[:, :, None, :]
    v_codes = jnp.where(
        covered,
        jnp.int8(base.FULL),
        jnp.where(touched, jnp.int8(base.PARTIAL), jnp.int8(base.EMPTY)),
    )
    # Diagonals crossing tile (i, j): offsets in [q_lo - k_hi, q_hi - k_lo], counted by prefix sums.
    i, j = np.arange(tb)[:, None], np.arange(sb)[None, :]
    q_lo = q_offset + i * block_q
    q_hi = q_offset + np.minimum((i + 1) * block_q, q_len) - 1
    k_lo = j * block_kv
    k_hi = np.minimum((j + 1) * block_kv, kv_len) - 1
    n = slash.shape[-1]
    o_lo = np.clip(q_lo - k_hi, 0, n)
    o_hi = np.clip(q_hi - k_lo, -1, n - 1)
    width = np.maximum(o_hi - o_lo + 1, 0)
    prefix = jnp.pad(jnp.cumsum(slash.astype(jnp.int32), axis=-1), ((0, 0), (0, 0), (1, 0)))
    hi_idx = jnp.asarray(np.maximum(o_hi + 1, o_lo).reshape(-1), jnp.int32)
    lo_idx = jnp.asarray(o_lo.reshape(-1), jnp.int32)
    count = jnp.take(prefix, hi_idx, axis=-1) - jnp.take(prefix, lo_idx, axis=-1)
    count = count.reshape(slash.shape[:2] + (tb, sb))
    w = jnp.asarray(width)[None, None]
    s_codes = jnp.where(
        (count == w) & (w > 0),
        jnp.int8(base.FULL),
        jnp.where(count > 0, jnp.int8(base.PARTIAL), jnp.int8(base.EMPTY)),
    )
    if include_vertical:
        codes = jnp.maximum(v_codes, s_codes)  # OR: full wins; partial | partial stays partial
    else:
        codes = jnp.where((s_codes == base.FULL) & touched, jnp.int8(base.PARTIAL), s_codes)
    causal = token_block_mask.causal_tile_codes(
        q_len=q_len, kv_len=kv_len, q_offset=q_offset, block_q=block_q, block_kv=block_kv
    )
    return device.intersect_codes(codes, jnp.asarray(causal)[None, None])


def vertical_slash_sparsity(
    pattern: VerticalSlashMask,
    *,
    num_heads: int,
    block_q: int,
    block_kv: int,
    q_len: int,
    kv_len: int,
    q_offset: int,
) -> block_sparsity.BlockSparsity:
    """Tile lists of a `VerticalSlashMask` (every tile holding a column or crossing a diagonal)."""
    codes = vertical_slash_codes(
        jnp.asarray(pattern.vertical),
        jnp.asarray(pattern.slash),
        q_len=q_len,
        kv_len=kv_len,
        q_offset=q_offset,
        block_q=block_q,
        block_kv=block_kv,
        include_vertical=pattern.include_vertical,
    )
    codes = token_block_mask.expand_heads(codes, num_heads)
    return device.from_block_codes(
        codes, block_q=block_q, block_kv=block_kv, q_len=q_len, kv_len=kv_len, q_offset=q_offset
    )
