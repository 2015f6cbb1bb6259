"""`implementation="xla"`: wiring of the blocked XLA path (layout, heads, custom_vjp)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxsparse.ops import call as call_lib
from jaxsparse.ops import layout, metadata
from jaxsparse.ops.xla import backward, forward, pairs, tiles
from jaxsparse.patterns import base as pbase


def run(call: call_lib.Call):
    """Blocked attention over the call's BlockSparsity; returns (out, lse)."""
    bq, bk = metadata.blocks_for(call, preferred=128)
    sp = metadata.sparsity_for(call, bq, bk)
    chunk = pairs.chunk_size(
        sp, batch=call.batch, heads=call.num_heads, chunk_elements=call.config.xla_chunk_elements
    )
    work = pairs.tile_pairs(sp, chunk)
    st = tiles.Static(
        block_q=sp.block_q,
        block_kv=sp.block_kv,
        q_len=call.q_len,
        kv_len=call.kv_len,
        q_offset=call.q_offset,
        scale=call.scale,
        logits_soft_cap=call.logits_soft_cap,
        use_mask_fn=call.pattern.needs_tile_mask(sp.block_q, sp.block_kv),
        chunk=chunk,
    )
    q, k, v, segs = layout.pad_inputs(call, sp.block_q, sp.block_kv)
    out, lse = _attention(st, q, k, v, work, segs, call.pattern)
    return out[:, : call.q_len], lse[..., : call.q_len]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(st, q, k, v, work, segs, pattern):
    return _forward(st, q, k, v, work, segs, pattern)


def _attention_fwd(st, q, k, v, work, segs, pattern):
    out, lse = _forward(st, q, k, v, work, segs, pattern)
    return (out, lse), (q, k, v, out, lse, work, segs, pattern)


def _attention_bwd(st, residuals, cotangents):
    q, k, v, out, lse, work, segs, pattern = residuals
    dout, dlse = cotangents
    dq, dk, dv = _backward(st, q, k, v, out, lse, dout, dlse, work, segs, pattern)
    return dq, dk, dv, None, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def _per_head(fn, pattern, q, k, work, segs, *, shared_kv_args=(), q_args=()):
    """Map `fn(pattern, head, q, k, *shared_kv_args, *q_args, qb, kb, code, q_seg, kv_seg)`.

    Mapped over batch, key/value heads and the query heads of each group.

    Query-side arrays are `[B, Tp, H, ...]`, key-side `[B, Sp, K, ...]`, work
    items `[Bx, Hx, P]` (shared over batch / heads when Bx / Hx is 1).
    Returns per-head outputs stacked as `[B, K, G, ...]`.
    """
    b, _, h, _ = q.shape
    kh = k.shape[2]
    g = h // kh

    def heads_first(x, groups):
        x = jnp.moveaxis(x, 2, 1)  # [B, heads, L, ...]
        return x.reshape((b, kh, g) + x.shape[2:]) if groups else x

    qs = [heads_first(x, True) for x in (q, *q_args)]
    ks = [heads_first(x, False) for x in (k, *shared_kv_args)]
    bx, hx = work[0].shape[:2]
    w_heads = 0 if hx == h else None
    w_batch = 0 if bx == b else None
    w = [x.reshape((bx, kh, g, -1)) if hx == h else x[:, 0] for x in work]
    if w_batch is None:
        w = [x[0] for x in w]
    head = jnp.arange(h, dtype=jnp.int32).reshape(kh, g)
    seg_axis = None if segs[0] is None else 0

    def call(pattern, head, q, k, kv_args, q_args, w, segs):
        return fn(pattern, head, q, k, *kv_args, *q_args, *w, *segs)

    f = jax.vmap(call, in_axes=(None, 0, 0, None, None, 0, w_heads, None))
    f = jax.vmap(f, in_axes=(None, 0, 0, 0, 0, 0, w_heads, None))
    p_axes = pbase.batch_in_axes(pattern)
    f = jax.vmap(f, in_axes=(p_axes, None, 0, 0, 0, 0, w_batch, seg_axis))
    return f(pattern, head, qs[0], ks[0], ks[1:], qs[1:], w, segs)


def _heads_last(x, b, h):
    """`[B, K, G, L, ...]` -> `[B, L, H, ...]`."""
    x = x.reshape((b, h) + x.shape[3:])
    return jnp.moveaxis(x, 1, 2)


def _forward(st, q, k, v, work, segs, pattern):
    fn = functools.partial(forward.forward_head, st)
    out, lse = _per_head(fn, pattern, q, k, work, segs, shared_kv_args=(v,))
    b, _, h, _ = q.shape
    out = _heads_last(out, b, h).astype(q.dtype)
    lse = lse.reshape(b, h, -1)
    return out, lse


def _backward(st, q, k, v, out, lse, dout, dlse, work, segs, pattern):
    b, _, h, _ = q.shape

    def fn(pattern, head, q, k, v, out, dout, lse, dlse, qb, kb, code, q_seg, kv_seg):
        return backward.backward_head(
            st, pattern, head, q, k, v, out, lse, dout, dlse, qb, kb, code, q_seg, kv_seg
        )

    # lse / dlse are [B, H, Tp]: give them the [B, Tp, H] layout of q-side arrays.
    lse_t, dlse_t = (jnp.moveaxis(x, 1, 2) for x in (lse, dlse))
    dq, dk, dv = _per_head(
        fn, pattern, q, k, work, segs, shared_kv_args=(v,), q_args=(out, dout, lse_t, dlse_t)
    )
    dq = _heads_last(dq, b, h).astype(q.dtype)
    # Sum each key/value head's gradient over the query heads of its group.
    dk = jnp.moveaxis(dk.sum(2), 1, 2).astype(k.dtype)
    dv = jnp.moveaxis(dv.sum(2), 1, 2).astype(v.dtype)
    return dq, dk, dv
