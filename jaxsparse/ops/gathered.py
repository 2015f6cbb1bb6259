"""Gathered query tiles for the dK/dV of per-token selections on the GPU kernels.

On the packed path (`jaxsparse.ops.packed`) a key block's dK/dV visits the
query tiles of consecutive tokens whose union holds it; with
`Config(gpu_gathered_dkv=True)` it visits instead tiles of `64 // group`
tokens that selected it (`pallas_kernels.gpu.backward_dkv_gathered`). This
module builds those tiles on device, under jit, from the pattern's bits:

  1. each row's selected blocks (`routed.first_selected`) become (block,
     token) pairs, sorted by block and then token (`list_pairs`: one sort of
     int32 keys);
  2. a block's pairs fill `ceil(pairs / n)` tiles of n tokens, the last one
     padded with rows that see no key (limit -1);
  3. work items: each (bit head, 64-key tile) takes its block's tiles in runs
     of at most `ITEM_TILES`, so a block every token selects (NSA's initial
     block) is shared by several CTAs whose partial dK/dV are summed.

With `chunk` tokens > 0 a run also ends where its tiles' tokens pass into
the next chunk of `chunk` query tokens, and the items are ordered by (bit
head, chunk, key tile) instead of (bit head, key tile): the CTAs that run
together then hold tokens of one chunk, whose dQ rows (the reduce-adds of
`Config.gpu_gathered_dq`) and Q/dO rows are reused from L2 by the chunk's
other blocks, instead of each block sweeping the whole sequence.

Shapes are static bounds (pairs / n + blocks tiles; items: tiles / ITEM_TILES
plus one per block, or per block and chunk it can hold); the unused tail does
nothing.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsparse.ops import routed
from jaxsparse.selection import sorting

ITEM_TILES = 256  # gathered tiles per work item (CTA), at most
# The same where the gathered kernel also gives dQ (`packed.gathered_dq`): its items add
# dK/dV into float32 sums (no per-item partials to sum), and a long item (the initial block,
# which every token selects: 512 tiles in a 4k chunk) otherwise runs on alone at the end.
# NSA's step on the H100 (session 25, same runs): at 64k in 1k chunks 28.22 ms at 32 against
# 28.54 at 256 (call 4); at 128k in 4k chunks 81.71 against 83.31 ms (call 6).
DQ_ITEM_TILES = 32
KEY_TILE = 64  # keys per dK/dV work item
# Config.gpu_gathered_chunk's chunk from 64k query tokens (`packed.gathered_chunk`). NSA's
# step at 64k on an H200 (session 19, one run): 28.47 ms in chunks of 4,096 tokens, 28.75
# (2,048), 29.00 (8,192), 29.76 in block order. A chunk's dQ and Q/dO rows are 4 KB each
# per token and bit head: 32 MB at 4,096.
# On an H100 1k chunks were faster while items held up to 256 tiles (sessions 22-25: NSA's
# step at 64k about 0.5 ms faster); with items of at most `DQ_ITEM_TILES` 4k chunks are
# faster there too (session 25, call 9, same run: 27.91 against 28.69 ms with one Q/dO slot
# a warpgroup, 27.97 against 28.53 with two).
CHUNK_TOKENS = 4096


def item_tiles(dq: bool) -> int:
    """Gathered tiles per work item, at most: `DQ_ITEM_TILES` where the kernel gives dQ,
    else `ITEM_TILES` (read at call time, so that `bench/nsa_glue.py` can vary them)."""
    return DQ_ITEM_TILES if dq else ITEM_TILES


@dataclasses.dataclass(frozen=True, kw_only=True)
class Gathering:
    """How the bits of one call become gathered tiles (static under jit).

    group: query rows per token (a multiple of 8, at most 64).
    slots: selected blocks per row, at most (row_capacity plus the own block of
      causal selections).
    dq: the gathered kernel gives dQ too (`Config.gpu_gathered_dq`).
    chunk: query tokens per chunk of the items' order (`Config.gpu_gathered_chunk`);
      0: block order.
    """

    batch: int
    group: int
    col_block: int
    q_len: int
    kv_len: int
    q_offset: int
    causal: bool
    slots: int
    dq: bool = False
    item_tiles: int = ITEM_TILES
    chunk: int = 0

    @property
    def tokens(self) -> int:
        return KEY_TILE // self.group

    @property
    def num_chunks(self) -> int:
        return -(-self.q_len // self.chunk)

    def tiles(self, bits):
        """`GatheredTiles` of `bits` `[B or 1, Hx, T, C]`."""
        from pallas_kernels.gpu.backward_dkv_gathered import GatheredTiles

        bits = jnp.asarray(bits)
        bits = jnp.broadcast_to(bits, (self.batch,) + bits.shape[1:])
        b, hx, t, c = bits.shape
        f, n = b * hx, self.tokens
        slots = min(self.slots, c)
        pairs = t * slots
        tok, counts, pair_start = list_pairs(bits.reshape(f, t, c), slots)
        counts = counts.reshape(-1)  # pairs per (f, block)
        pair_start = pair_start + pairs * jnp.arange(f, dtype=jnp.int32)[:, None]
        pair_start = pair_start.reshape(-1)  # into the flattened pairs

        # Tiles: block (f, j) owns tiles tile_start .. tile_start + per_block.
        per_block = -(-counts // n)
        tile_start = _exclusive_cumsum(per_block)
        num_tiles = -(-f * pairs // n) + f * c
        owner = _owners(tile_start, num_tiles)
        pos = (jnp.arange(num_tiles, dtype=jnp.int32) - tile_start[owner])[:, None] * n
        pos = pos + jnp.arange(n, dtype=jnp.int32)[None]  # [N, n]: the tile's pairs in the block
        count = counts[owner][:, None]
        valid = pos < count
        at = pair_start[owner][:, None] + jnp.clip(pos, 0, jnp.maximum(count - 1, 0))
        tokens = jnp.take(tok.reshape(-1), at, mode="clip")
        limit = tokens + self.q_offset if self.causal else jnp.full_like(tokens, self.kv_len - 1)
        limits = jnp.where(valid, jnp.minimum(limit, self.kv_len - 1), -1)

        if self.chunk:
            items = self._chunked_items(tokens[:, 0], tile_start, per_block, owner, f, c)
        else:
            items = self._block_items(tile_start, per_block, num_tiles, f, c)
        return GatheredTiles(
            tokens=tokens.astype(jnp.int32),
            limits=limits.astype(jnp.int32),
            heads=(owner // c).astype(jnp.int32),
            items=items.astype(jnp.int32),
        )

    def _block_items(self, tile_start, per_block, num_tiles: int, f: int, c: int):
        """Items in (bit head, key tile) order: block (f, j)'s key tiles, each over its
        tiles in runs of item_tiles."""
        per = self.col_block // KEY_TILE
        runs = -(-per_block // self.item_tiles)
        item_start = _exclusive_cumsum(runs * per)
        num_items = per * (-(-num_tiles // self.item_tiles) + f * c)
        io = _owners(item_start, num_items)
        r = jnp.arange(num_items, dtype=jnp.int32) - item_start[io]
        nr = jnp.maximum(runs[io], 1)
        sub, run = r // nr, r % nr
        first = tile_start[io] + run * self.item_tiles
        end = jnp.minimum(first + self.item_tiles, tile_start[io] + per_block[io])
        kj = (io % c) * per + sub
        live = (r < runs[io] * per) & (kj * KEY_TILE < self.kv_len) & (end > first)
        return _stack_items(io // c, kj, first, end, live)

    def first_chunks(self, c: int) -> np.ndarray:
        """`[c]` int32 (static): the first chunk whose tokens may select block j (causal:
        the token at the block's start, less q_offset; else chunk 0)."""
        j = np.arange(c, dtype=np.int64)
        if not self.causal:
            return np.zeros(c, np.int32)
        first = np.clip(j * self.col_block - self.q_offset, 0, self.q_len - 1) // self.chunk
        return first.astype(np.int32)

    def max_chunked_items(self, num_tiles: int, f: int, c: int) -> int:
        """Static bound on `_chunked_items`' runs: one per (block, chunk it can hold),
        plus one per item_tiles tiles, and at most one per tile."""
        held = int((self.num_chunks - self.first_chunks(c)).sum())
        return max(1, min(num_tiles, f * held + num_tiles // self.item_tiles))

    def _chunked_items(self, first_tokens, tile_start, per_block, owner, f: int, c: int):
        """Items in (bit head, chunk, key tile) order.

        A run of a block's tiles ends at the block's end, where the tile's first
        token passes into the next chunk, or after item_tiles tiles. A tile's
        chunk is clamped to the first its block can hold (causal), so the bound
        holds whatever the bits.
        """
        per = self.col_block // KEY_TILE
        num_tiles = first_tokens.shape[0]
        i = jnp.arange(num_tiles, dtype=jnp.int32)
        total = tile_start[-1] + per_block[-1]
        chunk = jnp.maximum(
            first_tokens // self.chunk, jnp.asarray(self.first_chunks(c))[owner % c]
        )
        new_block = i == tile_start[owner]
        seg = new_block | (chunk != jnp.roll(chunk, 1))
        seg_start = lax.cummax(jnp.where(seg, i, 0))
        start = (i < total) & (seg | ((i - seg_start) % self.item_tiles == 0))
        m = self.max_chunked_items(num_tiles, f, c)
        slot = jnp.where(start, jnp.cumsum(start, dtype=jnp.int32) - 1, m)
        first = jnp.full((m + 1,), total, jnp.int32).at[slot].set(i, mode="drop")
        count = start.sum(dtype=jnp.int32)
        k = jnp.arange(m, dtype=jnp.int32)
        end = jnp.where(k + 1 < count, first[1:], total)
        first = first[:m]
        live = k < count
        at = jnp.minimum(first, num_tiles - 1)
        io, ch = owner[at], chunk[at]
        # (bit head, chunk) order; stable, so blocks stay ascending within a chunk.
        key = jnp.where(live, (io // c) * self.num_chunks + ch, jnp.iinfo(jnp.int32).max)
        _, order = lax.sort((key, k), num_keys=1, is_stable=True)
        io, first, end, live = io[order], first[order], end[order], live[order]
        # Each run once per key tile of its block.
        io, first, end, live = (jnp.repeat(x, per) for x in (io, first, end, live))
        kj = (io % c) * per + jnp.tile(jnp.arange(per, dtype=jnp.int32), m)
        live = live & (kj * KEY_TILE < self.kv_len) & (end > first)
        return _stack_items(io // c, kj, first, end, live)


def list_pairs(bits, slots: int):
    """Step 1: the (block, token) pairs of bits `[F, T, C]`, by block, then token.

    Returns `(tokens [F, T * slots], counts [F, C], starts [F, C])`: block j's
    tokens, ascending, are `tokens[f, starts[f, j]:][:counts[f, j]]`; the tail
    past a head's last pair is unused. Each row's first `slots` blocks
    (`routed.first_selected`), then one sort of `block * T + token` keys.
    """
    f, t, c = bits.shape
    pairs = t * slots
    cell = routed.first_selected(bits, slots).reshape(f, pairs)  # c: no block
    cell, tok = _sort_pairs(cell, t, c)
    starts = _block_starts(cell, c)  # [f, c + 1]
    return tok, starts[:, 1:] - starts[:, :-1], starts[:, :c]


def _sort_pairs(cell, t: int, c: int):
    """(block, token) pairs `[F, t * slots]` (pair r * slots + i is row r's i-th block),
    sorted by block, then token; no-block pairs (block c) last."""
    f, pairs = cell.shape
    tok = jnp.broadcast_to(jnp.arange(pairs, dtype=jnp.int32) // (pairs // t), (f, pairs))
    if (c + 1) * t <= sorting.INT32_MAX:  # one int32 key: a plain sort, no payload
        # Not stable: equal keys are equal pairs, and a stable sort costs XLA:GPU an iota
        # payload (`jnp.sort` compiled to a sort of (key, iota) pairs, session 15's HLO).
        # The F rows as one (`sorting.sort_rows`): XLA:GPU's own sort of two rows of 1M
        # took 0.28 ms of NSA's 64k step on the H100 (session 25's profile).
        key = sorting.sort_rows(cell * t + tok, (c + 1) * t)
        return key // t, key % t
    return lax.sort((cell, tok), dimension=1, num_keys=2)


def _block_starts(cell, c: int):
    """`[F, c + 1]`: where each block's run starts in the sorted pairs (the end for c).

    One write per run, at its first pair (a scatter-add of every pair into c
    counters serialises on the counters' atomics); a block with no pairs
    starts where the next run does.
    """
    f, pairs = cell.shape
    p = jnp.arange(pairs, dtype=jnp.int32)[None]
    first = jnp.concatenate([jnp.ones((f, 1), bool), cell[:, 1:] != cell[:, :-1]], axis=1)
    at = jnp.where(first, cell, c + 1)  # c + 1: dropped
    rows = jnp.broadcast_to(jnp.arange(f)[:, None], at.shape)
    starts = (
        jnp.full((f, c + 1), pairs, jnp.int32)
        .at[rows, at]
        .set(jnp.broadcast_to(p, at.shape), mode="drop")
    )
    return lax.cummin(starts, axis=1, reverse=True)


def _exclusive_cumsum(x, axis=0):
    return jnp.cumsum(x, axis=axis, dtype=jnp.int32) - x


def _owners(starts, size: int):
    """`[size]`: for each i, the last s with starts[s] <= i (starts ascending, starts[0] = 0)."""
    marks = jnp.zeros((size,), jnp.int32).at[starts].add(1, mode="drop")
    return jnp.cumsum(marks, dtype=jnp.int32) - 1


def _stack_items(f, kj, first, end, live):
    """`[I, 4]` int32 (f, kj, first, end); dead items (0, 0, 0, 0)."""
    cols = [jnp.where(live, x, 0) for x in (f, kj, first, end)]
    return jnp.stack(cols, axis=1).astype(jnp.int32)
