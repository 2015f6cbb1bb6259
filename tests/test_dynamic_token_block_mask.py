"""TokenBlockMask / VerticalSlashMask / PyramidMask: element masks and their tile lists."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsparse import patterns as P
from jaxsparse.patterns.dynamic import (
    position_causal,
    pyramid_mask,
    token_block_mask,
    vertical_slash_mask,
)
from tests import dynamic_refs as R

rng = np.random.default_rng(0)


def _jit(builder):
    """A tile-list builder under jit: the pattern's arrays traced, the sizes static.

    One compile per geometry instead of one per op (eager, every op compiles anew).
    """

    def run(pattern, **sizes):
        return jax.jit(lambda p: builder(p, **sizes))(pattern)

    return run


GEOMETRIES = [
    # t, s, q_offset, row_block, col_block, bq, bk, hx, group, causal
    (13, 13, 0, 1, 4, 4, 4, 2, 1, True),
    (13, 21, 8, 1, 5, 8, 4, 1, 2, True),  # chunked prefill, GQA-shared bits
    (16, 16, 0, 4, 4, 8, 8, 2, 1, True),
    (17, 19, 2, 3, 6, 4, 8, 2, 1, False),
    (9, 30, 0, 2, 7, 16, 16, 1, 1, False),
]


@pytest.mark.parametrize("geo", GEOMETRIES, ids=str)
def test_token_block_mask_rule_and_lists(geo):
    t, s, off, rb, cb, bq, bk, hx, group, causal = geo
    h = hx * group
    bits = rng.random((2, hx, -(-t // rb), -(-s // cb))) < 0.4
    p = P.TokenBlockMask(jnp.asarray(bits), row_block=rb, col_block=cb, group=group, causal=causal)
    sp = _jit(token_block_mask.token_block_sparsity)(
        p, num_heads=h, block_q=bq, block_kv=bk, q_len=t, kv_len=s, q_offset=off
    )
    for b in range(2):
        one = P.TokenBlockMask(bits[b], row_block=rb, col_block=cb, group=group, causal=causal)
        got = P.dense_mask(one, q_len=t, kv_len=s, q_offset=off, num_heads=h, xp=np)
        # The rule, written out: bits[h // group, row // rb, key // cb] (and key <= query).
        want = np.zeros((h, t, s), bool)
        for hh, i, j in np.ndindex(h, t, s):
            want[hh, i, j] = bits[b, hh // group, i // rb, j // cb] and (not causal or j <= off + i)
        np.testing.assert_array_equal(np.broadcast_to(got, want.shape), want)
        sp_b = sp.replace(
            **{
                f: getattr(sp, f)[b : b + 1]
                for f in ("kv_indices", "kv_counts", "kv_full", "q_indices", "q_counts", "q_full")
            }
        )
        R.assert_lists_cover_mask(sp_b, want, exact=not causal)
        # The key-major lists are the transpose of the query-major ones.
        np.testing.assert_array_equal(
            np.asarray(sp_b.to_dense_transposed()), np.swapaxes(np.asarray(sp_b.to_dense()), -1, -2)
        )


def test_token_block_mask_bind_checks_shapes():
    p = P.TokenBlockMask(jnp.zeros((1, 2, 5, 3), bool), row_block=1, col_block=4)
    with pytest.raises(ValueError, match=r"need \[B, Hx, 6, 3\]"):
        p.bind(q_len=6, kv_len=12, q_offset=0, num_heads=2)
    with pytest.raises(ValueError, match="bit heads"):
        p.bind(q_len=5, kv_len=12, q_offset=0, num_heads=3)
    with pytest.raises(ValueError, match="group=0 must be >= 1"):
        P.TokenBlockMask(jnp.zeros((1, 1, 1, 1), bool), group=0)


@pytest.mark.parametrize("t, s, off, bq, bk", [(11, 11, 0, 4, 4), (7, 20, 13, 8, 4)])
def test_vertical_slash_mask_rule_and_lists(t, s, off, bq, bk):
    vert = rng.random((2, 3, s)) < 0.15
    slash = rng.random((2, 3, s)) < 0.2
    p = P.VerticalSlashMask(jnp.asarray(vert), jnp.asarray(slash))
    sp = _jit(vertical_slash_mask.vertical_slash_sparsity)(
        p, num_heads=3, block_q=bq, block_kv=bk, q_len=t, kv_len=s, q_offset=off
    )
    for b in range(2):
        one = P.VerticalSlashMask(vert[b], slash[b])
        got = P.dense_mask(one, q_len=t, kv_len=s, q_offset=off, num_heads=3, xp=np)
        want = np.zeros((3, t, s), bool)
        for hh, i, j in np.ndindex(3, t, s):
            qpos = off + i
            want[hh, i, j] = j <= qpos and (vert[b, hh, j] or slash[b, hh, qpos - j])
        np.testing.assert_array_equal(got, want)
        sp_b = sp.replace(
            **{
                f: getattr(sp, f)[b : b + 1]
                for f in ("kv_indices", "kv_counts", "kv_full", "q_indices", "q_counts", "q_full")
            }
        )
        R.assert_lists_cover_mask(sp_b, want, exact=False)


@pytest.mark.parametrize("causal", [False, True])
def test_pyramid_mask_rule_and_lists(causal):
    t, s, bs, nl, bq, bk = 12, 14, 4, 3, 4, 4
    lay = pyramid_mask.PyramidLayout(s, bs, nl)
    assert lay.total == 14 + 7 + 4
    levels = rng.integers(0, nl + 1, (1, 2, 3, 4)).astype(np.int8)
    p = pyramid_mask.PyramidMask(
        jnp.asarray(levels), block_size=bs, num_levels=nl, kv_len=s, causal=causal
    )
    got = P.dense_mask(
        pyramid_mask.PyramidMask(levels[0], block_size=bs, num_levels=nl, kv_len=s, causal=causal),
        q_len=t,
        kv_len=lay.total,
        q_offset=s - t,
        num_heads=2,
        xp=np,
    )
    cols = lay.columns
    want = np.zeros((2, t, lay.total), bool)
    for hh, i, c in np.ndindex(2, t, lay.total):
        lev, blk, last = cols["level"][c], cols["block"][c], cols["last"][c]
        want[hh, i, c] = levels[0, hh, i // bs, blk] == lev and (not causal or last <= s - t + i)
    np.testing.assert_array_equal(got, want)
    sp = _jit(pyramid_mask.pyramid_sparsity)(
        p, num_heads=2, q_len=t, q_offset=s - t, block_q=bq, block_kv=bk
    )
    R.assert_lists_cover_mask(sp, want[None], exact=not causal)
    # A call without `sparsity` builds the same lists through the pattern's hook.
    hook = p.device_sparsity(
        num_heads=2, q_len=t, kv_len=lay.total, q_offset=s - t, block_q=bq, block_kv=bk
    )
    np.testing.assert_array_equal(hook.to_dense(), sp.to_dense())


def test_vertical_slash_mask_without_columns():
    vert = rng.random((1, 2, 12)) < 0.3
    slash = rng.random((1, 2, 12)) < 0.4
    p = P.VerticalSlashMask(vert[0], slash[0], include_vertical=False)
    got = P.dense_mask(p, q_len=12, kv_len=12, num_heads=2, xp=np)
    for hh, i, j in np.ndindex(2, 12, 12):
        assert got[hh, i, j] == (j <= i and slash[0, hh, i - j] and not vert[0, hh, j])
    sp = _jit(vertical_slash_mask.vertical_slash_sparsity)(
        P.VerticalSlashMask(jnp.asarray(vert), jnp.asarray(slash), include_vertical=False),
        num_heads=2,
        block_q=4,
        block_kv=4,
        q_len=12,
        kv_len=12,
        q_offset=0,
    )
    R.assert_lists_cover_mask(sp, got[None], exact=False)


def test_position_causal_rule_and_lists():
    positions = np.sort(rng.choice(40, size=(1, 2, 9), replace=True), axis=-1).astype(np.int32)
    p = position_causal.PositionCausal(jnp.asarray(positions))
    got = P.dense_mask(
        position_causal.PositionCausal(positions[0]),
        q_len=15,
        kv_len=9,
        q_offset=25,
        num_heads=2,
        xp=np,
    )
    want = positions[0][:, None, :] <= (25 + np.arange(15))[None, :, None]
    np.testing.assert_array_equal(got, want)
    sp = _jit(position_causal.position_causal_sparsity)(
        p, num_heads=2, block_q=4, block_kv=4, q_len=15, q_offset=25
    )
    R.assert_lists_cover_mask(sp, want[None], exact=True)


def test_pack_bits_round_trip_and_layout():
    bits = rng.random((2, 3, 5, 70)) < 0.5
    words = token_block_mask.pack_bits(jnp.asarray(bits))
    assert words.shape == (2, 3, 5, 3) and words.dtype == jnp.uint32
    np.testing.assert_array_equal(np.asarray(token_block_mask.unpack_bits(words, 70)), bits)
    w = np.asarray(words)
    for c in (0, 31, 32, 69):  # bit c % 32 of word c // 32
        np.testing.assert_array_equal((w[..., c // 32] >> (c % 32)) & 1, bits[..., c])


def test_batched_patterns_passed_without_sparsity_build_their_own_lists():
    """A TokenBlockMask, VerticalSlashMask or PositionCausal given to `attention` without
    `sparsity` (eagerly: concrete arrays; and under jit) equals the dense oracle of its mask."""
    from jaxsparse.patterns import materialize

    b, t, h, kh, d = 2, 24, 2, 1, 8
    q, k, v, cot = R.random_qkv(b, t, h, kh, d, seed=3)
    bits = jnp.asarray(rng.random((b, h, t, 4)) < 0.5)
    vert = jnp.asarray(rng.random((b, h, t)) < 0.2)
    slash = jnp.asarray(rng.random((b, h, t)) < 0.2)
    patterns = (
        P.TokenBlockMask(bits, row_block=1, col_block=6, causal=True, q_offset=0),
        P.VerticalSlashMask(vert, slash, q_offset=0),
    )
    kw = dict(implementation="xla", return_lse=True)
    for pattern in patterns:
        mask = jnp.stack(
            [
                materialize.dense_mask(
                    jax.tree.map(lambda x, i=i: x[i], pattern), q_len=t, kv_len=t, num_heads=h
                )
                for i in range(b)
            ]
        )
        _assert_eager_and_jitted(q, k, v, pattern, R.dense_ref(q, k, v, mask), **kw)
    # PositionCausal: 9 gathered keys at ascending positions, queries at 25..39.
    positions = np.sort(rng.choice(40, size=(b, h, 9)), axis=-1).astype(np.int32)
    q, k, v, _ = R.random_qkv(b, 15, h, kh, d, s=9, seed=4)
    want = R.dense_ref(q, k, v, positions[:, :, None, :] <= (25 + np.arange(15))[:, None])
    pattern = position_causal.PositionCausal(jnp.asarray(positions))
    _assert_eager_and_jitted(q, k, v, pattern, want, q_offset=25, **kw)


def _assert_eager_and_jitted(q, k, v, pattern, want, **kw):
    """`attention(..., pattern)` (no `sparsity`), eagerly and under jit, equals `want`."""
    import jaxsparse as js

    eager = js.attention(q, k, v, pattern=pattern, **kw)
    jitted = jax.jit(lambda q, k, v, p: js.attention(q, k, v, pattern=p, **kw))(q, k, v, pattern)
    for got in (eager, jitted):
        np.testing.assert_allclose(got[0], want[0], atol=1e-5)
        np.testing.assert_allclose(got[1], want[1], atol=1e-5)


@pytest.mark.parametrize(
    "t, s, block, k",
    [(64, 64, 16, 2), (61, 77, 16, 3), (64, 64, 32, 1), (40, 40, 8, 2)],  # last: tiles of 64
)
def test_block_selection_lists_cover_the_bits_and_are_bounded(t, s, block, k):
    # BlockTopK-like bits: k kept blocks per query block (where visible), causal.
    off = s - t
    tb, sb = -(-t // block), -(-s // block)
    keep = np.zeros((1, 2, tb, sb), bool)
    for h, i in np.ndindex(2, tb):
        last = min(sb - 1, (off + min((i + 1) * block, t) - 1) // block)
        keep[0, h, i, rng.choice(last + 1, size=min(k, last + 1), replace=False)] = True
    pattern, sp = jax.jit(
        lambda bits: token_block_mask.block_selection(
            bits, block_size=block, q_len=t, kv_len=s, q_offset=off, num_heads=2, max_selected=k
        )
    )(jnp.asarray(keep))
    one = P.TokenBlockMask(keep[0], row_block=block, col_block=block, causal=True)
    want = np.asarray(P.dense_mask(one, q_len=t, kv_len=s, q_offset=off, num_heads=2, xp=np))
    R.assert_lists_cover_mask(sp, np.broadcast_to(want, (2, t, s)), exact=False)
    if sp.block_kv == block:  # tiles = blocks: k per row, and only causality is left
        assert sp.kv_indices.shape[-1] == min(sb, k)
        assert isinstance(pattern, P.Causal)
    else:  # a tile spans several blocks: the kernel also reads the bits
        assert isinstance(pattern, P.TokenBlockMask)


def test_batched_patterns_gradients_on_odd_lengths_under_jit_vmap():
    """TokenBlockMask and VerticalSlashMask through `attention` (no `sparsity`) on odd
    lengths (37 of 16-token tiles) with GQA, under jax.jit(jax.vmap(...)) over an extra
    leading axis with the pattern's arrays split alongside q, k, v: output, lse, dq, dk,
    dv against the dense oracle of each example's mask."""
    import jaxsparse as js
    from jaxsparse.patterns import materialize

    b, t, h, kh, d = 2, 37, 4, 2, 8
    q, k, v, cot = R.random_qkv(b, t, h, kh, d, seed=5)
    r = np.random.default_rng(1)
    bits = r.random((b, 2, -(-t // 3), -(-t // 5))) < 0.5  # 2 bit heads, each for 2 heads
    vert = r.random((b, h, t)) < 0.2
    slash = r.random((b, h, t)) < 0.2
    slash[..., 0] = True  # no empty row
    cfg = js.Config(block_q=16, block_kv=16)

    def token_block(bits):
        return P.TokenBlockMask(bits, row_block=3, col_block=5, group=2, causal=True)

    cases = ((token_block, (bits,)), (P.VerticalSlashMask, (vert, slash)))
    for make, arrays in cases:
        per_example = [make(*(a[i] for a in arrays)) for i in range(b)]
        mask = jnp.stack(
            [materialize.dense_mask(p, q_len=t, kv_len=t, num_heads=h) for p in per_example]
        )
        arrays = tuple(jnp.asarray(a) for a in arrays)

        def one(q, k, v, *arrays, make=make):
            return js.attention(
                q, k, v, pattern=make(*arrays), implementation="xla", config=cfg, return_lse=True
            )

        def fn(q, k, v, one=one, arrays=arrays):
            return R.over_leading_axis(one)(q, k, v, *arrays)

        R.assert_close_to_ref(fn, lambda q, k, v, m=mask: R.dense_ref(q, k, v, m), q, k, v, cot)
