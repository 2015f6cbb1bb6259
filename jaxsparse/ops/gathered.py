"""Gathered query tiles for the dK/dV of per-token selections on the GPU kernels.

On the packed path (`jaxsparse.ops.packed`) a key block's dK/dV visits the
query tiles of consecutive tokens whose union holds it; with
`Config(gpu_gathered_dkv=True)` it visits instead tiles of `64 // group`
tokens that selected it (`pallas_kernels.gpu.backward_dkv_gathered`). This
module builds those tiles on device, under jit, from the pattern's bits:

  1. the selected (block, token) pairs are listed by block, then token,
     without a sort: each block's column of bits is packed into 32-token
     words, and a pair's place is its block's start plus the population
     counts of the column's earlier words and of the lower bits of its own
     word (`_pairs_by_block`);
  2. a block's pairs fill `ceil(pairs / n)` tiles of n tokens, the last one
     padded with rows that see no key (limit -1);
  3. work items: each (bit head, 64-key tile) takes its block's tiles in runs
     of at most `ITEM_TILES`, so a block every token selects (NSA's initial
     block) is shared by several CTAs whose partial dK/dV are summed.

Shapes are static bounds (pairs / n + blocks tiles, tiles / ITEM_TILES +
blocks items); the unused tail does nothing.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import lax

ITEM_TILES = 256  # gathered tiles per work item (CTA), at most
KEY_TILE = 64  # keys per dK/dV work item


@dataclasses.dataclass(frozen=True, kw_only=True)
class Gathering:
    """How the bits of one call become gathered tiles (static under jit).

    group: query rows per token (a multiple of 8, at most 64).
    slots: selected blocks per row, at most (row_capacity plus the own block of
      causal selections).
    dq: the gathered kernel gives dQ too (`Config.gpu_gathered_dq`).
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

    @property
    def tokens(self) -> int:
        return KEY_TILE // self.group

    def tiles(self, bits):
        """`GatheredTiles` of `bits` `[B or 1, Hx, T, C]`."""
        from pallas_kernels.gpu.backward_dkv_gathered import GatheredTiles

        bits = jnp.asarray(bits)
        bits = jnp.broadcast_to(bits, (self.batch,) + bits.shape[1:])
        b, hx, t, c = bits.shape
        f, n, per = b * hx, self.tokens, self.col_block // KEY_TILE
        pairs = t * min(self.slots, c)
        tok, counts, pair_start = _pairs_by_block(bits.reshape(f, t, c), pairs)
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

        # Items: block (f, j)'s key tiles, each over its tiles in runs of item_tiles.
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
        items = jnp.stack(
            [io // c, jnp.where(live, kj, 0), jnp.where(live, first, 0), jnp.where(live, end, 0)],
            axis=1,
        )
        return GatheredTiles(
            tokens=tokens.astype(jnp.int32),
            limits=limits.astype(jnp.int32),
            heads=(owner // c).astype(jnp.int32),
            items=items.astype(jnp.int32),
        )


def _pairs_by_block(bits, pairs: int):
    """The selected (block, token) pairs of `bits` `[F, T, C]`, by block and then token.

    Returns `(tokens [F, pairs], counts [F, C], starts [F, C])`: block j's
    tokens, ascending, are `tokens[f, starts[f, j] : starts[f, j] + counts[f, j]]`;
    the tail past the last pair is 0. No sort: a block's column of bits is
    packed into words of 32 tokens, and a pair's place is its block's start
    plus the population counts of the column's earlier words and of the bits
    below it in its own word. `pairs` bounds the pairs of one f (`T * slots`);
    selections with more (rows holding more blocks than the pattern's
    `row_capacity` promised) lose the pairs past it, as `first_selected` drops
    a row's blocks past `slots`.
    """
    f, t, c = bits.shape
    nw = -(-t // 32)
    bits = jnp.pad(bits, ((0, 0), (0, nw * 32 - t), (0, 0))).reshape(f, nw, 32, c)
    lane = jnp.arange(32, dtype=jnp.uint32)[None, None, :, None]
    words = jnp.left_shift(bits.astype(jnp.uint32), lane).sum(2, dtype=jnp.uint32)  # [F, W, C]
    pop = lax.population_count(words).astype(jnp.int32)
    counts = pop.sum(1, dtype=jnp.int32)  # [F, C]
    starts = _exclusive_cumsum(counts, axis=1)
    before = _exclusive_cumsum(pop, axis=1)  # [F, W, C]: the column's pairs in earlier words
    below = words[:, :, None] & (jnp.left_shift(jnp.uint32(1), lane) - jnp.uint32(1))
    place = (starts[:, None] + before)[:, :, None] + lax.population_count(below).astype(jnp.int32)
    keep = bits & (place < pairs)
    owner = pairs * jnp.arange(f, dtype=jnp.int32)[:, None, None, None]
    at = jnp.where(keep, place + owner, f * pairs)  # f * pairs: dropped
    token = jnp.broadcast_to(jnp.arange(nw * 32, dtype=jnp.int32).reshape(1, nw, 32, 1), at.shape)
    tokens = (
        jnp.zeros((f * pairs,), jnp.int32)
        .at[at.reshape(-1)]
        .set(token.reshape(-1), mode="drop", unique_indices=True)
    )
    return tokens.reshape(f, pairs), counts, starts


def _exclusive_cumsum(x, axis=0):
    return jnp.cumsum(x, axis=axis, dtype=jnp.int32) - x


def _owners(starts, size: int):
    """`[size]`: for each i, the last s with starts[s] <= i (starts ascending, starts[0] = 0)."""
    marks = jnp.zeros((size,), jnp.int32).at[starts].add(1, mode="drop")
    return jnp.cumsum(marks, dtype=jnp.int32) - 1
