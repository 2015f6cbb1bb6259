"""Block tables for scalar prefetch, and the index maps that walk them.

The `BlockSparsity` lists arrive unchanged (`[Bx, Hx, nb, width]`, ascending,
padding entries repeating the last valid block). They are packed into one
flat int32 SMEM table of `(block << 1) | full` entries plus a flat table of
counts. Index maps read the block of the current list entry from SMEM; a
padding entry maps to the same tile as the entry before it, so the TPU
pipeline, which copies a block only when its index changes, issues no DMA.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from pallas_kernels.tpu import common as cm


def pack_entries(indices, full):
    """One flat int32 SMEM table: `(block << 1) | full` per list entry.

    Flat (1-D) tables avoid SMEM padding of small trailing dims; packing the
    flag halves the scalar-prefetch footprint.
    """
    return (indices.astype(jnp.int32) * 2 + full.astype(jnp.int32)).reshape(-1)


def flat_counts(counts):
    return counts.astype(jnp.int32).reshape(-1)


def entry_block(entry):
    return lax.shift_right_logical(entry, 1)


def entry_is_full(entry):
    return (entry & 1) == 1


def q_major_kv_index(sh: cm.Shapes, nb: int, kmax: int):
    """Index map of the q-major walk (forward, dQ): grid (b, h, i, j) -> the K/V tile
    `(b, kv head, kv block)` of list entry j of q block i (nb = Tb query blocks).

    Entries past the count repeat the last valid block, so consecutive grid
    steps map to the same tile and the pipeline issues no new DMA for them.
    """

    def index(b, h, i, j, entries_ref, counts_ref):
        del counts_ref
        row = sh.table_row(b, h) * nb + i
        return b, h // sh.G, entry_block(entries_ref[row * kmax + j])

    return index


def kv_major_q_index(sh: cm.Shapes, nb: int, qmax: int):
    """Index map of the kv-major walk (dK/dV): grid (b, kh, jb, g, e) -> the query tile
    `(b, query head, q block)` of list entry e of kv block jb for head kh * G + g
    (nb = Sb key blocks).
    """

    def index(b, kh, jb, g, e, entries_ref, counts_ref):
        del counts_ref
        h = kh * sh.G + g
        row = sh.table_row(b, h) * nb + jb
        return b, h, entry_block(entries_ref[row * qmax + e])

    return index
