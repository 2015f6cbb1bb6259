"""Vision Transformer classifier with dense, HiLo, BiFormer (or window / neighbourhood) attention.

    cfg = ViTConfig(image_size=32, patch_size=4, attention="hilo", num_classes=10)
    logits = ViT(cfg, rngs=nnx.Rngs(0))(images)          # images [B, 32, 32, 1]

Tokens stay on their `h x w` grid (no class token) so that grid attentions
(HiLo windows, BiFormer regions) apply; the head pools the tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from models import vision_attention
from models.layers import MLP, PatchEmbed, check_ids, check_shape


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViTConfig:
    """Shape and attention of a `ViT` (stored beside checkpoints).

    Attributes:
      image_size, patch_size, channels: input `[B, S, S, channels]`, patches of p x p.
      num_classes: output classes.
      dim, num_layers, num_heads, mlp_ratio: transformer widths.
      attention: a kind of `vision_attention` or a comma-separated list per layer.
      options: `VisionOptions` of the sparse kinds.
      implementation: `jaxsparse.attention` implementation (None: best available).
    """

    image_size: int = 32
    patch_size: int = 4
    channels: int = 1
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
        vision_attention.check_config("ViTConfig", self)

    @property
    def grid(self) -> tuple[int, int]:
        n = self.image_size // self.patch_size
        return (n, n)

    def num_params(self) -> int:
        """Parameter count for all-dense attention (the formula tests check)."""
        c, f, n = self.dim, self.dim * self.mlp_ratio, self.grid[0] * self.grid[1]
        patch = self.patch_size**2 * self.channels * c + c
        attn = 4 * c * c + 4 * c  # q, k, v, o with biases
        block = 2 * 2 * c + attn + 2 * c * f + f + c  # two LayerNorms, MLP
        return (
            patch
            + n * c
            + self.num_layers * block
            + 2 * c
            + c * self.num_classes
            + self.num_classes
        )


class Block(nnx.Module):
    """Pre-norm transformer block on a token grid."""

    def __init__(
        self,
        cfg: ViTConfig,
        kind: str,
        shifted: bool,
        *,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = nnx.LayerNorm(cfg.dim, **kw)
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
        self.norm2 = nnx.LayerNorm(cfg.dim, **kw)
        self.mlp = MLP(cfg.dim, cfg.dim * cfg.mlp_ratio, **kw)

    def __call__(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nnx.Module):
    """Images `[B, S, S, C]` -> class logits `[B, num_classes]` (float32)."""

    def __init__(
        self,
        cfg: ViTConfig,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.cfg, self.dtype = cfg, dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.patch = PatchEmbed(cfg.patch_size, cfg.channels, cfg.dim, **kw)
        self.pos = nnx.Param(
            0.02 * jax.random.normal(rngs.params(), cfg.grid + (cfg.dim,), param_dtype)
        )
        kinds = vision_attention.layer_kinds(cfg.attention, cfg.num_layers)
        # Swin alternates plain and shifted windows; count per kind so mixes alternate too.
        self.blocks = nnx.List(
            [Block(cfg, kind, kinds[:i].count(kind) % 2 == 1, **kw) for i, kind in enumerate(kinds)]
        )
        self.norm = nnx.LayerNorm(cfg.dim, **kw)
        self.head = nnx.Linear(cfg.dim, cfg.num_classes, **kw)

    def __call__(self, images: Float[Array, "B S S C"]) -> Float[Array, "B classes"]:
        s, c = self.cfg.image_size, self.cfg.channels
        check_shape(
            "images", images, (s, s, c), owner="ViT", source=f"image_size={s}, channels={c}"
        )
        x = self.patch(images) + self.pos[...].astype(self.dtype)[None]
        for block in self.blocks:
            x = block(x)
        x = self.norm(x).mean(axis=(1, 2))
        return self.head(x).astype(jnp.float32)


def classification_loss(logits, labels: Int[Array, " B"]) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy and accuracy.

    Labels are ids in `[0, classes)`: checked outside `jit`, while under `jit`
    a label out of range gives a NaN loss.
    """
    if jnp.shape(labels) != logits.shape[:1] or logits.ndim != 2:
        raise ValueError(
            f"classification_loss: logits must be [B, classes] and labels [B], got shapes "
            f"{logits.shape} and {jnp.shape(labels)}."
        )
    check_ids(
        "labels", labels, logits.shape[-1], owner="classification_loss", why="the logits' classes"
    )
    logp = jax.nn.log_softmax(logits, axis=-1)
    loss = -jnp.take_along_axis(logp, labels[:, None], axis=-1).mean()
    return loss, (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32).mean()
