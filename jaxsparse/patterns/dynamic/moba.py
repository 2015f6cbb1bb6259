"""`MoBA`: Mixture of Block Attention (Lu et al., arXiv 2502.13189), causal LLM attention.

Keys are split into chunks of `block_size`. Each query scores every chunk by
`q . mean(K_chunk)` (no softmax scale; parameter-free gate), keeps
its own chunk (causally) plus the best `top_k - 1` chunks that end before its
own chunk begins, and attends all their keys with one softmax. The selection
is per query token and per query head; gradients reach q, k, v through
attention only (top-k is not differentiated), as in the paper.

The gate is a product of q and the chunk means cast to q's dtype, accumulated
in float32 (as MoBA's reference code scores in the model's dtype): for
bfloat16 inputs one tensor-core matmul, where float32 operands made the gate
the larger part of MoBA's time at 64k. Float32 inputs score in float32.
On a Hopper GPU (bfloat16/float16) the gate and the top-k run as one fused
Mosaic GPU kernel (`pallas_kernels/gpu/gate_topk.py`, through
`jaxsparse.ops.selection_kernels`): q is read once and no score array is
written; `Config(gpu_gate_kernel=False)` keeps the XLA formulation below.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsparse.patterns import base
from jaxsparse.patterns.dynamic import common, token_block_mask
from jaxsparse.selection import chunks, estimate, pooling, ranges, topk


def moba_select(q, k, *, block_size: int, top_k: int, q_offset: int, config=None):
    """MoBA's selection bits `[B, H, T, ceil(S / block_size)]` (bool).

    Args:
      q: `[B, T, H, D]`; k: `[B, S, K, D]` (GQA: key heads are shared by the
        query heads of a group, the gate stays per query head).
      block_size: chunk length; top_k: chunks per query, own chunk included.
      q_offset: position of query row 0.
      config: a `jaxsparse.Config`; on a Hopper GPU the gate and top-k run as
        one fused kernel unless `config.gpu_gate_kernel` is False.
    """
    from jaxsparse.ops import selection_kernels

    q, k = jax.lax.stop_gradient(q), jax.lax.stop_gradient(k)
    k_mean = pooling.pool(k, block_size, kind="mean", axis=1)  # [B, nc, K, D]
    nc = k_mean.shape[1]
    chunk = jnp.arange(nc, dtype=jnp.int32)
    if top_k > 1:
        # With no more than top_k - 1 chunks every past chunk is chosen (short sequences).
        picks = selection_kernels.chunk_topk(
            q,
            k_mean.astype(q.dtype),
            k=min(top_k - 1, nc),
            block_size=block_size,
            q_offset=q_offset,
            config=config,
        )
        if picks is not None:
            own = (q_offset + jnp.arange(q.shape[1])) // block_size
            return topk.indices_to_mask(picks, nc) | (chunk[None, :] == own[:, None])[None, None]

    def select_rows(q_rows, q_pos):
        # [B, H, n, nc], unscaled as in MoBA; operands in q's dtype (see the module doc).
        gate = estimate.grouped_logits(q_rows, k_mean, operands=None)
        own = (q_pos // block_size)[None, None, :, None]
        c = chunk[None, None, None, :]
        # Past chunks compete for top_k - 1 places, the own chunk is always kept,
        # future chunks are out.
        past = jnp.where(c < own, gate, -jnp.inf)
        chosen = topk.topk_mask(past, top_k - 1) if top_k > 1 else jnp.zeros(past.shape, bool)
        return chosen | (c == own)

    rows = chunks.rows_per_chunk(q.shape[0] * q.shape[2] * nc)
    return chunks.map_query_rows(select_rows, q, rows=rows, q_offset=q_offset)


@base.pattern_dataclass
class MoBA(common.DynamicPattern):
    """Mixture of Block Attention: own chunk + top `top_k - 1` past chunks by `q . mean(K)`.

    ```
    MoBA(block_size=2, top_k=2), one query row per line (chunks of 2 keys)
    ■ · · · · ·
    ■ ■ · · · ·
    ■ ■ ■ · · ·     <- own chunk 1 + the only past chunk (top_k=2: own + 1 past)
    ■ ■ ■ ■ · ·
    ■ ■ · · ■ ·     <- this query picked chunk 0 over chunk 1
    · · ■ ■ ■ ■     <- this query picked chunk 1
    ```

    Args:
      block_size: chunk length in keys (MoBA's `moba_chunk_size`; the paper
        uses 512 at 8K and 4096 for long context).
      top_k: chunks attended per query including its own (`moba_topk`; 3 at
        8K, 12 for long context).

    Details:
      Causal only; per query token and query head, so a query tile visits
      the union of its rows' chunks and `mask_fn` (a `TokenBlockMask`) keeps
      each row exact. With no more than `top_k - 1` chunks in the past
      (short sequences, at most `top_k * block_size` keys), every chunk is
      chosen: dense causal attention. Kernel tiles default to the largest
      power of two <= 128 dividing `block_size`.
    """

    block_size: int
    top_k: int

    def __post_init__(self):
        base.check_int(
            "block_size",
            self.block_size,
            minimum=1,
            owner="MoBA",
            fix="It is the chunk length in keys.",
        )
        base.check_int(
            "top_k",
            self.top_k,
            minimum=1,
            owner="MoBA",
            fix="It counts chunks per query, including the query's own chunk.",
        )

    def bind(self, *, q_len, kv_len, q_offset, num_heads):
        common.check_causal_geometry("MoBA", q_len=q_len, kv_len=kv_len, q_offset=q_offset)
        return self

    def select(self, q, k, *, q_offset, config):
        t, h, s = q.shape[1], q.shape[2], k.shape[1]
        bits = moba_select(
            q, k, block_size=self.block_size, top_k=self.top_k, q_offset=q_offset, config=config
        )
        pattern = token_block_mask.TokenBlockMask(
            bits,
            row_block=1,
            col_block=self.block_size,
            causal=True,
            row_capacity=self.top_k - 1,  # besides the own chunk
            q_offset=q_offset,
        )
        bq, bk = common.tiles(
            config, q_len=t, kv_len=s, block_kv=common.natural_tile(self.block_size, s)
        )
        # Static list bound: chunks a tile's rows may pick x tiles per chunk.
        per_chunk = ranges.max_cells(self.block_size, bk, s)
        chunks_per_tile = min(-(-s // self.block_size), bq * self.top_k)
        bound = min(-(-s // bk), chunks_per_tile * per_chunk)
        sp = token_block_mask.token_block_sparsity(
            pattern,
            num_heads=h,
            block_q=bq,
            block_kv=bk,
            q_len=t,
            kv_len=s,
            q_offset=q_offset,
            max_kv_blocks=bound,
        )
        return pattern, sp

    def __repr__(self):
        return f"MoBA(block_size={self.block_size}, top_k={self.top_k})"
