"""`BlockTopK`: MInference's block-sparse prefill pattern (Jiang et al., arXiv 2407.02490).

Queries and keys are mean-pooled over blocks of `block_size`; each query
block scores the key blocks it may see causally by `q_mean . k_mean` (no
softmax scale, as in MInference's `_build_block_index`) and keeps the best
`top_k`, per query head. Attention then runs on those tiles, causal inside.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsparse.patterns import base
from jaxsparse.patterns.dynamic import common, token_block_mask
from jaxsparse.selection import estimate, pooling, topk


def block_causal(*, q_len: int, kv_len: int, q_offset: int, block_q: int, block_kv: int):
    """`[Tb, Sb]` bool: key block j holds a key some query of block i may see causally."""
    tb, sb = -(-q_len // block_q), -(-kv_len // block_kv)
    q_last = q_offset + jnp.minimum((jnp.arange(tb) + 1) * block_q, q_len) - 1
    return (jnp.arange(sb) * block_kv)[None, :] <= q_last[:, None]


def dense_causal_bits(batch: int, *, q_len: int, kv_len: int, q_offset: int, block_size: int):
    """Selection bits `[B, 1, Tb, Sb]` that keep every causally visible block (dense causal:
    the decoding and short-input fallback of the block-selecting methods)."""
    visible = block_causal(
        q_len=q_len, kv_len=kv_len, q_offset=q_offset, block_q=block_size, block_kv=block_size
    )
    return jnp.broadcast_to(visible[None, None], (batch, 1) + visible.shape)


def straddled_blocks(*, q_len: int, kv_len: int, q_offset: int, block_size: int):
    """`[Tb, Sb]` bool: the key block holding each query block's first position, where
    `q_offset` is not a multiple of `block_size` (else all False).

    Query and key blocks then straddle each other: a visible key block may start
    after some of a query block's rows, so a row could be left with no key it may
    see if only such blocks were chosen. Forcing the block of the first row keeps
    a key every row of the block sees. With aligned blocks every visible key block
    starts at or before the query block's first row, and nothing is forced.
    """
    tb, sb = -(-q_len // block_size), -(-kv_len // block_size)
    first = (q_offset + jnp.arange(tb) * block_size) // block_size
    straddle = q_offset % block_size != 0  # may be traced
    return (jnp.arange(sb)[None, :] == first[:, None]) & straddle


def block_topk_select(q, k, *, block_size: int, top_k: int, q_offset: int):
    """Selection bits `[B, H, Tb, Sb]` (bool) of BlockTopK (ragged last blocks are averaged
    over their valid tokens; with a `q_offset` not a multiple of `block_size`, the
    `straddled_blocks` are forced)."""
    q, k = jax.lax.stop_gradient(q), jax.lax.stop_gradient(k)
    qm = pooling.pool(q, block_size, kind="mean", axis=1)  # [B, Tb, H, D]
    km = pooling.pool(k, block_size, kind="mean", axis=1)  # [B, Sb, K, D]
    scores = estimate.grouped_logits(qm, km)  # [B, H, Tb, Sb]
    visible = block_causal(
        q_len=q.shape[1],
        kv_len=k.shape[1],
        q_offset=q_offset,
        block_q=block_size,
        block_kv=block_size,
    )
    forced = straddled_blocks(
        q_len=q.shape[1], kv_len=k.shape[1], q_offset=q_offset, block_size=block_size
    )
    scores = jnp.where(forced[None, None], jnp.inf, scores)
    scores = jnp.where(visible[None, None], scores, -jnp.inf)
    return topk.topk_mask(scores, top_k)


@base.pattern_dataclass
class BlockTopK(common.DynamicPattern):
    """Per query block and head, the `top_k` key blocks by pooled `q . k` (block-causal).

    ```
    BlockTopK(block_size=2, top_k=2): query block 2 keeps key blocks 0 and 2
    ■ · · · · ·
    ■ ■ · · · ·
    ■ ■ ■ · · ·
    ■ ■ ■ ■ · ·
    ■ ■ · · ■ ·
    ■ ■ · · ■ ■
    ```

    Args:
      block_size: pooling block and selection granularity (MInference: 64).
      top_k: key blocks kept per query block (MInference: 100).

    Details:
      Causal only. Decoding (`q_len == 1`) is dense causal, as in MInference,
      which selects for prefill only. Rows with no more than `top_k` visible blocks (sequences
      shorter than `top_k * block_size`) keep them all: dense causal. Where
      `q_offset` (chunked prefill) is not a multiple of `block_size`, query
      and key blocks straddle, and each query block always keeps the key block
      of its first position (one of its `top_k`), so that no row is left with
      nothing to see. Kernel
      tiles default to `block_size` (capped at 128), so the tile lists are
      exactly the selection.
    """

    block_size: int = 64
    top_k: int = 100

    def __post_init__(self):
        base.check_int("block_size", self.block_size, minimum=1, owner="BlockTopK")
        base.check_int(
            "top_k",
            self.top_k,
            minimum=1,
            owner="BlockTopK",
            fix="It counts key blocks per query block.",
        )

    def bind(self, *, q_len, kv_len, q_offset, num_heads):
        common.check_causal_geometry("BlockTopK", q_len=q_len, kv_len=kv_len, q_offset=q_offset)
        return self

    def select(self, q, k, *, q_offset, config):
        b, t, h, s = q.shape[0], q.shape[1], q.shape[2], k.shape[1]
        if t == 1:  # decoding is dense (MInference selects for prefill only): no bound
            bound = None
            bits = dense_causal_bits(
                b, q_len=t, kv_len=s, q_offset=q_offset, block_size=self.block_size
            )
        else:
            bound = self.top_k
            bits = block_topk_select(
                q, k, block_size=self.block_size, top_k=self.top_k, q_offset=q_offset
            )
        return token_block_mask.block_selection(
            bits,
            block_size=self.block_size,
            q_len=t,
            kv_len=s,
            q_offset=q_offset,
            num_heads=h,
            config=config,
            max_selected=bound,
        )

    def __repr__(self):
        return f"BlockTopK(block_size={self.block_size}, top_k={self.top_k})"
