"""FlexPrefill: selection index for index against a re-implementation of the official steps."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse import patterns as P
from jaxsparse.patterns.dynamic import flex_prefill
from tests import dynamic_refs as R


def _softmax(x):
    e = np.exp(x - x[np.isfinite(x)].max())
    return e / e.sum()


def _ranked(scores, n):
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:n]


def flex_prefill_reference(q, k, *, gamma, tau, min_budget, block_size):
    """FlexPrefill's `get_active_blocks` for T == S, a multiple of the block (float64, loops).

    Follows the official indexing: slash sums are indexed by the key column of the
    last row (`sum_all_diagonal_matrix`), pooled by blocks, and a block index jb
    means block offset `nb - 1 - jb`.
    """
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    b, t, h, d = q.shape
    kh, bs = k.shape[2], block_size
    nb = t // bs
    lo = hi_cap = math.ceil(min_budget / bs)
    hi = nb
    bits = np.zeros((b, h, nb, nb), bool)
    distance = np.zeros((b, h))
    for bb, hh in np.ndindex(b, h):
        kk = k[bb, :, hh // (h // kh)]
        last_q = q[bb, t - bs :, hh] / math.sqrt(d)
        a = np.zeros((bs, t))
        for r in range(bs):
            logits = kk[: t - bs + r + 1] @ last_q[r]
            a[r, : t - bs + r + 1] = _softmax(logits)
        vertical = a.mean(0)
        slash_col = np.zeros(t)  # indexed by the last row's key column j = t - 1 - offset
        for r, j in np.ndindex(bs, t):
            col = j - (t - bs + r) + (t - 1)
            if 0 <= col < t and j <= t - bs + r:
                slash_col[col] += a[r, j]
        slash_col /= bs

        def cover(x):
            c = np.cumsum(np.sort(x)[::-1])
            return (c <= gamma).sum() + 1

        nv = int(np.clip(cover(vertical) // bs + 1, lo, hi))
        ns = int(np.clip(cover(slash_col) // bs + 1, lo, hi))
        v_blk = vertical.reshape(nb, bs).sum(1)
        s_blk = slash_col.reshape(nb, bs).sum(1)
        k_mean = kk.reshape(nb, bs, d).mean(1)
        predicted = _softmax(k_mean @ last_q.mean(0))
        m = (predicted + v_blk) / 2
        js_div = (
            0.5 * (predicted * np.log(predicted / m)).sum()
            + 0.5 * (v_blk * np.log(v_blk / m)).sum()
        )
        distance[bb, hh] = math.sqrt(js_div)
        query_aware = distance[bb, hh] < tau
        if query_aware:
            nv = ns = lo
        v_blk[0] = np.inf
        s_blk[-1] = np.inf
        for j in _ranked(v_blk, nv):
            bits[bb, hh, j:, j] = True  # vertical block j for every query block i >= j
        for jb in _ranked(s_blk, ns):
            off = nb - 1 - jb
            for i in range(off, nb):
                bits[bb, hh, i, i - off] = True
        if query_aware:
            q_mean = q[bb, :, hh].reshape(nb, bs, d).mean(1) / math.sqrt(d)
            attn = np.zeros((nb, nb))
            for i in range(nb):
                attn[i, : i + 1] = _softmax(k_mean[: i + 1] @ q_mean[i])
            flat = attn.reshape(-1)
            order = sorted(range(nb * nb), key=lambda e: (-flat[e], e))
            c = np.cumsum(flat[order])
            for e, ce in zip(order, c, strict=True):
                if ce <= gamma * nb:
                    bits[bb, hh, e // nb, e % nb] = True
    del hi_cap
    return bits, distance


def test_flex_prefill_selection_and_attention():
    t, bs = 96, 16
    q, k, v, cot = R.random_qkv(1, t, 4, 2, 16, seed=11)
    q = q * 1.5  # sharper attention: budgets below dense
    want, dist = flex_prefill_reference(q, k, gamma=0.6, tau=0.0, min_budget=16, block_size=bs)
    # A threshold between the heads' distances gives both kinds of head.
    tau = float(np.sort(dist.ravel())[1:3].mean())
    want, _ = flex_prefill_reference(q, k, gamma=0.6, tau=tau, min_budget=16, block_size=bs)
    bits, query_aware = R.jitted(
        flex_prefill.flex_prefill_select,
        q,
        k,
        gamma=0.6,
        tau=tau,
        min_budget=16,
        max_budget=None,
        block_size=bs,
        q_offset=0,
    )
    np.testing.assert_array_equal(np.asarray(query_aware), dist < tau)
    assert 0 < int(np.asarray(query_aware).sum()) < 4
    np.testing.assert_array_equal(np.asarray(bits), want)
    assert 0 < want.sum() < want.size  # really sparse, not dense
    mask = jnp.asarray(R.block_to_token(want, bs, bs, t, t) & R.causal_np(t, t, 0)[None, None])
    pattern = P.FlexPrefill(0.6, tau, min_budget=16, block_size=bs)

    def fn(q, k, v):
        return js.attention(q, k, v, pattern=pattern, implementation="xla", return_lse=True)

    R.assert_close_to_ref(fn, lambda q, k, v: R.dense_ref(q, k, v, mask), q, k, v, cot)


def test_flex_prefill_chunked_prefill_and_budget_cap():
    # Queries at a block-aligned offset; max_budget caps the vertical and slash blocks.
    q, k, v, cot = R.random_qkv(1, 64, 2, 1, 8, s=96, seed=12)
    pattern = P.FlexPrefill(0.99, 0.0, min_budget=8, max_budget=16, block_size=16)
    bits = np.asarray(
        R.jitted(
            flex_prefill.flex_prefill_select,
            q,
            k,
            gamma=0.99,
            tau=0.0,
            min_budget=8,
            max_budget=16,
            block_size=16,
            q_offset=32,
        )[0]
    )
    assert bits.sum(-1).max() <= 2  # one vertical + one slash block per row at most
    mask = jnp.asarray(R.block_to_token(bits, 16, 16, 64, 96) & R.causal_np(64, 96, 32)[None, None])

    def fn(q, k, v):
        return js.attention(q, k, v, pattern=pattern, return_lse=True)

    R.assert_close_to_ref(fn, lambda q, k, v: R.dense_ref(q, k, v, mask), q, k, v, cot)


def test_flex_prefill_short_input_is_dense_causal():
    # T <= max(2 * block, min_budget): FlexPrefill itself runs dense causal attention.
    q, k, v, cot = R.random_qkv(1, 40, 2, 2, 8, seed=13)
    mask = jnp.asarray(R.causal_np(40, 40, 0))[None, None]

    def fn(q, k, v):
        return js.attention(
            q, k, v, pattern=P.FlexPrefill(0.9, 0.1, block_size=32), return_lse=True
        )

    R.assert_close_to_ref(fn, lambda q, k, v: R.dense_ref(q, k, v, mask), q, k, v, cot)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(gamma=0.0, tau=0.1), r"gamma=0.0 must lie in \(0, 1\]"),
        (dict(gamma=1.5, tau=0.1), r"gamma=1.5 must lie in \(0, 1\]"),
        (dict(gamma=0.9, tau=-0.1), r"tau=-0.1 must lie in \[0, 1\]"),
        (dict(gamma=0.9, tau=0.1, min_budget=0), "min_budget=0 must be >= 1"),
        (dict(gamma=0.9, tau=0.1, min_budget=256, max_budget=128), "max_budget=128 < min_budget"),
        (dict(gamma=0.9, tau=0.1, block_size=0), "block_size=0 must be >= 1"),
    ],
)
def test_flex_prefill_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        P.FlexPrefill(**kwargs)


def test_flex_prefill_takes_numpy_scalars_but_not_bools():
    assert P.FlexPrefill(np.float32(0.9), np.float64(0.1)).gamma == np.float32(0.9)
    with pytest.raises(TypeError, match="gamma must be a number"):
        P.FlexPrefill(np.bool_(True), 0.1)


def test_flex_prefill_needs_block_aligned_queries():
    # T = 20 is past the dense fallback (max(2 * 8, min_budget 8) = 16 tokens).
    q, k, v, _ = R.random_qkv(1, 20, 2, 2, 8, s=30)
    with pytest.raises(ValueError, match="multiple of block_size=8"):
        js.attention(q, k, v, pattern=P.FlexPrefill(0.9, 0.1, block_size=8, min_budget=8))


@pytest.mark.parametrize("t, s", [(1, 50), (7, 50), (1, 129)])
def test_flex_prefill_decoding_is_dense_causal_at_any_offset(t, s):
    # Decoding and short chunks fall back to dense causal before any block alignment.
    q, k, v, cot = R.random_qkv(1, t, 2, 2, 8, s=s, seed=t + s)
    mask = jnp.asarray(R.causal_np(t, s, s - t))[None, None]

    def fn(q, k, v):
        return js.attention(
            q, k, v, pattern=P.FlexPrefill(0.9, 0.1, block_size=32), return_lse=True
        )

    R.assert_close_to_ref(fn, lambda q, k, v: R.dense_ref(q, k, v, mask), q, k, v, cot)


def test_flex_prefill_under_jit_and_vmap():
    # jax.jit(jax.vmap(...)) over an extra leading axis, GQA, both kinds of head: output,
    # lse and every gradient against the dense reference of the reference selection.
    # (Odd lengths do not apply: FlexPrefill refuses queries that are not block-aligned.)
    t, bs = 64, 16
    q, k, v, cot = R.random_qkv(2, t, 4, 2, 16, seed=14)
    q = q * 1.5
    _, dist = flex_prefill_reference(q, k, gamma=0.6, tau=0.0, min_budget=16, block_size=bs)
    tau = float(np.sort(dist.ravel())[3:5].mean())
    want, dist = flex_prefill_reference(q, k, gamma=0.6, tau=tau, min_budget=16, block_size=bs)
    assert 0 < (dist < tau).sum() < dist.size
    mask = jnp.asarray(R.block_to_token(want, bs, bs, t, t) & R.causal_np(t, t, 0)[None, None])
    pattern = P.FlexPrefill(0.6, tau, min_budget=16, block_size=bs)

    def one(q, k, v):
        return js.attention(q, k, v, pattern=pattern, implementation="xla", return_lse=True)

    R.assert_close_to_ref(
        R.over_leading_axis(one), lambda q, k, v: R.dense_ref(q, k, v, mask), q, k, v, cot
    )
