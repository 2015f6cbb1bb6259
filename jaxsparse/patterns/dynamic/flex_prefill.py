"""`FlexPrefill`: context-aware sparse prefill (Lai et al., arXiv 2502.20766).

Per head and per input, from the last query block (`bytedance/FlexPrefill`,
`get_active_blocks`):
  1. the last `block_size` queries attend all keys causally -> `A`;
     `vertical` = mean over rows, `slash` = diagonal sums / rows (both sum to 1);
  2. budgets: the fewest top entries covering `gamma` of the mass
     (`// block_size + 1` blocks), clamped to `[min_budget, max_budget]`;
  3. pattern test: the block distribution predicted from pooled keys and the
     mean last query, `softmax(mean(q) . mean_pool(K))`, is compared with the
     true one (`vertical` summed per block) by the Jensen-Shannon distance;
     below `tau` the head is *query-aware*: its budgets drop to `min_budget`
     and it adds the blocks of the pooled block-attention map (`softmax(Qp Kp^T
     * scale)`, block-causal) with the largest mass, until `gamma * rows`;
  4. vertical blocks (key block j for every query block at or after it) and
     slash blocks (block offset o) are the top per-head budgets, the first
     key block and the diagonal forced; the union is attended block-sparsely.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxsparse.patterns import base
from jaxsparse.patterns.dynamic import block_topk, common, token_block_mask
from jaxsparse.selection import cumulative, divergence, estimate, pooling, topk


def flex_prefill_select(
    q,
    k,
    *,
    gamma: float,
    tau: float,
    min_budget: int,
    max_budget: int | None,
    block_size: int,
    q_offset: int,
):
    """FlexPrefill's selection: bits `[B, H, Tb, Sb]` and the query-aware flag `[B, H]`."""
    q, k = jax.lax.stop_gradient(q), jax.lax.stop_gradient(k)
    t, s, d = q.shape[1], k.shape[1], q.shape[-1]
    bs = block_size
    tb, sb = -(-t // bs), -(-s // bs)
    scale = d**-0.5
    lo = math.ceil(min_budget / bs)
    hi = sb if max_budget is None else min(math.ceil(max_budget / bs), sb)
    lo = min(lo, hi)

    # 1. Estimate from the last query block.
    probs, q_pos = estimate.last_query_probs(q, k, last_q=bs, scale=scale, q_offset=q_offset)
    rows = probs.shape[-2]
    vertical = probs.mean(-2)  # [B, H, S]
    slash = estimate.slash_scores(probs, q_pos) / rows  # by offset

    # 2. Budgets (FlexPrefill's `score_cover_topk(x, gamma) // 128 + 1`, in blocks).
    nv = jnp.clip(cumulative.cover_count(vertical, gamma) // bs + 1, lo, hi)
    ns = jnp.clip(cumulative.cover_count(slash, gamma) // bs + 1, lo, hi)
    v_blocks = pooling.pool(vertical, bs, kind="sum", axis=-1)  # [B, H, Sb]
    s_blocks = pooling.pool(slash, bs, kind="sum", axis=-1)  # by block offset

    # 3. Pattern test: estimated vs true block distribution of the last block.
    k_mean = pooling.pool(k, bs, kind="mean", axis=1)  # [B, Sb, K, D]
    q_last = (q[:, t - rows :].astype(jnp.float32) * scale).mean(1, keepdims=True)
    predicted = jax.nn.softmax(estimate.grouped_logits(q_last, k_mean)[:, :, 0], axis=-1)
    query_aware = divergence.js_distance(predicted, v_blocks) < tau  # [B, H]
    nv = jnp.where(query_aware, lo, nv)
    ns = jnp.where(query_aware, lo, ns)

    # 4. Vertical and slash blocks, first key block and diagonal forced.
    idx = jnp.arange(sb, dtype=jnp.int32)[None, None, :]
    v_keep = topk.rank_mask(jnp.where(idx == 0, jnp.inf, v_blocks), nv)  # [B, H, Sb]
    s_keep = topk.rank_mask(jnp.where(idx == 0, jnp.inf, s_blocks), ns)  # by block offset
    qb = q_offset // bs + jnp.arange(tb, dtype=jnp.int32)  # absolute query block
    kb = jnp.arange(sb, dtype=jnp.int32)
    diff = qb[:, None] - kb[None, :]  # block offset of tile (i, j)
    causal = diff >= 0
    bits = v_keep[:, :, None, :] & causal[None, None]
    s_at = jnp.take(s_keep, jnp.clip(diff, 0, sb - 1).reshape(-1), axis=-1)
    bits = bits | (s_at.reshape(s_keep.shape[:2] + (tb, sb)) & causal[None, None])

    # Query-aware heads add the best blocks of the pooled block-attention map.
    q_mean = pooling.pool(q, bs, kind="mean", axis=1)  # [B, Tb, H, D]
    visible = block_topk.block_causal(
        q_len=t, kv_len=s, q_offset=q_offset, block_q=bs, block_kv=bs
    )[None, None]
    block_attn = estimate.masked_softmax(
        estimate.grouped_logits(q_mean, k_mean) * scale, visible
    )  # [B, H, Tb, Sb]
    flat = block_attn.reshape(block_attn.shape[:2] + (tb * sb,))
    extra = cumulative.cover_mask(flat, gamma * tb).reshape(block_attn.shape) & visible
    bits = bits | (extra & query_aware[:, :, None, None])
    return bits, query_aware


@base.pattern_dataclass
class FlexPrefill(common.DynamicPattern):
    """FlexPrefill: per-head query-aware blocks or vertical-slash blocks, budgets by mass.

    ```
    a vertical-slash head (key block 0 and the diagonal), on blocks
    ■ · · ·
    ■ ■ · ·
    ■ · ■ ·
    ■ · · ■
    ```

    Args:
      gamma: attention mass to cover, in (0, 1] (README default 0.9).
      tau: Jensen-Shannon distance threshold of the query-aware test, in
        [0, 1]; 0 makes every head vertical-slash (FlexPrefill's own
        default), the README uses 0.1. The distance is at most
        `sqrt(ln 2) ~ 0.83`, so 1 makes every head query-aware.
      min_budget, max_budget: budgets in tokens (rounded up to blocks).
      block_size: selection block and tile (128).

    Details:
      Causal prefill: queries tile the key grid, so `q_offset` (S - T)
      must be a multiple of `block_size`. As in FlexPrefill, sequences of
      at most `max(2 * block_size, min_budget)` query tokens (`min_budget`
      rounded up to whole blocks) use dense causal attention (also
      decoding), at any `q_offset`.
    """

    gamma: float = 0.9
    tau: float = 0.1
    min_budget: int = 512
    max_budget: int | None = None
    block_size: int = 128

    def __post_init__(self):
        common.check_fraction("FlexPrefill", "gamma", self.gamma)
        common.check_fraction("FlexPrefill", "tau", self.tau, allow_zero=True)
        base.check_int("block_size", self.block_size, minimum=1, owner="FlexPrefill")
        base.check_int(
            "min_budget",
            self.min_budget,
            minimum=1,
            owner="FlexPrefill",
            fix="It is a number of tokens (rounded up to blocks).",
        )
        if self.max_budget is not None:
            base.check_int("max_budget", self.max_budget, minimum=1, owner="FlexPrefill")
            if self.max_budget < self.min_budget:
                raise ValueError(
                    f"FlexPrefill: max_budget={self.max_budget} < min_budget={self.min_budget}; "
                    "raise max_budget or pass None (no cap)."
                )

    def bind(self, *, q_len, kv_len, q_offset, num_heads):
        common.check_causal_geometry("FlexPrefill", q_len=q_len, kv_len=kv_len, q_offset=q_offset)
        if q_offset % self.block_size and not self.dense_fallback(q_len):
            raise ValueError(
                f"FlexPrefill: q_offset={q_offset} (= kv_len - q_len by default) must be a "
                f"multiple of block_size={self.block_size} so query blocks align with key blocks; "
                "prefill whole blocks, or use q_len == kv_len."
            )
        return self

    def dense_fallback(self, q_len: int) -> bool:
        """FlexPrefill runs dense causal attention for short inputs (and decoding)."""
        bs = self.block_size
        return q_len <= max(2 * bs, math.ceil(self.min_budget / bs) * bs)

    def select(self, q, k, *, q_offset, config):
        b, t, h, _ = q.shape
        s = k.shape[1]
        bs = self.block_size
        if self.dense_fallback(t):
            bits = block_topk.dense_causal_bits(
                b, q_len=t, kv_len=s, q_offset=q_offset, block_size=bs
            )
        else:
            bits, _ = flex_prefill_select(
                q,
                k,
                gamma=self.gamma,
                tau=self.tau,
                min_budget=self.min_budget,
                max_budget=self.max_budget,
                block_size=bs,
                q_offset=q_offset,
            )
        return token_block_mask.block_selection(
            bits,
            block_size=bs,
            q_len=t,
            kv_len=s,
            q_offset=q_offset,
            num_heads=h,
            config=config,
        )

    def __repr__(self):
        return f"FlexPrefill(gamma={self.gamma}, tau={self.tau})"
