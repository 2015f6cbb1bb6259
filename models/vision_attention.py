"""Attention over image / video token grids `[B, *grid, C]`, chosen per layer by name.

Kinds (one name, or a comma-separated list cycled over the layers, e.g.
`neighborhood,neighborhood,neighborhood,dense`):

* `dense` — every token attends every token (`jaxsparse.nn.SparseAttention`).
* `window` — block-sparse Swin windows (`patterns.Window`), shifted by half a
  window in every other layer of that kind; videos use windows spanning all frames.
* `neighborhood` — NATTEN neighbourhood attention (`jaxsparse.nn.NeighborhoodAttention`),
  a `k x k` (or `f x k x k` for videos) window around every token.
* `hilo` — LITv2's HiLo attention (`jaxsparse.nn.HiLoAttention`), per frame.
* `biformer` — BiFormer's bi-level routing attention
  (`jaxsparse.nn.BiLevelRoutingAttention`), per frame.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from jaxsparse import nn as jnn
from jaxsparse import patterns as P
from jaxsparse.patterns.base import check_int
from models.registry import Registry

KINDS = Registry("attention")
for _name in ("dense", "window", "neighborhood", "hilo", "biformer"):
    KINDS.register(_name, _name)


@dataclasses.dataclass(frozen=True, kw_only=True)
class VisionOptions:
    """Hyper-parameters of the sparse kinds.

    Attributes:
      window: Swin window side in tokens (`window`).
      kernel: neighbourhood side in tokens (`neighborhood`, odd).
      kernel_frames: neighbourhood extent along time for videos (odd; clipped to F).
      hilo_window, hilo_alpha: HiLo's window / pooling size and Lo-Fi head fraction.
      regions, topk, lce_kernel: BiFormer's regions per side, routed regions, LCE kernel
        (odd, or 0 for none).

    HiLo needs token grids whose sides are multiples of `hilo_window`, BiFormer
    multiples of `regions` (`check_grid`).
    """

    window: int = 4
    kernel: int = 5
    kernel_frames: int = 3
    hilo_window: int = 2
    hilo_alpha: float = 0.5
    regions: int = 4
    topk: int = 4
    lce_kernel: int = 3

    def __post_init__(self):
        for name in ("window", "kernel", "kernel_frames", "hilo_window", "regions", "topk"):
            check_int(name, getattr(self, name), minimum=1, owner="VisionOptions")
        check_int("lce_kernel", self.lce_kernel, minimum=0, owner="VisionOptions")
        if self.lce_kernel % 2 == 0 and self.lce_kernel:
            raise ValueError(
                f"VisionOptions: lce_kernel={self.lce_kernel} must be odd, or 0 for no LCE."
            )
        alpha = self.hilo_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise TypeError(
                f"VisionOptions: hilo_alpha must be a number in [0, 1], got {alpha!r} "
                f"({type(alpha).__name__})."
            )
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"VisionOptions: hilo_alpha={alpha} must be in [0, 1].")


def layer_kinds(spec: str, num_layers: int) -> tuple[str, ...]:
    """The kind of each layer for an attention spec (a kind or a comma-separated list)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"attention spec must be a non-empty string, got {spec!r}.")
    cycle = tuple(s.strip() for s in spec.split(","))
    for kind in cycle:
        KINDS.get(kind)
    return tuple(cycle[i % len(cycle)] for i in range(num_layers))


