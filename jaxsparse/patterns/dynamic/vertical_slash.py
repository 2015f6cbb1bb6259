"""`VerticalSlash`: MInference's vertical-slash prefill pattern with online estimation.

Per head and per input (MInference 1.0, arXiv 2407.02490, `vertical_and_slash_kernel`):
  1. the last `last_q` queries attend all keys causally (softmax, float32,
     scale `D**-0.5`);
  2. column sums score keys ("vertical"); the first `init_columns` are forced;
     the best `vertical_size` are kept;
  3. diagonal sums score offsets ("slash"); the `local_diagonals` nearest
     offsets are forced; the best `slash_size` are kept;
  4. every query attends, causally, the kept keys and the kept diagonals.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsparse.patterns import base
from jaxsparse.patterns.dynamic import common, vertical_slash_mask
from jaxsparse.selection import estimate, topk


def vertical_slash_select(
    q,
    k,
    *,
    vertical_size: int,
    slash_size: int,
    last_q: int,
    init_columns: int,
    local_diagonals: int,
    q_offset: int,
):
    """`(vertical, slash)` bool `[B, H, S]`: kept key positions and kept offsets.

    A single query (decoding) keeps every offset, which is dense causal attention.
    """
    q, k = jax.lax.stop_gradient(q), jax.lax.stop_gradient(k)
    b, t, h, _ = q.shape
    s = k.shape[1]
    idx = jnp.arange(s, dtype=jnp.int32)[None, None, :]
    nv = min(s, max(vertical_size, init_columns))
    if t == 1:
        # Decoding is dense, as in MInference (which selects for prefill only): every
        # diagonal, and the first `nv` columns so that there are `nv` as always.
        return jnp.broadcast_to(idx < nv, (b, h, s)), jnp.ones((b, h, s), bool)
    probs, q_pos = estimate.last_query_probs(
        q, k, last_q=last_q, scale=q.shape[-1] ** -0.5, q_offset=q_offset
    )
    vert = jnp.where(idx < init_columns, jnp.inf, estimate.vertical_scores(probs))
    slash = jnp.where(idx < local_diagonals, jnp.inf, estimate.slash_scores(probs, q_pos))
    ns = min(s, max(slash_size, local_diagonals))
    return topk.topk_mask(vert, nv), topk.topk_mask(slash, ns)


@base.pattern_dataclass
class VerticalSlash(common.DynamicPattern):
    """Causal attention to `vertical_size` key columns and `slash_size` diagonals, chosen online.

    ```
    VerticalSlash: columns {0, 3}, diagonals {0, 1}
    ■ · · · · ·
    ■ ■ · · · ·
    ■ ■ ■ · · ·
    ■ · ■ ■ · ·
    ■ · · ■ ■ ·
    ■ · · ■ ■ ■
    ```

    Args:
      vertical_size: key columns kept per head (MInference default 1000).
      slash_size: diagonals kept per head (MInference default 6096).
      last_q: queries used for the estimate (64).
      init_columns: leading key columns always kept (30).
      local_diagonals: nearest diagonals always kept (100).

    Details:
      The mask is exact (no widening of diagonals to blocks, unlike
      MInference's kernel). Tiles holding any kept column or crossing any
      kept diagonal are visited whole; see `vertical_slash_mask` for what
      that costs with scattered columns. Budgets are at least the forced
      counts (MInference clamps them to 30 / 50); sequences with no more keys
      than the budgets are dense causal, and so is decoding (`q_len == 1`),
      as in MInference, which selects for prefill only. Causal only.
    """

    vertical_size: int = 1000
    slash_size: int = 6096
    last_q: int = 64
    init_columns: int = 30
    local_diagonals: int = 100

    def __post_init__(self):
        for name in ("vertical_size", "slash_size", "last_q", "local_diagonals"):
            base.check_int(name, getattr(self, name), minimum=1, owner="VerticalSlash")
        base.check_int("init_columns", self.init_columns, minimum=0, owner="VerticalSlash")

    def bind(self, *, q_len, kv_len, q_offset, num_heads):
        common.check_causal_geometry("VerticalSlash", q_len=q_len, kv_len=kv_len, q_offset=q_offset)
        return self

    def select(self, q, k, *, q_offset, config):
        t, h, s = q.shape[1], q.shape[2], k.shape[1]
        vert, slash = vertical_slash_select(
            q,
            k,
            vertical_size=self.vertical_size,
            slash_size=self.slash_size,
            last_q=self.last_q,
            init_columns=self.init_columns,
            local_diagonals=self.local_diagonals,
            q_offset=q_offset,
        )
        pattern = vertical_slash_mask.VerticalSlashMask(vert, slash, q_offset=q_offset)
        bq, bk = common.tiles(config, q_len=t, kv_len=s)
        sp = vertical_slash_mask.vertical_slash_sparsity(
            pattern, num_heads=h, block_q=bq, block_kv=bk, q_len=t, kv_len=s, q_offset=q_offset
        )
        return pattern, sp

    def __repr__(self):
        return f"VerticalSlash(vertical_size={self.vertical_size}, slash_size={self.slash_size})"
