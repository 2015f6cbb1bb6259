"""`BiLevelRoutingAttention` (BiFormer, Zhu et al. 2023): route regions, then attend tokens."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

import jaxsparse as js
from jaxsparse.nn import dtypes, layout
from jaxsparse.patterns import base as pbase


class BiLevelRoutingAttention(nnx.Module):
    """Bi-level routing attention (BRA) with local context enhancement (LCE).

    1. `q, k, v = Linear(C, 2 qk_dim + C)(x)`; the image is cut into an
       `n_win x n_win` grid of regions of `(H/n_win) x (W/n_win)` tokens.
    2. Region routing (shared by all heads, no parameters, no gradient):
       `A = (mean_region(q) * scale) @ mean_region(k)^T`, and each query
       region keeps its `topk` highest-scoring key regions (`route`).
    3. Token attention: multi-head softmax attention of a region's tokens over
       the tokens of its routed regions. It runs as block-sparse attention:
       tokens are laid out region-major (one region = one tile) and the
       routing becomes the tile lists (`jaxsparse.sparsity.from_topk`), so
       nothing is gathered.
    4. `out = Linear(C, C)(attention + DWConv_k(v))` (LCE, depthwise k x k).

    As in the reference code, routing and token attention both use the scale
    `qk_scale or qk_dim ** -0.5` (the full qk_dim, not the per-head dim), so
    weights port unchanged. Routing scores are computed in float32.
    Parameters: `C (2 qk_dim + C) + 2 qk_dim + C` (qkv) `+ C^2 + C` (wo)
    `+ k^2 C + C` (LCE). BiFormer's block-level extras (the 3x3 positional
    DWConv, norms, MLP) belong to the block, not to this module.

    Input `[B, H, W, C]`, or a video `[B, T, H, W, C]` attended frame by frame.

    Args:
      dim: channels C.
      num_heads: heads (qk_dim and C must be divisible by it).
      n_win: regions per side (default 7).
      qk_dim: query/key width (default C).
      qk_scale: scale (default `qk_dim ** -0.5`).
      topk: routed regions per query region, 1 <= topk <= n_win**2 (default 4).
      side_dwconv: LCE kernel size (odd; 0 disables LCE; default 5 as BiFormer's blocks).
      auto_pad: zero-pad H, W up to multiples of n_win and crop the output (as
        the reference `auto_pad`); otherwise they must be multiples.
      implementation, config: passed to `jaxsparse.attention`.
      dtype: computation dtype (default `param_dtype`); param_dtype: float32.
      rngs: `nnx.Rngs` (keyword-only).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        n_win: int = 7,
        qk_dim: int | None = None,
        qk_scale: float | None = None,
        topk: int = 4,
        side_dwconv: int = 5,
        auto_pad: bool = False,
        implementation: str | None = None,
        config: js.Config | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        qk_dim = dim if qk_dim is None else qk_dim
        sizes = dict(dim=dim, num_heads=num_heads, qk_dim=qk_dim, n_win=n_win)
        for name, value in sizes.items():
            pbase.check_int(name, value, minimum=1, owner="BiLevelRoutingAttention")
        pbase.check_int(
            "side_dwconv",
            side_dwconv,
            minimum=0,
            owner="BiLevelRoutingAttention",
            fix="Use an odd kernel size, or 0 for no local context enhancement.",
        )
        if qk_dim % num_heads or dim % num_heads:
            raise ValueError(
                f"BiLevelRoutingAttention: qk_dim={qk_dim} and dim={dim} must both be divisible "
                f"by num_heads={num_heads}."
            )
        regions = n_win * n_win
        if (
            isinstance(topk, bool)
            or not isinstance(topk, (int, np.integer))
            or not 1 <= topk <= regions
        ):
            raise ValueError(
                f"BiLevelRoutingAttention: topk={topk!r} must be between 1 and the number of "
                f"regions n_win**2 = {regions}; use topk={regions} for full attention."
            )
        if side_dwconv and side_dwconv % 2 == 0:
            raise ValueError(
                f"BiLevelRoutingAttention: side_dwconv={side_dwconv} must be an odd kernel size "
                "or 0 (no local context enhancement)."
            )
        self.dim, self.qk_dim, self.num_heads = dim, qk_dim, num_heads
        self.n_win, self.topk, self.auto_pad = n_win, int(topk), auto_pad
        self.scale = qk_dim**-0.5 if qk_scale is None else qk_scale
        self.implementation, self.config = implementation, config
        self.dtype = dtypes.module_dtype(type(self).__name__, dtype, param_dtype)
        kw = dict(dtype=self.dtype, param_dtype=param_dtype, rngs=rngs)
        self.qkv = nnx.Linear(dim, 2 * qk_dim + dim, **kw)
        self.wo = nnx.Linear(dim, dim, **kw)
        k = side_dwconv
        self.lepe = (
            nnx.Conv(dim, dim, (k, k), feature_group_count=dim, padding=k // 2, **kw) if k else None
        )

    # --- stages ------------------------------------------------------------------
    def _regions(self, x):
        """`[B, H, W, C]` -> region-major `[B, n_win**2, region tokens, C]`."""
        b, hh, ww, c = x.shape
        n = self.n_win
        x = x.reshape(b, n, hh // n, n, ww // n, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, n * n, (hh // n) * (ww // n), c)

    def _images(self, x, hh, ww):
        """Inverse of `_regions`."""
        b, _, _, c = x.shape
        n = self.n_win
        x = x.reshape(b, n, n, hh // n, ww // n, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, hh, ww, c)

    def _pad(self, x):
        n = self.n_win
        hh, ww = x.shape[1:3]
        if self.auto_pad:
            pad = ((0, 0), (0, -hh % n), (0, -ww % n), (0, 0))
            return jnp.pad(x, pad)
        layout.check_divisible(
            "BiLevelRoutingAttention", "n_win", (hh, ww), n, "pad the input or pass auto_pad=True."
        )
        return x

    def route(self, q_regions: Any, k_regions: Any) -> Int[Array, "B R topk"]:
        """Top-k key regions per query region, from region-major q, k `[B, R, r, qk_dim]`.

        Indices are ordered by decreasing score (ties: lower index first).
        """
        q_mean = jax.lax.stop_gradient(q_regions.astype(jnp.float32).mean(axis=2))
        k_mean = jax.lax.stop_gradient(k_regions.astype(jnp.float32).mean(axis=2))
        scores = jnp.einsum("bqc,bkc->bqk", q_mean * self.scale, k_mean)
        return jax.lax.top_k(scores, self.topk)[1]

    def __call__(self, x: Float[Array, "B *T H W C"]) -> Float[Array, "B *T H W C"]:
        """`[B, H, W, C]` (or `[B, T, H, W, C]`) -> same shape, in `dtype`."""
        frames, restore = layout.image_frames("BiLevelRoutingAttention", x)
        layout.check_channels("BiLevelRoutingAttention", x, self.dim, "dim")
        h_in, w_in = frames.shape[1:3]
        frames = self._pad(frames.astype(self.dtype))
        b, hh, ww, _ = frames.shape
        qkv = self.qkv(frames)
        q, k, v = jnp.split(qkv, [self.qk_dim, 2 * self.qk_dim], axis=-1)
        qr, kr, vr = self._regions(q), self._regions(k), self._regions(v)
        index = self.route(qr, kr)  # [B, R, topk]
        out = self._token_attention(qr, kr, vr, index)
        out = self._images(out, hh, ww)
        if self.lepe is not None:
            out = out + self.lepe(v)
        out = self.wo(out)[:, :h_in, :w_in]
        return restore(out)

    def _token_attention(self, qr, kr, vr, index):
        """Each region's tokens attend the tokens of its routed regions."""
        b, regions, size, _ = qr.shape
        n, m = regions * size, self.num_heads
        q, k, v = (x.reshape(b, n, m, x.shape[-1] // m) for x in (qr, kr, vr))
        sparsity = js.sparsity.from_topk(
            index[:, None], block_q=size, block_kv=size, q_len=n, kv_len=n
        )
        out = js.attention(
            q,
            k,
            v,
            sparsity=sparsity,
            scale=self.scale,
            implementation=self.implementation,
            config=self.config,
        )
        return out.reshape(b, regions, size, self.dim)