def check_grid(kind: str, grid: tuple[int, ...], options: VisionOptions, patch_size: int = 0):
    """Raise unless `kind` tiles the spatial token grid (HiLo windows, BiFormer regions).

    With `patch_size`, the message names the image sizes that would work.
    """
    name = {"hilo": "hilo_window", "biformer": "regions"}.get(kind)
    if name is None:
        return
    size, (h, w) = getattr(options, name), grid[-2:]
    if h % size == 0 and w % size == 0:
        return
    grid_text, fix = f"{h}x{w} token grid", ""
    if patch_size:
        step, image = size * patch_size, h * patch_size
        sizes = " or ".join(str(n) for n in (image // step * step, (image // step + 1) * step) if n)
        grid_text += f" (image_size={image} / patch_size={patch_size})"
        fix = f"use an image_size that is a multiple of {step} (e.g. {sizes}), or "
    divisors = ", ".join(str(d) for d in range(1, min(h, w) + 1) if h % d == 0 and w % d == 0)
    raise ValueError(
        f"attention {kind!r}: the {grid_text} is not a multiple of VisionOptions.{name}={size}; "
        f"{fix}set {name} to a divisor of the grid ({divisors})."
    )


# The size fields of `ViTConfig` and `DiTConfig` (ints >= 1).
CONFIG_SIZES = (
    "image_size",
    "patch_size",
    "channels",
    "num_classes",
    "dim",
    "num_layers",
    "num_heads",
    "mlp_ratio",
)


def check_config(owner: str, cfg: Any) -> None:
    """The checks `ViTConfig` and `DiTConfig` share: sizes, patches, heads and every
    layer's grid (`cfg.grid`, `cfg.attention`, `cfg.options`)."""
    for name in CONFIG_SIZES:
        check_int(name, getattr(cfg, name), minimum=1, owner=owner)
    if cfg.image_size % cfg.patch_size:
        raise ValueError(
            f"{owner}: image_size={cfg.image_size} must be a multiple of "
            f"patch_size={cfg.patch_size}."
        )
    if cfg.dim % cfg.num_heads:
        raise ValueError(f"{owner}: dim={cfg.dim} must be divisible by num_heads={cfg.num_heads}.")
    for kind in dict.fromkeys(layer_kinds(cfg.attention, cfg.num_layers)):
        check_grid(kind, cfg.grid, cfg.options, cfg.patch_size)


class GridAttention(nnx.Module):
    """Attention of one kind over a fixed token grid: `[B, *grid, C] -> [B, *grid, C]`.

    Args:
      kind: a name in `KINDS`.
      dim, num_heads: width C and heads.
      grid: token grid `(h, w)` or `(frames, h, w)`.
      options: `VisionOptions`.
      shifted: shift the windows by half a window (`window` kind only; not along an
        axis the window covers).
      implementation: passed to `jaxsparse.attention`.
      dtype, param_dtype, rngs: as in Flax NNX.
    """

    def __init__(
        self,
        kind: str,
        dim: int,
        num_heads: int,
        *,
        grid: tuple[int, ...],
        options: VisionOptions,
        shifted: bool = False,
        implementation: str | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        KINDS.get(kind)
        check_grid(kind, grid, options)
        self.kind, self.grid = kind, tuple(grid)
        kw = dict(implementation=implementation, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        video = len(self.grid) == 3
        spatial = self.grid[-2:]
        if kind == "dense":
            self.attn = jnn.SparseAttention(dim, num_heads, qkv_bias=True, out_bias=True, **kw)
        elif kind == "window":
            w = tuple(min(options.window, n) for n in spatial)
            window = (self.grid[0],) + w if video else w
            # No shift along an axis the window covers (Swin: no shift when the window
            # spans the input): shifting there would only split the one window in two.
            shift = tuple(
                x // 2 if shifted and x < n else 0 for x, n in zip(w, spatial, strict=True)
            )
            shift = (0,) + shift if video else shift
            pattern = P.Window(self.grid, window, shift=shift)
            self.attn = jnn.SparseAttention(
                dim, num_heads, pattern=pattern, qkv_bias=True, out_bias=True, **kw
            )
        elif kind == "neighborhood":
            k = tuple(_odd_at_most(options.kernel, n) for n in spatial)
            window = (_odd_at_most(options.kernel_frames, self.grid[0]),) + k if video else k
            self.attn = jnn.NeighborhoodAttention(dim, num_heads, window, **kw)
        elif kind == "hilo":
            self.attn = jnn.HiLoAttention(
                dim, num_heads, window_size=options.hilo_window, alpha=options.hilo_alpha, **kw
            )
        else:  # biformer
            self.attn = jnn.BiLevelRoutingAttention(
                dim,
                num_heads,
                n_win=options.regions,
                topk=options.topk,
                side_dwconv=options.lce_kernel,
                **kw,
            )

    def __call__(self, x: Float[Array, "B *grid C"]) -> Float[Array, "B *grid C"]:
        if self.kind in ("dense", "window"):  # token sequences [B, N, C]
            b, c = x.shape[0], x.shape[-1]
            return self.attn(x.reshape(b, -1, c)).reshape(x.shape)
        return self.attn(x)


def _odd_at_most(k: int, n: int) -> int:
    """The largest odd size <= min(k, n) (a centred neighbourhood needs an odd side)."""
    k = min(k, n)
    return k if k % 2 else max(1, k - 1)
