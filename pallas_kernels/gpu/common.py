"""Shared pieces of the Mosaic GPU block-sparse attention kernels.

Shapes (letters as in the rest of the project):
  q [B, Tp, H, D], k [B, Sp, K, D], v [B, Sp, K, Dv]; Tb = Tp // block_q,
  Sb = Sp // block_kv; tables carry leading [Bx, Hx] with Bx in {1, B} and
  Hx in {1, H}.

This module holds the static configuration, input validation (unsupported but
valid inputs raise NotImplementedError so that callers can fall back), table
packing, and the in-tile helpers every kernel uses: mask evaluation in the
WGMMA register layout and the "register-LHS wgmma" idiom with its
interpret-mode replacement.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)

WG_ROWS = 64  # rows of a wgmma tile owned by one consumer warpgroup
MAX_SMEM_BYTES = 227 * 1024
WGMMA = plgpu.Layout.WGMMA
WGMMA_ROW = plgpu.Layout.WGMMA.reduce(1)  # one value per tile row
WGMMA_COL = plgpu.Layout.WGMMA.reduce(0)  # one value per tile column

MaskFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttentionStatics:
    """Everything about one call that is static under jit (hashable).

    Attributes:
      mask_factors: None or mask_fn split into rows(q_pos) / cols(kv_pos) /
        combine(rows, cols, head), evaluated per tile row / column (cheaper).
      mask_fn: None or mask_fn(q_pos, kv_pos, head) -> bool array; applied on
        partial tiles only.
      q_offset: position of query row 0 (q_pos = q_offset + row).
      kv_len: keys at positions >= kv_len are padding (masked in partial tiles).
      kv_padded: the key arrays hold padding (kv_len < their length); when
        False partial tiles skip the key-bound test.
      scale: logit scale.
      logits_soft_cap: None or cap (s = cap * tanh(s / cap)).
      has_segments: segment ids are given.
      segments_on_full_tiles: apply the segment mask on full tiles too (True:
        the tables need not know about segments; False: the caller marks every
        tile that mixes segments partial).
      interpret: None on GPU, else plgpu.InterpretGPUParams.
      word_rows: 0, or the query rows per bit of the list entries' row words:
        with words, query row r (counted from row 0, q_offset excluded) of a
        partial tile attends the entry's keys only if bit
        `(r // word_rows) % word_bits` of the entry's word is set (per-token
        selections with the query heads of a GQA group packed as rows).
      word_bits: bits used per word, block_q // word_rows.
      segments_le: the segment test is `kv id <= q id` instead of `==` (ids
        are positions: gathered keys that remember where they came from).
      diag_pads: None, or the bit offsets of the diagonal bitmaps (see
        `Bitmaps`): (tiles with query rows: forward and dQ; tiles with key
        rows: dK/dV).
      keys_mode: how the key bitmap combines with the diagonal one in partial
        tiles: "or" (attend kept diagonals and kept keys) or "exclude"
        (kept diagonals minus the marked keys).
    """

    mask_fn: MaskFn | None
    mask_factors: Any
    q_offset: int
    kv_len: int
    kv_padded: bool
    scale: float
    logits_soft_cap: float | None
    has_segments: bool
    segments_on_full_tiles: bool
    interpret: Any
    word_rows: int = 0
    word_bits: int = 0
    segments_le: bool = False
    diag_pads: tuple[int, int] | None = None
    keys_mode: str = "or"

    @property
    def regs_lhs(self) -> bool:
        """Use wgmma with a register LHS (GPU); interpret mode stages via SMEM."""
        return self.interpret is None

    @property
    def logit_mult(self) -> float:
        """Multiplier from the 'raw' tile value to log2-domain logits.

        Without a soft cap raw = q.k and s * log2(e) = raw * scale * log2(e).
        With a cap raw = tanh(q.k * scale / cap) and s * log2(e) = raw * cap *
        log2(e).
        """
        if self.logits_soft_cap is None:
            return self.scale * LOG2E
        return self.logits_soft_cap * LOG2E


def check_dtypes_and_dims(q, k, v, *, what: str = "block_sparse_attention"):
    """Raises NotImplementedError for inputs valid in general but not here."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"{what}: expected q [B, T, H, D], k [B, S, K, D], v [B, S, K, Dv];"
            f" got {q.shape=}, {k.shape=}, {v.shape=}"
        )
    dt = jnp.dtype(q.dtype)
    if dt not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise NotImplementedError(
            f"{what}: Mosaic GPU kernels support bfloat16 and float16 only, got {dt}"
        )
    if jnp.dtype(k.dtype) != dt or jnp.dtype(v.dtype) != dt:
        raise NotImplementedError(
            f"{what}: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    B, _, H, D = q.shape
    Bk, S, K, Dk = k.shape
    if Bk != B or Dk != D or v.shape[:3] != (B, S, K):
        raise ValueError(f"{what}: inconsistent shapes {q.shape=}, {k.shape=}, {v.shape=}")
    if H % K:
        raise ValueError(f"{what}: query heads {H=} must be a multiple of {K=}")
    Dv = v.shape[-1]
    for name, d in (("D", D), ("Dv", Dv)):
        if d % 64 or d > 256:
            raise NotImplementedError(
                f"{what}: head dim {name}={d} must be a multiple of 64 and <= 256"
                " for the Mosaic GPU kernels (wgmma tiles and TMA boxes)"
            )


def check_blocks(block_q: int, block_kv: int, block_kv_compute: int):
    if block_q not in (64, 128):
        raise NotImplementedError(
            f"{block_q=} must be 64 or 128 (one or two consumer warpgroups of 64 query rows)"
        )
    if block_kv % 64 or block_kv <= 0:
        raise NotImplementedError(f"{block_kv=} must be a positive multiple of 64")
    if block_kv_compute not in (64, 128) or block_kv % block_kv_compute:
        raise NotImplementedError(f"{block_kv_compute=} must be 64 or 128 and divide {block_kv=}")


def check_tables(indices, counts, full, *, B, H, nb, name):
    """Validates table shapes: [Bx, Hx, nb, Kmax], [Bx, Hx, nb], [Bx, Hx, nb, Kmax]."""
    if indices.ndim != 4 or counts.ndim != 3 or full.ndim != 4:
        raise ValueError(
            f"{name} tables must be [Bx, Hx, nb, Kmax], [Bx, Hx, nb],"
            f" [Bx, Hx, nb, Kmax]; got {indices.shape}, {counts.shape},"
            f" {full.shape}"
        )
    Bx, Hx, n, kmax = indices.shape
    if Bx not in (1, B) or Hx not in (1, H):
        raise ValueError(f"{name} tables: {Bx=} must be 1 or {B}, {Hx=} 1 or {H}")
    if n != nb:
        raise ValueError(f"{name} tables cover {n} blocks, expected {nb}")
    if counts.shape != (Bx, Hx, n) or full.shape != indices.shape:
        raise ValueError(f"{name} tables disagree: {indices.shape=} {counts.shape=} {full.shape=}")
    if kmax < 1:
        raise ValueError(f"{name} tables need Kmax >= 1, got {kmax}")


def pack_codes(indices, full):
    """One int32 per list entry: block index * 2 + (1 if the tile is partial)."""
    partial = 1 - full.astype(jnp.int32)
    return indices.astype(jnp.int32) * 2 + partial


def heavy_first_order(counts):
    """Processing order of the row blocks, heaviest first (stable).

    counts [Bx, Hx, nb] -> int32 [nb]. CTAs are launched in grid order, so giving
    the longest lists to the first CTAs shortens the tail (tokamax reverses the
    q-tile order for causal masks for the same reason).
    """
    total = counts.astype(jnp.int32).sum(axis=(0, 1))
    return jnp.argsort(-total, stable=True).astype(jnp.int32)


def smem_transforms(dtype):
    """Tiling + 128-byte swizzle for 16-bit tiles whose last dim is k*64."""
    del dtype
    return (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))


