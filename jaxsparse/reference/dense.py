"""The dense oracle: attention in float32 with an explicit boolean mask."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from jaxsparse.ops import validate


def attention_reference(
    q: Float[Array, "B T H D"],
    k: Float[Array, "B S K D"],
    v: Float[Array, "B S K Dv"],
    mask: Bool[Array, "#B #H T S"] | None = None,
    *,
    scale: float | None = None,
    logits_soft_cap: float | None = None,
) -> tuple[Float[Array, "B T H Dv"], Float[Array, "B H T"]]:
    """Dense attention in float32; the oracle for every backend and gradient.

    Logits are `(q . k) * scale`, then `cap * tanh(s / cap)` with a soft cap,
    then the mask, then a softmax over keys. Query head h uses key/value head
    `h // (H // K)` (GQA). A fully masked row gives output 0 and lse -inf,
    and finite (zero) gradients.

    Returns:
      `(out, lse)`: out `[B, T, H, Dv]` float32, lse `[B, H, T]` float32
      (natural log).
    """
    validate.check_batched_qkv("attention_reference", q, k, v)
    b, t, h, d = q.shape
    kh = k.shape[2]
    if scale is None:
        scale = d**-0.5
    k = jnp.repeat(k.astype(jnp.float32), h // kh, axis=2)
    v = jnp.repeat(v.astype(jnp.float32), h // kh, axis=2)
    s = jnp.einsum("bthd,bshd->bhts", q.astype(jnp.float32), k) * scale
    if logits_soft_cap is not None:
        s = logits_soft_cap * jnp.tanh(s / logits_soft_cap)
    if mask is not None:
        s = jnp.where(mask, s, -jnp.inf)
    m = s.max(-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(s - m)
    l = p.sum(-1, keepdims=True)
    has_keys = l > 0
    out = jnp.einsum("bhts,bshd->bthd", p / jnp.where(has_keys, l, 1.0), v)
    lse = jnp.where(has_keys, jnp.log(jnp.where(has_keys, l, 1.0)) + m, -jnp.inf)[..., 0]
    return out, lse
