"""Argument checks and static settings shared by the kernels' entry points (`api`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.gpu import common as cm


def statics(
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


def segment_ids(q_segment_ids, kv_segment_ids, B, Tp, Sp):
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


def row_words(words, indices, word_rows, block_q, name):
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


def num_sms() -> int:
    try:
        dev = jax.devices()[0]
        if dev.platform == "gpu":
            return int(dev.core_count)
    except Exception:  # no backend / abstract device: use an H100's count
        pass
    return 132


def check_sizes(q, k, block_q, block_kv):
    Tp, Sp = q.shape[1], k.shape[1]
    if Tp % block_q or Sp % block_kv:
        raise ValueError(
            f"padded lengths must be block multiples: {Tp=} % {block_q=}, {Sp=} % {block_kv=}"
        )
