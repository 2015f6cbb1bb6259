"""`implementation="reference"`: the dense f32 oracle with the call's full mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsparse.ops import call as call_lib
from jaxsparse.patterns import base as pbase
from jaxsparse.patterns import materialize
from jaxsparse.reference import dense


def full_mask(call: call_lib.Call):
    """The boolean mask `[B or 1, H or 1, T, S]` of everything the call allows.

    Pattern, segment ids, and (when the caller or a dynamic pattern gave
    metadata) the listed tiles. This is the single definition every backend
    is tested against.
    """

    def pattern_mask(pattern):
        return materialize.dense_mask(
            pattern,
            q_len=call.q_len,
            kv_len=call.kv_len,
            q_offset=call.q_offset,
            num_heads=call.num_heads,
        )

    if pbase.has_batched_leaves(call.pattern):
        mask = jax.vmap(pattern_mask, in_axes=(pbase.batch_in_axes(call.pattern),))(call.pattern)
    else:
        mask = pattern_mask(call.pattern)[None]
    if call.has_segments:
        seg = call.q_segment_ids[:, :, None] == call.kv_segment_ids[:, None, :]
        mask = mask & seg[:, None]
    if call.sparsity is not None:
        sp = call.sparsity
        listed = jnp.asarray(sp.to_dense()) != 0
        listed = jnp.repeat(jnp.repeat(listed, sp.block_q, axis=-2), sp.block_kv, axis=-1)
        mask = mask & listed[..., : call.q_len, : call.kv_len]
    return mask


def run(call: call_lib.Call):
    out, lse = dense.attention_reference(
        call.q,
        call.k,
        call.v,
        full_mask(call),
        scale=call.scale,
        logits_soft_cap=call.logits_soft_cap,
    )
    return out.astype(call.q.dtype), lse
