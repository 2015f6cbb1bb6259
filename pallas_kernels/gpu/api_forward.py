"""The forward entry point of the Mosaic GPU block-sparse attention kernels.

Conventions, tables and what is supported: `pallas_kernels.gpu.api`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from pallas_kernels.gpu import api_args as args
from pallas_kernels.gpu import bitmaps
from pallas_kernels.gpu import common as cm
from pallas_kernels.gpu import forward as fwd_lib


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
    args.check_sizes(q, k, block_q, block_kv)
    cm.check_tables(kv_indices, kv_counts, kv_full, B=B, H=H, nb=Tp // block_q, name="kv")
    kv_words = args.row_words(kv_words, kv_indices, word_rows, block_q, "kv")
    q_seg, kv_seg = args.segment_ids(q_segment_ids, kv_segment_ids, B, Tp, Sp)
    diag_pads, diag, _, keys = bitmaps.pack(
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
        ctas = min(sh.num_tiles, num_ctas or args.num_sms())
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
