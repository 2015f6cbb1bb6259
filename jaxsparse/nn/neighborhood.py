"""`NeighborhoodAttention`: NATTEN-style neighbourhood attention on 1-D/2-D/3-D grids."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

import jaxsparse as js
from jaxsparse import patterns as P
from jaxsparse.nn import dtypes, layout
from jaxsparse.patterns import base as pbase
from jaxsparse.patterns import tiling


class NeighborhoodAttention(nnx.Module):
    """Multi-head neighbourhood attention over the spatial axes of `x`.

    Each token attends the `window` around it (NA, with DiNAT's dilation,
    GNA's stride and per-axis causality; the rule is `patterns.Neighborhood`).
    Parameters as NATTEN's `NeighborhoodAttention{1,2,3}D` modules without the
    legacy relative-position bias: `qkv = Linear(C, 3 H D)` and
    `proj = Linear(H D, C_out)`, both with bias (`4 C^2 + 4 C` when D = C/H).

    Input `[B, L, C]`, `[B, H, W, C]` or `[B, T, H, W, C]`: every axis
    between batch and channels is a grid axis, in row-major order.

    Args:
      in_features: channels C.
      num_heads: heads H.
      window: kernel size, an int or one per grid axis (a tuple fixes the
        number of grid axes the module accepts).
      stride, dilation, causal: as in `patterns.Neighborhood`, int/bool or per axis.
      head_dim: D (default C // H).
      out_features: output channels (default C).
      qkv_bias: bias on the qkv projection (default True, as NATTEN).
      tile: box shape or token budget for the internal token order (see
        `patterns.Neighborhood`; default: boxes of 128 tokens).
      implementation, config: passed to `jaxsparse.attention`.
      dtype: computation dtype (default `param_dtype`); param_dtype: float32.
      rngs: `nnx.Rngs` (keyword-only).
    """

    def __init__(
        self,
        in_features: int,
        num_heads: int,
        window: int | tuple[int, ...],
        *,
        stride: int | tuple[int, ...] = 1,
        dilation: int | tuple[int, ...] = 1,
        causal: bool | tuple[bool, ...] = False,
        head_dim: int | None = None,
        out_features: int | None = None,
        qkv_bias: bool = True,
        tile: Any = None,
        implementation: str | None = None,
        config: js.Config | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        for name, value in (("in_features", in_features), ("num_heads", num_heads)):
            pbase.check_int(name, value, minimum=1, owner="NeighborhoodAttention")
        if head_dim is None:
            if in_features % num_heads:
                raise ValueError(
                    f"NeighborhoodAttention: in_features={in_features} is not divisible by "
                    f"num_heads={num_heads}; pass head_dim explicitly."
                )
            head_dim = in_features // num_heads
        out_features = in_features if out_features is None else out_features
        for name, value in (("head_dim", head_dim), ("out_features", out_features)):
            pbase.check_int(name, value, minimum=1, owner="NeighborhoodAttention")
        _check_early(window, stride, dilation, causal)
        self.num_heads, self.head_dim = num_heads, head_dim
        self.window, self.stride, self.dilation, self.causal = window, stride, dilation, causal
        self.tile = tile
        self.implementation, self.config = implementation, config
        self.dtype = dtypes.module_dtype(type(self).__name__, dtype, param_dtype)
        kw = dict(dtype=self.dtype, param_dtype=param_dtype, rngs=rngs)
        self.qkv = nnx.Linear(in_features, 3 * num_heads * head_dim, use_bias=qkv_bias, **kw)
        self.proj = nnx.Linear(num_heads * head_dim, out_features, **kw)

    def pattern(self, grid: tuple[int, ...]) -> P.Neighborhood:
        """The attention pattern for one input grid."""
        return _pattern(
            grid,
            _hashable(self.window),
            _hashable(self.stride),
            _hashable(self.dilation),
            _hashable(self.causal),
            _hashable(self.tile),
        )

    def __call__(self, x: Float[Array, "B *grid C"]) -> Float[Array, "B *grid Cout"]:
        """Attend over the grid axes of `x`; returns `[B, *grid, out_features]`."""
        ndim = len(self.window) if isinstance(self.window, tuple) else None
        if x.ndim not in (3, 4, 5) or (ndim is not None and x.ndim != ndim + 2):
            want = f"{ndim} grid axes" if ndim else "1 to 3 grid axes"
            raise ValueError(
                f"NeighborhoodAttention takes [B, *grid, C] with {want} (e.g. [B, H, W, C]), "
                f"got shape {tuple(x.shape)}."
            )
        layout.check_channels("NeighborhoodAttention", x, self.qkv.in_features, "in_features")
        b, grid = x.shape[0], tuple(x.shape[1:-1])
        pattern = self.pattern(grid)
        n = pattern.num_tokens
        # The projections act per token, so the module reorders its input into the
        # pattern's tiled order once and its output back once (C channels each),
        # instead of attention reordering q, k, v and the output (H * D each).
        tokens = tiling.to_tiled(x.astype(self.dtype), grid, pattern.tile)
        qkv = self.qkv(tokens)
        q, k, v = jnp.split(qkv.reshape(b, n, 3, self.num_heads, self.head_dim), 3, axis=2)
        out = js.attention(
            q[:, :, 0],
            k[:, :, 0],
            v[:, :, 0],
            pattern=dataclasses.replace(pattern, tiled_order=True),
            implementation=self.implementation,
            config=self.config,
        )
        return tiling.from_tiled(
            self.proj(out.reshape(b, n, self.num_heads * self.head_dim)), grid, pattern.tile
        )


def _check_early(window, stride, dilation, causal) -> None:
    """Catch bad window/stride/dilation at construction, on the smallest grid they fit."""
    per_axis = [v for v in (window, stride, dilation, causal) if isinstance(v, (tuple, list))]
    ndim = len(per_axis[0]) if per_axis else 1
    w = tiling.as_axes("NeighborhoodAttention", "window", _hashable(window), ndim, minimum=1)
    d = tiling.as_axes("NeighborhoodAttention", "dilation", _hashable(dilation), ndim, minimum=1)
    P.Neighborhood(
        tuple(a * b for a, b in zip(w, d, strict=True)),
        w,
        stride=_hashable(stride),
        dilation=d,
        causal=_hashable(causal),
        tile=1,
    )


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@functools.lru_cache(maxsize=64)
def _pattern(grid, window, stride, dilation, causal, tile) -> P.Neighborhood:
    # Cached: choosing the tile scans the grid's divisors once per shape.
    return P.Neighborhood(grid, window, stride=stride, dilation=dilation, causal=causal, tile=tile)
