"""MoBA: selection index for index against a loop re-implementation; attention vs a dense mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse import patterns as P
from jaxsparse.patterns.dynamic import moba
from tests import dynamic_refs as R


def moba_bits_reference(q, k, block_size, top_k, q_offset):
    """MoBA's gate, written from the paper: per (b, h, t), chunks by q . mean(K_chunk)."""
    q, k = np.asarray(q, np.float32), np.asarray(k, np.float32)
    b, t, h, _ = q.shape
    s, kh = k.shape[1], k.shape[2]
    nc = -(-s // block_size)
    means = jnp.stack(
        [jnp.asarray(k[:, i * block_size : (i + 1) * block_size]).mean(1) for i in range(nc)],
        axis=1,
    )  # [B, nc, K, D]
    bits = np.zeros((b, h, t, nc), bool)
    for bb, hh, i in np.ndindex(b, h, t):
        own = (q_offset + i) // block_size
        gate = np.asarray(
            jnp.einsum("d,cd->c", jnp.asarray(q[bb, i, hh]), means[bb, :, hh // (h // kh)])
        )
        past = [c for c in range(own)]  # chunks that end before the own chunk starts
        ranked = sorted(past, key=lambda c: (-gate[c], c))[: top_k - 1]
        for c in ranked + [own]:
            bits[bb, hh, i, c] = True
    return bits


def moba_mask(bits, block_size, t, s, q_offset):
    chunk_of_key = np.arange(s) // block_size
    sel = np.take(bits, chunk_of_key, axis=-1)  # [B, H, T, S]
    return sel & R.causal_np(t, s, q_offset)[None, None]


CASES = [
    # b, t, s, h, kh, d, block_size, top_k, tiles
    (2, 37, 37, 4, 2, 16, 8, 3, (16, 16)),  # GQA, ragged last chunk
    (1, 20, 52, 2, 2, 8, 10, 2, (8, 8)),  # chunked prefill (q_offset 32), tiles straddle chunks
    (1, 40, 40, 2, 1, 8, 16, 2, None),  # default tiles (natural: 16), MQA
    (1, 33, 33, 2, 2, 8, 8, 1, (8, 8)),  # top_k=1: the own chunk only
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_moba_selection_and_attention(case):
    b, t, s, h, kh, d, bs, top_k, tiles = case
    q, k, v, cot = R.random_qkv(b, t, h, kh, d, s=s, seed=1)
    off = s - t
    bits = np.asarray(R.jitted(moba.moba_select, q, k, block_size=bs, top_k=top_k, q_offset=off))
    np.testing.assert_array_equal(bits, moba_bits_reference(q, k, bs, top_k, off))
    mask = jnp.asarray(moba_mask(bits, bs, t, s, off))
    cfg = None if tiles is None else js.Config(block_q=tiles[0], block_kv=tiles[1])
    pattern = P.MoBA(block_size=bs, top_k=top_k)

    def fn(q, k, v):
        return js.attention(
            q, k, v, pattern=pattern, implementation="xla", config=cfg, return_lse=True
        )

    R.assert_close_to_ref(fn, lambda q, k, v: R.dense_ref(q, k, v, mask), q, k, v, cot)


def test_moba_reference_implementation_matches_too():
    q, k, v, cot = R.random_qkv(1, 24, 2, 2, 8, seed=2)
    bits = moba_bits_reference(q, k, 6, 2, 0)
    mask = jnp.asarray(moba_mask(bits, 6, 24, 24, 0))

    def fn(q, k, v):
        return js.attention(
            q,
            k,
            v,
            pattern=P.MoBA(block_size=6, top_k=2),
            implementation="reference",
            return_lse=True,
        )

    R.assert_close_to_ref(fn, lambda q, k, v: R.dense_ref(q, k, v, mask), q, k, v, cot)


def test_moba_short_sequence_is_dense_causal():
    # At most top_k chunks in all, so at most top_k - 1 before the own one (and T shorter
    # than one chunk): every visible key is kept.
    q, k, v, cot = R.random_qkv(1, 30, 2, 1, 8, seed=3)
    mask = jnp.asarray(R.causal_np(30, 30, 0))[None, None]
    for pattern in (P.MoBA(block_size=64, top_k=2), P.MoBA(block_size=8, top_k=4)):

        def fn(q, k, v, pattern=pattern):
            return js.attention(q, k, v, pattern=pattern, return_lse=True)

        R.assert_close_to_ref(
            fn, lambda q, k, v: R.dense_ref(q, k, v, mask), q, k, v, cot, jit=True
        )


def test_moba_bf16_and_vmap_over_batch():
    q, k, v, _ = R.random_qkv(2, 33, 2, 2, 16, seed=4, dtype=jnp.bfloat16)
    pattern = P.MoBA(block_size=8, top_k=2)
    out = jax.jit(lambda q, k, v: js.attention(q, k, v, pattern=pattern))(q, k, v)
    assert out.dtype == jnp.bfloat16
    one = jax.vmap(lambda q, k, v: js.attention(q, k, v, pattern=pattern))
    per_example = jax.jit(one)(q, k, v)
    np.testing.assert_allclose(
        np.asarray(per_example, np.float32), np.asarray(out, np.float32), atol=1e-2
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(block_size=0, top_k=2), "block_size=0 must be >= 1"),
        (dict(block_size=8, top_k=0), "top_k=0 must be >= 1"),
    ],
)
def test_moba_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        P.MoBA(**kwargs)


def test_moba_is_causal_only_and_dynamic():
    q, k, v, _ = R.random_qkv(1, 8, 2, 2, 8, s=6)
    with pytest.raises(ValueError, match="causal-only"):  # T > S: queries before the keys
        js.attention(q, k, v, pattern=P.MoBA(block_size=4, top_k=2))
    q, k, v, _ = R.random_qkv(1, 6, 2, 2, 8)
    with pytest.raises(TypeError, match="dynamic pattern"):
        js.attention(q, k, v, pattern=P.MoBA(block_size=4, top_k=2) & P.Causal())


def test_moba_under_jit_and_vmap_matches_the_dense_reference():
    # Odd length (37 of 16-token tiles, a ragged last chunk), GQA, under
    # jax.jit(jax.vmap(...)) over an extra leading axis: output, lse, dq, dk, dv.
    q, k, v, cot = R.random_qkv(2, 37, 4, 2, 16, seed=5)
    bits = moba_bits_reference(q, k, 8, 3, 0)
    mask = jnp.asarray(moba_mask(bits, 8, 37, 37, 0))
    cfg = js.Config(block_q=16, block_kv=16)

    def one(q, k, v):
        return js.attention(
            q, k, v, pattern=P.MoBA(block_size=8, top_k=3), implementation="xla", config=cfg,
            return_lse=True,
        )  # fmt: skip

    R.assert_close_to_ref(
        R.over_leading_axis(one), lambda q, k, v: R.dense_ref(q, k, v, mask), q, k, v, cot
    )
