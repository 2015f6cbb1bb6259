"""Rotary position embeddings (RoPE, Su et al. 2021), shared by modules and models."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int


@dataclasses.dataclass(frozen=True, kw_only=True)
class RoPE:
    """Rotary embedding settings (static, hashable).

    Channel `i` of the rotated part is paired with channel `i + rotary_dim/2`
    (the "rotate half" layout of GPT-NeoX and Llama checkpoints) and both turn
    by the angle `position * base ** (-2i / rotary_dim)`.

    Attributes:
      base: wavelength base theta (10_000 in RoFormer / Llama 2, 500_000 in Llama 3).
      rotary_dim: leading channels of each head that rotate (even); None rotates all.
    """

    base: float = 10_000.0
    rotary_dim: int | None = None

    def __post_init__(self):
        _check_settings("RoPE", self.base, self.rotary_dim)

    def __call__(self, x: Float[Array, "*B T H D"], positions: Int[Array, "*B T"]) -> Any:
        return apply_rope(x, positions, base=self.base, rotary_dim=self.rotary_dim)

    def check_head_dim(self, owner: str, head_dim: int, name: str = "head_dim") -> None:
        """ValueError unless these settings can rotate heads of `head_dim` channels."""
        check_rotary_dim(owner, self.rotary_dim, head_dim, name)


def check_rotary_dim(owner: str, rotary_dim: int | None, head_dim: int, name: str = "head dim"):
    """The channels that rotate (`rotary_dim`, or the whole head) must be even and fit."""
    d = head_dim if rotary_dim is None else rotary_dim
    if rotary_dim is not None and rotary_dim > head_dim:
        raise ValueError(
            f"{owner}: rotary_dim={rotary_dim} is larger than the {name} {head_dim}; pass "
            f"rotary_dim <= {head_dim} or None (the whole head)."
        )
    if d % 2:
        raise ValueError(
            f"{owner}: RoPE rotates channels in pairs, but the {name} is {head_dim} (odd); use "
            f"an even {name}, RoPE(rotary_dim={max(2, d - 1)}) to rotate only part of it, or "
            "rope=None."
        )


def apply_rope(
    x: Float[Array, "*B T H D"],
    positions: Int[Array, "*B T"],
    *,
    base: float = 10_000.0,
    rotary_dim: int | None = None,
) -> Float[Array, "*B T H D"]:
    """Rotate the first `rotary_dim` channels of each head of `x` by its position.

    Args:
      x: floating-point `[B, T, H, D]` (or `[T, H, D]`).
      positions: integer positions `[B, T]` or `[T]` (shared by the batch).
      base: wavelength base, a positive number.
      rotary_dim: channels that rotate (even, 2 <= rotary_dim <= D); default D.

    Returns:
      Same shape and dtype as `x`; the angles and the rotation are computed in
      float32 (large positions lose precision in bf16).
    """
    _check_settings("apply_rope", base, rotary_dim)
    if np.ndim(x) < 3:
        raise ValueError(
            f"apply_rope: x has shape {np.shape(x)}; expected [B, T, H, D] or [T, H, D] "
            "(heads before the head dim); add the missing axes, e.g. x[:, :, None] for one head."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"apply_rope: x must be a floating-point array, got dtype {x.dtype}; cast it, "
            "e.g. x.astype(jnp.float32)."
        )
    d = x.shape[-1]
    check_rotary_dim("apply_rope", rotary_dim, d)
    rotary_dim = d if rotary_dim is None else rotary_dim
    positions = jnp.asarray(positions)
    if not jnp.issubdtype(positions.dtype, jnp.integer):
        raise TypeError(f"apply_rope: positions must be integers, got dtype {positions.dtype}.")
    t, lead = x.shape[-3], x.shape[:-2]  # lead: [*B, T]
    try:
        fits = positions.ndim >= 1 and np.broadcast_shapes(positions.shape, lead) == lead
    except ValueError:
        fits = False
    if not fits or positions.shape[-1] != t:
        want = f"[{t}]" + (f" or {list(lead)}" if len(lead) > 1 else "")
        raise ValueError(
            f"apply_rope: positions have shape {positions.shape}; expected {want} for x of "
            f"shape {x.shape}; give one position per token, shared by the batch or one row "
            "per example."
        )
    half = rotary_dim // 2
    inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    # [..., T] -> [..., T, 1, half], with leading axes up to x's rank.
    pos = positions.astype(jnp.float32)[..., None, None]
    angle = pos * inv_freq.reshape((1,) * (pos.ndim - 1) + (half,))
    angle = angle.reshape((1,) * (x.ndim - 2 - positions.ndim) + angle.shape)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    xf = x.astype(jnp.float32)
    x1, x2, rest = xf[..., :half], xf[..., half:rotary_dim], xf[..., rotary_dim:]
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)
    return rotated.astype(x.dtype)


def _check_settings(owner: str, base: Any, rotary_dim: Any) -> None:
    if not isinstance(base, numbers.Real) or not 0 < base < math.inf:
        raise ValueError(f"{owner}: base={base!r} must be a positive number (e.g. 10000).")
    d = rotary_dim
    if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 2 or d % 2):
        raise ValueError(
            f"{owner}: rotary_dim={d!r} must be a positive even int (channels rotate in pairs), "
            "or None to rotate the whole head."
        )
