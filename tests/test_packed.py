"""Per-token selections shared by a GQA group on the GPU kernels, query-major (`ops.packed`).

The group's query heads are packed as rows of one tile, the tile visits the
union of its tokens' blocks, and each list entry's row word masks the tokens
that did not select it. The result must be exactly the `TokenBlockMask`'s
attention: output, lse and every gradient, against the dense f32 oracle.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsparse as js
from jaxsparse import patterns as P
from jaxsparse.ops import call as call_lib
from jaxsparse.ops import packed
from tests import dynamic_refs as R
from tests.test_routed import random_bits, token_mask


@pytest.fixture
def spy_packed(monkeypatch):
    """Counts the calls that took the packed path."""
    calls = []
    run = packed.run

    def spy(call):
        calls.append(call)
        return run(call)

    monkeypatch.setattr(packed, "run", spy)
    return calls


CASES = [
    # b, t, s, h, kh, bit heads, col_block, capacity, causal, block_q, dK/dV list splits
    (1, 100, 128, 8, 2, "kv", 64, 1, True, 64, 3),  # NSA-like: chunked prefill, ragged tiles
    (2, 70, 70, 8, 1, "one", 64, 1, True, 128, None),  # one selection for all heads (MQA)
    (1, 48, 192, 4, 1, "kv", 128, 1, False, 64, None),  # bidirectional, key tiles of 128
]


def token_block_mask(bits, *, h, col_block, cap, causal):
    """The `TokenBlockMask` of per-token bits `[B, Hx, T, C]` for h query heads."""
    return P.TokenBlockMask(
        jnp.asarray(bits), row_block=1, col_block=col_block, group=h // bits.shape[1],
        causal=causal, row_capacity=cap,
    )  # fmt: skip


def check_against_mask(bits, *, s, h, kh, d, col_block, cap, causal, config, seed):
    """The kernels' attention under a `TokenBlockMask` of `bits` equals the dense f32 oracle
    of its element mask: output, lse and every gradient. Returns the mask."""
    b, hx, t, _ = bits.shape
    q_offset = s - t
    pattern = token_block_mask(bits, h=h, col_block=col_block, cap=cap, causal=causal)
    mask = jnp.asarray(token_mask(pattern, bits, t, s, h, q_offset))
    q, k, v, cot = R.random_qkv(b, t, h, kh, d, s=s, seed=seed, dtype=jnp.bfloat16)
    R.assert_close_to_ref(
        lambda q, k, v: js.attention(
            q, k, v, pattern=pattern, implementation="pallas_gpu", config=config,
            return_lse=True,
        ),
        lambda q, k, v: R.dense_ref(q, k, v, mask),
        q,
        k,
        v,
        cot,
        tol=2e-2,
    )  # fmt: skip
    return mask


@pytest.mark.parametrize("case", CASES, ids=str)
def test_packed_matches_dense_mask_in_interpret_mode(case, spy_packed):
    b, t, s, h, kh, heads, cb, cap, causal, bq, splits = case
    hx = {"kv": kh, "one": 1}[heads]
    bits = random_bits(np.random.default_rng(2), b, hx, t, s, cb, cap, s - t, causal)
    mask = check_against_mask(
        bits, s=s, h=h, kh=kh, d=64, col_block=cb, cap=cap, causal=causal, seed=4,
        config=js.Config(
            interpret=True, block_q=bq, gpu_dkv_list_splits=splits, gpu_gathered_dkv=False
        ),  # the packed dK/dV; tests/test_gathered.py runs the gathered one
    )  # fmt: skip
    assert (~mask.any(-1)).any(), "the case should include rows that attend nothing"
    assert spy_packed, "the call did not take the packed path"


@settings(max_examples=15, deadline=None)
@given(
    t=st.integers(1, 40),
    extra=st.integers(0, 40),
    n=st.sampled_from([1, 4, 8, 32]),
    col_block=st.sampled_from([8, 16]),
    per=st.sampled_from([1, 2]),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_tile_tables_decode_to_the_bits(t, extra, n, col_block, per, causal, seed):
    """Lists + row words say exactly what the bits say, per (token, key); FULL tiles are whole.

    Decoding follows the kernels: an entry's key tile, its word's bit per token, the causal
    mask and the key bound; the key-major lists hold the same (tile, key tile, word) entries.
    """
    s, q_offset = t + extra, extra if causal else 0
    rng = np.random.default_rng(seed)
    bits = rng.random((2, 2, t, -(-s // col_block))) < 0.3
    pattern = P.TokenBlockMask(
        jnp.asarray(bits), col_block=col_block, group=4, causal=causal, row_capacity=bits.shape[3]
    )
    bk = col_block // per
    sp, kvw, qw = packed.tile_tables(
        jnp.asarray(bits), pattern, tokens_per_tile=n, block_kv=bk, q_len=t, kv_len=s,
        q_offset=q_offset,
    )  # fmt: skip
    idx, cnt, full, kvw = map(np.asarray, (sp.kv_indices, sp.kv_counts, sp.kv_full, kvw))
    tok, key = np.arange(t)[:, None], np.arange(s)[None, :]
    want = np.take(bits, key[0] // col_block, axis=3) & (key < s)
    if causal:
        want &= key <= tok + q_offset
    got = np.zeros_like(want)
    entries = set()
    for b, x, i in np.ndindex(cnt.shape):
        for e in range(cnt[b, x, i]):
            j, w = idx[b, x, i, e], int(kvw[b, x, i, e]) & 0xFFFFFFFF
            entries.add((b, x, i, j, w))
            toks = np.arange(i * n, min((i + 1) * n, t))
            on = (w >> (toks - i * n)) & 1 == 1
            keys = np.arange(j * bk, min((j + 1) * bk, s))
            seen = on[:, None] & np.ones(len(keys), bool)[None, :]
            if causal:
                seen &= keys[None, :] <= toks[:, None] + q_offset
            got[b, x, toks[:, None], keys[None, :]] |= seen
            if full[b, x, i, e]:  # every token of the tile sees every key of the tile
                assert len(toks) == n and len(keys) == bk and seen.all()
    np.testing.assert_array_equal(got, want)
    q_idx, q_cnt, q_words = map(np.asarray, (sp.q_indices, sp.q_counts, qw))
    by_key = {
        (b, x, q_idx[b, x, j, e], j, int(q_words[b, x, j, e]) & 0xFFFFFFFF)
        for b, x, j in np.ndindex(q_cnt.shape)
        for e in range(q_cnt[b, x, j])
    }
    assert by_key == entries


def _call(bits, h, kh, *, config=None, col_block=64, row_capacity=2, segments=False):
    t = bits.shape[2]
    q, k, v, _ = R.random_qkv(1, t, h, kh, 64)
    seg = jnp.zeros((1, t), jnp.int32) if segments else None
    pattern = P.TokenBlockMask(
        bits, col_block=col_block, group=h // bits.shape[1], row_capacity=row_capacity
    )
    return call_lib.Call(
        q=q,
        k=k,
        v=v,
        pattern=pattern,
        sparsity=None,
        q_segment_ids=seg,
        kv_segment_ids=seg,
        scale=1.0,
        logits_soft_cap=None,
        q_offset=0,
        config=config or js.Config(),
    )


def test_packed_applies_only_where_rows_can_share_a_tile():
    shared = jnp.ones((1, 2, 8, 1), bool)  # one bit head per kv head, group 8
    assert packed.applies(_call(shared, 16, 2))
    assert not packed.applies(_call(shared, 16, 2, config=js.Config(gpu_token_selection="routed")))
    assert not packed.applies(_call(shared, 16, 2, segments=True))
    assert not packed.applies(_call(shared, 16, 2, row_capacity=None))  # not per-token routed
    assert not packed.applies(_call(shared, 16, 2, col_block=32))  # key tiles are 64 or 128
    per_head = jnp.ones((1, 16, 8, 1), bool)  # MoBA: per query head, no group to pack
    assert not packed.applies(_call(per_head, 16, 2))
    assert not packed.applies(_call(jnp.ones((1, 1, 8, 1), bool), 16, 2))  # spans kv heads
    # 128-row tiles hold at most 32 tokens: a group of 2 would need 64 bits per word.
    assert not packed.applies(_call(jnp.ones((1, 4, 8, 1), bool), 8, 4))
    assert packed.applies(_call(jnp.ones((1, 4, 8, 1), bool), 8, 4, config=js.Config(block_q=64)))


def test_dkv_list_splits_bound_the_longest_list():
    assert packed.dkv_list_splits(1) == 1
    assert packed.dkv_list_splits(1024) == 2  # 16k tokens in 16-token tiles
    assert packed.dkv_list_splits(4096) == 8
    assert packed.dkv_list_splits(1 << 20) == 8


def test_config_checks_the_token_selection_layout():
    with pytest.raises(ValueError, match="gpu_token_selection must be 'packed', 'routed'"):
        js.Config(gpu_token_selection="pairs")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["packed", "routed"])
def test_nsa_like_selection_on_the_gpu(layout):
    """A GQA-shared per-token selection on the H100 against the dense f32 mask of its bits."""
    b, t, h, kh, cb, cap = 1, 4096, 16, 2, 64, 15
    bits = random_bits(np.random.default_rng(5), b, kh, t, t, cb, cap, 0, True)
    check_against_mask(
        bits, s=t, h=h, kh=kh, d=128, col_block=cb, cap=cap, causal=True, seed=6,
        config=js.Config(gpu_token_selection=layout, gpu_gathered_dkv=False),  # packed dK/dV
    )  # fmt: skip
