"""Backward pass of the XLA path for one head, recomputing probabilities (flash style)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsparse.ops.xla import tiles


def backward_head(
    st: tiles.Static, pattern, head, q, k, v, out, lse, dout, dlse, qb, kb, code, q_seg, kv_seg
):
    """Gradients of one query head's attention.

    `lse` comes from the forward pass, so probabilities are recomputed exactly
    as `exp(s - lse)` without a second softmax. `dlse` is the cotangent of the
    lse output (zero unless the caller differentiates through it):
    `ds = p * (dp - rowsum(dout * out) + dlse)`.

    Returns:
      dq `[Tp, D]`, dk `[Sp, D]`, dv `[Sp, Dv]`, all float32.
    """
    bq, bk = st.block_q, st.block_kv
    tb, sb = q.shape[0] // bq, k.shape[0] // bk
    f32 = jnp.float32
    qt = q.astype(f32).reshape(tb, bq, -1)
    kt = k.astype(f32).reshape(sb, bk, -1)
    vt = v.astype(f32).reshape(sb, bk, -1)
    dot = dout.astype(f32).reshape(tb, bq, -1)
    delta = ((dout.astype(f32) * out.astype(f32)).sum(-1) - dlse).reshape(tb, bq)
    lse_t = lse.reshape(tb, bq)
    qs = None if q_seg is None else q_seg.reshape(tb, bq)
    ks = None if kv_seg is None else kv_seg.reshape(sb, bk)

    def step(carry, item):
        dq, dk, dv = carry
        qi, ki, ci = item
        s, mask, dcap = tiles.chunk_logits(
            st,
            pattern,
            head,
            qt[qi],
            kt[ki],
            qi,
            ki,
            ci,
            None if qs is None else qs[qi],
            None if ks is None else ks[ki],
        )
        row_lse = lse_t[qi][:, :, None]
        live = mask & jnp.isfinite(row_lse)
        p = jnp.where(live, jnp.exp(s - jnp.where(live, row_lse, 0.0)), 0.0)
        do = dot[qi]
        dv = dv.at[ki].add(jnp.einsum("cqk,cqd->ckd", p, do))
        dp = jnp.einsum("cqd,ckd->cqk", do, vt[ki])
        ds = p * (dp - delta[qi][:, :, None])
        if dcap is not None:
            ds = ds * dcap
        ds = ds * st.scale
        dq = dq.at[qi].add(jnp.einsum("cqk,ckd->cqd", ds, kt[ki]))
        dk = dk.at[ki].add(jnp.einsum("cqk,cqd->ckd", ds, qt[qi]))
        return (dq, dk, dv), None

    init = (jnp.zeros_like(qt), jnp.zeros_like(kt), jnp.zeros_like(vt))
    items = tuple(x.reshape(-1, st.chunk) for x in (qb, kb, code))
    (dq, dk, dv), _ = jax.lax.scan(step, init, items)
    return dq.reshape(tb * bq, -1), dk.reshape(sb * bk, -1), dv.reshape(sb * bk, -1)
