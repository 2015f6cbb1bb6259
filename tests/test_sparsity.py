"""BlockSparsity: host metadata equals the block-OR of the element mask; device builders agree."""

from __future__ import annotations

import itertools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxsparse import patterns as P
from jaxsparse import sparsity as S
from jaxsparse.patterns import base as pbase
from tests import strategies


def expected_codes(mask, t, s, bq, bk):
    """Tile codes from an element mask [H, T, S]: any -> non-empty, all valid -> full."""
    h = mask.shape[0]
    tb, sb = math.ceil(t / bq), math.ceil(s / bk)
    m = np.zeros((h, tb * bq, sb * bk), bool)
    m[:, :t, :s] = mask
    valid = np.zeros((tb * bq, sb * bk), bool)
    valid[:t, :s] = True
    m = m.reshape(h, tb, bq, sb, bk)
    valid = valid.reshape(tb, bq, sb, bk)
    nonempty = m.any((2, 4))
    full = (m | ~valid).all((2, 4)) & (np.arange(sb) * bk + bk <= s)  # padding is never full
    return np.where(nonempty, np.where(full, P.FULL, P.PARTIAL), P.EMPTY).astype(np.int8)


def check_list_invariants(indices, counts, full, num_cols):
    kmax = indices.shape[-1]
    e = np.arange(kmax)
    valid = e < counts[..., None]
    assert (counts >= 0).all() and (counts <= kmax).all()
    assert ((indices >= 0) & (indices < num_cols)).all()
    # Strictly ascending within the count.
    steps = np.diff(indices, axis=-1)
    assert ((steps > 0) | ~valid[..., 1:]).all()
    # Past the count: repeat the last valid entry (0 for an empty row).
    last = np.take_along_axis(indices, np.maximum(counts - 1, 0)[..., None], -1)
    pad_value = np.where(counts[..., None] > 0, last, 0)
    assert (np.where(valid, indices, pad_value) == indices).all()
    assert not (full & ~valid).any()


def _classification_sweep():
    """Each primitive with a tile rule of its own, over small parameter grids (mostly unaligned
    tiles: a one-character slip in a tile rule shows only for some tile and parameter pairs)."""
    out = []
    for st_, bs, lb, hs in itertools.product((1, 2, 3, 4), (1, 2, 4), (0, 1, 2), (0, 1)):
        out.append(P.Strided(stride=st_, block_size=bs, local_blocks=lb, head_step=hs))
    for left, dil, right in itertools.product((0, 3, 7), (1, 2, 3), (0, 2)):
        out.append(P.Dilated(left=left, dilation=dil, right=right))
    for bs, w, n in itertools.product((1, 2, 3), (0, 1, 3, 4, 6), (0, 1)):
        out.append(P.PowerOfTwo(block_size=bs, window_blocks=w, sink_blocks=n))
    out += [P.ChunkedCausal(chunk_size=c) for c in (1, 3, 5)]
    out += [P.PrefixLM(prefix_length=n) for n in (0, 3, 7)]
    out += [P.SlidingWindow(left=a, right=b) for a, b in ((0, 0), (3, 1), (5, 4))]
    return out


@pytest.mark.parametrize("pattern", _classification_sweep(), ids=repr)
def test_tile_rules_over_a_sweep_of_tiles(pattern):
    # Deterministic: every tile shape up to 5x5 at two offsets, two heads (Strided's head_step).
    t, s = 16, 17
    for bq, bk, q_offset in itertools.product(range(1, 6), range(1, 6), (0, 3)):
        sp = S.from_pattern(
            pattern, q_len=t, kv_len=s, block_q=bq, block_kv=bk, num_heads=2, q_offset=q_offset
        )
        mask = P.dense_mask(pattern, q_len=t, kv_len=s, q_offset=q_offset, num_heads=2, xp=np)
        mask = np.broadcast_to(mask, (2, t, s))
        np.testing.assert_array_equal(
            np.broadcast_to(sp.to_dense()[0], (2,) + sp.to_dense().shape[2:]),
            expected_codes(mask, t, s, bq, bk),
            err_msg=f"{pattern!r} bq={bq} bk={bk} q_offset={q_offset}",
        )


