"""NSA: compressed-token importance mapped onto selection blocks (paper eq. 9).

Compressed token `i` summarises stride segments `[i, i + l/d)` (window `l`,
stride `d`); selection block `j` covers segments `[j*l'/d, (j+1)*l'/d)`. The
importance of block j is the overlap-weighted sum of the compressed
probabilities: `p_slc[j] = sum_i |overlap(i, j)| * p_cmp[i]`. Only
`l/d + l'/d - 1` compressed tokens overlap a block, so this is a short
strided sum rather than a dense matrix product.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def overlap_weights(kernel_size: int, stride: int, block_size: int) -> np.ndarray:
    """Weights `w[m]` of compressed token `j*r - c + 1 + m` for block j (`r = l'/d`, `c = l/d`)."""
    c, r = kernel_size // stride, block_size // stride
    m = np.arange(r + c - 1)
    start = m - (c - 1)  # segment where that token starts, relative to the block start
    return (np.minimum(start + c, r) - np.maximum(start, 0)).astype(np.float32)


def overlap_matrix(
    kernel_size: int, stride: int, block_size: int, *, blocks: range, num_keys: int
) -> tuple[int, np.ndarray]:
    """`(lo, M)`: eq. 9 as a matrix for the selection blocks `blocks`.

    `M[j - lo, b - blocks.start]` is the weight of compressed token j in block b,
    for the tokens `lo .. lo + len(M)` (within `[0, num_keys)`) that overlap any
    of the blocks; `compressed_to_blocks` is `p_cmp @ M` over all blocks.
    """
    c, r = kernel_size // stride, block_size // stride
    w = overlap_weights(kernel_size, stride, block_size)
    cols = np.arange(len(blocks))
    tokens = (blocks.start + cols)[None, :] * r - c + 1 + np.arange(len(w))[:, None]
    lo, hi = max(0, int(tokens.min())), min(num_keys, int(tokens.max()) + 1)
    m = np.zeros((max(0, hi - lo), len(blocks)), np.float32)
    keep = (tokens >= lo) & (tokens < hi)
    m[tokens[keep] - lo, np.broadcast_to(cols, tokens.shape)[keep]] = np.broadcast_to(
        w[:, None], tokens.shape
    )[keep]
    return lo, m


def compressed_to_blocks(p_cmp, *, kernel_size: int, stride: int, block_size: int, num_blocks: int):
    """Selection-block importance `[..., num_blocks]` from compressed probabilities `[..., Nc]`."""
    c, r = kernel_size // stride, block_size // stride
    w = overlap_weights(kernel_size, stride, block_size)
    nc = p_cmp.shape[-1]
    # Token j*r - c + 1 + m for m = 0..r+c-2: pad c-1 on the left so index j*r + m is valid.
    total = (num_blocks - 1) * r + len(w)
    right = max(0, total - (c - 1) - nc)
    widths = [(0, 0)] * (p_cmp.ndim - 1) + [(c - 1, right)]
    padded = jnp.pad(p_cmp.astype(jnp.float32), widths)
    out = 0.0
    for m, weight in enumerate(w):
        out = out + float(weight) * padded[..., m : m + (num_blocks - 1) * r + 1 : r]
    return out
