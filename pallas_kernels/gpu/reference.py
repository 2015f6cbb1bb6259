"""Dense f32 oracle for the GPU kernels (tests and benchmarks; small sizes).

Same semantics as the kernels: s = (q . k) * scale, optional soft cap, then
an explicit boolean mask, then softmax; fully masked rows give out 0 and
lse -inf.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def dense_mask(mask_fn, B, H, Tp, Sp, q_offset=0, kv_len=None, q_seg=None, kv_seg=None):
    """Explicit boolean mask [B, H, Tp, Sp] from a kernel mask_fn.

    mask_fn(q_pos, kv_pos, head) is evaluated with jnp int32 arrays (as in the
    kernels); keys >= kv_len and pairs from different segments are masked.
    """
    kv_len = Sp if kv_len is None else kv_len
    qp = jnp.asarray(q_offset + np.arange(Tp)[:, None], jnp.int32)
    kp = jnp.asarray(np.arange(Sp)[None, :], jnp.int32)
    per_head = []
    for h in range(H):
        m = np.ones((Tp, Sp), bool)
        if mask_fn is not None:
            m = np.broadcast_to(np.asarray(mask_fn(qp, kp, jnp.int32(h))), (Tp, Sp))
        per_head.append(m & (np.arange(Sp)[None, :] < kv_len))
    mask = np.broadcast_to(np.stack(per_head)[None], (B, H, Tp, Sp))
    if q_seg is not None:
        mask = mask & (np.asarray(q_seg)[:, None, :, None] == np.asarray(kv_seg)[:, None, None, :])
    return np.asarray(mask)


def attention_reference(q, k, v, mask, scale, logits_soft_cap=None):
    """Dense attention in f32. Returns out [B, T, H, Dv], lse [B, H, T]."""
    H, K = q.shape[2], k.shape[2]
    qf, kf, vf = (x.astype(jnp.float32) for x in (q, k, v))
    kf = jnp.repeat(kf, H // K, axis=2)
    vf = jnp.repeat(vf, H // K, axis=2)
    s = jnp.einsum("bthd,bshd->bhts", qf, kf) * scale
    if logits_soft_cap is not None:
        s = logits_soft_cap * jnp.tanh(s / logits_soft_cap)
    s = jnp.where(mask, s, -jnp.inf)
    m = s.max(-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(s - m)
    l = p.sum(-1, keepdims=True)
    l_safe = jnp.where(l == 0, 1.0, l)
    out = jnp.einsum("bhts,bshd->bthd", p / l_safe, vf)
    lse = jnp.where(l[..., 0] == 0, -jnp.inf, jnp.log(l_safe[..., 0]) + m[..., 0])
    return out, lse


def reference_loss(q, k, v, mask, scale, logits_soft_cap, dout, dlse):
    """<out, dout> + <lse, dlse> (dead rows' lse taken as 0); grads = oracle."""
    o, l = attention_reference(q, k, v, mask, scale, logits_soft_cap)
    l = jnp.where(jnp.isfinite(l), l, 0.0)
    return jnp.sum(o * dout.astype(jnp.float32)) + jnp.sum(l * dlse)