def tiled_smem(shape, dtype):
    return plgpu.SMEM(shape, dtype, transforms=smem_transforms(dtype))


def nbytes(shape, dtype) -> int:
    return math.prod(shape) * jnp.dtype(dtype).itemsize


def iota(shape, dim):
    return plgpu.broadcasted_iota(jnp.int32, shape, dim, layout=WGMMA)


def bcast_rows(x, shape):
    return lax.broadcast_in_dim(x, shape, [0])


def bcast_cols(x, shape):
    return lax.broadcast_in_dim(x, shape, [1])


def tile_valid(
    st: AttentionStatics,
    shape,
    *,
    q_start,
    kv_start,
    head,
    q_dim: int,
    with_mask_fn: bool,
    q_seg=None,
    kv_seg=None,
    word=None,
    bitmaps=None,
):
    """Boolean [rows, cols] validity of a tile in the WGMMA layout, or None.

    q_dim says which tile axis runs over queries (0 in the forward and dQ
    kernels, 1 in the transposed dK/dV kernel). q_start/kv_start are absolute
    query/key positions of the tile's first row/column (q_offset included).
    word: None or the list entry's int32 row word (see AttentionStatics).
    bitmaps: None or the call's `Bitmaps` (partial tiles only).
    """
    kv_dim = 1 - q_dim
    valid = None

    def conj(a, b):
        return b if a is None else a & b

    if with_mask_fn:
        kv_pos = None
        if st.mask_factors is not None:
            valid = _factored_mask(st.mask_factors, shape, q_start, kv_start, head, q_dim)
        elif st.mask_fn is not None:
            kv_pos = iota(shape, kv_dim) + kv_start
            valid = st.mask_fn(iota(shape, q_dim) + q_start, kv_pos, head)
        # Key padding; also when the mask did not come out tile-shaped (e.g. a
        # per-head constant): the bound broadcasts it.
        if st.kv_padded or valid is None or jnp.shape(valid) != tuple(shape):
            if kv_pos is None:
                kv_pos = iota(shape, kv_dim) + kv_start
            valid = conj(valid, kv_pos < st.kv_len)
    if q_seg is not None:
        qs = lax.broadcast_in_dim(q_seg, shape, [q_dim])
        ks = lax.broadcast_in_dim(kv_seg, shape, [kv_dim])
        valid = conj(valid, ks <= qs if st.segments_le else qs == ks)
    if word is not None:
        valid = conj(valid, _word_rows(st, shape, q_start - st.q_offset, q_dim, word))
    if bitmaps is not None:
        valid = conj(valid, _bitmap_mask(st, bitmaps, shape, q_start, kv_start, q_dim))
    return valid


