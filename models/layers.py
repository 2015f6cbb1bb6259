"""Building blocks shared by the reference models (Flax NNX)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

from jaxsparse.patterns.explicit import concrete


class SwiGLU(nnx.Module):
    """`W_down(silu(W_gate x) * W_up x)` (Shazeer 2020), no biases: `3 C F` parameters."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate = nnx.Linear(dim, hidden, **kw)
        self.up = nnx.Linear(dim, hidden, **kw)
        self.down = nnx.Linear(hidden, dim, **kw)

    def __call__(self, x: Float[Array, "*B C"]) -> Float[Array, "*B C"]:
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class MLP(nnx.Module):
    """`Linear -> GELU (tanh) -> Linear` with biases, as ViT and DiT: `2 C F + F + C` params."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = nnx.Linear(dim, hidden, **kw)
        self.fc2 = nnx.Linear(hidden, dim, **kw)

    def __call__(self, x: Float[Array, "*B C"]) -> Float[Array, "*B C"]:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=True))


class PatchEmbed(nnx.Module):
    """Non-overlapping `p x p` patches (per frame for videos) -> tokens, as a linear map.

    `[B, *F, H, W, C] -> [B, *F, H/p, W/p, dim]`; `p p C dim + dim` parameters.
    """

    def __init__(
        self,
        patch: int,
        channels: int,
        dim: int,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.patch = patch
        self.proj = nnx.Linear(
            patch * patch * channels, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, x: Float[Array, "B *F H W C"]) -> Float[Array, "B *F h w D"]:
        return self.proj(patchify(x, self.patch))


def patchify(x: Float[Array, "*N H W C"], p: int) -> Float[Array, "*N h w ppC"]:
    """`[..., H, W, C] -> [..., H/p, W/p, p*p*C]` (row-major inside a patch)."""
    *lead, h, w, c = x.shape
    if h % p or w % p:
        raise ValueError(f"image size {(h, w)} is not a multiple of the patch size {p}.")
    x = x.reshape(*lead, h // p, p, w // p, p, c)
    x = jnp.moveaxis(x, -4, -3)  # [..., h, w, p, p, C]
    return x.reshape(*lead, h // p, w // p, p * p * c)


def unpatchify(x: Float[Array, "*N h w ppC"], p: int, c: int) -> Float[Array, "*N H W C"]:
    """Inverse of `patchify`."""
    *lead, h, w, _ = x.shape
    x = x.reshape(*lead, h, w, p, p, c)
    x = jnp.moveaxis(x, -3, -4)  # [..., h, p, w, p, C]
    return x.reshape(*lead, h * p, w * p, c)


def sincos_embedding(grid: tuple[int, ...], dim: int) -> np.ndarray:
    """Fixed sin-cos position embedding `[*grid, dim]` (MAE / DiT style), split over axes.

    Each axis gets an equal, even share of the channels (the remainder is zero).
    """
    share = (dim // len(grid)) // 2 * 2
    if share == 0:
        raise ValueError(f"dim={dim} is too small for a {len(grid)}-axis sin-cos embedding.")
    coords = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in grid], indexing="ij")
    parts = []
    for pos in coords:
        omega = 1.0 / 10_000 ** (np.arange(share // 2, dtype=np.float64) / (share // 2))
        angle = pos[..., None] * omega
        parts += [np.sin(angle), np.cos(angle)]
    emb = np.concatenate(parts, axis=-1)
    pad = dim - emb.shape[-1]
    return np.pad(emb, [(0, 0)] * len(grid) + [(0, pad)]).astype(np.float32)


def timestep_embedding(t: Float[Array, " B"], dim: int, max_period: float = 10_000.0):
    """Sinusoidal features `[B, dim]` of continuous times (DiT's `TimestepEmbedder`)."""
    half = dim // 2
    freqs = jnp.exp(-np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim - 2 * half)))


def count_params(module: nnx.Module) -> int:
    """Number of trainable parameters (`nnx.Param` leaves)."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def check_ids(name: str, ids: Any, size: int, *, owner: str, why: str) -> None:
    """Raise unless `ids` is an integer array with every value in `[0, size)`.

    `why` names where `size` comes from (`"vocab_size=32"`).

    The dtype is always checked; the values only when they are concrete. Under
    `jit` they are traced and an id out of range is not detected (an embedding
    lookup gives zeros or NaN there, a loss NaN).
    """
    dtype = getattr(ids, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
        got = f"dtype {dtype}" if dtype is not None else type(ids).__name__
        raise TypeError(
            f"{owner}: {name} must be an integer array, got {got}; "
            f"cast with {name}.astype(jnp.int32)."
        )
    values = concrete(ids)
    if values is not None and values.size and (values.min() < 0 or values.max() >= size):
        bad = values[(values < 0) | (values >= size)]
        raise ValueError(
            f"{owner}: {name} must be ids in [0, {size}) ({why}), got "
            f"{', '.join(map(str, sorted(set(bad.tolist()))[:8]))}."
        )


def check_shape(name: str, x: Any, shape: tuple[int, ...], *, owner: str, source: str) -> None:
    """Raise unless `x` is `[B, *shape]` (`source`: the config fields `shape` comes from)."""
    if tuple(x.shape[1:]) == tuple(shape) and x.ndim == len(shape) + 1:
        return
    hint = f" Add a batch axis: {name}[None]." if tuple(x.shape) == tuple(shape) else ""
    raise ValueError(
        f"{owner}: {name} must be [B, {', '.join(map(str, shape))}] ({source}), "
        f"got shape {tuple(x.shape)}.{hint}"
    )
