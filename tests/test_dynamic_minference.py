"""MInference's prefill patterns: VerticalSlash, BlockTopK (selection index for index), AShape."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse import patterns as P
from jaxsparse.patterns.dynamic import block_topk, vertical_slash
from tests import dynamic_refs as R


def _ranked(scores, n):
    """Indices of the n best scores, ties by lower index (the library's tie rule)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:n]


def last_q_probs_np(q, k, last_q, q_offset):
    """Causal softmax of the last queries, float64: `[B, H, n, S]` and their positions."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    b, t, h, d = q.shape
    s, kh = k.shape[1], k.shape[2]
    n = min(last_q, t)
    probs = np.zeros((b, h, n, s))
    pos = q_offset + np.arange(t - n, t)
    for bb, hh, r in np.ndindex(b, h, n):
        logit = k[bb, : pos[r] + 1, hh // (h // kh)] @ q[bb, t - n + r, hh] * d**-0.5
        e = np.exp(logit - logit.max())
        probs[bb, hh, r, : pos[r] + 1] = e / e.sum()
    return probs, pos


def vertical_slash_reference(q, k, *, v_size, s_size, last_q, init_cols, local_diags, q_offset):
    probs, pos = last_q_probs_np(q, k, last_q, q_offset)
    b, h, n, s = probs.shape
    vert = np.zeros((b, h, s), bool)
    slash = np.zeros((b, h, s), bool)
    for bb, hh in np.ndindex(b, h):
        col = probs[bb, hh].sum(0)
        col[:init_cols] = np.inf
        diag = np.zeros(s)
        for r, j in np.ndindex(n, s):
            if pos[r] - j >= 0:
                diag[pos[r] - j] += probs[bb, hh, r, j]
        diag[:local_diags] = np.inf
        vert[bb, hh, _ranked(col, min(s, max(v_size, init_cols)))] = True
        slash[bb, hh, _ranked(diag, min(s, max(s_size, local_diags)))] = True
    return vert, slash


def vertical_slash_mask_np(vert, slash, t, s, q_offset):
    qpos = q_offset + np.arange(t)[:, None]
    j = np.arange(s)[None, :]
    diag = np.take(slash, np.clip(qpos - j, 0, s - 1), axis=-1)  # [B, H, T, S]
    return (j <= qpos)[None, None] & (vert[:, :, None, :] | diag)


@pytest.mark.parametrize("t, s, tiles", [(45, 45, (16, 16)), (24, 40, (8, 16))])
def test_vertical_slash_selection_and_attention(t, s, tiles):
    q, k, v, cot = R.random_qkv(2, t, 4, 2, 16, s=s, seed=5)
    kw = dict(v_size=6, s_size=5, last_q=8, init_cols=2, local_diags=3, q_offset=s - t)
    vert, slash = R.jitted(
        vertical_slash.vertical_slash_select,
        q,
        k,
        vertical_size=6,
        slash_size=5,
        last_q=8,
        init_columns=2,
        local_diagonals=3,
        q_offset=s - t,
    )
    want_v, want_s = vertical_slash_reference(q, k, **kw)
    np.testing.assert_array_equal(np.asarray(vert), want_v)
    np.testing.assert_array_equal(np.asarray(slash), want_s)
    mask = jnp.asarray(vertical_slash_mask_np(want_v, want_s, t, s, s - t))
    pattern = P.VerticalSlash(
        vertical_size=6, slash_size=5, last_q=8, init_columns=2, local_diagonals=3
    )

    def fn(q, k, v):
        return js.attention(
            q,
            k,
            v,
            pattern=pattern,
            implementation="xla",
            config=js.Config(block_q=tiles[0], block_kv=tiles[1]),
            return_lse=True,
        )

    R.assert_close_to_ref(fn, lambda q, k, v: R.dense_ref(q, k, v, mask), q, k, v, cot)

    def gathered(q, k, v):  # columns gathered and merged by lse: the same exact mask
        return js.vertical_slash_attention(
            q, k, v, pattern=pattern, implementation="xla", return_lse=True
        )

    R.assert_close_to_ref(gathered, lambda q, k, v: R.dense_ref(q, k, v, mask), q, k, v, cot)


def block_topk_reference(q, k, block_size, top_k, q_offset):
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    b, t, h, _ = q.shape
    s, kh = k.shape[1], k.shape[2]
    tb, sb = -(-t // block_size), -(-s // block_size)
    qm = np.stack([q[:, i * block_size : (i + 1) * block_size].mean(1) for i in range(tb)], 1)
    km = np.stack([k[:, j * block_size : (j + 1) * block_size].mean(1) for j in range(sb)], 1)
    bits = np.zeros((b, h, tb, sb), bool)
    for bb, hh, i in np.ndindex(b, h, tb):
        last = q_offset + min((i + 1) * block_size, t) - 1
        visible = [j for j in range(sb) if j * block_size <= last]
        score = {j: qm[bb, i, hh] @ km[bb, j, hh // (h // kh)] for j in visible}
        # Straddling blocks (q_offset not a multiple): the first row's key block first.
        first = (q_offset + i * block_size) // block_size if q_offset % block_size else -1
        for j in sorted(visible, key=lambda j: (j != first, -score[j], j))[:top_k]:
            bits[bb, hh, i, j] = True
    return bits


@pytest.mark.parametrize(
    "t, s, bs, top_k, tiles",
    [(50, 50, 8, 3, None), (21, 37, 6, 2, (8, 8)), (40, 60, 8, 1, None)],
)
def test_block_topk_selection_and_attention(t, s, bs, top_k, tiles):
    # The last two: q_offset not a multiple of block_size (16 of 6, 20 of 8).
    q, k, v, cot = R.random_qkv(2, t, 4, 2, 8, s=s, seed=6)
    bits = R.jitted(block_topk.block_topk_select, q, k, block_size=bs, top_k=top_k, q_offset=s - t)
    want = block_topk_reference(q, k, bs, top_k, s - t)
    np.testing.assert_array_equal(np.asarray(bits), want)
    mask = R.block_to_token(want, bs, bs, t, s) & R.causal_np(t, s, s - t)[None, None]
    assert mask.any(-1).all()  # every row sees a key (its block's first row's block)
    mask = jnp.asarray(mask)
    cfg = None if tiles is None else js.Config(block_q=tiles[0], block_kv=tiles[1])

    def fn(q, k, v):
        return js.attention(
            q,
            k,
            v,
            pattern=P.BlockTopK(block_size=bs, top_k=top_k),
            implementation="xla",
            config=cfg,
            return_lse=True,
        )

    R.assert_close_to_ref(fn, lambda q, k, v: R.dense_ref(q, k, v, mask), q, k, v, cot)


@pytest.mark.parametrize("q_offset", [16, 19])
def test_block_topk_select_takes_a_traced_offset(q_offset):
    # The straddling rule holds for an offset traced under jit as for a static one.
    q, k, _, _ = R.random_qkv(1, 21, 2, 1, 8, s=40, seed=3)
    fn = jax.jit(
        lambda q, k, off: block_topk.block_topk_select(q, k, block_size=8, top_k=1, q_offset=off)
    )
    got = fn(q, k, jnp.int32(q_offset))
    np.testing.assert_array_equal(np.asarray(got), block_topk_reference(q, k, 8, 1, q_offset))


def test_block_topk_selection_with_many_blocks_and_a_large_top_k():
    # 320 key blocks and top-100, as BlockTopK's defaults at 16k-64k (256-1024 blocks):
    # the top-k of such rows once recursed without end.
    q, k, _, _ = R.random_qkv(1, 640, 2, 1, 4, seed=7)
    bits = R.jitted(block_topk.block_topk_select, q, k, block_size=2, top_k=100, q_offset=0)
    np.testing.assert_array_equal(np.asarray(bits), block_topk_reference(q, k, 2, 100, 0))


def test_block_topk_lists_are_the_selection_when_tiles_are_blocks():
    q, k, _, _ = R.random_qkv(1, 64, 2, 2, 8, seed=7)
    pattern, sp = P.BlockTopK(block_size=16, top_k=2).select(q, k, q_offset=0, config=None)
    bits = block_topk.block_topk_select(q, k, block_size=16, top_k=2, q_offset=0)
    assert (sp.block_q, sp.block_kv) == (16, 16)
    assert sp.kv_indices.shape[-1] == 2  # the list bound is top_k: no wasted XLA work
    np.testing.assert_array_equal(np.asarray(sp.to_dense()) > 0, np.asarray(bits))
    # Tiles are the selection blocks: inside them only causality is left, an arithmetic
    # mask (GPU kernels cannot read the bits).
    assert isinstance(pattern, P.Causal)


def test_a_shape_rule_and_attention():
    p = P.AShape(n_init=2, n_local=3)
    got = P.dense_mask(p, q_len=7, kv_len=7, xp=np)[0]
    for i, j in np.ndindex(7, 7):
        assert got[i, j] == (j <= i and (j < 2 or i - j < 3))
    q, k, v, cot = R.random_qkv(1, 40, 2, 1, 8, seed=8)
    mask = jnp.asarray(P.dense_mask(P.AShape(n_init=4, n_local=9), q_len=40, kv_len=40))[None]

    def fn(q, k, v):
        return js.attention(
            q,
            k,
            v,
            pattern=P.AShape(n_init=4, n_local=9),
            return_lse=True,
            config=js.Config(block_q=8, block_kv=8),
        )

    R.assert_close_to_ref(fn, lambda q, k, v: R.dense_ref(q, k, v, mask), q, k, v, cot)
    # Sink + window tiles only: the middle of a long row is skipped.
    sp = js.sparsity.from_pattern(
        P.AShape(n_init=8, n_local=8), q_len=256, kv_len=256, block_q=8, block_kv=8
    )
    assert int(np.asarray(sp.kv_counts).max()) <= 3


def test_short_sequences_are_dense_causal():
    q, k, v, cot = R.random_qkv(1, 20, 2, 2, 8, seed=9)
    mask = jnp.asarray(R.causal_np(20, 20, 0))[None, None]
    for pattern in (P.VerticalSlash(), P.BlockTopK(), P.AShape()):

        def fn(q, k, v, pattern=pattern):
            return js.attention(q, k, v, pattern=pattern, return_lse=True)

        R.assert_close_to_ref(
            fn, lambda q, k, v: R.dense_ref(q, k, v, mask), q, k, v, cot, jit=True
        )


@pytest.mark.parametrize(
    "pattern",
    [
        P.VerticalSlash(vertical_size=3, slash_size=4, last_q=4, init_columns=1, local_diagonals=2),
        P.BlockTopK(block_size=8, top_k=2),
        P.FlexPrefill(block_size=8, min_budget=8),
    ],
    ids=repr,
)
def test_decoding_is_dense_causal(pattern):
    """One query over 77 keys: budgets this small would keep a few keys of a prefill."""
    q, k, v, cot = R.random_qkv(2, 1, 4, 2, 16, s=77, seed=11)
    mask = jnp.asarray(R.causal_np(1, 77, 76))[None, None]

    def fn(q, k, v):
        return js.attention(q, k, v, pattern=pattern, return_lse=True)

    ref = lambda q, k, v: R.dense_ref(q, k, v, mask)  # noqa: E731
    R.assert_close_to_ref(fn, ref, q, k, v, cot, jit=True)
    if isinstance(pattern, P.VerticalSlash):  # the gathered columns' form too

        def gathered(q, k, v):
            return js.vertical_slash_attention(q, k, v, pattern=pattern, return_lse=True)

        R.assert_close_to_ref(gathered, ref, q, k, v, cot, jit=True)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: P.VerticalSlash(vertical_size=0), "vertical_size=0 must be >= 1"),
        (lambda: P.VerticalSlash(last_q=0), "last_q=0 must be >= 1"),
        (lambda: P.BlockTopK(top_k=0), "top_k=0 must be >= 1"),
        (lambda: P.BlockTopK(block_size=0), "block_size=0 must be >= 1"),
        (lambda: P.AShape(n_local=0), "n_local=0 must be >= 1"),
    ],
)
def test_bad_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_vertical_slash_attention_input_errors():
    q, k, v, _ = R.random_qkv(1, 32, 3, 2, 8)
    with pytest.raises(ValueError, match="multiple of the number of key/value heads"):
        js.vertical_slash_attention(q, k, v)
    q, k, v, _ = R.random_qkv(1, 32, 4, 2, 8)
    with pytest.raises(ValueError, match="need a batch axis"):
        js.vertical_slash_attention(q[0], k[0], v[0])


def test_causal_only():
    q, k, v, _ = R.random_qkv(1, 9, 2, 2, 8, s=4)
    for pattern in (P.VerticalSlash(), P.BlockTopK()):
        with pytest.raises(ValueError, match="causal-only"):
            js.attention(q, k, v, pattern=pattern)


def test_vertical_slash_and_block_topk_under_jit_and_vmap():
    # jax.jit(jax.vmap(...)) over an extra leading axis, odd lengths, GQA: output, lse
    # and every gradient against the dense reference of the reference selection.
    t = 45
    q, k, v, cot = R.random_qkv(2, t, 4, 2, 16, seed=15)
    cfg = js.Config(block_q=16, block_kv=16)
    vert, slash = vertical_slash_reference(
        q, k, v_size=6, s_size=5, last_q=8, init_cols=2, local_diags=3, q_offset=0
    )
    vs_mask = jnp.asarray(vertical_slash_mask_np(vert, slash, t, t, 0))
    vs = P.VerticalSlash(vertical_size=6, slash_size=5, last_q=8, init_columns=2, local_diagonals=3)
    bits = block_topk_reference(q, k, 6, 2, 0)
    bt_mask = jnp.asarray(R.block_to_token(bits, 6, 6, t, t) & R.causal_np(t, t, 0)[None, None])
    for pattern, mask in ((vs, vs_mask), (P.BlockTopK(block_size=6, top_k=2), bt_mask)):

        def one(q, k, v, pattern=pattern):
            return js.attention(
                q, k, v, pattern=pattern, implementation="xla", config=cfg, return_lse=True
            )

        R.assert_close_to_ref(
            R.over_leading_axis(one), lambda q, k, v, m=mask: R.dense_ref(q, k, v, m), q, k, v, cot
        )