@dataclasses.dataclass(frozen=True)
class Bitmaps:
    """Per (batch, head) bitmaps read in partial tiles: GMEM refs of int32 words.

    diag: None or `[Bx, Hx, W]`, the kept diagonals: with the tile's rows on
      axis 0 and columns on axis 1, element (row, col) reads bit
      `col - row + pad` (positions; `pad` = `AttentionStatics.diag_pads[q_dim]`),
      bit i of word i // 32 at i % 32. So the forward and dQ kernels take one
      indexed by `k - q` and the dK/dV kernel one indexed by `q - k`.
    keys: None or `[Bx, Hx, Sk]`, bit j: key j is marked.
    b, h: the batch and query head of the tile (Bx, Hx of 1 broadcast).
    """

    diag: Any
    keys: Any
    b: Any
    h: Any

    def word(self, ref, j):
        bx = self.b if ref.shape[0] > 1 else 0
        hx = self.h if ref.shape[1] > 1 else 0
        return ref[bx, hx, j]


def bitmaps_or_none(diag_ref, keys_ref, b, h):
    if diag_ref is None and keys_ref is None:
        return None
    return Bitmaps(diag_ref, keys_ref, b, h)


def _pick(words, idx):
    """`words[idx]` for a vector of small indices (a select chain over scalars)."""
    out = jnp.broadcast_to(words[0], idx.shape)
    for m in range(1, len(words)):
        out = jnp.where(idx == m, words[m], out)
    return out


def _bit(word, pos, value=1):
    return (lax.shift_right_logical(word, pos) & 1) == value


def _bitmap_mask(st: AttentionStatics, bm: Bitmaps, shape, q_start, kv_start, q_dim):
    """[rows, cols] bool of the diagonal and key bitmaps (see `Bitmaps`)."""
    out = None
    if bm.diag is not None:
        row_start, col_start = (q_start, kv_start) if q_dim == 0 else (kv_start, q_start)
        out = _diag_mask(bm, shape, col_start - row_start + st.diag_pads[q_dim])
    if bm.keys is not None:
        # The bit's value is compared (no boolean not: Mosaic GPU cannot convert the
        # 2-element i1 vectors it would make).
        if st.keys_mode == "or":
            marked = _key_mask(bm, shape, kv_start, 1 - q_dim, value=1)
            out = marked if out is None else out | marked
        else:
            kept = _key_mask(bm, shape, kv_start, 1 - q_dim, value=0)
            out = kept if out is None else out & kept
    return out


