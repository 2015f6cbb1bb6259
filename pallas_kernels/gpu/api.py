"""Public entry points of the Mosaic GPU block-sparse attention kernels.

Conventions (jax.nn order):
  q [B, Tp, H, D], k [B, Sp, K, D], v [B, Sp, K, Dv]; bfloat16 or float16.
  Tp % block_q == 0 and Sp % block_kv == 0 (the caller pads).
  Query head h uses kv head h // (H // K) (GQA / MQA).
  Logits: s = (q . k) * scale; with a soft cap s = cap * tanh(s / cap); then
  the mask; then softmax over keys. lse is the natural-log logsumexp.
  A fully masked row gives out = 0 and lse = -inf (no NaN).

Block tables (Bx in {1, B}, Hx in {1, H}):
  kv_indices int32 [Bx, Hx, Tb, Kmax]: for q block i the kv blocks
    kv_indices[..., i, :kv_counts[..., i]], ascending; later entries repeat
    the last valid index (0 when the count is 0).
  kv_counts int32 [Bx, Hx, Tb].
  kv_full bool/int [Bx, Hx, Tb, Kmax]: True means every (q, kv) pair in the
    tile is allowed by mask_fn and no key in it is padding, so the kernel
    skips all mask math for it; False (partial) evaluates mask_fn, the
    padding test kv_pos < kv_len and the segment test in the tile.
  q_indices / q_counts / q_full: the same for the transposed (kv-major)
    lists, [Bx, Hx, Sb, Qmax], used by the dK/dV kernel.

Segment ids: pairs with different ids are masked. By default
(segments_on_full_tiles=True) the segment test runs on every visited tile,
full or partial, so the tables need not know the segments; pass False when
the tables already mark every tile that mixes segments as partial (then the
test runs in partial tiles only, which is faster).

Bitmaps (`diagonals=`, `key_columns=`): per-(batch, head) bit sets read in
partial tiles, for masks that are exact at the token level but not
arithmetic (MInference's kept diagonals and columns). Segment ids may also
compare `kv id <= q id` (`segments_le=True`: ids are positions of gathered
keys).

Supported (anything else raises NotImplementedError so callers can fall
back): dtype bfloat16/float16; D and Dv multiples of 64 up to 256 (forward),
D, Dv <= 128 (backward, the dK and dV accumulators of a warpgroup must fit in
registers); block_q in {64, 128}; block_kv a multiple of 64 whose compute
sub-tile (block_kv_compute) is 64 or 128; positive scale and soft cap; the
SMEM footprint of the chosen tiles must fit in 227 KiB.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.gpu import backward_dkv, backward_dq, bitmaps
from pallas_kernels.gpu import common as cm
from pallas_kernels.gpu import forward as fwd_lib


def _statics(
    q,
    k,
    *,
    mask_fn,
    mask_factors,
    q_offset,
    kv_len,
    scale,
    logits_soft_cap,
    has_segments,
    segments_on_full_tiles,
    interpret,
    word_rows=0,
    block_q=128,
    segments_le=False,
    diag_pads=None,
    keys_mode="or",
):
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if not scale > 0:
        raise NotImplementedError(f"{scale=} must be positive for these kernels")
    if logits_soft_cap is not None and not logits_soft_cap > 0:
        raise ValueError(f"{logits_soft_cap=} must be positive or None")
    if kv_len is None:
        kv_len = k.shape[1]
    if mask_factors is not None and mask_fn is None:
        raise ValueError("mask_factors split a mask_fn: pass mask_fn too")
    return cm.AttentionStatics(
        mask_fn=mask_fn,
        mask_factors=mask_factors,
        q_offset=int(q_offset),
        kv_len=int(kv_len),
        kv_padded=int(kv_len) < k.shape[1],
        scale=float(scale),
        logits_soft_cap=None if logits_soft_cap is None else float(logits_soft_cap),
        has_segments=has_segments,
        segments_on_full_tiles=bool(segments_on_full_tiles),
        interpret=interpret,
        word_rows=int(word_rows),
        word_bits=block_q // word_rows if word_rows else 0,
        segments_le=bool(segments_le),
        diag_pads=diag_pads,
        keys_mode=keys_mode,
    )


def _segments(q_segment_ids, kv_segment_ids, B, Tp, Sp):
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("give both q_segment_ids and kv_segment_ids, or neither")
    if q_segment_ids is None:
        return None, None
    if q_segment_ids.shape != (B, Tp) or kv_segment_ids.shape != (B, Sp):
        raise ValueError(
            f"segment ids must be [B, Tp] and [B, Sp]; got"
            f" {q_segment_ids.shape}, {kv_segment_ids.shape}"
        )
    return q_segment_ids.astype(jnp.int32), kv_segment_ids.astype(jnp.int32)


def _words(words, indices, word_rows, block_q, name):
    """Checks a row-word table (laid out as `indices`) and its rows per bit."""
    if words is None:
        return None
    if not word_rows or word_rows & (word_rows - 1) or block_q % word_rows:
        raise ValueError(
            f"{name} words need word_rows, a power of two dividing {block_q=}; got {word_rows=}"
        )
    if block_q // word_rows > 32:
        raise ValueError(
            f"{name} words hold 32 bits: block_q // word_rows = {block_q // word_rows} is too many"
        )
    if words.shape != indices.shape:
        raise ValueError(
            f"{name} words {words.shape} must be laid out as the indices {indices.shape}"
        )
    if words.dtype != jnp.int32:
        raise TypeError(f"{name} words must be int32, got {words.dtype}")
    return words


def _num_sms() -> int:
    try:
        dev = jax.devices()[0]
        if dev.platform == "gpu":
            return int(dev.core_count)
    except Exception:  # no backend / abstract device: use an H100's count
        pass
    return 132


def _check_sizes(q, k, block_q, block_kv):
    Tp, Sp = q.shape[1], k.shape[1]
    if Tp % block_q or Sp % block_kv:
        raise ValueError(
            f"padded lengths must be block multiples: {Tp=} % {block_q=}, {Sp=} % {block_kv=}"
        )


def block_sparse_attention_fwd(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kv_indices: jax.Array,
    kv_counts: jax.Array,
    kv_full: jax.Array,
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
    num_stages: int = 2,
    segments_on_full_tiles: bool = True,
    heavy_first: bool = True,
    persistent: bool | None = None,
    num_ctas: int | None = None,
    interpret: Any = None,
    kv_words: jax.Array | None = None,
    word_rows: int = 0,
    diagonals: jax.Array | None = None,
    key_columns: jax.Array | None = None,
    key_columns_mode: str = "or",
    segments_le: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Block-sparse flash attention forward on Hopper (Mosaic GPU).

    Args:
      q, k, v: [B, Tp, H, D], [B, Sp, K, D], [B, Sp, K, Dv]; see module doc.
      kv_indices, kv_counts, kv_full: q-major block lists (module doc).
      mask_factors: None, or the same mask split as an object with `rows(q_pos)`,
        `cols(kv_pos)` and `combine(rows, cols, head)` (jaxsparse's
        `Pattern.mask_factors()`): the kernels then compute the row and column
        terms once per tile row / column and only combine per element.
      mask_fn: None or a static mask_fn(q_pos, kv_pos, head) -> bool built from
        & | ~ < <= == // % on int32 arrays; evaluated on partial tiles only.
      q_offset: absolute position of query row 0.
      kv_len: keys at positions >= kv_len are padding (default Sp); they must
        only occur in partial tiles.
      q_segment_ids, kv_segment_ids: int32 [B, Tp], [B, Sp] or None.
      scale: logit scale (default D ** -0.5).
      logits_soft_cap: None or cap.
      block_q: q rows per table entry and per CTA (64 per consumer warpgroup).
      block_kv: keys per table entry.
      block_kv_compute: keys per pipeline step (divides block_kv); default
        min(block_kv, 128), and 64 when D or Dv > 128.
      num_stages: K/V SMEM pipeline depth (>= 2).
      segments_on_full_tiles: see module doc.
      heavy_first: launch q blocks with the longest lists first.
      persistent: one CTA per SM looping over (q block, head, batch) tiles, so
        that the next tile's Q and K/V loads overlap this tile's epilogue
        (helps short lists); None = persistent when Kmax * block_kv <= 2048
        keys and its SMEM fits, else one CTA per tile.
      num_ctas: persistent grid size (default: the GPU's SM count).
      interpret: None on GPU; plgpu.InterpretGPUParams(...) on CPU.
      kv_words: None, or int32 row words laid out as kv_indices: in a partial
        tile, query row r (q_offset not counted) attends the entry's keys only
        if bit `(r // word_rows) % (block_q // word_rows)` of its word is set
        (per-token selections, with the tokens' query heads packed as
        consecutive rows). The mask_fn still applies; full tiles skip both.
      word_rows: query rows per word bit (a power of two dividing block_q,
        block_q // word_rows <= 32).
      diagonals: None, or bool [Bx, Hx, n]: in a partial tile, query q attends
        key k only if `0 <= q - k < n` and `diagonals[..., q - k]` (kept
        diagonals, MInference's "slash" lines); combined with key_columns.
      key_columns: None, or bool [Bx, Hx, n <= Sp] marking keys; with
        key_columns_mode "or" a partial tile also attends the marked keys
        (given diagonals), "exclude" drops them. The mask_fn still applies
        (e.g. causality for the marked keys).
      segments_le: the segment test is `kv id <= q id` (ids are positions of
        gathered keys) instead of `==`.

    Returns:
      out [B, Tp, H, Dv] in q.dtype and lse [B, H, Tp] float32 (natural log).
    """
    cm.check_dtypes_and_dims(q, k, v, what="block_sparse_attention_fwd")
    B, Tp, H, D = q.shape
    Sp, K, Dv = k.shape[1], k.shape[2], v.shape[-1]
    if block_kv_compute is None:
        block_kv_compute = min(block_kv, 64 if max(D, Dv) > 128 else 128)
    cm.check_blocks(block_q, block_kv, block_kv_compute)
    if num_stages < 2:
        raise NotImplementedError(f"{num_stages=} must be at least 2")
    _check_sizes(q, k, block_q, block_kv)
    cm.check_tables(kv_indices, kv_counts, kv_full, B=B, H=H, nb=Tp // block_q, name="kv")
    kv_words = _words(kv_words, kv_indices, word_rows, block_q, "kv")
    q_seg, kv_seg = _segments(q_segment_ids, kv_segment_ids, B, Tp, Sp)
    diag_pads, diag, _, keys = bitmaps.pack(
        diagonals, key_columns, key_columns_mode, B=B, H=H, Tp=Tp, Sp=Sp, q_offset=q_offset
    )
    st = _statics(
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
    sh = fwd_lib.FwdShapes(
        B=B,
        Tp=Tp,
        Sp=Sp,
        H=H,
        K=K,
        D=D,
        Dv=Dv,
        Bx=kv_indices.shape[0],
        Hx=kv_indices.shape[1],
        kmax=kv_indices.shape[-1],
        block_q=block_q,
        block_kv=block_kv,
        block_kv_compute=block_kv_compute,
        num_stages=num_stages,
        dtype=jnp.dtype(q.dtype),
    )
    if persistent is None:
        # Measured on the H100 (NOTES.md): persistence wins only for short
        # lists (window 1024: 3-9% faster) and loses for long ones (causal 16k
        # -9%, random blocks 16k -22%, full 32k -5%), where the hardware's
        # in-order CTA launch keeps CTAs that stream the same K/V in step (L2
        # reuse) and balances causal work. Kmax (static) bounds list lengths.
        persistent = None if kv_indices.shape[-1] * block_kv <= 2048 else False
    if persistent is None or persistent:
        ctas = min(sh.num_tiles, num_ctas or _num_sms())
        psh = dataclasses.replace(sh, persistent=True, num_ctas=ctas)
        fits = fwd_lib.smem_bytes(psh, st) <= cm.MAX_SMEM_BYTES
        if persistent and not fits:
            raise NotImplementedError(
                f"persistent forward needs {fwd_lib.smem_bytes(psh, st)} bytes of"
                f" SMEM (> {cm.MAX_SMEM_BYTES})"
            )
        if fits:
            sh = psh
    if (nb := fwd_lib.smem_bytes(sh, st)) > cm.MAX_SMEM_BYTES:
        raise NotImplementedError(
            f"forward tiles need {nb} bytes of SMEM (> {cm.MAX_SMEM_BYTES});"
            " lower num_stages or block_kv_compute"
        )
    codes = cm.pack_codes(kv_indices, kv_full)
    if heavy_first:
        order = cm.heavy_first_order(kv_counts)
    else:
        order = jnp.arange(Tp // block_q, dtype=jnp.int32)
    return fwd_lib.forward_call(
        q,
        k,
        v,
        codes,
        kv_counts.astype(jnp.int32),
        order,
        q_seg,
        kv_seg,
        kv_words,
        diag,
        keys,
        sh=sh,
        st=st,
    )


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


def _list_splits(splits) -> int:
    if isinstance(splits, bool) or not isinstance(splits, int) or splits < 1:
        raise ValueError(f"dkv_list_splits must be a positive int, got {splits!r}")
    return splits


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
    dkv_list_splits: int = 1,
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
        (False). None: split whenever a group has several query heads.
      dkv_q_split: with 64-key blocks, two dK/dV warpgroups share each block
        and take alternate q steps (True), or one works alone (False); None:
        split whenever block_kv is 64 and bwd_num_stages is even.
      dkv_list_splits: P >= 1 CTAs share each kv block's q list, their
        partial dK/dV summed in float32 afterwards (for lists whose lengths
        differ widely, e.g. a key block every query attends).
      kv_words, q_words, word_rows: row words of the two lists (both or
        neither), as in the forward.
      diagonals, key_columns, key_columns_mode, segments_le: as in the forward.

    Returns:
      dq [B, Tp, H, D], dk [B, Sp, K, D], dv [B, Sp, K, Dv] in q.dtype; dk/dv
      are summed over the query heads of each GQA group. Deterministic.
    """
    del block_kv_compute, num_stages, persistent, num_ctas
    cm.check_dtypes_and_dims(q, k, v, what="block_sparse_attention_bwd")
    B, Tp, H, D = q.shape
    Sp, K, Dv = k.shape[1], k.shape[2], v.shape[-1]
    check_backward_support(D, Dv, block_q, block_kv, dkv_block_q_compute, bwd_num_stages)
    cm.check_blocks(block_q, block_kv, dq_block_kv_compute)
    _check_sizes(q, k, block_q, block_kv)
    cm.check_tables(kv_indices, kv_counts, kv_full, B=B, H=H, nb=Tp // block_q, name="kv")
    cm.check_tables(q_indices, q_counts, q_full, B=B, H=H, nb=Sp // block_kv, name="q")
    if (kv_words is None) != (q_words is None):
        raise ValueError("give both kv_words and q_words, or neither")
    kv_words = _words(kv_words, kv_indices, word_rows, block_q, "kv")
    q_words = _words(q_words, q_indices, word_rows, block_q, "q")
    if out.shape != (B, Tp, H, Dv) or dout.shape != out.shape:
        raise ValueError(f"{out.shape=} and {dout.shape=} must be {(B, Tp, H, Dv)}")
    if lse.shape != (B, H, Tp) or (dlse is not None and dlse.shape != lse.shape):
        raise ValueError(f"lse/dlse must be {(B, H, Tp)}")
    q_seg, kv_seg = _segments(q_segment_ids, kv_segment_ids, B, Tp, Sp)
    diag_pads, diag_q, diag_k, keys = bitmaps.pack(
        diagonals, key_columns, key_columns_mode, B=B, H=H, Tp=Tp, Sp=Sp, q_offset=q_offset
    )
    st = _statics(
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

    # delta = rowsum(dO * O) - dlse, so that dS = P * (dP - delta).
    # A row reduction, then a separate transpose of the small result: fused into one,
    # XLA:GPU ran it as a transposing reduction at a fraction of the bandwidth (15 ms
    # for the 983k x 8 rows of NSA's routed pairs at 64k on the H100, 2026-11-22).
    rows = (out.astype(jnp.float32) * dout.astype(jnp.float32)).sum(-1)  # [B, Tp, H]
    delta = jnp.swapaxes(lax.optimization_barrier(rows), 1, 2)
    if dlse is not None:
        delta = delta - dlse.astype(jnp.float32)
    # lse in log2 units; dead rows (lse = -inf) get +inf so that P = 0.
    lse2 = jnp.where(jnp.isneginf(lse), jnp.inf, lse * cm.LOG2E)
    lse2 = lse2.astype(jnp.float32)
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
        split_heads=H > K if dkv_split_heads is None else bool(dkv_split_heads),
        q_split=_q_split(dkv_q_split, block_kv, bwd_num_stages),
        list_splits=_list_splits(dkv_list_splits),
    )
    for name, nb in (
        ("dQ", backward_dq.smem_bytes(dq_sh, st)),
        ("dK/dV", backward_dkv.smem_bytes(dkv_sh, st)),
    ):
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
    )
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