@settings(max_examples=400)  # numpy only, about 6 s: the random mixes the sweep above lacks
@given(strategies.patterns, strategies.geometry())
def test_from_pattern_is_block_or_of_mask(pattern, geo):
    t, s, q_offset, bq, bk, h = geo
    sp = S.from_pattern(
        pattern, q_len=t, kv_len=s, block_q=bq, block_kv=bk, num_heads=h, q_offset=q_offset
    )
    mask = P.dense_mask(pattern, q_len=t, kv_len=s, q_offset=q_offset, num_heads=h, xp=np)
    want = expected_codes(mask, t, s, bq, bk)
    np.testing.assert_array_equal(sp.to_dense()[0], want)
    np.testing.assert_array_equal(sp.to_dense_transposed()[0], np.swapaxes(want, -1, -2))
    check_list_invariants(sp.kv_indices, sp.kv_counts, sp.kv_full, sp.num_kv_blocks)
    check_list_invariants(sp.q_indices, sp.q_counts, sp.q_full, sp.num_q_blocks)
    assert sp.num_heads == (h if pattern.head_dependent else 1)


@settings(max_examples=15)  # each example compiles new shapes
@given(strategies.patterns, strategies.geometry())
def test_device_compaction_matches_host(pattern, geo):
    t, s, q_offset, bq, bk, h = geo
    host = S.from_pattern(
        pattern, q_len=t, kv_len=s, block_q=bq, block_kv=bk, num_heads=h, q_offset=q_offset
    )
    names = ("kv_indices", "kv_counts", "kv_full", "q_indices", "q_counts", "q_full")

    @jax.jit  # traced codes; one compile per example (eager, every op compiles)
    def lists(codes):
        dev = S.from_block_codes(
            codes,
            block_q=bq,
            block_kv=bk,
            q_len=t,
            kv_len=s,
            q_offset=host.q_offset,
            max_kv_blocks=host.kv_indices.shape[-1],
            max_q_blocks=host.q_indices.shape[-1],
        )
        return [getattr(dev, name) for name in names]

    for name, got in zip(names, lists(jnp.asarray(host.to_dense())), strict=True):
        np.testing.assert_array_equal(np.asarray(got), getattr(host, name), name)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 40)),
    density=st.floats(0.0, 1.0),
    kmax=st.one_of(st.none(), st.integers(1, 45)),
)
def test_device_lists_are_the_ascending_non_empty_tiles(seed, shape, density, kmax):
    # Random codes, rows truncated at kmax: every row lists its first non-empty
    # columns in ascending order, then repeats the last (0 for an empty row).
    rng = np.random.default_rng(seed)
    h, tb, sb = shape
    codes = np.where(rng.random(shape) < density, rng.integers(1, 3, shape), 0).astype(np.int8)
    sp = S.from_block_codes(
        jnp.asarray(codes), block_q=4, block_kv=4, q_len=4 * tb, kv_len=4 * sb, max_kv_blocks=kmax
    )
    width = sb if kmax is None else min(kmax, sb)
    for hh, i in np.ndindex(h, tb):
        cols = np.flatnonzero(codes[hh, i])[:width]
        n = len(cols)
        want = np.concatenate([cols, np.full(width - n, cols[-1] if n else 0)])
        np.testing.assert_array_equal(np.asarray(sp.kv_indices[0, hh, i]), want)
        assert int(sp.kv_counts[0, hh, i]) == n
        np.testing.assert_array_equal(
            np.asarray(sp.kv_full[0, hh, i]), (np.arange(width) < n) & (codes[hh, i][want] == 2)
        )


def test_host_codes_refuse_a_cap_that_would_cut_a_list():
    # The query-major lists cut at max_kv_blocks while the key-major ones (the backward's)
    # kept every tile: forward and backward over different tiles. Host codes are checked.
    geo = dict(block_q=4, block_kv=8, q_len=13, kv_len=29)
    with pytest.raises(
        ValueError, match="max_kv_blocks=1 would cut a query block row that lists 4"
    ):
        S.from_block_mask(np.ones((4, 4), bool), max_kv_blocks=1, **geo)
    with pytest.raises(ValueError, match="max_q_blocks=2 would cut a key block column"):
        S.from_block_codes(np.full((4, 4), 2, np.int8), max_q_blocks=2, **geo)
    sp = S.from_block_mask(np.eye(4, dtype=bool), max_kv_blocks=1, **geo)  # a true bound
    np.testing.assert_array_equal(
        np.asarray(sp.to_dense()), np.swapaxes(np.asarray(sp.to_dense_transposed()), -1, -2)
    )


def test_segment_codes_name_bad_ids():
    with pytest.raises(ValueError, match="one batch size"):
        S.segment_codes(np.zeros((2, 13), int), np.zeros((3, 29), int), block_q=4, block_kv=4)
    with pytest.raises(ValueError, match=r"q_segment_ids must be integer ids \[B, length\]"):
        S.segment_codes(np.zeros(13, int), np.zeros((1, 29), int), block_q=4, block_kv=4)
    with pytest.raises(ValueError, match="kv_segment_ids must be integer ids"):
        S.segment_codes(np.zeros((1, 13), int), np.zeros((1, 29)), block_q=4, block_kv=4)


