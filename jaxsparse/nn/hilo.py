"""`HiLoAttention` (LITv2, Pan et al. 2022): windows for some heads, pooled K/V for the rest."""

from __future__ import annotations

import functools
import numbers
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

import jaxsparse as js
from jaxsparse import patterns as P
from jaxsparse.nn import dtypes, layout
from jaxsparse.patterns import base as pbase


class HiLoAttention(nnx.Module):
    """HiLo attention: high frequencies from windows, low frequencies from pooled tokens.

    Heads split by `alpha`: `l = int(num_heads * alpha)` Lo-Fi heads and
    `h = num_heads - l` Hi-Fi heads, each of size `d = dim // num_heads`.

    * Hi-Fi: self-attention inside non-overlapping `s x s` windows
      (`patterns.Window`), own `Linear(dim, 3 h d)` qkv and `Linear(h d, h d)` proj.
    * Lo-Fi: every token (query, `Linear(dim, l d)`) attends the `s x s`
      average-pooled map (keys/values, `Linear(dim, 2 l d)` on the pooled
      input), then `Linear(l d, l d)`.
    * Output: `concat([hifi, lofi], channels)` (Hi-Fi first; no outer projection).

    `window_size == 1` is plain multi-head attention (all heads Lo-Fi, no
    pooling), as in LITv2. Parameters (with `qkv_bias=False`):
    `3 dim h d + (h d)^2 + h d` (Hi-Fi) `+ 3 dim l d + (l d)^2 + l d` (Lo-Fi).

    Input `[B, H, W, C]`, or a video `[B, T, H, W, C]` attended frame by frame.
    H and W must be multiples of `window_size` (LITv2 pads for dense
    prediction; pad before calling).

    Args:
      dim: channels C.
      num_heads: total heads.
      window_size: s, the Hi-Fi window and the Lo-Fi pooling size (default 2).
      alpha: fraction of heads that are Lo-Fi, in [0, 1] (default 0.5; LITv2 uses 0.9).
      qkv_bias: bias on the q/kv/qkv projections (default False, as LITv2).
      qk_scale: logit scale (default `d ** -0.5`).
      implementation, config: passed to `jaxsparse.attention`.
      dtype: computation dtype (default `param_dtype`); param_dtype: float32.
      rngs: `nnx.Rngs` (keyword-only).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        window_size: int = 2,
        alpha: float = 0.5,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        implementation: str | None = None,
        config: js.Config | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if (
            isinstance(alpha, (bool, np.bool_))
            or not isinstance(alpha, numbers.Real)
            or not 0.0 <= alpha <= 1.0
        ):
            raise ValueError(
                f"HiLoAttention: alpha={alpha!r} is the fraction of Lo-Fi heads and must be in "
                "[0, 1] (0: all heads local windows, 1: all heads pooled global attention)."
            )
        for name, value in (("dim", dim), ("num_heads", num_heads), ("window_size", window_size)):
            pbase.check_int(name, value, minimum=1, owner="HiLoAttention")
        if dim % num_heads:
            raise ValueError(
                f"HiLoAttention: dim={dim} must be divisible by num_heads={num_heads}."
            )
        head_dim = dim // num_heads
        self.l_heads = num_heads if window_size == 1 else int(num_heads * alpha)
        self.h_heads = num_heads - self.l_heads
        self.dim, self.head_dim, self.window_size = dim, head_dim, window_size
        self.scale = head_dim**-0.5 if qk_scale is None else qk_scale
        self.implementation, self.config = implementation, config
        self.dtype = dtypes.module_dtype(type(self).__name__, dtype, param_dtype)
        kw = dict(dtype=self.dtype, param_dtype=param_dtype, rngs=rngs)
        l_dim, h_dim = self.l_heads * head_dim, self.h_heads * head_dim
        lo, hi = self.l_heads > 0, self.h_heads > 0  # a branch without heads has no weights
        self.l_q = nnx.Linear(dim, l_dim, use_bias=qkv_bias, **kw) if lo else None
        self.l_kv = nnx.Linear(dim, 2 * l_dim, use_bias=qkv_bias, **kw) if lo else None
        self.l_proj = nnx.Linear(l_dim, l_dim, **kw) if lo else None
        self.h_qkv = nnx.Linear(dim, 3 * h_dim, use_bias=qkv_bias, **kw) if hi else None
        self.h_proj = nnx.Linear(h_dim, h_dim, **kw) if hi else None

    def __call__(self, x: Float[Array, "B *T H W C"]) -> Float[Array, "B *T H W C"]:
        """`[B, H, W, C]` (or `[B, T, H, W, C]`) -> same shape, in `dtype`."""
        frames, restore = layout.image_frames("HiLoAttention", x)
        layout.check_channels("HiLoAttention", x, self.dim, "dim")
        s = self.window_size
        layout.check_divisible(
            "HiLoAttention",
            "window_size",
            frames.shape[1:3],
            s,
            "pad H and W to multiples of it (as LITv2 does for detection).",
        )
        frames = frames.astype(self.dtype)
        parts = []
        if self.h_heads:
            parts.append(self._hifi(frames))
        if self.l_heads:
            parts.append(self._lofi(frames))
        return restore(jnp.concatenate(parts, axis=-1))

    def _attend(self, q, k, v, pattern=None):
        return js.attention(
            q,
            k,
            v,
            pattern=pattern,
            scale=self.scale,
            implementation=self.implementation,
            config=self.config,
        )

    def _hifi(self, x):
        """Window attention of the Hi-Fi heads inside s x s windows."""
        b, hh, ww, _ = x.shape
        n, s, d = hh * ww, self.window_size, self.head_dim
        qkv = self.h_qkv(x).reshape(b, n, 3, self.h_heads, d)
        window = _window((hh, ww), s)
        out = self._attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], window)
        return self.h_proj(out.reshape(b, hh, ww, self.h_heads * d))

    def _lofi(self, x):
        """All tokens attend the average-pooled map (Lo-Fi heads)."""
        b, hh, ww, c = x.shape
        s, d = self.window_size, self.head_dim
        q = self.l_q(x).reshape(b, hh * ww, self.l_heads, d)
        pooled = x
        if s > 1:  # AvgPool2d(s, s), accumulated in f32
            pooled = x.astype(jnp.float32).reshape(b, hh // s, s, ww // s, s, c).mean((2, 4))
            pooled = pooled.astype(x.dtype)
        kv = self.l_kv(pooled).reshape(b, (hh // s) * (ww // s), 2, self.l_heads, d)
        out = self._attend(q, kv[:, :, 0], kv[:, :, 1])
        return self.l_proj(out.reshape(b, hh, ww, self.l_heads * d))


@functools.lru_cache(maxsize=64)
def _window(grid: tuple[int, int], size: int) -> P.Window:
    return P.Window(grid, (size, size))  # cached: the tile choice scans the grid once
