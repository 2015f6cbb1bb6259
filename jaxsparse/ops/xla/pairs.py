"""Flatten BlockSparsity lists into (query block, key block, code) work items.

The XLA path walks a flat list of tiles in fixed-size chunks, merging each
chunk into the per-row softmax state with scatters. Work is proportional to
the tiles visited, whatever the skew between rows: nothing is wasted on the
short rows of a causal mask.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jaxsparse.patterns import base as pbase
from jaxsparse.sparsity import block_sparsity

# Codes of a work item: padding, a partial tile, a full tile.
PAD, PARTIAL, FULL = pbase.EMPTY, pbase.PARTIAL, pbase.FULL


def tile_pairs(sp: block_sparsity.BlockSparsity, chunk: int):
    """Work items `(q_block, kv_block, code)`, each int32 `[Bx, Hx, P]`.

    `P` is a multiple of `chunk`. Host metadata is compacted on the host (no
    padding but the last chunk's); device metadata keeps every list slot and
    marks slots past the count as PAD.
    """
    if sp.is_host:
        return _host_pairs(sp, chunk)
    bx, hx, tb, kmax = sp.kv_indices.shape
    e = jnp.arange(kmax).reshape(1, 1, 1, kmax)
    code = jnp.where(sp.kv_full, FULL, PARTIAL)
    code = jnp.where(e < sp.kv_counts[..., None], code, PAD)
    q_block = jnp.broadcast_to(jnp.arange(tb).reshape(1, 1, tb, 1), (bx, hx, tb, kmax))
    pairs = [x.reshape(bx, hx, tb * kmax).astype(jnp.int32) for x in (q_block, sp.kv_indices, code)]
    p = tb * kmax
    pad = _round_up(p, chunk) - p
    return tuple(jnp.pad(x, ((0, 0), (0, 0), (0, pad))) for x in pairs)


def _host_pairs(sp, chunk):
    bx, hx, tb, kmax = sp.kv_indices.shape
    counts = np.asarray(sp.kv_counts)
    p = _round_up(max(1, int(counts.sum(-1).max())), chunk)
    out = np.zeros((3, bx, hx, p), np.int32)
    valid = np.arange(kmax) < counts[..., None]
    code = np.where(np.asarray(sp.kv_full), FULL, PARTIAL)
    q_block = np.broadcast_to(np.arange(tb)[:, None], (tb, kmax))
    for b in range(bx):
        for h in range(hx):
            v = valid[b, h]
            n = int(v.sum())
            out[0, b, h, :n] = q_block[v]
            out[1, b, h, :n] = np.asarray(sp.kv_indices)[b, h][v]
            out[2, b, h, :n] = code[b, h][v]
    return out[0], out[1], out[2]


def chunk_size(
    sp: block_sparsity.BlockSparsity, *, batch: int, heads: int, chunk_elements: int
) -> int:
    """Tiles per step so one step's logits hold about `chunk_elements` values."""
    per_tile = sp.block_q * sp.block_kv * batch * heads
    if sp.is_host:
        most = max(1, int(np.asarray(sp.kv_counts).sum(-1).max()))
    else:
        most = sp.num_q_blocks * sp.kv_indices.shape[-1]
    return max(1, min(most, chunk_elements // per_tile))


def _round_up(x: int, m: int) -> int:
    return math.ceil(x / m) * m