def test_out_of_range_host_indices_and_unbroadcastable_codes_are_named():
    import jaxsparse as js

    sp = S.from_pattern(P.Causal(), q_len=16, kv_len=16, block_q=8, block_kv=8)
    bad = sp.replace(kv_indices=sp.kv_indices + 5)
    q = jnp.ones((1, 16, 1, 8))
    with pytest.raises(ValueError, match=r"kv_indices hold 5..6, outside \[0, 2\) tiles"):
        js.attention(q, q, q, pattern=P.Causal(), sparsity=bad)
    for side, count in (("kv", 3), ("q", -1)):  # lists here are 2 wide
        bad = sp.replace(**{f"{side}_counts": np.full_like(sp.kv_counts, count)})
        with pytest.raises(
            ValueError, match=rf"{side}_counts hold {count}..{count}, outside \[0, 2\]"
        ):
            js.attention(q, q, q, pattern=P.Causal(), sparsity=bad)
    with pytest.raises(ValueError, match="do not broadcast"):
        S.intersect_codes(np.zeros((2, 3), np.int8), np.zeros((4, 5), np.int8))


def test_element_mask_codes_take_bool_masks_and_int_blocks():
    with pytest.raises(TypeError, match="mask must be bool"):
        S.codes_from_element_mask(np.full((8, 8), 2), block_q=4, block_kv=4)  # 2 & True == 0
    with pytest.raises(ValueError, match="block_q=0 must be >= 1"):
        S.codes_from_element_mask(np.ones((8, 8), bool), block_q=0, block_kv=4)
    with pytest.raises(TypeError, match="block_kv must be an int"):
        S.codes_from_element_mask(np.ones((8, 8), bool), block_q=4, block_kv=4.0)


def test_explicit_masks_host_and_traced_agree():
    rng = np.random.default_rng(0)
    bm = rng.random((2, 4, 5)) < 0.4
    p = P.BlockMask(bm, block_q=8, block_kv=6)
    host = S.from_pattern(p, q_len=30, kv_len=27, block_q=8, block_kv=6, num_heads=2)
    dev = jax.jit(
        lambda m: S.from_block_mask(m, block_q=8, block_kv=6, q_len=30, kv_len=27).to_dense()
    )(jnp.asarray(bm))
    np.testing.assert_array_equal(host.to_dense(), np.asarray(dev))
    # Tiles that are a quarter of the mask's blocks classify the same way.
    fine = S.from_pattern(p, q_len=30, kv_len=27, block_q=4, block_kv=3, num_heads=2)
    mask = P.dense_mask(p, q_len=30, kv_len=27, num_heads=2, xp=np)
    np.testing.assert_array_equal(fine.to_dense()[0], expected_codes(mask, 30, 27, 4, 3))


def test_element_mask_codes_on_device():
    rng = np.random.default_rng(1)
    m = rng.random((1, 19, 23)) < 0.05
    got = jax.jit(lambda m: S.codes_from_element_mask(m, block_q=4, block_kv=5))(jnp.asarray(m))
    np.testing.assert_array_equal(np.asarray(got)[0], expected_codes(m, 19, 23, 4, 5))


@given(st.lists(st.lists(st.integers(-1, 9), min_size=3, max_size=3), min_size=4, max_size=4))
def test_from_topk_lists_are_sorted_unique_selections(rows):
    idx = jnp.asarray(rows, jnp.int32)  # [Tb=4, k=3], -1 = none
    sp = S.from_topk(idx, block_q=4, block_kv=4, q_len=16, kv_len=40)
    for i, row in enumerate(rows):
        want = sorted({j for j in row if j >= 0})
        n = int(sp.kv_counts[0, 0, i])
        assert list(np.asarray(sp.kv_indices[0, 0, i, :n])) == want
        assert bool(np.asarray(sp.kv_full[0, 0, i, :n]).all())


def test_from_topk_with_causal_codes_keeps_diagonal_partial():
    causal = S.from_pattern(P.Causal(), q_len=16, kv_len=16, block_q=4, block_kv=4)
    idx = jnp.array([[0, 0], [0, 1], [1, 2], [3, 0]], jnp.int32)
    sp = S.from_topk(
        idx, block_q=4, block_kv=4, q_len=16, kv_len=16, codes=jnp.asarray(causal.to_dense())
    )
    dense = np.asarray(sp.to_dense())[0, 0]
    np.testing.assert_array_equal(
        dense,
        [
            [P.PARTIAL, 0, 0, 0],
            [P.FULL, P.PARTIAL, 0, 0],
            [0, P.FULL, P.PARTIAL, 0],
            [P.FULL, 0, 0, P.PARTIAL],
        ],
    )


