"""`PooledLevel`: one level of PSA's pyramid on its own, its blocks padded to whole tiles.

`jaxsparse.pyramid_attention` runs each level as its own block-sparse call
and merges the levels by log-sum-exp: a level holds only its whole pooled
keys, each pooling `f = 2**(h-1)` keys, so PSA's per-key bias `ln f` is one
constant per call, added to that call's lse (when S is not a multiple of f,
the level's last, shorter pooled key is left to the caller). The
level's selection (`levels == h`) becomes the call's tile lists (tiles are
whole selection blocks), and the mask left for partial tiles is arithmetic:
padding and, for causal use, whether the last key a pooled key averages is
past. The GPU kernels run that, with head dim D (no bias feature).

Layout of a level's keys: selection block j's `per = block_size // f` pooled
keys sit at `j * stride .. j * stride + per - 1`, `stride = max(per, pad_to)`
(blocks of fewer than `pad_to` pooled keys are padded to one kernel tile).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jaxsparse.patterns import base
from jaxsparse.selection import pooling
from jaxsparse.sparsity import block_sparsity, device


@dataclasses.dataclass(frozen=True)
class LevelLayout:
    """Where level `factor`'s pooled keys sit (static).

    Attributes:
      factor: keys pooled per level key (2**(h-1)).
      block_size: the selection block, in original positions.
      kv_len: original keys S; the level holds its `S // factor` whole pooled keys.
      pad_to: blocks with fewer pooled keys are padded to this many.
    """

    factor: int
    block_size: int
    kv_len: int
    pad_to: int

    @property
    def per(self) -> int:
        return self.block_size // self.factor

    @property
    def stride(self) -> int:
        return max(self.per, self.pad_to)

    @property
    def count(self) -> int:
        """Whole pooled keys (the last block may hold fewer than `per`)."""
        return self.kv_len // self.factor

    @property
    def num_blocks(self) -> int:
        return -(-self.kv_len // self.block_size)

    @property
    def length(self) -> int:
        """Keys of the padded level."""
        return self.num_blocks * self.stride

    def keys(self, x):
        """Pooled and padded `[B, length, K, X]` from original `[B, S, K, X]`, in x's dtype."""
        pooled = x if self.factor == 1 else pooling.pool(x, self.factor, kind="mean", axis=1)
        pooled = pooled[:, : self.count].astype(x.dtype)  # a shorter last pooled key is not ours
        b, _, kh, dx = pooled.shape
        full = self.num_blocks * self.per
        pooled = jnp.pad(pooled, ((0, 0), (0, full - self.count), (0, 0), (0, 0)))
        if self.stride == self.per:
            return pooled
        blocks = pooled.reshape(b, self.num_blocks, self.per, kh, dx)
        blocks = jnp.pad(blocks, ((0, 0), (0, 0), (0, self.stride - self.per), (0, 0), (0, 0)))
        return blocks.reshape(b, self.length, kh, dx)

    def pooled_index(self, kv_pos):
        """`(u, real)`: the pooled key at padded position kv_pos, and whether it is one."""
        j, w = kv_pos // self.stride, kv_pos % self.stride
        u = j * self.per + w
        return u, (w < self.per) & (u < self.count)


@base.pattern_dataclass
class PooledLevel(base.Pattern):
    """Real keys of one padded pyramid level; with `causal`, those whose last key is past.

    ```
    factor 2, block_size 4, pad_to 4, causal, S = 8: keys u0 u1 _ _ u2 u3 _ _
    q0  · · · · · · · ·
    q1  ■ · · · · · · ·
    q2  ■ · · · · · · ·
    q3  ■ ■ · · · · · ·
    q4  ■ ■ · · · · · ·
    q5  ■ ■ · · ■ · · ·
    ```
    Which blocks a query block reads is in the call's tile lists, not here.
    """

    exact_given_lists = True  # its callers' lists are built from its arrays

    factor: int = 1
    block_size: int = 128
    kv_len: int = 0
    pad_to: int = 1
    causal: bool = False

    @property
    def layout(self) -> LevelLayout:
        return LevelLayout(self.factor, self.block_size, self.kv_len, self.pad_to)

    def mask_fn(self, q_pos, kv_pos, head):
        del head
        u, ok = self.layout.pooled_index(kv_pos)
        if self.causal:
            ok = ok & ((u + 1) * self.factor - 1 <= q_pos)
        return ok

    def __repr__(self):
        return f"PooledLevel(factor={self.factor}, block_size={self.block_size})"


def level_sparsity(
    levels,
    level: int,
    pattern: PooledLevel,
    *,
    num_heads: int,
    q_len: int,
    q_offset: int,
    block_q: int,
    block_kv: int,
) -> block_sparsity.BlockSparsity:
    """Tile lists of level `level`: the blocks whose chosen level it is, causality applied.

    `levels` int `[B, Hx, Tb, Sb]` over selection blocks; `block_q` divides
    `block_size`, `block_kv` divides the layout's stride.
    """
    lay = pattern.layout
    bs = pattern.block_size
    if bs % block_q or lay.stride % block_kv:
        raise ValueError(
            f"level tiles {block_q}x{block_kv} must divide the block ({bs}) and the level's "
            f"stride ({lay.stride})"
        )
    tb = -(-q_len // block_q)
    sel = jnp.asarray(levels) == level
    sel = jnp.repeat(sel, bs // block_q, axis=2)[:, :, :tb]
    sel = jnp.repeat(sel, lay.stride // block_kv, axis=3)
    # Per key tile: its real pooled keys and their last original positions (numpy, static).
    pos = np.arange(lay.length).reshape(-1, block_kv)
    u, real = lay.pooled_index(pos)
    last = np.where(real, (u + 1) * lay.factor - 1, -1)
    any_real, all_real = real.any(-1), real.all(-1)
    lo = np.where(real, last, np.iinfo(np.int64).max).min(-1)
    hi = last.max(-1)
    i = np.arange(tb)[:, None]
    q_lo = q_offset + i * block_q
    q_hi = q_offset + np.minimum((i + 1) * block_q, q_len) - 1
    full = np.broadcast_to(all_real[None, :], (tb, len(all_real)))
    empty = np.broadcast_to(~any_real[None, :], full.shape)
    if pattern.causal:
        full = full & (hi[None, :] <= q_lo)
        empty = empty | (lo[None, :] > q_hi)
    codes = jnp.where(sel, jnp.asarray(base.codes_from(full, empty)), jnp.int8(base.EMPTY))
    if codes.shape[1] not in (1, num_heads):
        codes = jnp.repeat(codes, num_heads // codes.shape[1], axis=1)
    return device.from_block_codes(
        codes.astype(jnp.int8),
        block_q=block_q,
        block_kv=block_kv,
        q_len=q_len,
        kv_len=lay.length,
        q_offset=q_offset,
    )
