"""Token layouts shared by the vision modules: images `[B, H, W, C]`, videos `[B, T, H, W, C]`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def image_frames(owner: str, x: Any) -> tuple[Any, Callable[[Any], Any]]:
    """`x` as images `[N, H, W, C]`, and a function that restores x's leading axes.

    A video `[B, T, H, W, C]` becomes `B*T` frames (the module then works per
    frame, as image models applied to video do).

    Raises:
      ValueError: for any other rank.
    """
    if x.ndim == 4:
        return x, lambda y: y
    if x.ndim == 5:
        b, t = x.shape[:2]
        return x.reshape(b * t, *x.shape[2:]), lambda y: y.reshape(b, t, *y.shape[1:])
    raise ValueError(
        f"{owner} takes images [B, H, W, C] or videos [B, T, H, W, C] (channels last), got "
        f"shape {tuple(x.shape)}. Reshape tokens [B, N, C] to [B, H, W, C] first."
    )


def check_divisible(owner: str, what: str, spatial: tuple[int, ...], by: int, fix: str) -> None:
    """Raise unless every spatial size is a multiple of `by`."""
    if any(n % by for n in spatial):
        raise ValueError(
            f"{owner}: the spatial size {spatial} is not a multiple of {what}={by}; {fix}"
        )


def check_channels(owner: str, x: Any, channels: int, name: str) -> None:
    """Raise unless the last axis of `x` has the module's `channels` (its `name` argument)."""
    if x.shape[-1] != channels:
        raise ValueError(
            f"{owner}: x has shape {tuple(x.shape)}, {x.shape[-1]} channels; expected "
            f"{name}={channels} channels last; project x to {channels} channels or build the "
            f"module with {name}={x.shape[-1]}."
        )