def test_intersect_codes_is_the_and_of_two_tiles():
    codes = np.array([P.EMPTY, P.PARTIAL, P.FULL], np.int8)
    a, b = np.meshgrid(codes, codes, indexing="ij")
    got = np.asarray(S.intersect_codes(jnp.asarray(a, jnp.int32), jnp.asarray(b)))
    # Empty if either is; full only if both are; the rest partial (PARTIAL & PARTIAL too).
    want = np.where((a == P.EMPTY) | (b == P.EMPTY), P.EMPTY, P.PARTIAL)
    want = np.where((a == P.FULL) & (b == P.FULL), P.FULL, want)
    np.testing.assert_array_equal(got, want)
    table = np.minimum(pbase._AND, P.PARTIAL + 1)  # the table it replaced
    table[P.PARTIAL, P.PARTIAL] = P.PARTIAL
    np.testing.assert_array_equal(got, table[a, b])
    assert got.dtype == np.int8


# Jitted: one compile per example instead of one per op (eager, on new shapes).
_segment_codes = jax.jit(S.segment_codes, static_argnames=("block_q", "block_kv"))


@given(
    st.lists(st.integers(0, 3), min_size=1, max_size=30),
    st.integers(1, 7),
    st.integers(1, 7),
    st.booleans(),
)
def test_segment_codes_are_sound(ids, bq, bk, shuffle):
    ids = np.asarray(ids if not shuffle else np.random.default_rng(len(ids)).permutation(ids))
    if not shuffle:
        ids = np.sort(ids)
    n = len(ids)
    codes = np.asarray(_segment_codes(ids[None], ids[None], block_q=bq, block_kv=bk))[0, 0]
    exact = expected_codes((ids[:, None] == ids[None, :])[None], n, n, bq, bk)[0]
    # Padding never makes a tile full: compare on the padding-free meaning.
    exact_nopad = expected_codes((ids[:, None] == ids[None, :])[None], n, n, bq, bk)[0]
    assert ((codes != P.EMPTY) | (exact == P.EMPTY)).all()  # EMPTY only when truly empty
    full_ok = (codes != P.FULL) | (exact_nopad != P.EMPTY)
    assert full_ok.all()
    if not shuffle:  # sorted ids: nothing non-empty is called empty, and the codes are exact
        assert ((codes == P.EMPTY) == (exact == P.EMPTY)).all()


def test_metadata_validation_errors():
    with pytest.raises(ValueError, match="block_q=0"):
        S.from_pattern(P.Causal(), q_len=8, kv_len=8, block_q=0, block_kv=4)
    with pytest.raises(ValueError, match=r"need \[\.\.\., 2, 2\]"):
        S.from_block_codes(jnp.zeros((3, 2), jnp.int8), block_q=4, block_kv=4, q_len=8, kv_len=8)
    with pytest.raises(TypeError, match="must be boolean"):
        S.from_block_mask(jnp.zeros((2, 2), jnp.int32), block_q=4, block_kv=4, q_len=8, kv_len=8)


def test_long_causal_metadata_is_closed_form():
    # 128k tokens: the builder only touches candidate tiles (about 2 ms for a window).
    sp = S.from_pattern(
        P.Causal() & P.SlidingWindow(left=1024),
        q_len=131072,
        kv_len=131072,
        block_q=128,
        block_kv=128,
    )
    # Keys q-1024..q: the 8 tiles before the diagonal tile, and the diagonal one.
    assert sp.kv_indices.shape == (1, 1, 1024, 9)
    assert int(sp.kv_counts.max()) == 9


