"""NSA branch 1 inputs: sliding windows over keys / values and the learned compressor phi.

Compressed token i summarises positions `[i*stride, i*stride + kernel_size)`;
there are `floor((S - kernel_size) / stride) + 1` of them (0 when S <
kernel_size). The paper's phi is "an MLP with intra-block position encoding":
here a per-key-head two-layer MLP over the flattened window, with a learned
position embedding added to the window first.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def num_compressed(length: int, kernel_size: int, stride: int) -> int:
    """Compressed tokens of a sequence of `length` keys."""
    return 0 if length < kernel_size else (length - kernel_size) // stride + 1


def windows(x, *, kernel_size: int, stride: int):
    """Overlapping windows `[B, Nc, kernel_size, K, D]` of `x [B, S, K, D]`.

    When `stride` divides `kernel_size` (NSA's config asks for it) a window is
    `kernel_size / stride` consecutive stride segments: slices of `x` cut into
    segments, concatenated, whose gradient is a sum of padded slices. The
    general form is a gather, whose gradient is a scatter-add (on XLA:GPU a
    scatter fusion per call).
    """
    nc = num_compressed(x.shape[1], kernel_size, stride)
    b, _, *rest = x.shape
    if nc and kernel_size % stride == 0:
        r = kernel_size // stride
        segments = x[:, : (nc + r - 1) * stride].reshape((b, nc + r - 1, stride, *rest))
        return jnp.concatenate([segments[:, j : j + nc] for j in range(r)], axis=2)
    idx = np.arange(nc)[:, None] * stride + np.arange(kernel_size)[None, :]
    return jnp.take(x, jnp.asarray(idx.reshape(-1), jnp.int32), axis=1).reshape(
        (x.shape[0], nc, kernel_size) + x.shape[2:]
    )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CompressorParams:
    """Weights of phi for one of K or V (per key/value head).

    pe `[K, l, D]`, w1 `[K, l*D, Hc]`, b1 `[K, Hc]`, w2 `[K, Hc, D]`, b2 `[K, D]`.
    """

    pe: Any
    w1: Any
    b1: Any
    w2: Any
    b2: Any


def compress(x, params: CompressorParams, *, kernel_size: int, stride: int):
    """phi over every window: `[B, S, K, D] -> [B, Nc, K, D]` (in x's dtype).

    `phi(window) = W2 gelu(W1 vec(window + pe) + b1) + b2`, per key head.
    """
    w = windows(x, kernel_size=kernel_size, stride=stride)  # [B, Nc, l, K, D]
    dt = x.dtype
    w = w + jnp.swapaxes(params.pe, 0, 1).astype(dt)[None, None]  # pe [K, l, D] -> [l, K, D]
    b, nc, l, kh, d = w.shape
    flat = jnp.moveaxis(w, 3, 2).reshape(b, nc, kh, l * d)
    h = jnp.einsum("bnki,kio->bnko", flat, params.w1.astype(dt)) + params.b1.astype(dt)[None, None]
    h = jax.nn.gelu(h)
    return jnp.einsum("bnki,kio->bnko", h, params.w2.astype(dt)) + params.b2.astype(dt)[None, None]


def mean_compress(x, *, kernel_size: int, stride: int):
    """Parameter-free phi: the mean of each window (fla's naive NSA; useful for tests, benches)."""
    return windows(x, kernel_size=kernel_size, stride=stride).mean(2)
