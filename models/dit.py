"""Diffusion Transformer (DiT, Peebles & Xie 2023) for images and short videos, sparse per layer.

    cfg = DiTConfig(image_size=16, frames=8, attention="neighborhood", num_classes=6)
    v = DiT(cfg, rngs=nnx.Rngs(0))(x_t, t, labels)    # x_t [B, 8, 16, 16, 1], t [B]

Patchify (per frame), fixed sin-cos positions over the `(frames,) h, w`
token grid, timestep + class conditioning through adaLN-Zero (every residual
branch starts as the identity), then unpatchify. The output has the input's
shape: the flow-matching velocity (see `models.flow`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from jaxsparse.patterns.base import check_int
from models import vision_attention
from models.layers import (
    MLP,
    PatchEmbed,
    check_ids,
    check_shape,
    sincos_embedding,
    timestep_embedding,
    unpatchify,
)

_FREQ_DIM = 256  # sinusoidal timestep features, as DiT


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiTConfig:
    """Shape and attention of a `DiT` (stored beside checkpoints).

    Attributes:
      image_size, channels, frames: input `[B, S, S, C]`, or `[B, F, S, S, C]`
        when frames > 0 (video).
      patch_size: p (per frame).
      num_classes: class labels for conditioning.
      dim, num_layers, num_heads, mlp_ratio: transformer widths.
      attention: a kind of `vision_attention` or a comma-separated list per layer.
      options: `VisionOptions`.
      implementation: `jaxsparse.attention` implementation (None: best available).
    """

    image_size: int = 16
    channels: int = 1
    frames: int = 0
    patch_size: int = 2
    num_classes: int = 10
    dim: int = 64
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4
    attention: str = "dense"
    options: vision_attention.VisionOptions = dataclasses.field(
        default_factory=vision_attention.VisionOptions
    )
    implementation: str | None = None

    def __post_init__(self):
        if isinstance(self.options, dict):  # from JSON
            object.__setattr__(self, "options", vision_attention.VisionOptions(**self.options))
        check_int("frames", self.frames, minimum=0, owner="DiTConfig", fix="0 means images.")
        vision_attention.check_config("DiTConfig", self)

    @property
    def grid(self) -> tuple[int, ...]:
        n = self.image_size // self.patch_size
        return (self.frames, n, n) if self.frames else (n, n)

    @property
    def input_shape(self) -> tuple[int, ...]:
        s = (self.image_size, self.image_size, self.channels)
        return (self.frames,) + s if self.frames else s

    def num_params(self) -> int:
        """Parameter count for all-dense attention (the formula tests check)."""
        c, f, pc = self.dim, self.dim * self.mlp_ratio, self.patch_size**2 * self.channels
        embed = pc * c + c + (_FREQ_DIM * c + c) + (c * c + c) + (self.num_classes + 1) * c
        block = (4 * c * c + 4 * c) + (2 * c * f + f + c) + (c * 6 * c + 6 * c)
        final = c * 2 * c + 2 * c + c * pc + pc
        return embed + self.num_layers * block + final


def _modulate(x, shift, scale):
    """`x * (1 + scale) + shift`, with per-example `[B, C]` modulation broadcast over tokens."""
    expand = (slice(None),) + (None,) * (x.ndim - 2) + (slice(None),)
    return x * (1 + scale[expand]) + shift[expand]


def _zeros_linear(n_in: int, n_out: int, **kw) -> nnx.Linear:
    # adaLN-Zero: modulation and output layers start at zero (each block = identity).
    return nnx.Linear(n_in, n_out, kernel_init=nnx.initializers.zeros_init(), **kw)


class Block(nnx.Module):
    """DiT block: adaLN-Zero around attention and MLP."""

    def __init__(
        self,
        cfg: DiTConfig,
        kind: str,
        shifted: bool,
        *,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        norm = dict(use_bias=False, use_scale=False, epsilon=1e-6, **kw)
        self.norm1, self.norm2 = nnx.LayerNorm(cfg.dim, **norm), nnx.LayerNorm(cfg.dim, **norm)
        self.attn = vision_attention.GridAttention(
            kind,
            cfg.dim,
            cfg.num_heads,
            grid=cfg.grid,
            options=cfg.options,
            shifted=shifted,
            implementation=cfg.implementation,
            **kw,
        )
        self.mlp = MLP(cfg.dim, cfg.dim * cfg.mlp_ratio, **kw)
        self.ada = _zeros_linear(cfg.dim, 6 * cfg.dim, **kw)

    def __call__(self, x, c):
        s1, g1, a1, s2, g2, a2 = jnp.split(self.ada(jax.nn.silu(c)), 6, axis=-1)
        expand = (slice(None),) + (None,) * (x.ndim - 2) + (slice(None),)
        x = x + a1[expand] * self.attn(_modulate(self.norm1(x), s1, g1))
        return x + a2[expand] * self.mlp(_modulate(self.norm2(x), s2, g2))


class DiT(nnx.Module):
    """`(x_t [B, *input_shape], t [B] in [0, 1], labels [B]) -> [B, *input_shape]` (float32)."""

    def __init__(
        self,
        cfg: DiTConfig,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.cfg, self.dtype = cfg, dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.patch = PatchEmbed(cfg.patch_size, cfg.channels, cfg.dim, **kw)
        self.pos = nnx.data(jnp.asarray(sincos_embedding(cfg.grid, cfg.dim)))  # fixed
        self.t_in = nnx.Linear(_FREQ_DIM, cfg.dim, **kw)
        self.t_out = nnx.Linear(cfg.dim, cfg.dim, **kw)
        # One extra label: "no class" (for classifier-free guidance, if wanted).
        self.label = nnx.Embed(cfg.num_classes + 1, cfg.dim, **kw)
        kinds = vision_attention.layer_kinds(cfg.attention, cfg.num_layers)
        self.blocks = nnx.List(
            [Block(cfg, kind, kinds[:i].count(kind) % 2 == 1, **kw) for i, kind in enumerate(kinds)]
        )
        self.final_norm = nnx.LayerNorm(
            cfg.dim, use_bias=False, use_scale=False, epsilon=1e-6, **kw
        )
        self.final_ada = _zeros_linear(cfg.dim, 2 * cfg.dim, **kw)
        self.final = _zeros_linear(cfg.dim, cfg.patch_size**2 * cfg.channels, **kw)

    def __call__(
        self, x: Float[Array, " B *shape"], t: Float[Array, " B"], labels: Int[Array, " B"]
    ) -> Float[Array, " B *shape"]:
        """Velocity at `x`; labels are ids in `[0, num_classes]` (num_classes: no class).

        Shapes are always checked, label values outside `jit` only (under `jit`
        a label out of range gives NaN).
        """
        cfg = self.cfg
        source = f"frames={cfg.frames}, image_size={cfg.image_size}, channels={cfg.channels}"
        check_shape("x", x, cfg.input_shape, owner="DiT", source=source)
        for name, v in (("t", t), ("labels", labels)):
            if jnp.shape(v) != x.shape[:1]:
                raise ValueError(
                    f"DiT: {name} must be [B] = {x.shape[:1]}, one per example, "
                    f"got shape {jnp.shape(v)}."
                )
        why = f"num_classes={cfg.num_classes}, and {cfg.num_classes} for no class"
        check_ids("labels", labels, cfg.num_classes + 1, owner="DiT", why=why)
        h = self.patch(x) + self.pos.astype(self.dtype)[None]
        temb = timestep_embedding(t * 1000.0, _FREQ_DIM).astype(self.dtype)
        c = self.t_out(jax.nn.silu(self.t_in(temb))) + self.label(labels)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = jnp.split(self.final_ada(jax.nn.silu(c)), 2, axis=-1)
        h = self.final(_modulate(self.final_norm(h), shift, scale))
        return unpatchify(h, self.cfg.patch_size, self.cfg.channels).astype(jnp.float32)
