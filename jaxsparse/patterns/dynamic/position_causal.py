"""`PositionCausal`: gathered keys that remember where they came from (ALGORITHMS.md P2).

When a method attends a scattered set of keys (MInference's vertical
columns), gathering them into a compact key sequence makes them dense tiles;
each gathered key keeps its original position, and causality compares that
position with the query's. Positions ascend along the gathered axis, so the
tiles a query block may see form a prefix.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxsparse.patterns import base
from jaxsparse.patterns.dynamic import token_block_mask
from jaxsparse.sparsity import block_sparsity, device


@base.pattern_dataclass
class PositionCausal(base.Pattern):
    """Key j of head h sits at `positions[h, j]` and is visible when that is `<= q`.

    ```
    positions = [0, 3, 4]   (keys 0, 3 and 4 gathered), 6 queries
    ■ · ·
    ■ · ·
    ■ · ·
    ■ ■ ·
    ■ ■ ■
    ■ ■ ■
    ```

    Attributes:
      positions: int32 `[B, Hx, N]`, ascending along N.
      q_offset: position of query row 0 (set by `bind`).
    """

    exact_given_lists = True  # its callers' lists are built from its arrays

    _dataclass_kwargs = {"eq": False}

    positions: Any = base.data_field()
    q_offset: int | None = dataclasses.field(default=None, repr=False)

    @property
    def batched(self) -> bool:
        return True

    @property
    def head_dependent(self) -> bool:  # type: ignore[override]
        return np.shape(self.positions)[-2] > 1

    def mask_fn(self, q_pos, kv_pos, head):
        xp = base.array_module(self.positions, q_pos, kv_pos, head)
        pos = xp.asarray(self.positions)
        hx, n = pos.shape[-2:]
        h = xp.minimum(head, hx - 1)
        return pos[h, xp.clip(kv_pos, 0, n - 1)] <= q_pos

    def device_sparsity(self, *, kv_len, **geometry):
        del kv_len  # the keys are the gathered positions
        return position_causal_sparsity(self, **geometry)

    def bind(self, *, q_len, kv_len, q_offset, num_heads):
        shape = tuple(np.shape(self.positions))
        if len(shape) not in (2, 3) or shape[-1] != kv_len or shape[-2] not in (1, num_heads):
            raise ValueError(
                f"PositionCausal: positions have shape {shape}; this call needs "
                f"[B, {num_heads} or 1, {kv_len}] (one position per gathered key)."
            )
        return dataclasses.replace(self, q_offset=q_offset)

    def __repr__(self):
        return f"PositionCausal(positions{list(np.shape(self.positions))})"


def position_causal_sparsity(
    pattern: PositionCausal,
    *,
    num_heads: int,
    block_q: int,
    block_kv: int,
    q_len: int,
    q_offset: int,
) -> block_sparsity.BlockSparsity:
    """Tile lists: key tile J is visible from query tile I once its first position is past."""
    pos = jnp.asarray(pattern.positions)
    n = pos.shape[-1]
    jb = -(-n // block_kv)
    pad = jb * block_kv - n
    big = jnp.iinfo(jnp.int32).max
    lo = jnp.pad(pos, ((0, 0), (0, 0), (0, pad)), constant_values=big)
    hi = jnp.pad(pos, ((0, 0), (0, 0), (0, pad)), constant_values=-1)
    lo = lo.reshape(pos.shape[:2] + (jb, block_kv)).min(-1)[:, :, None, :]
    hi = hi.reshape(pos.shape[:2] + (jb, block_kv)).max(-1)[:, :, None, :]
    tb = -(-q_len // block_q)
    i = np.arange(tb)
    q_lo = jnp.asarray(q_offset + i * block_q)[None, None, :, None]
    q_hi = jnp.asarray(q_offset + np.minimum((i + 1) * block_q, q_len) - 1)[None, None, :, None]
    codes = jnp.where(
        hi <= q_lo,
        jnp.int8(base.FULL),
        jnp.where(lo > q_hi, jnp.int8(base.EMPTY), jnp.int8(base.PARTIAL)),
    )
    codes = token_block_mask.expand_heads(codes, num_heads)
    return device.from_block_codes(
        codes, block_q=block_q, block_kv=block_kv, q_len=q_len, kv_len=n, q_offset=q_offset
    )