_GEO = dict(block_q=8, block_kv=8, q_len=32, kv_len=32)  # Tb = Sb = 4
_IDX = jnp.zeros((4, 2), jnp.int32)


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: S.from_topk(_IDX, **{**_GEO, "block_q": 0}), ValueError, "from_topk: block_q=0"),
        (
            lambda: S.from_topk(_IDX, **{**_GEO, "block_q": 8.0}),
            TypeError,
            "block_q must be an int",
        ),
        (
            lambda: S.from_topk(_IDX, **{**_GEO, "block_q": -8}),
            ValueError,
            "block_q=-8 must be >= 1",
        ),
        (
            lambda: S.from_block_mask(jnp.ones((0, 4), bool), **{**_GEO, "q_len": 0}),
            ValueError,
            "from_block_mask: q_len=0 must be >= 1",
        ),
        (
            lambda: S.from_block_mask(jnp.ones((3, 4), bool), **_GEO),
            ValueError,
            r"block_mask has shape \(3, 4\); .* need \[\.\.\., 4, 4\]",
        ),
        (
            lambda: S.from_topk(jnp.zeros((4, 0), jnp.int32), **_GEO),
            ValueError,
            r"indices has shape \(4, 0\); .* k >= 1",
        ),
        (
            lambda: S.from_topk(_IDX, **_GEO, codes=jnp.ones((3, 4), jnp.int8)),
            ValueError,
            r"from_topk: codes has shape \(3, 4\); .* need \[\.\.\., 4, 4\]",
        ),
        (
            lambda: S.from_topk(
                jnp.zeros((2, 4, 2), jnp.int32), **_GEO, codes=jnp.ones((3, 4, 4), jnp.int8)
            ),
            ValueError,
            "differ in batch or heads",
        ),
        (
            lambda: S.from_topk(_IDX, **_GEO, codes=jnp.full((4, 4), 2.0)),
            TypeError,
            "codes must be integer block codes",
        ),
        (lambda: S.from_block_codes(np.full((4, 4), 5), **_GEO), ValueError, r"got \[5\]"),
        (lambda: S.from_block_codes(np.full((4, 4), -1), **_GEO), ValueError, r"got \[-1\]"),
        (
            lambda: S.from_block_codes(np.full((4, 4), P.UNSURE, np.int8), **_GEO),
            ValueError,
            r"must hold 0 \(empty\), 1 \(partial\) or 2 \(full\), got \[3\]",
        ),
        (
            lambda: S.from_block_codes(jnp.full((4, 4), 2.7), **_GEO),
            TypeError,
            "from_block_codes: codes must be integer block codes",
        ),
        (
            lambda: S.from_block_codes(jnp.full((4, 4), 2), **_GEO, max_kv_blocks=0),
            ValueError,
            "max_kv_blocks=0 must be >= 1",
        ),
        (
            lambda: S.from_block_codes(jnp.full((4, 4), 2), **_GEO, max_q_blocks=-1),
            ValueError,
            "max_q_blocks=-1 must be >= 1",
        ),
        (
            lambda: S.from_block_codes(jnp.full((4, 4), 2), **_GEO, q_offset=2**31),
            ValueError,
            "beyond the int32 range",
        ),
        (
            lambda: S.from_topk(np.full((4, 2), 4), **_GEO),
            ValueError,
            r"key blocks in \[0, 4\) or -1 for none, got \[4\]",
        ),
        (lambda: S.from_topk(np.full((4, 2), -2), **_GEO), ValueError, r"got \[-2\]"),
    ],
)
def test_device_builder_validation(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_from_topk_under_jit_ignores_out_of_range_indices():
    # Traced indices cannot be checked: as documented, out-of-range entries act like -1.
    idx = jnp.array([[0, 7], [1, -1], [9, 2], [3, 3]], jnp.int32)
    counts = jax.jit(lambda i: S.from_topk(i, **_GEO).kv_counts)(idx)
    np.testing.assert_array_equal(np.asarray(counts)[0, 0], [1, 1, 1, 1])


@pytest.mark.parametrize(
    "pattern, kw, error, match",
    [
        (
            "causal",
            {},
            TypeError,
            r"got 'causal' \(str\).*jaxsparse\.patterns\.parse\(\"causal\"\)",
        ),
        (P.Causal(), {"q_offset": 2**31}, ValueError, r"q_offset=2147483648 .* beyond the int32"),
        (P.Causal(), {"q_offset": 2**31 - 16}, ValueError, "must be below 2\\*\\*30"),
        (P.Causal(), {"q_offset": -(2**40)}, ValueError, "q_offset=-1099511627776 must be >="),
    ],
)
def test_from_pattern_validation(pattern, kw, error, match):
    with pytest.raises(error, match=match):
        S.from_pattern(pattern, q_len=32, kv_len=32, **kw)


def test_traced_mask_error_names_builders_that_exist():
    @jax.jit
    def build(m):
        return S.from_pattern(P.Mask(m), q_len=8, kv_len=8, block_q=4, block_kv=4).kv_counts

    with pytest.raises(pbase.TracedPatternError, match="from_block_mask") as info:
        build(jnp.ones((8, 8), bool))
    names = re.findall(r"jaxsparse\.sparsity\.(\w+)", str(info.value))
    assert names and all(hasattr(S, n) for n in names), names
