"""`TokenBlockMask`: a selection of key blocks per query row (or row block), as a batched pattern.

The representation every content-aware method here shares. `bits[b, h, r, c]`
says whether query row-group `r` (rows `[r*row_block, (r+1)*row_block)`) of
head `h` may attend key block `c` (keys `[c*col_block, (c+1)*col_block)`):

  * MoBA, NSA: one row per query token (`row_block=1`): per-token top-k
    chunks / blocks, which a query *tile* cannot express.
  * BlockTopK, FlexPrefill, SeerAttention: one row per query block.

`mask_fn` reads the bits (and applies causality), so it is exact inside any
tile; the tile lists are the per-tile union (`token_block_sparsity`), and a
tile is FULL only when every row of it selected every key in it. The GPU
kernels read the bits inside partial tiles as one word per list entry
(`jaxsparse.ops.packed`, for selections a GQA group shares).

```
TokenBlockMask(bits[h] = [[1, 0],      row_block=2, col_block=2, causal=False
                          [0, 1]])
■ ■ · ·
■ ■ · ·
· · ■ ■
· · ■ ■
```
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxsparse.patterns import base
from jaxsparse.patterns.causal import Causal
from jaxsparse.patterns.dynamic import common
from jaxsparse.patterns.full import Full
from jaxsparse.selection import ranges
from jaxsparse.sparsity import block_sparsity, device


@base.pattern_dataclass
class TokenBlockMask(base.Pattern):
    """Query rows attend the key blocks their bits select (see the module docstring).

    Attributes:
      bits: bool `[B, Hx, R, C]` (one example's slice `[Hx, R, C]` inside
        `mask_fn`); `Hx` is 1, the number of key/value heads (GQA-shared
        selections, with `group = H // K`) or the number of query heads.
      row_block: query rows per bit row (1: per token).
      col_block: keys per bit column.
      group: query heads sharing one bit head (`Hx * group == H`, or Hx == 1).
      causal: also require `key <= query` (positions as in the call).
      row_capacity: static bound on the key blocks one row selects besides
        the block holding its own position (causal; all blocks when not
        causal), or None. With it, the kernel backends run per-token
        selections (`jaxsparse.ops.packed`, `jaxsparse.ops.routed`).
      q_offset: position of query row 0 (set by `bind`).
    """

    exact_given_lists = True  # its callers' lists are built from its arrays

    _dataclass_kwargs = {"eq": False}

    bits: Any = base.data_field()
    row_block: int = 1
    col_block: int = 64
    group: int = 1
    causal: bool = True
    row_capacity: int | None = None
    q_offset: int | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        for name in ("row_block", "col_block", "group"):
            base.check_int(name, getattr(self, name), minimum=1, owner="TokenBlockMask")
        if self.row_capacity is not None:
            base.check_int("row_capacity", self.row_capacity, minimum=0, owner="TokenBlockMask")

    @property
    def batched(self) -> bool:
        return True

    @property
    def head_dependent(self) -> bool:  # type: ignore[override]
        return np.shape(self.bits)[-3] > 1

    def device_sparsity(self, **geometry):  # the builder takes the same keywords
        return token_block_sparsity(self, **geometry)

    def mask_fn(self, q_pos, kv_pos, head):
        xp = base.array_module(self.bits, q_pos, kv_pos, head)
        bits = xp.asarray(self.bits)
        hx, r, c = bits.shape[-3:]
        row = xp.clip((q_pos - (self.q_offset or 0)) // self.row_block, 0, r - 1)
        col = xp.clip(kv_pos // self.col_block, 0, c - 1)
        h = xp.minimum(head // self.group, hx - 1)
        m = bits[h, row, col]
        return m & (kv_pos <= q_pos) if self.causal else m

    def bind(self, *, q_len, kv_len, q_offset, num_heads):
        shape = tuple(np.shape(self.bits))
        want = (-(-q_len // self.row_block), -(-kv_len // self.col_block))
        if len(shape) not in (3, 4) or shape[-2:] != want:
            raise ValueError(
                f"TokenBlockMask: bits have shape {shape}; q_len={q_len}, kv_len={kv_len} with "
                f"row_block={self.row_block}, col_block={self.col_block} need [B, Hx, {want[0]}, "
                f"{want[1]}]."
            )
        if shape[-3] != 1 and shape[-3] * self.group != num_heads:
            raise ValueError(
                f"TokenBlockMask: {shape[-3]} bit heads x group {self.group} do not cover "
                f"{num_heads} query heads; use one bit head per query head, per key/value head "
                "(group = H // K), or a single one."
            )
        if self.q_offset is not None and self.q_offset != q_offset:
            raise ValueError(
                f"TokenBlockMask was built for q_offset={self.q_offset} but this call uses "
                f"q_offset={q_offset}; select again for this call."
            )
        return dataclasses.replace(self, q_offset=q_offset)

    def __repr__(self):
        return (
            f"TokenBlockMask(bits{list(np.shape(self.bits))}, row_block={self.row_block}, "
            f"col_block={self.col_block}, group={self.group}, causal={self.causal})"
        )


def pack_bits(bits):
    """Bits `[..., C]` (bool) as uint32 words `[..., ceil(C / 32)]`: bit c % 32 of word c // 32.

    The layout a GPU kernel reads in partial tiles (ALGORITHMS.md P1
    `token_mask`): `(word >> (c % 32)) & 1` is the bit of key block c.
    """
    c = bits.shape[-1]
    words = -(-c // 32)
    padded = jnp.pad(bits, [(0, 0)] * (bits.ndim - 1) + [(0, words * 32 - c)])
    grouped = padded.reshape(bits.shape[:-1] + (words, 32)).astype(jnp.uint32)
    weights = jnp.left_shift(jnp.uint32(1), jnp.arange(32, dtype=jnp.uint32))
    return (grouped * weights.reshape((1,) * (grouped.ndim - 1) + (32,))).sum(-1, dtype=jnp.uint32)


def unpack_bits(words, num_blocks: int):
    """Inverse of `pack_bits`: bool `[..., num_blocks]`."""
    shifts = jnp.arange(32, dtype=jnp.uint32).reshape((1,) * words.ndim + (32,))
    bits = jnp.right_shift(words[..., None], shifts) & jnp.uint32(1)
    return bits.reshape(words.shape[:-1] + (words.shape[-1] * 32,))[..., :num_blocks] == 1


def tile_exact_pattern(pattern: TokenBlockMask, block_q: int, block_kv: int) -> base.Pattern:
    """The pattern a kernel needs inside the listed tiles of a block-level selection.

    When every tile lies inside one selection cell (`row_block % block_q ==
    0` and `col_block % block_kv == 0`), the tile lists already say all the
    bits say: inside a listed tile only causality remains, an arithmetic mask
    that GPU kernels evaluate without reading the bits. Otherwise the
    `TokenBlockMask` itself.
    """
    if pattern.row_block % block_q == 0 and pattern.col_block % block_kv == 0:
        return Causal() if pattern.causal else Full()
    return pattern


def causal_tile_codes(
    *, q_len: int, kv_len: int, q_offset: int, block_q: int, block_kv: int
) -> np.ndarray:
    """Exact EMPTY/PARTIAL/FULL codes `[Tb, Sb]` of causal attention on these tiles (host)."""
    tb, sb = -(-q_len // block_q), -(-kv_len // block_kv)
    i, j = np.arange(tb)[:, None], np.arange(sb)[None, :]
    q_lo = q_offset + i * block_q
    q_hi = q_offset + np.minimum((i + 1) * block_q, q_len) - 1
    k_lo = j * block_kv
    k_hi = np.minimum((j + 1) * block_kv, kv_len) - 1
    return base.codes_from(k_hi <= q_lo, k_lo > q_hi)


def bits_tile_codes(
    bits, *, row_block: int, col_block: int, block_q: int, block_kv: int, q_len: int, kv_len: int
):
    """Codes `[B, Hx, Tb, Sb]` of the bits alone: FULL when all (row, key) of a tile are kept."""
    tb, sb = -(-q_len // block_q), -(-kv_len // block_kv)
    r_lo, r_hi = ranges.uniform_ranges(tb, block_q, row_block, q_len)
    c_lo, c_hi = ranges.uniform_ranges(sb, block_kv, col_block, kv_len)
    touched = ranges.reduce_ranges(
        ranges.reduce_ranges(bits, 2, r_lo, r_hi, op="any"), 3, c_lo, c_hi, op="any"
    )
    covered = ranges.reduce_ranges(
        ranges.reduce_ranges(bits, 2, r_lo, r_hi, op="all"), 3, c_lo, c_hi, op="all"
    )
    return jnp.where(
        covered,
        jnp.int8(base.FULL),
        jnp.where(touched, jnp.int8(base.PARTIAL), jnp.int8(base.EMPTY)),
    )


def expand_heads(codes, num_heads: int):
    """Codes with one list per query head (or a shared one) from `[B, Hx, ...]` bit heads."""
    hx = codes.shape[1]
    if hx in (1, num_heads):
        return codes
    return jnp.repeat(codes, num_heads // hx, axis=1)


def token_block_sparsity(
    pattern: TokenBlockMask,
    *,
    num_heads: int,
    block_q: int,
    block_kv: int,
    q_len: int,
    kv_len: int,
    q_offset: int,
    max_kv_blocks: int | None = None,
    max_q_blocks: int | None = None,
    extra_codes: Any = None,
) -> block_sparsity.BlockSparsity:
    """The tile lists of a `TokenBlockMask`: the union, per query tile, of its rows' selections.

    Args:
      pattern: the selection (bits `[B, Hx, R, C]`).
      num_heads: query heads H.
      block_q, block_kv: the kernel's tiles (any sizes; they need not divide
        the selection blocks).
      q_len, kv_len, q_offset: the call's geometry.
      max_kv_blocks / max_q_blocks: static bounds on list lengths (the XLA path
        visits `Tb * max_kv_blocks` tiles, so a tight bound saves work).
      extra_codes: optional codes `[B, Hx', Tb, Sb]` ANDed in (e.g. a window).
    """
    codes = bits_tile_codes(
        jnp.asarray(pattern.bits),
        row_block=pattern.row_block,
        col_block=pattern.col_block,
        block_q=block_q,
        block_kv=block_kv,
        q_len=q_len,
        kv_len=kv_len,
    )
    if pattern.causal:
        causal = causal_tile_codes(
            q_len=q_len, kv_len=kv_len, q_offset=q_offset, block_q=block_q, block_kv=block_kv
        )
        codes = device.intersect_codes(codes, jnp.asarray(causal)[None, None])
    if extra_codes is not None:
        codes = device.intersect_codes(codes, extra_codes)
    codes = expand_heads(codes, num_heads)
    return device.from_block_codes(
        codes,
        block_q=block_q,
        block_kv=block_kv,
        q_len=q_len,
        kv_len=kv_len,
        q_offset=q_offset,
        max_kv_blocks=max_kv_blocks,
        max_q_blocks=max_q_blocks,
    )


def block_selection(
    bits,
    *,
    block_size: int,
    q_len: int,
    kv_len: int,
    q_offset: int,
    num_heads: int,
    config=None,
    max_selected: int | None = None,
):
    """`(pattern, sparsity)` for `jaxsparse.attention` of a causal block selection.

    The representation BlockTopK, FlexPrefill and the Seer gate select into:
    `bits [B, Hx, Tb, Sb]` keep key block j for query block i (both
    `block_size`). The kernel's tiles default to `block_size` (capped at 128,
    `common.natural_tile`; `config` may override them); the lists hold every
    tile a kept block touches, and the pattern is what the kernel still needs
    inside them (`tile_exact_pattern`). `max_selected`, when a row keeps at
    most that many blocks, bounds the lists statically (rows of the selection
    per tile times tiles per block), which shortens them on the XLA path.
    """
    pattern = TokenBlockMask(
        bits, row_block=block_size, col_block=block_size, causal=True, q_offset=q_offset
    )
    tile = common.natural_tile(block_size, max(q_len, kv_len))
    bq, bk = common.tiles(config, q_len=q_len, kv_len=kv_len, block_q=tile, block_kv=tile)
    bound = None
    if max_selected is not None:
        rows = ranges.max_cells(bq, block_size, q_len)
        cols = ranges.max_cells(block_size, bk, kv_len)
        bound = min(-(-kv_len // bk), max_selected * rows * cols)
    sp = token_block_sparsity(
        pattern,
        num_heads=num_heads,
        block_q=bq,
        block_kv=bk,
        q_len=q_len,
        kv_len=kv_len,
        q_offset=q_offset,
        max_kv_blocks=bound,
    )
    return tile_exact_pattern(pattern, bq, bk), sp
