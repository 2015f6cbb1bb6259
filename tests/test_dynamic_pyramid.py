"""PSA (Pyramid): levels index for index; attention vs a dense concatenated-KV reference."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse import methods
from jaxsparse import patterns as P
from jaxsparse.patterns.dynamic import pyramid, pyramid_mask
from tests import dynamic_refs as R


def levels_reference(q, k, *, block_size, thresholds, causal, q_offset):
    """PSA's thresholdbound levels from pooled block scores (float64, loops)."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    b, t, h, d = q.shape
    s, kh = k.shape[1], k.shape[2]
    tb, sb = -(-t // block_size), -(-s // block_size)
    qm = np.stack([q[:, i * block_size : (i + 1) * block_size].mean(1) for i in range(tb)], 1)
    km = np.stack([k[:, j * block_size : (j + 1) * block_size].mean(1) for j in range(sb)], 1)
    out = np.zeros((b, h, tb, sb), np.int8)
    for bb, hh, i in np.ndindex(b, h, tb):
        last = q_offset + min((i + 1) * block_size, t) - 1
        vis = [j for j in range(sb) if not causal or j * block_size <= last]
        logits = np.array([qm[bb, i, hh] @ km[bb, j, hh // (h // kh)] for j in vis]) * d**-0.5
        p = np.exp(logits - logits.max())
        p /= p.sum()
        before = 0.0
        for n in sorted(range(len(vis)), key=lambda n: (-p[n], n)):
            level = next((lev + 1 for lev, tau in enumerate(thresholds) if before <= tau), 0)
            out[bb, hh, i, vis[n]] = level
            before += p[n]
        if causal and q_offset % block_size:  # straddling blocks: the first row's, full
            out[bb, hh, i, (q_offset + i * block_size) // block_size] = 1
    return out


def pyramid_reference(q, k, v, levels, *, block_size, num_levels, causal, q_offset):
    """ALGORITHMS.md 8.1: dense attention over [K^1; K^2; ...] with the level mask and bias."""
    t, s = q.shape[1], k.shape[1]
    ks, vs, info = [], [], []
    for lev in range(1, num_levels + 1):
        f = 2 ** (lev - 1)
        n = -(-s // f)  # pooled keys: keys u*f .. min((u+1)*f, s) - 1, the last one shorter
        lo = np.arange(n) * f
        hi = np.minimum(lo + f, s)
        info += zip([lev] * n, lo // block_size, hi - lo, hi - 1, strict=True)
        # each pooled key's mean (whole-array ops: a slice per key made a graph of ~8k
        # slices at S=4096, which XLA:GPU did not compile within 7 minutes)
        count = jnp.asarray(hi - lo, jnp.float32)[None, :, None, None]
        for x, out in ((k, ks), (v, vs)):
            padded = jnp.pad(x.astype(jnp.float32), [(0, 0), (0, n * f - s), (0, 0), (0, 0)])
            out.append(padded.reshape(x.shape[0], n, f, *x.shape[2:]).sum(2) / count)
    k_cat = jnp.concatenate(ks, 1).astype(k.dtype)
    v_cat = jnp.concatenate(vs, 1).astype(v.dtype)
    lev_of, blk_of, count, last = (np.array(x) for x in zip(*info, strict=True))
    rows = np.arange(t) // block_size
    mask = np.asarray(levels)[:, :, rows][..., blk_of] == lev_of  # [B, H, T, S_cat]
    if causal:
        mask &= (last[None, :] <= q_offset + np.arange(t)[:, None])[None, None]
    bias = jnp.asarray(np.log(count), jnp.float32)[None, None, None, :]
    return k_cat, v_cat, jnp.asarray(mask), bias


@pytest.mark.parametrize(
    "causal, t, s",
    [
        (False, 40, 44),  # per level (S a multiple of the coarsest factor, 4)
        (True, 36, 36),
        (True, 20, 44),
        (True, 20, 42),  # the last pooled key of level 3 is shorter (a tail)
        (False, 40, 43),  # tails at levels 2 and 3, read by some query blocks
    ],
)
def test_pyramid_selection_and_attention(causal, t, s):
    bs, th = 8, (0.4, 0.6, 0.8)
    q, k, v, cot = R.random_qkv(2, t, 4, 2, 16, s=s, seed=21)
    off = s - t
    lev = R.jitted(
        pyramid.pyramid_select, q, k, block_size=bs, thresholds=th, causal=causal, q_offset=off
    )
    want = levels_reference(q, k, block_size=bs, thresholds=th, causal=causal, q_offset=off)
    np.testing.assert_array_equal(np.asarray(lev), want)
    assert {1, 2, 3} <= set(np.unique(want))  # several levels in use
    if not causal and s % 4:
        assert (want[..., -1] >= 2).any()  # a query block reads the tails' key block pooled
    pattern = P.Pyramid(block_size=bs, thresholds=th, causal=causal)

    def fn(q, k, v):
        return js.pyramid_attention(
            q,
            k,
            v,
            pattern=pattern,
            implementation="xla",
            config=js.Config(block_q=8, block_kv=8),
            return_lse=True,
        )

    def ref(q, k, v):
        k_cat, v_cat, mask, bias = pyramid_reference(
            q, k, v, want, block_size=bs, num_levels=3, causal=causal, q_offset=off
        )
        return R.dense_ref(q, k_cat, v_cat, mask, bias=bias)

    R.assert_close_to_ref(fn, ref, q, k, v, cot)


def test_causal_pyramid_with_unaligned_chunks_leaves_no_row_empty():
    # q_offset 20 of 8-key blocks, a band so narrow that one block a row is kept: the
    # key block of each query block's first row is read too, at full resolution.
    q, k, v, _ = R.random_qkv(1, 40, 2, 1, 8, s=60, seed=1)
    pattern = P.Pyramid(8, (0.01,), causal=True)
    levels = np.asarray(pattern.levels(q, k, q_offset=20))
    want = levels_reference(q, k, block_size=8, thresholds=(0.01,), causal=True, q_offset=20)
    np.testing.assert_array_equal(levels, want)
    out = js.pyramid_attention(q, k, v, pattern=pattern, implementation="xla")
    assert (np.abs(np.asarray(out)).sum(-1) > 0).all()


def test_pyramid_kv_is_the_oracles_concatenation():
    # `PyramidMask` states the selection over `pyramid_kv`'s keys: ragged S, the
    # levels' last pooled keys average fewer keys, as in the oracle.
    q, k, v, _ = R.random_qkv(1, 8, 2, 1, 8, s=43, seed=27)
    k_cat, v_cat = methods.pyramid_kv(k, v, num_levels=3)
    levels = np.zeros((1, 2, 1, 6), np.int32)
    want_k, want_v, *_ = pyramid_reference(
        q, k, v, levels, block_size=8, num_levels=3, causal=False, q_offset=35
    )
    assert k_cat.shape[1] == pyramid_mask.PyramidLayout(kv_len=43, block_size=8, num_levels=3).total
    np.testing.assert_allclose(k_cat, want_k, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(v_cat, want_v, rtol=1e-6, atol=1e-6)


def test_pooled_block_of_equal_keys_matches_full_resolution():
    # The log-bias makes a pooled block of identical keys carry exactly its full mass.
    bs, t = 8, 32
    q, k, v, _ = R.random_qkv(1, t, 2, 2, 8, seed=22)
    k = jnp.repeat(k[:, ::4], 4, axis=1)  # keys constant over groups of 4
    v = jnp.repeat(v[:, ::4], 4, axis=1)
    pattern = P.Pyramid(bs, (0.3, 0.5, 1.0))
    # Jitted: eager, every op compiles for these shapes (slow on CPU).
    out, levels = jax.jit(
        lambda q, k, v: js.pyramid_attention(q, k, v, pattern=pattern, return_levels=True)
    )(q, k, v)
    assert int((np.asarray(levels) == 3).sum()) > 0  # some blocks pooled 4x
    assert int((np.asarray(levels) == 0).sum()) == 0  # the last band is 1.0: nothing skipped
    dense = jax.jit(js.attention)(q, k, v)
    np.testing.assert_allclose(np.asarray(out), np.asarray(dense), atol=2e-6)


def test_pyramid_one_block_is_dense():
    q, k, v, _ = R.random_qkv(1, 6, 2, 1, 8, seed=23)
    out = jax.jit(lambda q, k, v: js.pyramid_attention(q, k, v, pattern=P.Pyramid(8, (0.5, 0.6))))(
        q, k, v
    )
    dense = jax.jit(js.attention)(q, k, v)
    np.testing.assert_allclose(np.asarray(out), np.asarray(dense), atol=2e-6)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(thresholds=(0.5, 1.2)), ValueError, r"thresholds\[1\]=1.2 must lie in \(0, 1\]"),
        (dict(thresholds=(0.0,)), ValueError, r"thresholds\[0\]=0.0 must lie in \(0, 1\]"),
        (dict(thresholds=(0.6, 0.5)), ValueError, "non-decreasing"),
        (dict(block_size=12, thresholds=(0.1, 0.2, 0.3, 0.4)), ValueError, "divisible by"),
        (dict(thresholds=()), TypeError, "non-empty"),
        (dict(thresholds="0.5"), TypeError, "non-empty tuple of fractions"),
        (dict(causal="yes"), TypeError, "causal must be a bool"),
    ],
)
def test_pyramid_bad_parameters(kwargs, err, match):
    with pytest.raises(err, match=match):
        P.Pyramid(**kwargs)


def test_pyramid_takes_thresholds_as_an_array():
    assert P.Pyramid(thresholds=np.array([0.5, 0.6])).thresholds == (0.5, 0.6)


def test_pyramid_attention_input_errors():
    pattern = P.Pyramid(block_size=16, thresholds=(0.5, 0.9))
    q, k, v, _ = R.random_qkv(1, 32, 3, 2, 8)
    with pytest.raises(ValueError, match="multiple of the number of key/value heads"):
        js.pyramid_attention(q, k, v, pattern=pattern)
    q, k, v, _ = R.random_qkv(1, 32, 4, 2, 8)
    with pytest.raises(ValueError, match="need a batch axis"):
        js.pyramid_attention(q[0], k[0], v[0], pattern=pattern)
    levels = pattern.levels(q, k, q_offset=0)
    with pytest.raises(TypeError, match="levels must be an integer array"):
        js.pyramid_attention(q, k, v, pattern=pattern, levels=levels.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"levels has shape \(1, 2, 2, 2\)"):
        js.pyramid_attention(q, k, v, pattern=pattern, levels=levels[:, :2])


def test_pyramid_is_used_through_pyramid_attention():
    q, k, v, _ = R.random_qkv(1, 8, 2, 2, 8)
    with pytest.raises(TypeError, match="pyramid_attention"):
        js.attention(q, k, v, pattern=P.Pyramid())
    assert math.isclose(P.Pyramid().thresholds[-1], 0.8)


def _kernel_case(t, s, *, causal, bs, thresholds, config, seed):
    """`pyramid_attention` with `config` against the dense concatenated-KV oracle (bf16)."""
    q, k, v, cot = R.random_qkv(1, t, 4, 2, 64 if config.interpret else 128, s=s, seed=seed,
                                dtype=jnp.bfloat16)  # fmt: skip
    off = s - t
    pattern = P.Pyramid(block_size=bs, thresholds=thresholds, causal=causal)
    levels = np.asarray(jax.jit(lambda q, k: pattern.levels(q, k, q_offset=off))(q, k))
    assert set(range(1, len(thresholds) + 1)) <= set(np.unique(levels))  # every level in use
    if not causal and s % 2 ** (len(thresholds) - 1):
        assert (levels[..., -1] >= 2).any()  # some query block reads the tails' block pooled

    def fn(q, k, v):
        return js.pyramid_attention(
            q, k, v, pattern=pattern, implementation="pallas_gpu", config=config,
            return_lse=True, levels=jnp.asarray(levels),
        )  # fmt: skip

    def ref(q, k, v):
        k_cat, v_cat, mask, bias = pyramid_reference(
            q, k, v, levels, block_size=bs, num_levels=len(thresholds), causal=causal,
            q_offset=off,
        )  # fmt: skip
        return R.dense_ref(q, k_cat, v_cat, mask, bias=bias)

    R.assert_close_to_ref(fn, ref, q, k, v, cot, tol=2e-2)


@pytest.mark.parametrize(
    "t, s, causal, seed",
    [
        (150, 256, True, 24),  # padded 32- and 16-key blocks, chunked causal
        (130, 251, False, 26),  # ragged S: the levels on the kernels, their tails beside them
    ],
)
def test_pyramid_levels_on_the_gpu_kernels_in_interpret_mode(t, s, causal, seed):
    """Per level on the kernels (interpret mode) against the dense concatenated-KV oracle."""
    _kernel_case(
        t, s, causal=causal, bs=64, thresholds=(0.3, 0.5, 0.7),
        config=js.Config(interpret=True), seed=seed,
    )  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize(
    "causal, s",
    [
        (True, 4096),
        (False, 4093),  # ragged: tails at levels 2-4, read by some query blocks
    ],
)
def test_pyramid_on_the_gpu(causal, s):
    """PSA's defaults (blocks of 128, four levels) at about 4k on a Hopper GPU."""
    _kernel_case(
        s, s, causal=causal, bs=128, thresholds=(0.5, 0.7, 0.8, 0.9),
        config=js.Config(), seed=25,
    )  # fmt: skip


def test_pyramid_under_jit_and_vmap():
    # jax.jit(jax.vmap(pyramid_attention)) over an extra leading axis, odd lengths (a
    # pooled tail at level 3), GQA: output, lse and every gradient against the oracle.
    bs, th, t, s = 8, (0.4, 0.6, 0.8), 20, 42
    q, k, v, cot = R.random_qkv(2, t, 2, 1, 8, s=s, seed=21)
    want = levels_reference(q, k, block_size=bs, thresholds=th, causal=True, q_offset=s - t)
    assert {1, 2, 3} <= set(np.unique(want))  # every level in use
    pattern = P.Pyramid(block_size=bs, thresholds=th, causal=True)

    def one(q, k, v):
        return js.pyramid_attention(
            q, k, v, pattern=pattern, implementation="xla",
            config=js.Config(block_q=8, block_kv=8), return_lse=True,
        )  # fmt: skip

    def ref(q, k, v):
        k_cat, v_cat, mask, bias = pyramid_reference(
            q, k, v, want, block_size=bs, num_levels=3, causal=True, q_offset=s - t
        )
        return R.dense_ref(q, k_cat, v_cat, mask, bias=bias)

    R.assert_close_to_ref(R.over_leading_axis(one), ref, q, k, v, cot)
