"""`SparseAttention`: multi-head attention with a jaxsparse pattern and a KV cache."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

import jaxsparse as js
from jaxsparse import patterns as P
from jaxsparse.nn import dtypes, layout
from jaxsparse.nn import rope as rope_lib
from jaxsparse.patterns import base as pbase
from jaxsparse.patterns import explicit
from jaxsparse.patterns.grid_pattern import GridPattern


class SparseAttention(nnx.Module):
    """Multi-head (GQA / MQA) self-attention over a sparse `pattern`.

    `x -> q, k, v` projections (optionally RoPE on q and k), then
    `jaxsparse.attention(q, k, v, pattern=...)`, then the output projection.
    A model with a different pattern per layer simply builds each layer with
    its own pattern.

    Basics:
      >>> attn = SparseAttention(512, 8, num_kv_heads=2, pattern=P.Causal(),
      ...                        rope=RoPE(), rngs=nnx.Rngs(0))
      >>> y = attn(x)                                     # x [B, T, 512]
      >>> attn.init_cache(batch_size=B, max_length=1024)  # then decode:
      >>> y_step = attn(x_step, decode=True)              # x_step [B, t, 512]

    Decoding: `init_cache` allocates `[B, max_length, K, D]` key/value caches
    and a position counter. A decode call appends its `t` tokens at the
    counter (they sit at positions `index .. index + t - 1`, which is also
    what RoPE sees) and attends over the cache. The step's mask is built from
    `pattern.mask_fn` at those (traced) positions as an explicit
    `patterns.Mask [Hx, t, max_length]`, restricted to filled slots, so one
    compiled step serves every position. For causal patterns (every key a
    query may see is at or before it) prefill + decode equals the full pass.
    Writing past `max_length` raises a ValueError in eager mode; under jit the
    index is traced and cannot be checked, so the caller must bound the length
    (size the cache for the whole sequence; a generate loop can check
    `prompt + new tokens <= max_length` statically before it starts).

    Args:
      in_features: model width C of the input `[B, T, C]`.
      num_heads: query heads H.
      num_kv_heads: key/value heads K (default H); H % K == 0.
      head_dim: D (default C // H).
      out_features: output width (default C).
      pattern: a `jaxsparse.patterns.Pattern` (default `Full()`; decoders use
        `Causal()` or e.g. `Causal() & SlidingWindow(left=4096)`). A pattern
        holding arrays (`Mask`, `BlockMask`) is stored as pytree data (traced
        under `nnx.jit`); it fixes the sequence length and cannot decode.
      rope: `RoPE` settings for q and k, or None.
      qkv_bias: bias on the q/k/v projections (default False).
      out_bias: bias on the output projection (default False).
      scale: logit scale (default D ** -0.5); logits_soft_cap: optional cap.
      implementation: "xla", "pallas_gpu", ... or None (best for the device).
      config: `jaxsparse.Config` (block sizes).
      dtype: computation dtype (default `param_dtype`); inputs are cast to it.
      param_dtype: parameter dtype (default float32).
      rngs: `nnx.Rngs` for parameter initialisation (keyword-only).
    """

    def __init__(
        self,
        in_features: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        out_features: int | None = None,
        pattern: P.Pattern | None = None,
        rope: rope_lib.RoPE | None = None,
        qkv_bias: bool = False,
        out_bias: bool = False,
        scale: float | None = None,
        logits_soft_cap: float | None = None,
        implementation: str | None = None,
        config: js.Config | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        _check_positive(in_features=in_features, num_heads=num_heads, num_kv_heads=num_kv_heads)
        if num_heads % num_kv_heads:
            raise ValueError(
                f"SparseAttention: num_heads={num_heads} must be a multiple of "
                f"num_kv_heads={num_kv_heads} (GQA groups)."
            )
        if head_dim is None:
            if in_features % num_heads:
                raise ValueError(
                    f"SparseAttention: in_features={in_features} is not divisible by "
                    f"num_heads={num_heads}; pass head_dim explicitly."
                )
            head_dim = in_features // num_heads
        out_features = in_features if out_features is None else out_features
        _check_positive(head_dim=head_dim, out_features=out_features)
        if pattern is not None and not isinstance(pattern, P.Pattern):
            raise TypeError(
                f"SparseAttention: pattern must be a jaxsparse pattern, got {pattern!r}."
            )
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        pattern = P.Full() if pattern is None else pattern
        # A pattern holding arrays (Mask, BlockMask) is pytree data, not a static attribute.
        self.pattern = nnx.data(pattern) if pattern.holds_arrays else pattern
        if rope is not None:
            rope.check_head_dim("SparseAttention", head_dim)
        self.rope = rope
        self.scale, self.logits_soft_cap = scale, logits_soft_cap
        self.implementation, self.config = implementation, config
        self.dtype = dtypes.module_dtype(type(self).__name__, dtype, param_dtype)
        linear = dict(dtype=self.dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = nnx.Linear(in_features, num_heads * head_dim, use_bias=qkv_bias, **linear)
        self.k_proj = nnx.Linear(in_features, num_kv_heads * head_dim, use_bias=qkv_bias, **linear)
        self.v_proj = nnx.Linear(in_features, num_kv_heads * head_dim, use_bias=qkv_bias, **linear)
        self.o_proj = nnx.Linear(num_heads * head_dim, out_features, use_bias=out_bias, **linear)
        # Decoding state (nnx.Cache variables), allocated by init_cache.
        self.cached_key = nnx.data(None)
        self.cached_value = nnx.data(None)
        self.cache_index = nnx.data(None)

    # --- cache ---------------------------------------------------------------------
    def init_cache(self, batch_size: int, max_length: int) -> None:
        """Allocate (or reset) the decoding cache for `batch_size` sequences."""
        _check_positive(batch_size=batch_size, max_length=max_length)
        shape = (batch_size, max_length, self.num_kv_heads, self.head_dim)
        self.cached_key = nnx.Cache(jnp.zeros(shape, self.dtype))
        self.cached_value = nnx.Cache(jnp.zeros(shape, self.dtype))
        self.cache_index = nnx.Cache(jnp.zeros((), jnp.int32))

    # --- forward -----------------------------------------------------------------
    def __call__(
        self,
        x: Float[Array, "B T C"],
        *,
        positions: Int[Array, "*B T"] | None = None,
        segment_ids: Any = None,
        decode: bool = False,
    ) -> Float[Array, "B T Cout"]:
        """Attend `x [B, T, C]`; returns `[B, T, out_features]` in `dtype`.

        Args:
          x: input tokens.
          positions: RoPE positions `[B, T]` or `[T]` for the full pass
            (default `0 .. T-1`); decode uses the cache position.
          segment_ids: document ids for the full pass (see `jaxsparse.attention`).
          decode: append to the cache and attend over it (see the class doc).
        """
        if x.ndim != 3:
            raise ValueError(
                f"SparseAttention takes tokens [B, T, C], got shape {x.shape}; flatten "
                "spatial axes first (or use NeighborhoodAttention for [B, H, W, C])."
            )
        layout.check_channels("SparseAttention", x, self.q_proj.in_features, "in_features")
        x = x.astype(self.dtype)
        if decode:
            if segment_ids is not None or positions is not None:
                raise ValueError(
                    "SparseAttention: decode=True takes positions from the cache; do not pass "
                    "positions= or segment_ids=."
                )
            return self._decode(x)
        q, k, v = self._project(x)
        if self.rope is not None:
            pos = jnp.arange(x.shape[1], dtype=jnp.int32) if positions is None else positions
            q, k = self.rope(q, pos), self.rope(k, pos)
        out = js.attention(
            q, k, v, pattern=self.pattern, segment_ids=segment_ids, **self._attention_kwargs()
        )
        return self.o_proj(out.reshape(*out.shape[:2], self.num_heads * self.head_dim))

    def _project(self, x):
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        return q, k, v

    def _attention_kwargs(self) -> dict:
        return dict(
            scale=self.scale,
            logits_soft_cap=self.logits_soft_cap,
            implementation=self.implementation,
            config=self.config,
        )

    def decode_index(self, t: int):
        """The cache index a decode step of `t` tokens writes at (the cache exists).

        Raises when `t` more tokens do not fit `max_length`; only when the index
        is concrete: under jit it is traced, and the caller bounds the length.
        """
        max_length = self.cached_key.shape[1]
        index = self.cache_index[...]
        filled = explicit.concrete(index)
        if filled is not None and int(filled) + t > max_length:
            raise ValueError(
                f"SparseAttention: decoding T={t} tokens at cache index {int(filled)} needs "
                f"max_length >= {int(filled) + t}, but the cache has max_length={max_length}; "
                "call init_cache with a larger max_length (one for the whole sequence)."
            )
        return index

    def _decode(self, x):
        if self.cache_index is None:
            raise ValueError(
                "SparseAttention: decode=True needs a cache; call "
                "init_cache(batch_size, max_length) first."
            )
        b, t, _ = x.shape
        cache_b, max_length = self.cached_key.shape[:2]
        if b != cache_b or t > max_length:
            raise ValueError(
                f"SparseAttention: decode input [B={b}, T={t}] does not fit the cache "
                f"[B={cache_b}, max_length={max_length}]; call init_cache again."
            )
        index = self.decode_index(t)
        positions = index + jnp.arange(t, dtype=jnp.int32)
        q, k, v = self._project(x)
        if self.rope is not None:
            q, k = self.rope(q, positions), self.rope(k, positions)
        start = (
            jnp.zeros((), jnp.int32),
            index,
            jnp.zeros((), jnp.int32),
            jnp.zeros((), jnp.int32),
        )
        keys = jax.lax.dynamic_update_slice(self.cached_key[...], k, start)
        values = jax.lax.dynamic_update_slice(self.cached_value[...], v, start)
        self.cached_key[...], self.cached_value[...] = keys, values
        self.cache_index[...] = index + t
        mask = self._step_mask(positions, max_length, filled=index + t)
        mask = mask[0] if mask.shape[0] == 1 else mask  # Mask wants [t, S] or one per head
        out = js.attention(
            q, keys, values, pattern=P.Mask(mask), q_offset=0, **self._attention_kwargs()
        )
        return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim))

    def _step_mask(self, positions, max_length, filled):
        """`[Hx, t, max_length]`: the pattern at the step's positions, filled slots only."""
        t = positions.shape[0]
        reason = _why_not_decodable(self.pattern, max_length)
        if reason:
            raise ValueError(
                f"SparseAttention: cannot decode with {self.pattern!r}: it {reason}. Decode "
                "with a positional pattern (Causal, SlidingWindow, Sink, ...)."
            )
        try:
            pattern = self.pattern.bind(
                q_len=t, kv_len=max_length, q_offset=0, num_heads=self.num_heads
            )
        except ValueError as e:
            raise ValueError(f"SparseAttention: cannot decode with {self.pattern!r}: {e}") from e
        hx = self.num_heads if pattern.head_dependent else 1
        kv_pos = jnp.arange(max_length, dtype=jnp.int32)
        head = jnp.arange(hx, dtype=jnp.int32)[:, None, None]
        allowed = pattern.mask_fn(positions[None, :, None], kv_pos[None, None, :], head)
        allowed = jnp.broadcast_to(allowed, (hx, t, max_length))
        return allowed & (kv_pos < filled)[None, None, :]


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        pbase.check_int(name, value, minimum=1, owner="SparseAttention")


def _why_not_decodable(pattern, max_length: int) -> str:
    """Why a step of a few tokens cannot evaluate `pattern` on its own ('' when it can)."""
    if pattern.is_dynamic:
        return "selects tiles from whole blocks of queries and keys"
    if isinstance(pattern, GridPattern):
        return "is defined on a whole token grid"
    if pattern.token_permutation(q_len=max_length, kv_len=max_length) is not None:
        return "reorders the tokens"
    if pattern.holds_arrays:
        return "holds an explicit mask of fixed shape"
    return ""
