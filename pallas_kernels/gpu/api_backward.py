"""The backward entry point of the Mosaic GPU block-sparse attention kernels (dQ, dK, dV).

Conventions, tables and what is supported: `pallas_kernels.gpu.api`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.gpu import api_args as args
from pallas_kernels.gpu import backward_dkv, backward_dkv_gathered, backward_dq, bitmaps
from pallas_kernels.gpu import common as cm


def check_backward_support(
    D: int,
    Dv: int,
    block_q: int = 128,
    block_kv: int = 128,
    dkv_block_q_compute: int = 64,
    bwd_num_stages: int = 2,
) -> None:
    """Raises NotImplementedError when the backward kernels cannot run these shapes.

    Callers check this at forward time, so a gradient they cannot run here can
    be routed elsewhere before it is needed.
    """
    if D + Dv > 256:
        raise NotImplementedError(
            f"backward needs D + Dv <= 256 (got D={D}, Dv={Dv}): a consumer"
            " warpgroup keeps [64, D] dK and [64, Dv] dV f32 accumulators in"
            " registers"
        )
    if block_kv not in (64, 128):
        raise NotImplementedError(
            f"backward needs {block_kv=} in (64, 128): one dK/dV consumer"
            " warpgroup per 64 keys of a table block"
        )
    if dkv_block_q_compute not in (64, 128) or block_q % dkv_block_q_compute:
        raise NotImplementedError(f"{dkv_block_q_compute=} must be 64 or 128 and divide {block_q=}")
    if bwd_num_stages < 2:
        raise NotImplementedError(f"{bwd_num_stages=} must be at least 2")


def _q_split(requested: bool | None, block_kv: int, num_stages: int) -> bool:
    """Whether the dK/dV kernel shares each 64-key block between two warpgroups."""
    possible = block_kv == cm.WG_ROWS and num_stages % 2 == 0
    if requested and not possible:
        raise NotImplementedError(
            f"dkv_q_split needs block_kv=64 and an even bwd_num_stages; got {block_kv=}, "
            f"{num_stages=}"
        )
    return possible if requested is None else bool(requested)


# One dK/dV CTA per query head (see _split_heads) with fewer CTAs per kv head than
# this (about two per SM of a 132-SM Hopper), or with longer walks than this per kv
# head (query steps: the group's heads times a key block's q list).
SPLIT_HEADS_BELOW_CTAS = 256
SPLIT_HEADS_ABOVE_STEPS = 256


def _split_heads(
    requested: bool | None,
    *,
    B: int,
    H: int,
    K: int,
    kv_blocks: int,
    list_splits: int,
    q_steps: int,
) -> bool:
    """Whether the dK/dV kernel runs one CTA per query head (the group's shares summed after).

    None: when a group has several query heads and one CTA per kv head and key
    block would leave the GPU short of CTAs (NSA's 4,096 compressed keys at
    64k tokens: 64), or would walk more than SPLIT_HEADS_ABOVE_STEPS query
    steps (`group` times the longest q list, `q_steps`, over the list splits:
    dense causal attention, whose longest walks make the tail). Short walks
    over many key blocks (a 512-key sliding window: 40 steps) keep one CTA per
    kv head, which writes dK/dV once instead of `group` shares. On the H200
    (BENCHMARKS.md, session 15, forward+backward, H=16, K=2): the window 0.755
    against 0.862 ms at 16k and 2.94 against 3.33 ms at 64k per kv head; dense
    causal 7.68 against 7.56 ms at 16k per kv head.
    """
    if requested is not None:
        return bool(requested)
    if H <= K:
        return False
    walk = (H // K) * -(-q_steps // list_splits)
    few = B * K * kv_blocks * list_splits < SPLIT_HEADS_BELOW_CTAS
    return few or walk > SPLIT_HEADS_ABOVE_STEPS


# dkv_list_splits=None: a key block's q list is split in P CTAs where fewer than this many
# CTAs hold long lists, P = ceil(longest list / LIST_STEPS), at most MAX_LIST_SPLITS. NSA's
# compressed keys at 64k (512 CTAs, one per query head, lists of 16 to 512 query tiles) leave
# SMs idle at the end of the dK/dV kernel. H100, BENCHMARKS.md session 22 (fwd+bwd at 64k,
# H=16, K=2): the compressed branch 9.36 ms whole, 8.91 / 8.27 / 8.68 in 2 / 4 / 8; a 512-key
# window (1,024 CTAs of 40 query steps) 2.97 whole and slower in every split.
SPLIT_LISTS_BELOW_CTAS = 1024
LIST_STEPS = 128
MAX_LIST_SPLITS = 8


def _check_list_splits(requested) -> int:
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise ValueError(f"dkv_list_splits must be a positive int, got {requested!r}")
    return requested


def _list_splits(requested, *, ctas: int, q_steps: int) -> int:
    """CTAs sharing each key block's q list (their partial dK/dV summed in f32 after).

    `requested` None: 1 where `ctas` (one per kv block and output head) keep
    the GPU busy (at least SPLIT_LISTS_BELOW_CTAS) or the lists are short,
    else enough splits that no CTA walks more than about LIST_STEPS q tiles.
    """
    if requested is not None:
        return _check_list_splits(requested)
    if ctas >= SPLIT_LISTS_BELOW_CTAS:
        return 1
    return max(1, min(MAX_LIST_SPLITS, -(-q_steps // LIST_STEPS)))


def _delta(out, dout, dlse):
    """delta = rowsum(dO * O) - dlse `[B, H, Tp]` in float32, of rows `[B, Tp, H, Dv]`,
    so that dS = P * (dP - delta).

    A row reduction, then a separate transpose of the small result: fused into
    one, XLA:GPU ran it as a transposing reduction at a fraction of the
    bandwidth (15 ms for the 983k x 8 rows of NSA's routed pairs at 64k on the
    H100, 2026-11-22).
    """
    dots = (out.astype(jnp.float32) * dout.astype(jnp.float32)).sum(-1)
    delta = jnp.swapaxes(lax.optimization_barrier(dots), 1, 2)
    return delta if dlse is None else delta - dlse.astype(jnp.float32)


def _lse2(lse):
    """lse in log2 units; dead rows (lse = -inf) get +inf so that P = 0."""
    return jnp.where(jnp.isneginf(lse), jnp.inf, lse * cm.LOG2E).astype(jnp.float32)


def gathered_attention_bwd(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    out: jax.Array,
    lse: jax.Array,
    dout: jax.Array,
    dlse: jax.Array | None,
    tiles: backward_dkv_gathered.GatheredTiles,
    *,
    group: int,
    scale: float | None = None,
    logits_soft_cap: float | None = None,
    kv_len: int | None = None,
    bwd_num_stages: int = 2,
    interpret: Any = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """dQ, dK and dV of per-token selections, all from the gathered kernel.

    For the packed layout of `block_sparse_attention_bwd(..., dkv_tiles=...)`
    (`group` query rows per token) when no dQ kernel runs: each work item adds
    its tiles' dQ, dK and dV into float32 sums by TMA reduce-adds
    (`backward_dkv_gathered`), so none of the three is bitwise deterministic.
    Rows see the keys up to the tiles' limits (no mask_fn, no segments).

    Args:
      q, out, dout: packed rows `[B, Tp, Hx, D|Dv]` (row `tok * group + j` of
        bit head x: query head `x * group + j` of token tok).
      lse, dlse: `[B, Hx, Tp]` f32 by packed row (dlse may be None).
      tiles: the gathered tiles (`jaxsparse.ops.gathered.Gathering.tiles`).
      scale, logits_soft_cap, kv_len, bwd_num_stages, interpret: as in
        `block_sparse_attention_bwd`.

    Returns:
      dq `[B, Tp, Hx, D]`, dk `[B, Sp, K, D]`, dv `[B, Sp, K, Dv]`, in q.dtype.
    """
    cm.check_dtypes_and_dims(q, k, v, what="gathered_attention_bwd")
    if out.shape[:-1] != q.shape[:-1] or dout.shape != out.shape:
        raise ValueError(f"{out.shape=} and {dout.shape=} must be laid out as {q.shape=}")
    B, Tp, Hx = q.shape[:3]
    if lse.shape != (B, Hx, Tp) or (dlse is not None and dlse.shape != lse.shape):
        raise ValueError(f"lse/dlse must be {(B, Hx, Tp)} (by packed row)")
    st = args.statics(
        q, k, mask_fn=None, mask_factors=None, q_offset=0, kv_len=kv_len, scale=scale,
        logits_soft_cap=logits_soft_cap, has_segments=False, segments_on_full_tiles=False,
        interpret=interpret,
    )  # fmt: skip
    return backward_dkv_gathered.dkv(
        q, k, v, dout.astype(q.dtype), _lse2(lse), _delta(out, dout, dlse), tiles, group=group,
        num_stages=bwd_num_stages, st=st, with_dq=True,
    )  # fmt: skip


def block_sparse_attention_bwd(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    out: jax.Array,
    lse: jax.Array,
    dout: jax.Array,
    dlse: jax.Array | None,
    kv_indices: jax.Array,
    kv_counts: jax.Array,
    kv_full: jax.Array,
    q_indices: jax.Array,
    q_counts: jax.Array,
    q_full: jax.Array,
    *,
    mask_fn=None,
    mask_factors=None,
    q_offset: int = 0,
    kv_len: int | None = None,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    scale: float | None = None,
    logits_soft_cap: float | None = None,
    block_q: int = 128,
    block_kv: int = 128,
    block_kv_compute: int | None = None,
    num_stages: int | None = None,
    persistent: bool | None = None,
    num_ctas: int | None = None,
    dq_block_kv_compute: int = 64,
    dkv_block_q_compute: int = 64,
    bwd_num_stages: int = 2,
    dkv_split_heads: bool | None = None,
    dkv_q_split: bool | None = None,
    dkv_list_splits: int | None = None,
    segments_on_full_tiles: bool = True,
    heavy_first: bool = True,
    interpret: Any = None,
    kv_words: jax.Array | None = None,
    q_words: jax.Array | None = None,
    word_rows: int = 0,
    diagonals: jax.Array | None = None,
    key_columns: jax.Array | None = None,
    key_columns_mode: str = "or",
    segments_le: bool = False,
    dkv_tiles: backward_dkv_gathered.GatheredTiles | None = None,
    dq_in_dkv: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Gradients of block_sparse_attention_fwd (dQ kernel + dK/dV kernel).

    Args:
      q, k, v, out, lse: the forward's inputs and outputs.
      dout: [B, Tp, H, Dv] cotangent of out. Padded query rows must carry
        dout = 0 (and dlse = 0) so that they contribute nothing to dK/dV.
      dlse: None or [B, H, Tp] f32 cotangent of lse.
      kv_indices, kv_counts, kv_full: q-major lists (as in the forward).
      q_indices, q_counts, q_full: kv-major lists [Bx, Hx, Sb, Qmax]: for kv
        block j the q blocks whose lists contain j, ascending, same padding
        rule, same full/partial flags.
      mask_fn ... heavy_first, interpret: as in the forward.
      block_kv_compute, num_stages, persistent, num_ctas: forward tuning,
        ignored here.
      dq_block_kv_compute: keys per dQ pipeline step (64 or 128, divides
        block_kv).
      dkv_block_q_compute: query rows per dK/dV pipeline step (64 or 128,
        divides block_q).
      bwd_num_stages: SMEM pipeline depth of both kernels.
      dkv_split_heads: one dK/dV CTA per query head, the GQA group's shares
        summed in float32 afterwards (True), or one per kv head summing inside
        (False). None: split when a group has several query heads and one CTA
        per kv head would leave few CTAs or walk long q lists (_split_heads).
      dkv_q_split: with 64-key blocks, two dK/dV warpgroups share each block
        and take alternate q steps (True), or one works alone (False); None:
        split whenever block_kv is 64 and bwd_num_stages is even.
      dkv_list_splits: P >= 1 CTAs share each kv block's q list, their
        partial dK/dV summed in float32 afterwards (for lists whose lengths
        differ widely, e.g. a key block every query attends). None: split
        long lists where few CTAs hold them (`_list_splits`).
      kv_words, q_words, word_rows: row words of the two lists (both or
        neither), as in the forward.
      diagonals, key_columns, key_columns_mode, segments_le: as in the forward.
      dkv_tiles: None, or `backward_dkv_gathered.GatheredTiles` for per-token
        selections packed `word_rows` rows per token (the query heads of a
        group reading one kv head): dK/dV then run over tiles of the tokens
        that selected each key tile (their own masks: the tiles' limits)
        instead of the kv-major lists, which only dQ's checks then read.
        (`gathered_attention_bwd`: the gathered kernel gives dQ too.)
      dq_in_dkv: the dK/dV kernel also gives dQ (FA3's way: each step's dS K
        added into a float32 dQ by a TMA reduce-add) and the dQ kernel does not
        run; needs dkv_block_q_compute=64 and no dkv_tiles. That dQ is not
        bitwise deterministic. Where the kernel's SMEM would not hold the dQ
        staging tiles (e.g. D = 192), the dQ kernel runs instead.

    Returns:
      dq [B, Tp, H, D], dk [B, Sp, K, D], dv [B, Sp, K, Dv] in q.dtype; dk/dv
      are summed over the query heads of each GQA group. Deterministic, except
      dq with dq_in_dkv.
    """
    del block_kv_compute, num_stages, persistent, num_ctas
    cm.check_dtypes_and_dims(q, k, v, what="block_sparse_attention_bwd")
    B, Tp, H, D = q.shape
    Sp, K, Dv = k.shape[1], k.shape[2], v.shape[-1]
    check_backward_support(D, Dv, block_q, block_kv, dkv_block_q_compute, bwd_num_stages)
    cm.check_blocks(block_q, block_kv, dq_block_kv_compute)
    args.check_sizes(q, k, block_q, block_kv)
    cm.check_tables(kv_indices, kv_counts, kv_full, B=B, H=H, nb=Tp // block_q, name="kv")
    cm.check_tables(q_indices, q_counts, q_full, B=B, H=H, nb=Sp // block_kv, name="q")
    if (kv_words is None) != (q_words is None):
        raise ValueError("give both kv_words and q_words, or neither")
    if dkv_tiles is not None and not word_rows:
        raise ValueError("dkv_tiles needs word_rows (query rows per token) and the row words")
    if dq_in_dkv and (dkv_tiles is not None or dkv_block_q_compute != cm.WG_ROWS):
        raise ValueError(
            f"dq_in_dkv needs dkv_block_q_compute={cm.WG_ROWS} (got {dkv_block_q_compute}) "
            "and no dkv_tiles (gathered_attention_bwd gives dQ from gathered tiles)"
        )
    kv_words = args.row_words(kv_words, kv_indices, word_rows, block_q, "kv")
    q_words = args.row_words(q_words, q_indices, word_rows, block_q, "q")
    if out.shape != (B, Tp, H, Dv) or dout.shape != out.shape:
        raise ValueError(f"{out.shape=} and {dout.shape=} must be {(B, Tp, H, Dv)}")
    if lse.shape != (B, H, Tp) or (dlse is not None and dlse.shape != lse.shape):
        raise ValueError(f"lse/dlse must be {(B, H, Tp)}")
    q_seg, kv_seg = args.segment_ids(q_segment_ids, kv_segment_ids, B, Tp, Sp)
    diag_pads, diag_q, diag_k, keys = bitmaps.pack(
        diagonals, key_columns, key_columns_mode, B=B, H=H, Tp=Tp, Sp=Sp, q_offset=q_offset
    )
    st = args.statics(
        q,
        k,
        mask_fn=mask_fn,
        mask_factors=mask_factors,
        q_offset=q_offset,
        kv_len=kv_len,
        scale=scale,
        logits_soft_cap=logits_soft_cap,
        has_segments=q_seg is not None,
        segments_on_full_tiles=segments_on_full_tiles,
        interpret=interpret,
        word_rows=word_rows if kv_words is not None else 0,
        block_q=block_q,
        segments_le=segments_le,
        diag_pads=diag_pads,
        keys_mode=key_columns_mode,
    )
    dt = jnp.dtype(q.dtype)

    delta = _delta(out, dout, dlse)
    lse2 = _lse2(lse)
    dout = dout.astype(dt)

    dq_sh = backward_dq.DqShapes(
        B=B,
        Tp=Tp,
        Sp=Sp,
        H=H,
        K=K,
        D=D,
        Dv=Dv,
        Bx=kv_indices.shape[0],
        Hx=kv_indices.shape[1],
        block_q=block_q,
        block_kv=block_kv,
        block_kv_compute=dq_block_kv_compute,
        num_stages=bwd_num_stages,
        dtype=dt,
    )
    kv_blocks, q_steps = Sp // block_kv, q_indices.shape[-1]
    if dkv_list_splits is not None:  # before the heads' choice reads it
        _check_list_splits(dkv_list_splits)
    split_heads = _split_heads(
        dkv_split_heads,
        B=B,
        H=H,
        K=K,
        kv_blocks=kv_blocks,
        list_splits=dkv_list_splits or 1,
        q_steps=q_steps,
    )
    list_splits = _list_splits(
        dkv_list_splits, ctas=B * (H if split_heads else K) * kv_blocks, q_steps=q_steps
    )
    dkv_sh = backward_dkv.DkvShapes(
        B=B,
        Tp=Tp,
        Sp=Sp,
        H=H,
        K=K,
        D=D,
        Dv=Dv,
        Bx=q_indices.shape[0],
        Hx=q_indices.shape[1],
        block_q=block_q,
        block_kv=block_kv,
        block_q_compute=dkv_block_q_compute,
        num_stages=bwd_num_stages,
        dtype=dt,
        split_heads=split_heads,
        q_split=_q_split(dkv_q_split, block_kv, bwd_num_stages),
        list_splits=list_splits,
        with_dq=dq_in_dkv,
    )
    if dq_in_dkv and backward_dkv.smem_bytes(dkv_sh, st) > cm.MAX_SMEM_BYTES:
        dq_in_dkv = False  # the staging tiles do not fit beside the rest: the dQ kernel runs
        dkv_sh = dataclasses.replace(dkv_sh, with_dq=False)
    dkv_bytes = backward_dkv.smem_bytes(dkv_sh, st) if dkv_tiles is None else 0
    dq_bytes = 0 if dq_in_dkv else backward_dq.smem_bytes(dq_sh, st)
    for name, nb in (("dQ", dq_bytes), ("dK/dV", dkv_bytes)):
        if nb > cm.MAX_SMEM_BYTES:
            raise NotImplementedError(
                f"{name} tiles need {nb} bytes of SMEM (> {cm.MAX_SMEM_BYTES})"
            )

    if heavy_first:
        q_order = cm.heavy_first_order(kv_counts)
        kv_order = cm.heavy_first_order(q_counts)
    else:
        q_order = jnp.arange(Tp // block_q, dtype=jnp.int32)
        kv_order = jnp.arange(Sp // block_kv, dtype=jnp.int32)
    dq_acc = None
    if dq_in_dkv:  # the dK/dV kernel adds dS K into it
        dq_acc = jax.new_ref(jnp.zeros((B, Tp, H, D), jnp.float32))
    else:
        dq = backward_dq.dq_call(
            q,
            k,
            v,
            dout,
            lse2,
            delta,
            cm.pack_codes(kv_indices, kv_full),
            kv_counts.astype(jnp.int32),
            q_order,
            q_seg,
            kv_seg,
            kv_words,
            diag_q,
            keys,
            sh=dq_sh,
            st=st,
        )
    if dkv_tiles is not None:
        dk, dv = backward_dkv_gathered.dkv(
            q, k, v, dout, lse2, delta, dkv_tiles, group=word_rows, num_stages=bwd_num_stages,
            st=st,
        )  # fmt: skip
        return dq, dk, dv
    dk, dv = backward_dkv.dkv_call(
        q,
        k,
        v,
        dout,
        lse2,
        delta,
        cm.pack_codes(q_indices, q_full),
        q_counts.astype(jnp.int32),
        kv_order,
        q_seg,
        kv_seg,
        q_words,
        diag_k,
        keys,
        sh=dkv_sh,
        st=st,
        dq_acc=dq_acc,
    )
    if dq_in_dkv:
        dq = (dq_acc[...] * st.scale).astype(dt)
    per_kv = dkv_sh.out_heads // K  # shares per kv head in one split
    if dkv_sh.list_splits > 1 or per_kv > 1:  # sum the splits' and heads' shares in f32
        dk, dv = (
            x.reshape(B, Sp, dkv_sh.list_splits, K, per_kv, -1)
            .astype(jnp.float32)
            .sum((2, 4))
            .astype(dt)
            for x in (dk, dv)
        )
    return dq, dk, dv
