"""Per-token selections shared by a GQA group, on the GPU kernels query-major ("packed").

NSA selects key blocks per query *token* and shares the choice among the query
heads of a GQA group. Here those heads become consecutive rows of a query
tile: a tile of `block_q` rows holds `block_q // group` tokens of one bit
head, all reading the same key/value head. The tile visits the union of its
tokens' blocks; every list entry carries a word with one bit per token (the
kernels' row words), so a partial tile masks exactly the rows whose token did
not select the block. The forward gathers and merges nothing: q is
reordered once (`[B, T, H, D]` -> `[B, T*group, Hx, D]`) and the output once
back, and gradients come from the kernels' own backward passes.

Work is the union per tile, not the selected pairs: on the synthetic needle
inputs (`bench/llm_synthetic.py`, NSA's defaults) the union of 16 tokens'
blocks is 2.3x their selected blocks at 8k, 3.6x at 32k and 4.3x at 64k. The
forward and dQ kernels' warpgroups (8 tokens each at group 8) skip the
entries none of their tokens chose, and with `Config(gpu_gathered_dkv=True)`
(the default where the group allows) dK/dV walk tiles gathered from the
tokens that chose each key block instead (`jaxsparse.ops.gathered`): the
selected pairs exactly. The other route
for per-token selections, `jaxsparse.ops.routed`, does exactly the selected
pairs but gathers each pair's query row and merges the partial results in
XLA; it also serves selections that no group shares (MoBA's are per head).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxsparse.ops import call as call_lib
from jaxsparse.ops import gathered, routed
from jaxsparse.patterns import base
from jaxsparse.sparsity import device

MAX_TOKENS_PER_TILE = 32  # bits of a kernel row word
GATHERED_DQ_FROM_TOKENS = 65536  # Config(gpu_gathered_dq=None): gathered dQ from this length


def applies(call: call_lib.Call) -> bool:
    """Whether `run` handles this call on the GPU kernels.

    A per-token `TokenBlockMask` (`routed.routes`) whose bit heads each serve a
    group of query heads reading one key/value head, with the group a power of
    two that packs at most 32 tokens into a query tile; key blocks of a multiple
    of 64 keys; head dims the backward kernels take; no segment ids; and
    `Config.gpu_token_selection` not "routed".
    """
    p = call.pattern
    if not routed.routes(p) or call.has_segments:
        return False
    if call.config.gpu_token_selection == "routed":
        return False
    hx, h, kh = p.bits.shape[1], call.num_heads, call.num_kv_heads
    if hx % kh:  # a bit head's query heads must share one key/value head
        return False
    g = h // hx
    bq = _block_q(call.config)
    return (
        g > 1
        and g & (g - 1) == 0
        and bq % g == 0
        and bq // g <= MAX_TOKENS_PER_TILE
        and p.col_block % 64 == 0
        and call.head_dim + call.head_dim_v <= 256
    )


def run(call: call_lib.Call):
    """`(out [B, T, H, Dv], lse [B, H, T])` of a call `applies` accepts."""
    from jaxsparse.ops import pallas_gpu
    from pallas_kernels.gpu.backward_dkv_gathered import by_row, token_view

    p = call.pattern
    b, t, h, d = call.q.shape
    s = call.kv_len
    bits = jnp.asarray(p.bits)
    hx = bits.shape[1]
    bits = jnp.broadcast_to(bits, (b,) + bits.shape[1:])
    g = h // hx
    bq = _block_q(call.config)
    bk = _block_kv(call.config, p.col_block)
    n = bq // g  # tokens per query tile
    tb, nk = -(-t // n), -(-s // bk)
    tt, sp = tb * n, nk * bk

    sparsity, kv_words, q_words = tile_tables(
        bits, p, tokens_per_tile=n, block_kv=bk, q_len=t, kv_len=s, q_offset=call.q_offset
    )

    # Rows (token, head in group) of bit head x: q_p[b, tok * g + j, x] = q[b, tok, x * g + j].
    q = jnp.pad(call.q, ((0, 0), (0, tt - t), (0, 0), (0, 0)))
    q_p = by_row(token_view(q, g))
    k, v = (jnp.pad(x, ((0, 0), (0, sp - s), (0, 0), (0, 0))) for x in (call.k, call.v))
    rows = _PackedRows(group=g, q_offset=call.q_offset)
    tables = tuple(getattr(sparsity, name) for name in _TABLES)
    gathering = None
    if gathers(call):  # the backward's dK/dV over the tokens that selected each block
        dq = gathered_dq(call.config, t)
        gathering = gathered.Gathering(
            batch=b, group=g, col_block=p.col_block, q_len=t, kv_len=s,
            q_offset=call.q_offset, causal=p.causal,
            slots=p.row_capacity + (1 if p.causal else 0), dq=dq,
            chunk=gathered_chunk(call.config, t), item_tiles=gathered.item_tiles(dq),
        )  # fmt: skip
    out, lse = pallas_gpu.run_tables(
        call,
        q_p,
        k,
        v,
        tables,
        mask_fn=rows.mask_fn if p.causal else None,
        mask_factors=rows.mask_factors() if p.causal else None,
        q_offset=0,
        kv_len=s,
        block_q=bq,
        block_kv=bk,
        word_rows=g,
        arrays={"kv_words": kv_words, "q_words": q_words},
        gathering=gathering,
        token_group=g,
        heavy_first=False,  # block order: neighbouring tiles share key blocks (L2)
        dkv_list_splits=dkv_list_splits(tb),
    )
    out = out[:, :t]  # in the natural layout already (`token_group`)
    lse = lse.reshape(b, hx, tt, g)[:, :, :t].transpose(0, 1, 3, 2).reshape(b, h, t)
    return out, lse


def gathers(call: call_lib.Call) -> bool:
    """Whether the dK/dV of a call `applies` accepts runs over gathered tiles
    (`Config.gpu_gathered_dkv`, a group of 8 to 64 query heads in multiples of 8)."""
    g = call.num_heads // jnp.shape(call.pattern.bits)[1]
    return call.config.gpu_gathered_dkv and g % 8 == 0 and g <= gathered.KEY_TILE


def gathered_dq(config, q_len: int) -> bool:
    """Whether the gathered dK/dV kernel also gives dQ (`Config.gpu_gathered_dq`).

    None: from `GATHERED_DQ_FROM_TOKENS` query tokens. On an H200 (session 16,
    NSA's step, same runs) it was faster at 64k (29.77 against 30.46 ms) and
    128k (82.72 against 84.25 ms) and slower at 16k (5.54 against 5.41 ms),
    where the reduce-adds cost more than the dQ kernel's walk saves; lengths
    between 16k and 64k were not measured and keep the deterministic dQ kernel.
    """
    if config.gpu_gathered_dq is not None:
        return config.gpu_gathered_dq
    return q_len >= GATHERED_DQ_FROM_TOKENS


def gathered_chunk(config, q_len: int) -> int:
    """Query tokens per chunk of the gathered dK/dV's work items (`Config.gpu_gathered_chunk`;
    0: block order).

    None: `gathered.CHUNK_TOKENS` from `GATHERED_DQ_FROM_TOKENS` query tokens,
    block order below (measurements at `gathered.CHUNK_TOKENS`). On an H200
    (session 19, NSA's step, same runs): 28.48 against 29.66 ms at 64k, 79.70
    against 79.72 ms at 128k, and slower at 16k (5.51 against 5.38 ms), where
    the dQ kernel runs and the items' partial dK/dV, one slot per block and
    chunk it can hold, cost their segment sum.
    """
    if config.gpu_gathered_chunk is not None:
        return config.gpu_gathered_chunk
    if q_len < GATHERED_DQ_FROM_TOKENS:
        return 0
    return gathered.CHUNK_TOKENS


def dkv_list_splits(num_tiles: int) -> int:
    """CTAs sharing a key block's list of query tiles in the dK/dV kernel.

    A block every token selects (NSA's initial block) is in all `num_tiles`
    lists: one CTA would stream every tile's Q and dO through one SM. Splits
    bound such a list to about 512 tiles per CTA (at 64k, 4,096 tiles in 8:
    the packed dK/dV kernel went from 14.4 to 12.8 ms per NSA step on the
    H100), at most 8 splits (the partial results are 8 copies of dK and dV).
    """
    return max(1, min(8, -(-num_tiles // 512)))


def tile_tables(bits, pattern, *, tokens_per_tile, block_kv, q_len, kv_len, q_offset):
    """Block lists of the packed tiles and the row word of every list entry.

    Args:
      bits: bool `[B, Hx, T, C]`; pattern: its `TokenBlockMask` (col_block,
        causal, row_capacity).
      tokens_per_tile: n, tokens per query tile (block_q // group).
      block_kv: keys per kernel tile (divides col_block).

    Returns:
      `BlockSparsity` over tiles of n tokens (`block_q` is n: one row per
      token; the kernel's rows are n * group per tile) and key tiles of
      `block_kv`, with `Sb = ceil(S / block_kv)`; and int32 words laid out as its
      q-major and kv-major indices: bit i of an entry's word says token i of
      the query tile selected the key tile's block. A tile is FULL when all n
      tokens selected it, causality does not cut it and it holds no padding
      key; its words are then all ones.
    """
    n, bk = tokens_per_tile, block_kv
    tb, nk = -(-q_len // n), -(-kv_len // bk)
    words = _tile_words(bits, n=n, tb=tb, per=pattern.col_block // bk, nk=nk)  # [B, Hx, Tb, Nk]
    tile = jnp.arange(tb)[:, None]
    first_tok = q_offset + tile * n  # [Tb, 1]
    last_tok = q_offset + jnp.minimum((tile + 1) * n, q_len) - 1
    k_lo = jnp.arange(nk)[None, :] * bk  # [1, Nk]
    k_hi = jnp.minimum(k_lo + bk, kv_len) - 1
    if pattern.causal:  # key tiles after the tile's last token hold nothing it may see
        words = jnp.where((k_lo <= last_tok)[None, None], words, 0)
    every = jnp.asarray((1 << n) - 1, jnp.uint32).astype(jnp.int32)  # all n tokens' bits
    full = jnp.broadcast_to(k_hi - k_lo + 1 == bk, (tb, nk))  # a key tile with padding: partial
    if pattern.causal:
        full = full & (k_hi <= first_tok)
    full = (words == every) & full[None, None]
    codes = jnp.where(words != 0, jnp.where(full, base.FULL, base.PARTIAL), base.EMPTY)
    own = 1 if pattern.causal else 0
    per_tile = n * (pattern.row_capacity + own) * (pattern.col_block // bk)
    sparsity = device.from_block_codes(
        codes.astype(jnp.int8),
        block_q=n,
        block_kv=bk,
        q_len=tb * n,
        kv_len=nk * bk,
        q_offset=0,
        max_kv_blocks=max(1, min(nk, per_tile)),
    )
    kv_words = jnp.take_along_axis(words, sparsity.kv_indices, axis=-1)
    q_words = jnp.take_along_axis(jnp.swapaxes(words, -1, -2), sparsity.q_indices, axis=-1)
    return sparsity, kv_words, q_words


_TABLES = ("kv_indices", "kv_counts", "kv_full", "q_indices", "q_counts", "q_full")


def _block_q(config) -> int:
    return config.block_q or 128


def _block_kv(config, col_block: int) -> int:
    if config.block_kv in (64, 128) and col_block % config.block_kv == 0:
        return config.block_kv
    return 128 if col_block % 128 == 0 else 64


def _tile_words(bits, *, n: int, tb: int, per: int, nk: int):
    """int32 `[B, Hx, Tb, Nk]`: bit i of word (tile, key tile) = token i of the tile selected
    the key tile's block (`per` key tiles per block)."""
    b, hx, t, c = bits.shape
    bits = jnp.pad(bits, ((0, 0), (0, 0), (0, tb * n - t), (0, 0)))
    shifts = jnp.arange(n, dtype=jnp.uint32).reshape(1, 1, 1, n, 1)
    words = jnp.left_shift(bits.reshape(b, hx, tb, n, c).astype(jnp.uint32), shifts)
    words = words.sum(axis=3, dtype=jnp.uint32)  # distinct bits: the sum is their OR
    words = jnp.repeat(words, per, axis=-1)[..., :nk] if per > 1 else words[..., :nk]
    return words.astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class _PackedRows:
    """The kernels' causal mask over packed rows: row r is token `r // group` (+ q_offset)."""

    group: int
    q_offset: int

    def mask_fn(self, q_row, kv_pos, head):
        del head
        return kv_pos <= q_row // self.group + self.q_offset

    def mask_factors(self):
        return base.MaskFactors(rows=self._rows, cols=self._cols, combine=self._combine)

    def _rows(self, q_row):
        return (q_row // self.group + self.q_offset,)

    def _cols(self, kv_pos):
        return (kv_pos,)

    def _combine(self, rows, cols, head):
        del head
        return cols[0] <= rows[0]