def _diag_mask(bm: Bitmaps, shape, base):
    """Bit `base + col - row` of the diagonal bitmap for every tile element.

    Row r's bits over the columns are one run of the bitmap, starting at
    `base - r`: each row assembles its run (`cols // 32` words, funnel shifts
    of the scalar words covering the tile) on the row vector, two rows per
    thread, and each element then picks its bit out of its row's run.
    """
    rows, cols = shape
    n_words = (rows + cols + 29) // 32 + 1  # words spanning base - (rows - 1) .. base + cols - 1
    w0 = lax.div(base - (rows - 1), 32)  # base - (rows - 1) >= 0: the pads make sure
    words = [bm.word(bm.diag, w0 + j) for j in range(n_words)]
    r = plgpu.broadcasted_iota(jnp.int32, (rows,), 0, layout=WGMMA_ROW)
    rel = base - w0 * 32 - r  # row r's first bit, counted from word w0
    wi, sh = lax.shift_right_logical(rel, 5), rel & 31
    runs = []
    for j in range(cols // 32):
        lo, hi = _pick(words, wi + j), _pick(words, wi + j + 1)
        # (hi << (32 - sh)) without a shift by 32 when sh == 0.
        runs.append(
            lax.shift_right_logical(lo, sh) | lax.shift_left(lax.shift_left(hi, 31 - sh), 1)
        )
    c = iota(shape, 1)
    cw = lax.shift_right_logical(c, 5)
    run = bcast_rows(runs[0], shape)
    for j in range(1, len(runs)):
        run = jnp.where(cw == j, bcast_rows(runs[j], shape), run)
    return _bit(run, c & 31)


def _key_mask(bm: Bitmaps, shape, kv_start, kv_dim, *, value):
    """Whether bit `key` of the key bitmap is `value`: on the key edge vector, broadcast."""
    n = shape[kv_dim]
    w0 = lax.div(kv_start, 32)  # tiles start at multiples of 64 keys
    words = [bm.word(bm.keys, w0 + j) for j in range(n // 32)]
    edge = (WGMMA_ROW, WGMMA_COL)[kv_dim]
    kv = plgpu.broadcasted_iota(jnp.int32, (n,), 0, layout=edge)
    on = _bit(_pick(words, lax.shift_right_logical(kv, 5)), kv & 31, value)
    return lax.broadcast_in_dim(on, shape, [kv_dim])


def _word_rows(st: AttentionStatics, shape, row_start, q_dim, word):
    """[rows, cols] bool: the tile's query rows whose bit in `word` is set.

    Computed on the row vector (two rows per thread in the WGMMA layout):
    a shift and a mask per row, one select per element.
    """
    edge = (WGMMA_ROW, WGMMA_COL)[q_dim]
    rows = plgpu.broadcasted_iota(jnp.int32, (shape[q_dim],), 0, layout=edge) + row_start
    bit = lax.rem(lax.div(rows, st.word_rows), st.word_bits)
    on = lax.shift_right_logical(jnp.broadcast_to(word, bit.shape), bit) & 1
    return lax.broadcast_in_dim(on == 1, shape, [q_dim])


def warpgroup_entry_test(st: AttentionStatics, wg, nwg: int):
    """None without row words; else `test(partial, word)`: whether a list entry holds anything
    for consumer warpgroup `wg`'s 64 rows of a `nwg * 64`-row tile (a full entry, or a
    partial one whose word sets a bit of one of the warpgroup's tokens)."""
    if not st.word_rows:
        return None

    def bits(w):
        lo, hi = w * WG_ROWS // st.word_rows, ((w + 1) * WG_ROWS - 1) // st.word_rows
        mask = ((1 << (hi - lo + 1)) - 1) << lo
        return int(np.uint32(mask).view(np.int32))  # bit 31 as a negative int32

    if nwg == 1:
        mine = jnp.int32(bits(0))
    else:
        mine = jnp.where(wg == 0, jnp.int32(bits(0)), jnp.int32(bits(1)))

    def test(partial, word):
        return jnp.logical_not(partial) | ((word & mine) != 0)

    return test


def entry_word(word_ref, row, s, *, subs: int):
    """The row word of pipeline step s's list entry (word_ref laid out as the codes)."""
    j = s if subs == 1 else lax.div(s, subs)
    return word_ref[(*row, j)]


def _factored_mask(factors, shape, q_start, kv_start, head, q_dim):
    """combine(rows(q), cols(k)) with rows/cols computed on the tile's edge vectors.

    In the WGMMA layout a thread holds elements of only two rows, so per-row
    terms cost two evaluations per thread instead of one per element.
    """
    kv_dim = 1 - q_dim
    edge = (WGMMA_ROW, WGMMA_COL)
    q_vec = plgpu.broadcasted_iota(jnp.int32, (shape[q_dim],), 0, layout=edge[q_dim]) + q_start
    kv_vec = plgpu.broadcasted_iota(jnp.int32, (shape[kv_dim],), 0, layout=edge[kv_dim])
    kv_vec = kv_vec + kv_start

    def spread(tree, dim):  # scalar terms (e.g. grid sizes) stay scalars
        return jax.tree.map(
            lambda x: lax.broadcast_in_dim(x, shape, [dim]) if jnp.ndim(x) else x, tree
        )

    rows = spread(factors.rows(q_vec), q_dim)
    cols = spread(factors.cols(kv_vec), kv_dim)
    return factors.combine(rows, cols, head)


def mma_regs_lhs(acc, lhs, rhs_smem, stage_smem, *, during=None):
    """acc + lhs @ rhs with lhs in registers (the FA3 P@V idiom).

    On the GPU this is one wgmma reading its LHS from registers inside
    pl.run_state. GPU interpret mode cannot run pl.run_state or a register LHS,
    so when stage_smem is given the LHS is written to SMEM first and the
    product is added to acc outside the accumulator. `during` (optional) runs
    while the wgmma is in flight.
    """
    if stage_smem is None:

        def body(acc_ref):
            plgpu.wgmma(acc_ref, lhs, rhs_smem)
            if during is not None:
                during()

        return pl.run_state(body)(plgpu.ACC.init(acc))

    stage_smem[...] = lhs
    plgpu.commit_smem()

    def body2(acc_ref):
        plgpu.wgmma(acc_ref, stage_smem, rhs_smem)
        if during is not None:
            during()
        return acc_ref[...]

    return acc + pl.run_scoped(body2, plgpu.ACC(acc.shape, jnp.float32))


def mma_smem(lhs_smem, rhs_smem, shape, *, during=None):
    """lhs_smem @ rhs_smem into a fresh f32 accumulator; returns registers.

    With `during`, returns `(registers, during())`: `during` is traced between
    the wgmma's issue and the read of its result (which waits for it), so its
    work overlaps the tensor cores'.
    """

    def body(acc_ref):
        plgpu.wgmma(acc_ref, lhs_smem, rhs_smem)
        if during is None:
            return acc_ref[...]
        out = during()
        return acc_ref[...], out

    return pl.run_scoped(body, plgpu.ACC(shape, jnp.float32))


def raw_logits(st: AttentionStatics, s):
    """The value whose multiple by st.logit_mult is the log2-domain logit."""
    if st.logits_soft_cap is None:
        return s
    return jnp.tanh(s * (st.scale / st.logits_soft_cap))


def compiler_params():
    return plgpu.CompilerParams(approx_math=True)


def list_entry(code_ref, row, s, *, subs: int, block: int, sub_block: int):
    """Start position and partial flag of pipeline step s of a block list.

    code_ref[row + (j,)] holds block * 2 + partial for list entry j; each entry
    is processed as `subs` steps of `sub_block` rows/keys.
    """
    j = s if subs == 1 else lax.div(s, subs)
    code = code_ref[(*row, j)]
    start = lax.div(code, 2) * block
    if subs > 1:
        start = start + lax.rem(s, subs) * sub_block
    return start, lax.rem(code, 2) == 1
