"""Attention estimated from the last queries (MInference vertical-slash, FlexPrefill).

Both methods look at how the final `n` queries attend, causally, and
extrapolate the pattern to the whole prefill.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def grouped_logits(q, k, *, operands=jnp.float32):
    """`q . k` for every query head against its key/value head: `[B, H, T, S]` float32.

    q `[B, T, H, D]`, k `[B, S, K, D]`; query head h uses key head `h // (H // K)`.
    `operands`: the dtype both are cast to before the product (accumulated in
    float32 either way); `None` keeps q's dtype (bf16 inputs: one tensor-core
    matmul instead of a float32 one, for scores that only rank blocks).
    """
    b, t, h, d = q.shape
    kh = k.shape[2]
    dtype = q.dtype if operands is None else operands
    # q as [B, K, G, T, D] so the product comes out as [B, K, G, T, S] = [B, H, T, S]
    # (an einsum put the keys first and transposed the [B, H, T, S] result: a full
    # read and write of FlexPrefill's 512 MB last-block logits at 64k keys).
    qg = q.astype(dtype).reshape(b, t, kh, h // kh, d).transpose(0, 2, 3, 1, 4)
    s = jax.lax.dot_general(
        qg,
        k.astype(dtype),
        (((4,), (3,)), ((0, 1), (0, 2))),
        preferred_element_type=jnp.float32,
    )
    return s.reshape(b, h, t, k.shape[1])


def masked_softmax(logits, mask):
    """Softmax over the last axis restricted to `mask`; a fully masked row is all zeros."""
    s = jnp.where(mask, logits, -jnp.inf)
    m = s.max(-1, keepdims=True)
    p = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))
    l = p.sum(-1, keepdims=True)
    return p / jnp.where(l > 0, l, 1.0)


def last_query_probs(q, k, *, last_q: int, scale: float, q_offset: int):
    """Causal attention probabilities of the last `last_q` queries: `[B, H, n, S]` float32.

    Args:
      q: `[B, T, H, D]`; the rows used are the final `n = min(last_q, T)`.
      k: `[B, S, K, D]`.
      last_q: number of final queries.
      scale: logit scale.
      q_offset: position of query row 0 (keys sit at 0..S-1).

    Returns:
      `(probs, q_pos)`: probabilities `[B, H, n, S]` (rows sum to 1, or 0
      when a query sees no key) and the positions `[n]` of those queries.
    """
    t, s = q.shape[1], k.shape[1]
    n = min(last_q, t)
    q_pos = q_offset + t - n + jnp.arange(n, dtype=jnp.int32)
    logits = grouped_logits(q[:, t - n :], k) * scale
    causal = jnp.arange(s, dtype=jnp.int32)[None, None, None, :] <= q_pos[None, None, :, None]
    return masked_softmax(logits, causal), q_pos


def vertical_scores(probs):
    """Column sums `[B, H, S]` of estimated probabilities `[B, H, n, S]` (MInference step 2)."""
    return probs.sum(-2)


def slash_scores(probs, q_pos):
    """Diagonal sums `[B, H, S]` indexed by offset `o = query position - key position`.

    `slash[..., o] = sum_r probs[..., r, q_pos[r] - o]` over the rows whose
    diagonal `o` lands on a key (MInference step 3, FlexPrefill's slash). The
    rows must sit at consecutive positions `q_pos[0] + r >= 0` (the last queries,
    as `last_query_probs` returns them).

    Row r is shifted left by r with a pad and a reshape (each row padded by n
    on both sides, flattened, n zeros appended, read back one wider), so the
    diagonals become columns and one row sum gives them all: no gather over
    the `[B, H, n, S]` probabilities (the fusion holding that gather took
    1.7 ms of FlexPrefill's 5.2 ms selection at 64k keys, H200, 2026-12-03).
    """
    *lead, n, s = probs.shape
    w = s + 2 * n
    padded = jnp.pad(probs, [(0, 0)] * len(lead) + [(0, 0), (n, n)])
    flat = jnp.pad(padded.reshape(*lead, n * w), [(0, 0)] * len(lead) + [(0, n)])
    # skewed[..., r, m] = padded[..., r, m + r] (zero past the row's end).
    diagonals = flat.reshape(*lead, n, w + 1).sum(-2)  # [..., m]: offset q_pos[0] + n - m
    # Offsets o = 0..s-1 read diagonals[q_pos[0] + n - o]; out of range is zero (rows
    # far past the keys: start clamps into the left padding).
    rev = jnp.pad(diagonals[..., ::-1], [(0, 0)] * len(lead) + [(s, s)])
    start = 2 * s + n - jnp.clip(jnp.asarray(q_pos)[0], 0, 2 * s + n)
    return jax.lax.dynamic_slice_in_dim(rev, start, s, axis=-1)
