"""`jaxsparse.attention`: validate once, build or accept metadata, dispatch."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jaxsparse.ops import call as call_lib
from jaxsparse.ops import config as config_lib
from jaxsparse.ops import dispatch, metadata, validate
from jaxsparse.patterns import base as pbase
from jaxsparse.patterns import full as full_lib
from jaxsparse.sparsity import block_sparsity


def attention(
    q: Float[Array, "*B T H D"],
    k: Float[Array, "*B S K D"],
    v: Float[Array, "*B S K Dv"],
    *,
    pattern: pbase.Pattern | None = None,
    sparsity: block_sparsity.BlockSparsity | None = None,
    segment_ids: Int[Array, "*B T"] | tuple[Any, Any] | None = None,
    scale: float | None = None,
    logits_soft_cap: float | None = None,
    q_offset: int | None = None,
    implementation: str | None = None,
    config: config_lib.Config | None = None,
    return_lse: bool = False,
):
    """Sparse (or dense) attention: `softmax(mask(cap(q k^T * scale))) v`.

    Basics:
      >>> import jaxsparse as js
      >>> from jaxsparse import patterns as P
      >>> out = js.attention(q, k, v, pattern=P.Causal() & P.SlidingWindow(left=1024))

    Args:
      q: queries `[B, T, H, D]` (or `[T, H, D]`).
      k: keys `[B, S, K, D]`; `H % K == 0` (GQA / MQA).
      v: values `[B, S, K, Dv]`; `Dv` may differ from `D`.
      pattern: what may attend (default `Full()`); see `jaxsparse.patterns`.
      sparsity: precomputed `BlockSparsity` (e.g. shared across layers, or
        from a dynamic selection). Only the listed tiles are visited, and the
        pattern still masks inside them: a tile marked FULL skips the mask only
        where a static pattern is full there too (see
        `jaxsparse.ops.metadata.within_pattern`).
      segment_ids: document masking: one int array `[B, T]` when T == S, or a
        pair `(q_ids [B, T], kv_ids [B, S])`; only equal ids attend.
      scale: logit scale (default `D ** -0.5`).
      logits_soft_cap: if set, logits become `cap * tanh(s / cap)` before the mask.
      q_offset: position of query 0 (default `S - T`: bottom-right aligned, so
        causal decoding and chunked prefill are correct). Key j sits at j.
      implementation: "pallas_gpu", "pallas_tpu", "xla", "reference", or None
        (best for the default backend, falling back on NotImplementedError).
      config: static tuning (`jaxsparse.Config`: block sizes, ...).
      return_lse: also return the log-sum-exp of each row, `[B, H, T]` f32.

    Returns:
      `out [B, T, H, Dv]` in q's dtype, and `lse [B, H, T]` float32 when
      `return_lse`. A query that may attend nothing gets output 0, lse -inf.

    Details:
      Lengths need not be multiples of a tile (padding is internal). Works
      under jit, vmap, grad and jax.checkpoint; gradients flow to q, k, v (and
      through lse when it is returned and used). Every backend accumulates in
      float32: float64 inputs (with `jax_enable_x64`) come back as float64 with
      float32 accuracy (about 1e-7 relative). Segment ids wider than int32
      are renumbered together (equality and order kept; traced ones whose
      common type needs 64 bits need `jax_enable_x64`). Keys and values must
      be finite at every position, masked ones included: a visited tile
      multiplies a masked value by a zero weight, and `0 * inf` is NaN (as in
      every flash-attention kernel); zero unused cache slots, don't leave
      them uninitialised.

    Raises:
      ValueError / TypeError: for malformed input, with the fix in the message.
      ExceptionGroup: when no implementation can run the call.
    """
    pattern = full_lib.Full() if pattern is None else pattern
    validate.check_options(pattern, implementation, config, return_lse)
    batched = validate.check_qkv(q, k, v)
    if not batched:
        q, k, v = q[None], k[None], v[None]
    b, t, h, d = q.shape
    s = k.shape[1]
    q_offset = validate.check_q_offset(q_offset, t, s)
    q_ids, kv_ids = validate.check_segment_ids(segment_ids, b, t, s, batched)
    validate.check_sparsity(sparsity, batch=b, t=t, s=s, h=h, q_offset=q_offset)
    scale = validate.check_scalar("scale", scale, positive=False)
    config = config or config_lib.Config()
    pattern = pattern.bind(q_len=t, kv_len=s, q_offset=q_offset, num_heads=h)
    if b == 0:  # an empty batch: nothing to attend (the kernels' tile arithmetic needs B >= 1)
        out = jnp.zeros((0, t, h, v.shape[-1]), q.dtype)
        return (out, jnp.zeros((0, h, t), jnp.float32)) if return_lse else out
    if sparsity is not None and not pattern.is_dynamic:
        sparsity = metadata.within_pattern(sparsity, pattern, num_heads=h)
    perm = pattern.token_permutation(q_len=t, kv_len=s)
    if perm is not None:
        q, k, v, q_ids, kv_ids = _permute(perm, q, k, v, q_ids, kv_ids)
    if pattern.is_dynamic:
        if sparsity is not None:
            raise ValueError(
                f"{type(pattern).__name__} selects its own tiles from q and k; do not also pass "
                "sparsity=."
            )
        selected = pattern.select(q, k, q_offset=q_offset, config=config)
        # Token-level selections (MoBA, NSA, vertical-slash) are finer than a tile:
        # `select` then also returns the pattern holding them, used for this call.
        pattern, sparsity = selected if isinstance(selected, tuple) else (pattern, selected)
    call = call_lib.Call(
        q=q,
        k=k,
        v=v,
        pattern=pattern,
        sparsity=sparsity,
        q_segment_ids=q_ids,
        kv_segment_ids=kv_ids,
        scale=d**-0.5 if scale is None else scale,
        logits_soft_cap=validate.check_scalar("logits_soft_cap", logits_soft_cap, positive=True),
        q_offset=q_offset,
        config=config,
    )
    out, lse = dispatch.run(call, implementation)
    if perm is not None:
        inverse = tuple(np.argsort(perm[0]).tolist())
        out = _take(out, inverse, 1)
        lse = _take(lse, inverse, lse.ndim - 1)
    if not batched:
        out, lse = out[0], lse[0]
    return (out, lse) if return_lse else out


def _permute(perm, q, k, v, q_ids, kv_ids):
    """Reorder tokens as the pattern asks (see `Pattern.token_permutation`)."""
    q_perm, kv_perm = (tuple(np.asarray(p).tolist()) for p in perm)
    q, k, v = _take(q, q_perm, 1), _take(k, kv_perm, 1), _take(v, kv_perm, 1)
    if q_ids is not None:
        q_ids, kv_ids = q_ids[:, np.asarray(q_perm)], kv_ids[:, np.asarray(kv_perm)]
    return q, k, v, q_ids, kv_ids


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _take(x, perm: tuple, axis: int):
    """`x` reordered along `axis` by the permutation `perm` (a static tuple).

    Its gradient is the inverse gather, not the scatter-add autodiff would emit.
    """
    return jnp.take(x, np.asarray(perm), axis=axis)


def _take_fwd(x, perm, axis):
    return _take(x, perm, axis), None


def _take_bwd(perm, axis, _, ct):
    return (jnp.take(ct, np.argsort(np.asarray(perm)), axis=axis),)


_take.defvjp(_take_fwd, _take_bwd)
