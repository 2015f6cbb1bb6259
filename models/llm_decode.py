"""KV-cache decoding for content-aware LM layers, through the public jaxsparse API.

`jaxsparse.nn.SparseAttention` decodes positional patterns itself; a
content-aware pattern has no mask until it has seen the keys, so the module
refuses to decode it. Here the layer's own projections and cache are used,
the step's token mask `[B, H, t, max_length]` is computed from the cached
keys (MoBA's gate, or plain causal), and attention runs on it as a batched
`patterns.TokenBlockMask` with one key per column. Positions are traced, so
one compiled step serves every position.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

import jaxsparse as js
from jaxsparse import patterns as P
from jaxsparse.patterns import dynamic

# (q [B, t, H, D], cached keys [B, S, K, D], positions [t]) -> allowed [B, H or 1, t, S]
MaskFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

_TILE = 16  # tiles of the step's attention; small, as t is a handful of tokens


def causal_mask(q, keys, positions):
    """Dense causal decoding: every filled key at or before the query."""
    kv = jnp.arange(keys.shape[1], dtype=jnp.int32)
    allowed = (kv[None, :] <= positions[:, None])[None, None]
    return jnp.broadcast_to(allowed, (q.shape[0], 1) + allowed.shape[2:])


def moba_mask(pattern: P.MoBA) -> MaskFn:
    """MoBA's selection for the step's queries, exactly as the full pass selects it.

    Chunks after the query's own are empty in the cache but excluded by the
    gate anyway (future), and the query's own chunk is always kept, so the
    zeros of unfilled slots never change the choice.
    """

    def mask(q, keys, positions):
        bits = dynamic.moba_select(
            q, keys, block_size=pattern.block_size, top_k=pattern.top_k, q_offset=positions[0]
        )  # [B, H, t, chunks]
        kv = jnp.arange(keys.shape[1], dtype=jnp.int32)
        chosen = bits[..., kv // pattern.block_size]
        return chosen & (kv[None, :] <= positions[:, None])[None, None]

    return mask


def cached_attention(attn: nnx.Module, x: jax.Array, mask_fn: MaskFn) -> jax.Array:
    """Decode `x [B, t, C]` through `attn` (a `jaxsparse.nn.SparseAttention`) with `mask_fn`.

    Writes the step's keys and values into `attn`'s cache (allocated by its
    `init_cache`) and advances its position counter, as `attn(x, decode=True)` does.
    Shapes are always checked; a step past the cache's `max_length` only when
    the position is concrete: under `jit` it is traced, the write is clamped
    and the result wrong, so size the cache for the whole sequence (`generate` does).
    """
    if attn.cache_index is None:
        raise ValueError("decode needs a cache; call init_cache(batch_size, max_length) first.")
    cache_b, max_length = attn.cached_key.shape[:2]
    dim = attn.q_proj.in_features
    if x.ndim != 3 or x.shape[0] != cache_b or x.shape[2] != dim or x.shape[1] > max_length:
        raise ValueError(
            f"decode: x of shape {tuple(x.shape)} does not fit the cache [B={cache_b}, "
            f"max_length={max_length}]; pass [B={cache_b}, t <= {max_length}, C={dim}] "
            "or call init_cache(batch_size, max_length) again."
        )
    x = x.astype(attn.dtype)
    b, t, _ = x.shape
    index = attn.decode_index(t)
    positions = index + jnp.arange(t, dtype=jnp.int32)
    q = attn.q_proj(x).reshape(b, t, attn.num_heads, attn.head_dim)
    k = attn.k_proj(x).reshape(b, t, attn.num_kv_heads, attn.head_dim)
    v = attn.v_proj(x).reshape(b, t, attn.num_kv_heads, attn.head_dim)
    if attn.rope is not None:
        q, k = attn.rope(q, positions), attn.rope(k, positions)
    zero = jnp.zeros((), jnp.int32)
    keys = jax.lax.dynamic_update_slice(attn.cached_key[...], k, (zero, index, zero, zero))
    values = jax.lax.dynamic_update_slice(attn.cached_value[...], v, (zero, index, zero, zero))
    attn.cached_key[...], attn.cached_value[...] = keys, values
    attn.cache_index[...] = index + t
    allowed = mask_fn(q, keys, positions)
    s = keys.shape[1]
    # One bit per (query row, key): the mask is exact, and its tile lists are
    # built on device from the (traced) bits.
    pattern = P.TokenBlockMask(allowed, row_block=1, col_block=1, causal=False)
    sparsity = dynamic.token_block_sparsity(
        pattern,
        num_heads=attn.num_heads,
        block_q=_TILE,
        block_kv=_TILE,
        q_len=t,
        kv_len=s,
        q_offset=0,
    )
    out = js.attention(
        q,
        keys,
        values,
        pattern=pattern,
        sparsity=sparsity,
        q_offset=0,
        scale=attn.scale,
        logits_soft_cap=attn.logits_soft_cap,
        implementation=attn.implementation,
        config=attn.config,
    )
    return attn.o_proj(out.reshape(b, t, -1))
