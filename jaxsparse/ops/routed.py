"""Per-token key-block selections on tile kernels, run key-block-major ("routed").

MoBA and NSA select key blocks per query *token*. A query-tile kernel can
only visit the union of its rows' blocks and needs every row's bits inside
the tile. When a GQA group shares the selection (NSA), the GPU kernels do
that with the group's heads packed as tile rows (`jaxsparse.ops.packed`).
Otherwise (MoBA's per-head selections, the TPU kernels, or
`Config(gpu_token_selection="routed")`) the selection is regrouped the other
way round (MoBA's "experts", FSA's loop order), using nothing but what every
kernel already does well:

  1. own block (causal selections): each row's own key block, causally, is
     `ChunkedCausal(col_block)`: a static pattern. Rows whose own bit is off
     get lse = -inf, which removes them from the merge.
  2. the other selected blocks: every (row, selected block) pair becomes one
     query row; the pairs are sorted by block, and segment ids (pair -> its
     block; key -> the block it lies in) restrict each pair to its block's
     keys. Sorted pairs of one block fill whole query tiles, so nearly every
     visited tile is FULL and no mask math runs.
  3. the partial results are merged exactly by their lse (one softmax over
     the union of the disjoint key sets).

Work is proportional to the selected pairs: `T * row_capacity * col_block`
keys, not the union a tile would visit. Gradients: the kernels' own backward
passes (with the lse cotangent of the merge) and gathers whose transposes
are gathers too (no scatter-add, deterministic).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxsparse.methods import merge
from jaxsparse.ops import call as call_lib
from jaxsparse.patterns.chunked_causal import ChunkedCausal
from jaxsparse.patterns.dynamic.token_block_mask import TokenBlockMask
from jaxsparse.patterns.full import Full
from jaxsparse.selection import sorting
from jaxsparse.sparsity import block_sparsity


def routes(pattern) -> bool:
    """Whether the kernel backends run `pattern` here: a per-token `TokenBlockMask` with a
    row capacity (they then ignore a caller's `sparsity`: the tile lists are built here)."""
    return (
        isinstance(pattern, TokenBlockMask)
        and pattern.row_block == 1
        and pattern.row_capacity is not None
    )


def applies(call: call_lib.Call) -> bool:
    """Whether `run` handles this call: `routes(call.pattern)`, without segment ids."""
    return routes(call.pattern) and not call.has_segments


def run(call: call_lib.Call, implementation: str):
    """`(out [B, T, H, Dv], lse [B, H, T])` of a call `applies` accepts, via `implementation`."""
    from jaxsparse.ops import api  # the inner calls go through the public API

    p = call.pattern
    bits = jnp.asarray(p.bits)  # [B or 1, Hx, T, C]
    b, t, h = call.batch, call.q_len, call.num_heads
    bits = jnp.broadcast_to(bits, (b,) + bits.shape[1:])
    c = bits.shape[3]
    cb = p.col_block
    config = call.config
    tiles = _tiles(config, cb)
    if tiles is not None:  # key tiles inside one block: the own-block call's tiles too
        config = dataclasses.replace(config, block_kv=tiles[1])
    kw = dict(
        scale=call.scale,
        logits_soft_cap=call.logits_soft_cap,
        implementation=implementation,
        config=config,
        return_lse=True,
    )
    pos = call.q_offset + jnp.arange(t)
    own = pos // cb  # [T]
    cells = jnp.arange(c)
    hx, g = bits.shape[1], h // bits.shape[1]
    # Partial results as [B, Hx, T, n, g, Dv] and lse [B, Hx, T, n, g]: the routed
    # slots stay in the layout the pairs come back in (row-major, slot minor).
    outs, lses = [], []
    if p.causal:
        o_own, lse_own = api.attention(
            call.q, call.k, call.v, pattern=ChunkedCausal(cb), q_offset=call.q_offset, **kw
        )
        own_bit = jnp.take_along_axis(bits, jnp.clip(own, 0, c - 1)[None, None, :, None], axis=3)[
            ..., 0
        ]  # [B, Hx, T]
        own_bit = own_bit & (own < c)[None, None]
        # Bit head j serves query heads j*g .. j*g+g-1.
        lse_own = jnp.where(own_bit[:, :, None], lse_own.reshape(b, hx, g, t), -jnp.inf)
        dv = o_own.shape[-1]
        outs.append(o_own.reshape(b, t, hx, g, dv).transpose(0, 2, 1, 3, 4)[:, :, :, None])
        lses.append(lse_own.transpose(0, 1, 3, 2)[:, :, :, None])
        routed_bits = bits & (cells[None, :] < own[:, None])[None, None]
    else:
        routed_bits = bits
    slots = min(p.row_capacity, c)
    if slots:
        o_r, lse_r = _routed(call, routed_bits, slots, kw)
        outs.append(o_r)
        lses.append(lse_r)
    out, lse = merge.lse_merge_sets(outs, lses, 3)  # [B, Hx, T, g, Dv], [B, Hx, T, g]
    dv = out.shape[-1]
    out = out.transpose(0, 2, 1, 3, 4).reshape(b, t, h, dv)
    return out, lse.transpose(0, 1, 3, 2).reshape(b, h, t)


def _routed(call, bits, slots, kw):
    """`(out [B, Hx, T, slots, g, Dv], lse [B, Hx, T, slots, g])` of the (row, selected
    block) pairs, `slots` per row."""
    from jaxsparse.ops import api

    b, t, h, d = call.q.shape
    s, dv = call.kv_len, call.head_dim_v
    hx, c = bits.shape[1], bits.shape[3]
    g, cb, f, n = h // hx, call.pattern.col_block, b * hx, t * slots
    # The first `slots` selected blocks of each row (lowest index first); empty slots -> c.
    cell = first_selected(bits, slots).reshape(f, n)  # pair (row r, slot j) at r * slots + j
    order = sorting.argsort_rows(cell, c + 1)
    iota = jnp.broadcast_to(jnp.arange(n, dtype=order.dtype), (f, n))
    inverse = jnp.zeros_like(order).at[jnp.arange(f)[:, None], order].set(iota)
    sorted_cell = jnp.take_along_axis(cell, order, axis=1)
    q_ids = jnp.where(sorted_cell < c, sorted_cell, -1).astype(jnp.int32)
    kv_ids = jnp.broadcast_to((jnp.arange(s, dtype=jnp.int32) // cb)[None], (f, s))
    # Queries: fold bit heads into the batch, then one row per pair in block order.
    q_f = call.q.reshape(b, t, hx, g, d).transpose(0, 2, 1, 3, 4).reshape(f, t, g, d)
    q_r = _gather_rows(q_f, order, inverse, slots)
    k_f, v_f = (_fold_kv(x, hx) for x in (call.k, call.v))
    tiles = _tiles(kw["config"], cb)
    sparsity = None if tiles is None else _pair_sparsity(sorted_cell, c, cb, s, *tiles)
    o, lse = api.attention(
        q_r,
        k_f,
        v_f,
        pattern=Full(),
        sparsity=sparsity,
        segment_ids=(q_ids, kv_ids),
        q_offset=0,
        **kw,
    )
    # Back to (row, slot) order: o [B*Hx, N, g, Dv] -> [B, Hx, T, slots, g, Dv].
    o = _permute(o, inverse, order, axis=1).reshape(b, hx, t, slots, g, dv)
    # lse [B*Hx, g, N] is permuted with the pair axis leading, as the outputs: each
    # gathered (and, backward, scattered back) element is a row of g values.
    lse = _permute(jnp.moveaxis(lse, 1, 2), inverse, order, axis=1).reshape(b, hx, t, slots, g)
    return o, lse


def _tiles(config, col_block: int):
    """Tiles `(block_q, block_kv)` for closed-form pair tables, or None (key tiles must
    divide the block; then the generic segment-id metadata is used)."""
    bq = config.block_q or 128
    if config.block_kv is not None:
        bk = config.block_kv
    else:
        bk = next((x for x in (128, 64, 32, 16) if col_block % x == 0), None)
    if bk is None or col_block % bk:
        return None
    return bq, bk


def _pair_sparsity(sorted_cell, c, col_block, kv_len, block_q, block_kv):
    """Tile lists of the sorted pairs, in closed form (no dense tile codes, no sort).

    A query tile holds pairs of the blocks `lo..hi` (ascending ids), so it visits
    their key tiles, a contiguous range; it is FULL when the tile holds one block
    only. A key tile of block `j` is used by the query tiles holding j's pairs,
    also a contiguous range (`searchsorted`). A tile whose range passes over a
    block it holds no pairs of lists that block's key tiles but is not in their
    key-major lists: it contributes nothing there (segment test), in either pass.
    """
    f, n = sorted_cell.shape
    tb, sb = -(-n // block_q), -(-kv_len // block_kv)
    per = col_block // block_kv  # key tiles per block
    cells = jnp.pad(sorted_cell, ((0, 0), (0, tb * block_q - n)), constant_values=c)
    cells = cells.reshape(f, tb, block_q)
    lo = cells[..., 0]
    hi = jnp.where(cells < c, cells, -1).max(-1)
    has = lo < c
    one_block = (lo == hi) & (cells[..., -1] < c)  # also: no empty or padding rows
    kv_lo = jnp.minimum(lo * per, sb - 1)
    kv_hi = jnp.minimum((hi + 1) * per, sb) - 1
    kv_counts = jnp.where(has, kv_hi - kv_lo + 1, 0).astype(jnp.int32)
    e = jnp.arange(sb, dtype=jnp.int32)[None, None]
    kv_idx = jnp.where(has[..., None], jnp.minimum(kv_lo[..., None] + e, kv_hi[..., None]), 0)
    padded_last = kv_len % block_kv != 0
    kv_tile_full = jnp.ones((sb,), bool).at[-1].set(not padded_last)
    kv_full = one_block[..., None] & (e < kv_counts[..., None]) & kv_tile_full[kv_idx]
    # Key-major: key tile j (block j // per) <- query tiles of that block's pairs.
    # Pairs of block j sit at [start_j, stop_j) of the sorted list: a histogram and its
    # cumulative sum (jnp.searchsorted's scan is a loop of small kernels on GPUs).
    block_of = jnp.arange(sb, dtype=jnp.int32) // per
    counts = jnp.zeros((f, c + 1), jnp.int32).at[jnp.arange(f)[:, None], sorted_cell].add(1)
    ends = jnp.cumsum(counts, axis=1)
    stop = ends[:, block_of]
    start = stop - counts[:, block_of]
    q_first, q_last = start // block_q, (stop - 1) // block_q
    q_counts = jnp.where(stop > start, q_last - q_first + 1, 0).astype(jnp.int32)
    eq = jnp.arange(tb, dtype=jnp.int32)[None, None]
    q_idx = jnp.where(
        (stop > start)[..., None], jnp.minimum(q_first[..., None] + eq, q_last[..., None]), 0
    )
    q_full = (
        jnp.take_along_axis(one_block, q_idx.reshape(f, -1), axis=1).reshape(q_idx.shape)
        & (eq < q_counts[..., None])
        & kv_tile_full[None, :, None]
    )
    return block_sparsity.BlockSparsity(
        kv_indices=kv_idx.astype(jnp.int32)[:, None],
        kv_counts=kv_counts[:, None],
        kv_full=kv_full[:, None],
        q_indices=q_idx.astype(jnp.int32)[:, None],
        q_counts=q_counts[:, None],
        q_full=q_full[:, None],
        block_q=block_q,
        block_kv=block_kv,
        q_len=n,
        kv_len=kv_len,
        q_offset=0,
        segment_exact=True,
    )


def first_selected(bits, slots):
    """Indices `[B, Hx, T, slots]` of the first `slots` set bits per row (c where fewer).

    A row's bits are packed into 32-bit words. The r-th set bit lies in the
    word whose running population count first passes r, and within that word
    it is found by a binary search over population counts of halves (5 steps
    for 32 bits): all slots at once, no sort and no loop over the slots.
    Session 25's profile of NSA's 64k step (H100) had the form before it,
    which took the lowest set bit `slots` times, at about 0.4 ms in 16
    dependent passes over the words (`bench/gathered_tiles_gpu.py`'s
    `by_passes`); that form had replaced a `top_k` over the bits' ranks (1.06
    against 0.46 ms on an H200).
    """
    c = bits.shape[-1]
    words = _bit_words(bits)  # [..., nw]
    nw = words.shape[-1]
    counts = lax.population_count(words).astype(jnp.int32)
    upto = jnp.cumsum(counts, axis=-1, dtype=jnp.int32)  # set bits in words 0..w
    before = upto - counts  # set bits in the words before w
    r = jnp.arange(slots, dtype=jnp.int32).reshape((1,) * (words.ndim - 1) + (slots,))
    # The word of the r-th set bit: how many words end with at most r set bits.
    w = (upto[..., None, :] <= r[..., None]).sum(-1, dtype=jnp.int32)  # [..., slots]; nw: none
    at = jnp.minimum(w, nw - 1)
    word = jnp.take_along_axis(words, at, axis=-1)
    n = r - jnp.take_along_axis(before, at, axis=-1)  # which set bit of its word
    pos = jnp.zeros_like(n)
    for width in (16, 8, 4, 2, 1):  # is the n-th set bit in the low half of the window?
        low = lax.population_count(word & jnp.uint32((1 << width) - 1)).astype(jnp.int32)
        high = n >= low
        n = jnp.where(high, n - low, n)
        word = jnp.where(high, word >> jnp.uint32(width), word)
        pos = pos + jnp.where(high, width, 0)
    return jnp.where(w < nw, at * 32 + pos, c).astype(jnp.int32)


def _bit_words(bits):
    """bool `[..., C]` as uint32 words `[..., ceil(C / 32)]`: bit i of word w is entry 32w + i."""
    *lead, c = bits.shape
    nw = -(-c // 32)
    bits = jnp.pad(bits, [(0, 0)] * len(lead) + [(0, nw * 32 - c)])
    shifts = jnp.arange(32, dtype=jnp.uint32).reshape((1,) * (len(lead) + 1) + (32,))
    words = jnp.left_shift(bits.reshape(*lead, nw, 32).astype(jnp.uint32), shifts)
    return words.sum(-1, dtype=jnp.uint32)  # distinct bits: the sum is their OR


def _fold_kv(x, hx):
    """K or V `[B, S, K, D]` as `[B*Hx, S, K', D]`: the key heads each bit head's queries use."""
    b, s, kh, d = x.shape
    if hx == 1:
        return x
    if hx <= kh:
        return x.reshape(b, s, hx, kh // hx, d).transpose(0, 2, 1, 3, 4).reshape(b * hx, s, -1, d)
    x = jnp.repeat(x, hx // kh, axis=2)  # [B, S, Hx, D]
    return x.transpose(0, 2, 1, 3).reshape(b * hx, s, 1, d)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _gather_rows(x, order, inverse, slots):
    """`x [N', T, ...]` -> `[N', T*slots, ...]`: pair `order[i]` (row order[i] // slots)."""
    return jnp.take_along_axis(x, _expand(order // slots, x.ndim), axis=1)


def _gather_rows_fwd(x, order, inverse, slots):
    return _gather_rows(x, order, inverse, slots), (order, inverse)


def _gather_rows_bwd(slots, res, ct):
    order, inverse = res
    ct = jnp.take_along_axis(ct, _expand(inverse, ct.ndim), axis=1)  # (row, slot) order
    ct = ct.reshape(ct.shape[:1] + (-1, slots) + ct.shape[2:]).sum(2)
    return ct, None, None


_gather_rows.defvjp(_gather_rows_fwd, _gather_rows_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _permute(x, perm, inverse, axis):
    """`x` reordered along `axis` by a traced permutation; its transpose is the inverse gather."""
    return jnp.take_along_axis(x, _expand(perm, x.ndim, axis), axis=axis)


def _permute_fwd(x, perm, inverse, axis):
    return _permute(x, perm, inverse, axis), (perm, inverse)


def _permute_bwd(axis, res, ct):
    perm, inverse = res
    return jnp.take_along_axis(ct, _expand(inverse, ct.ndim, axis), axis=axis), None, None


_permute.defvjp(_permute_fwd, _permute_bwd)


def _expand(index, ndim, axis=1):
    """`[N', L]` indices shaped for `take_along_axis` on an `ndim` array along `axis`."""
    shape = [index.shape[0]] + [1] * (ndim - 1)
    shape[axis] = index.shape[1]
    return index.reshape(shape)
