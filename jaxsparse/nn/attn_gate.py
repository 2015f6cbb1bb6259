"""`AttnGate`: SeerAttention's learned block gate (arXiv 2410.13276), a Flax NNX module.

The gate predicts the block-level attention map of a layer from pooled
queries and keys: Q is pooled per block (mean), K by max, min and mean
(concatenated on channels, SeerAttention's `Qavg_Kmaxminavg`), each goes
through a per-head linear map to `hidden` channels, RoPE rotates them at the
block start positions, and `q~ . k~ / sqrt(hidden)` over the block-causal
key blocks gives the logits. Train it by distillation against
`attn_gate_target` with `attn_gate_loss` (base model frozen), then select
blocks with `gate_block_mask` and attend with `gated_attention`.

Basics:
  >>> gate = AttnGate(num_heads=8, num_kv_heads=2, head_dim=64, rngs=nnx.Rngs(0))
  >>> logits = gate(q, k)                      # q, k before RoPE: [B, T, H|K, D]
  >>> loss = attn_gate_loss(logits, attn_gate_target(q_rot, k_rot))
  >>> mask = gate_block_mask(jax.nn.softmax(logits, -1), q_len=T, kv_len=T,
  ...                        block_size=64, threshold=5e-4)
  >>> mask = gate_block_mask(logits, q_len=T, kv_len=T, block_size=64,
  ...                        nz_ratio=0.1)   # a top-k ranks logits: no softmax
  >>> out = gated_attention(q_rot, k_rot, v, mask, block_size=64)
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsparse.methods.seer import (
    attn_gate_loss,
    attn_gate_target,
    gate_block_mask,
    gated_attention,
)
from jaxsparse.nn import dtypes
from jaxsparse.nn import rope as rope_lib
from jaxsparse.patterns.dynamic import block_topk, common
from jaxsparse.selection import estimate, pooling

DEFAULT_ROPE = rope_lib.RoPE()  # theta 10000, whole head
POOLS = ("mean", "max", "min")

__all__ = ["AttnGate", "attn_gate_loss", "attn_gate_target", "gate_block_mask", "gated_attention"]


def _per_head_init():
    # Xavier-uniform per head: fans are the last two axes, the first is the head.
    return nnx.initializers.variance_scaling(
        1.0, "fan_avg", "uniform", in_axis=-2, out_axis=-1, batch_axis=(0,)
    )


class AttnGate(nnx.Module):
    """Block gate: logits `[B, H, Tb, Sb]` (-inf off the block-causal region) from q and k.

    Args:
      num_heads: query heads H; num_kv_heads: key heads K (default H).
      head_dim: D of q and k.
      block_size: pooling block (SeerAttention: 64).
      hidden: gate channels per head (128).
      q_pool, k_pool: pools of q and k, from "mean", "max", "min" (default
        ("mean",) and ("max", "min", "mean")).
      rope: RoPE applied at block start positions (None: none).
      dtype, param_dtype: computation / parameter dtypes.
      rngs: parameter initialisation (keyword-only).
    """

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int | None = None,
        head_dim: int = 64,
        *,
        block_size: int = 64,
        hidden: int = 128,
        q_pool: tuple[str, ...] = ("mean",),
        k_pool: tuple[str, ...] = ("max", "min", "mean"),
        rope: rope_lib.RoPE | None = DEFAULT_ROPE,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        for name, value in dict(
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            block_size=block_size,
            hidden=hidden,
        ).items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"AttnGate: {name}={value!r} must be a positive int.")
        num_heads, num_kv_heads, head_dim = int(num_heads), int(num_kv_heads), int(head_dim)
        block_size, hidden = int(block_size), int(hidden)
        if num_heads % num_kv_heads:
            raise ValueError(
                f"AttnGate: num_heads={num_heads} must be a multiple of "
                f"num_kv_heads={num_kv_heads} (GQA groups share pooled keys)."
            )
        for name, pools in (("q_pool", q_pool), ("k_pool", k_pool)):
            if not pools or any(p not in POOLS for p in pools):
                raise ValueError(f"AttnGate: {name}={pools!r} must be non-empty, from {POOLS}.")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.block_size, self.hidden = block_size, hidden
        self.q_pool, self.k_pool = tuple(q_pool), tuple(k_pool)
        if rope is not None:
            rope.check_head_dim("AttnGate", hidden, "hidden")
        self.rope = rope
        self.dtype = dtypes.module_dtype(type(self).__name__, dtype, param_dtype)
        init = _per_head_init()
        self.w_q = nnx.Param(
            init(rngs.params(), (num_heads, head_dim * len(q_pool), hidden), param_dtype)
        )
        self.w_k = nnx.Param(
            init(rngs.params(), (num_kv_heads, head_dim * len(k_pool), hidden), param_dtype)
        )

    def _pooled(self, x, pools, w, positions):
        x = jnp.concatenate([pooling.pool(x, self.block_size, kind=p, axis=1) for p in pools], -1)
        y = jnp.einsum("bthi,hio->btho", x.astype(self.dtype), w[...].astype(self.dtype))
        return y if self.rope is None else self.rope(y, positions)

    def __call__(self, q, k, *, q_offset: int | None = None):
        """Gate logits for q `[B, T, H, D]` and k `[B, S, K, D]` (projected, before RoPE)."""
        if q.ndim != 4 or k.ndim != 4 or q.shape[0] != k.shape[0]:
            raise ValueError(
                f"AttnGate: q {q.shape} and k {k.shape} must be [B, T, H, D] and [B, S, K, D] "
                "with one batch size."
            )
        t, s = q.shape[1], k.shape[1]
        if q.shape[2:] != (self.num_heads, self.head_dim) or k.shape[2:] != (
            self.num_kv_heads,
            self.head_dim,
        ):
            raise ValueError(
                f"AttnGate: q {q.shape} / k {k.shape} do not match heads "
                f"({self.num_heads}, {self.num_kv_heads}) and head_dim {self.head_dim}."
            )
        q_offset = s - t if q_offset is None else q_offset
        common.check_causal_geometry("AttnGate", q_len=t, kv_len=s, q_offset=q_offset)
        bs = self.block_size
        tb, sb = -(-t // bs), -(-s // bs)
        q_pos = q_offset + bs * jnp.arange(tb, dtype=jnp.int32)
        k_pos = bs * jnp.arange(sb, dtype=jnp.int32)
        qg = self._pooled(q, self.q_pool, self.w_q, q_pos)  # [B, Tb, H, hidden]
        kg = self._pooled(k, self.k_pool, self.w_k, k_pos)  # [B, Sb, K, hidden]
        logits = estimate.grouped_logits(qg, kg) * self.hidden**-0.5
        visible = block_topk.block_causal(
            q_len=t, kv_len=s, q_offset=q_offset, block_q=bs, block_kv=bs
        )
        return jnp.where(visible[None, None], logits, -jnp.inf)
