"""Selection utilities (P4) against straightforward numpy / jnp re-implementations."""

from __future__ import annotations

import math

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

from jaxsparse.selection import (
    chunks,
    cumulative,
    divergence,
    estimate,
    pooling,
    ranges,
    remap,
    sorting,
    topk,
)

rng = np.random.default_rng(0)


@pytest.mark.parametrize("kind", pooling.KINDS)
@pytest.mark.parametrize("n, block", [(10, 3), (12, 4), (5, 8)])
def test_pool_matches_loop(kind, n, block):
    x = rng.standard_normal((2, n, 3, 4)).astype(np.float32)
    got = np.asarray(pooling.pool(jnp.asarray(x), block, kind=kind, axis=1))
    fn = {"mean": np.mean, "max": np.max, "min": np.min, "sum": np.sum}[kind]
    want = np.stack([fn(x[:, i : i + block], axis=1) for i in range(0, n, block)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_pool_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind='median'"):
        pooling.pool(jnp.zeros((1, 4)), 2, kind="median")


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16), n=st.integers(1, 24), k=st.integers(1, topk.ITERATIVE_MAX_K)
)
def test_iterative_topk_equals_lax_top_k(seed, n, k):
    # Few distinct values (ties), some -inf and +inf entries.
    rng = np.random.default_rng(seed)
    s = rng.choice(np.array([-np.inf, 0.0, 1.0, 2.5, np.inf], np.float32), size=(3, n))
    k = min(k, n)
    values, idx = jax.lax.top_k(jnp.asarray(s), k)
    want = np.where(np.asarray(values) > -np.inf, np.asarray(idx), -1)
    np.testing.assert_array_equal(topk._iterative_topk(jnp.asarray(s), k), want)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16),
    n=st.integers(1, 300),
    k=st.integers(1, 40),
    width=st.integers(1, 9),
    distinct=st.booleans(),
)
def test_grouped_topk_equals_lax_top_k(seed, n, k, width, distinct):
    rng = np.random.default_rng(seed)
    if distinct:
        s = rng.standard_normal((4, n)).astype(np.float32)
        s[rng.random((4, n)) < 0.2] = -np.inf
    else:  # ties, +inf (forced) and -inf (never) entries
        s = rng.choice(np.array([-np.inf, 0.0, 1.0, 2.5, np.inf], np.float32), size=(4, n))
    k = min(k, n)
    values, idx = jax.lax.top_k(jnp.asarray(s), k)
    want = np.where(np.asarray(values) > -np.inf, np.asarray(idx), -1)
    np.testing.assert_array_equal(topk._grouped_topk(jnp.asarray(s), k, width), want)


def test_topk_indices_wide_rows_take_two_levels():
    s = jax.random.normal(jax.random.key(0), (3, 2 * topk.GROUPED_MIN_WIDTH))
    values, want = jax.lax.top_k(s, 16)
    np.testing.assert_array_equal(topk.topk_indices(s, 16), want)
    jaxpr = str(jax.make_jaxpr(lambda s: topk.topk_indices(s, 16))(s))
    assert "reduce_max" in jaxpr  # the group maxima of level 1


@pytest.mark.parametrize(
    "n, k",
    [
        (256, 100),  # BlockTopK / Seer at 16k: 256 blocks, top-100
        (1024, 100),  # BlockTopK at 64k
        (2048, 1000),  # MInference's 1,000 vertical columns
        (16384, 1000),
        (1024, 16),  # NSA at 64k: two levels
        (2048, 16),  # NSA at 128k
    ],
)
def test_topk_indices_at_the_methods_widths_equals_lax_top_k(n, k):
    # Large k on wide rows once recursed without end (the second level was as wide as
    # the row); every width and k the issue-4 methods use at 16k-128k must come back.
    s = jax.random.normal(jax.random.key(n + k), (2, n))
    s = s.at[:, ::7].set(-jnp.inf)
    values, idx = jax.lax.top_k(s, k)
    want = np.where(np.asarray(values) > -np.inf, np.asarray(idx), -1)
    np.testing.assert_array_equal(topk.topk_indices(s, k), want)


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(n=st.integers(1, 5000), k=st.integers(1, 5000))
def test_grouped_levels_are_narrower_than_the_row(n, k):
    # The dispatcher's recursion ends: a two-level call only ever works on rows at
    # most half as wide as its own, at both levels.
    k = min(k, n)
    for width in (topk.GROUP_WIDTH, topk.KTH_GROUP_WIDTH):  # topk_indices', kth_value's
        if topk.grouped_applies(n, k, width):
            assert -(-n // width) <= n // 2
            assert k * width <= n // 2


def test_topk_ties_prefer_lower_index_and_skip_minus_inf():
    s = jnp.array([[1.0, 3.0, 3.0, -jnp.inf, 3.0, jnp.inf]])
    np.testing.assert_array_equal(topk.topk_indices(s, 3), [[5, 1, 2]])
    np.testing.assert_array_equal(topk.topk_indices(s, 6), [[5, 1, 2, 4, 0, -1]])
    np.testing.assert_array_equal(topk.topk_mask(s, 9)[0], [1, 1, 1, 0, 1, 1])


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16),
    n=st.sampled_from([5, 40, 300, 1100]),  # iterative, two-level and lax.top_k rows
    k=st.integers(1, 400),
)
def test_topk_mask_is_the_mask_of_the_topk_indices(seed, n, k):
    # Built from the k-th value, it must keep exactly the entries topk_indices lists:
    # ties to the lower index, -inf never, +inf (forced) first; fewer finite than k.
    rng = np.random.default_rng(seed)
    vals = np.array([-np.inf, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, np.inf], np.float32)
    s = np.where(rng.random((3, n)) < 0.5, rng.choice(vals, (3, n)), rng.standard_normal((3, n)))
    s = jnp.asarray(s.astype(np.float32))
    want = topk.indices_to_mask(topk.topk_indices(s, k), n)
    np.testing.assert_array_equal(topk.topk_mask(s, k), want)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16),
    n=st.sampled_from([5, 40, 300, 1100]),  # iterative, two-level and sorted rows
    k=st.integers(1, 400),
)
def test_kth_value_is_the_kth_of_the_sorted_row(seed, n, k):
    # Whichever tied groups the two-level path picks, the k-th value is the sorted row's.
    rng = np.random.default_rng(seed)
    vals = np.array([-np.inf, -1.0, 0.0, 1.0, np.inf], np.float32)
    s = np.where(rng.random((3, n)) < 0.6, rng.choice(vals, (3, n)), rng.standard_normal((3, n)))
    s = s.astype(np.float32)
    want = -np.sort(-s, axis=-1)[:, min(k, n) - 1 : min(k, n)]
    np.testing.assert_array_equal(topk.kth_value(jnp.asarray(s), k), want)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**16), n=st.sampled_from([1, 7, 64, 212, 1024]))
def test_sort_values_equals_numpy_sort(seed, n):
    # Not stable, and values alone show no difference: ties and infinities come
    # out as numpy's. -0.0 and 0.0 compare equal, so their order is free (the
    # k-th value a mask compares against is the same number either way).
    rng = np.random.default_rng(seed)
    vals = np.array([-np.inf, -1.0, -0.0, 0.0, 1.0, np.inf], np.float32)
    s = np.where(rng.random((3, n)) < 0.6, rng.choice(vals, (3, n)), rng.standard_normal((3, n)))
    s = s.astype(np.float32)
    got = np.asarray(topk.sort_values(jnp.asarray(s)))
    np.testing.assert_array_equal(got, np.sort(s, axis=-1))


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16),
    lead=st.sampled_from([(), (1,), (3,), (2, 3)]),
    n=st.integers(0, 40),
    bound=st.integers(1, 9),
    flatten=st.booleans(),
)
def test_row_sorts_equal_numpy_stable_sorts(seed, lead, n, bound, flatten):
    # Flat (rows offset into one sort) and per row (FLATTEN_ROWS off) give numpy's.
    keys = np.random.default_rng(seed).integers(0, bound, lead + (n,))
    saved, sorting.FLATTEN_ROWS = sorting.FLATTEN_ROWS, flatten
    try:
        got_sorted = np.asarray(sorting.sort_rows(jnp.asarray(keys), bound))
        got_order = np.asarray(sorting.argsort_rows(jnp.asarray(keys), bound))
    finally:
        sorting.FLATTEN_ROWS = saved
    np.testing.assert_array_equal(got_sorted, np.sort(keys, axis=-1))
    np.testing.assert_array_equal(got_order, np.argsort(keys, axis=-1, kind="stable"))
    assert got_order.dtype == np.int32


def test_row_sorts_fall_back_where_offset_keys_overflow_int32():
    # rows * bound (sort_rows) or bound * n (argsort_rows) past int32: per-row sorts.
    keys = jnp.asarray([[5, 1, 5, 0], [2, 2, 1, 7]], jnp.int32)
    bound = 2**30
    np.testing.assert_array_equal(sorting.sort_rows(keys, bound), np.sort(keys, axis=-1))
    np.testing.assert_array_equal(
        sorting.argsort_rows(keys, bound), np.argsort(np.asarray(keys), axis=-1, kind="stable")
    )
    jaxpr = str(jax.make_jaxpr(lambda x: sorting.sort_rows(x, bound))(keys))
    assert "dimension=1" in jaxpr  # each row its own sort, not one flat sort


def test_sort_rows_sorts_the_rows_as_one_flat_row():
    keys = jnp.zeros((4, 8), jnp.int32)
    jaxpr = str(jax.make_jaxpr(lambda x: sorting.sort_rows(x, 3))(keys))
    assert "i32[32]" in jaxpr and "sort" in jaxpr


def test_rank_mask_per_row_counts_match_sorting():
    s = rng.standard_normal((4, 3, 9)).astype(np.float32)
    s[0, 0, 2] = -np.inf
    counts = rng.integers(0, 10, (4, 3))
    got = np.asarray(topk.rank_mask(jnp.asarray(s), jnp.asarray(counts, jnp.int32)))
    for i, j in np.ndindex(4, 3):
        order = np.argsort(-s[i, j], kind="stable")[: counts[i, j]]
        want = np.zeros(9, bool)
        want[order] = True
        want &= s[i, j] > -np.inf
        np.testing.assert_array_equal(got[i, j], want)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**16), n=st.integers(1, 40), max_count=st.integers(0, 45))
def test_rank_mask_with_ties_and_infinities_equals_a_stable_argsort(seed, n, max_count):
    rng = np.random.default_rng(seed)
    s = rng.choice(np.array([-np.inf, 0.0, 0.5, 1.0, np.inf], np.float32), size=(3, n))
    counts = rng.integers(0, max_count + 1, 3)
    got = np.asarray(topk.rank_mask(jnp.asarray(s), jnp.asarray(counts, jnp.int32)))
    for r in range(3):
        want = np.zeros(n, bool)
        want[np.argsort(-s[r], kind="stable")[: counts[r]]] = True
        np.testing.assert_array_equal(got[r], want & (s[r] > -np.inf))


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**16), n=st.integers(1, 40), gamma=st.floats(0.0, 1.2))
def test_cover_mask_and_count_with_ties_equal_a_stable_argsort(seed, n, gamma):
    # Masses with ties and zeros (dyadic values: every partial sum is exact).
    rng = np.random.default_rng(seed)
    p = rng.choice(np.array([0.0, 0.125, 0.25, 0.5], np.float32), size=(2, n))
    order = np.argsort(-p, axis=-1, kind="stable")
    csum = np.cumsum(np.take_along_axis(p, order, -1), -1)
    keep = np.asarray(cumulative.cover_mask(jnp.asarray(p), gamma))
    count = np.asarray(cumulative.cover_count(jnp.asarray(p), gamma))
    for r in range(2):
        want = np.zeros(n, bool)
        want[order[r][csum[r] <= np.float32(gamma)]] = True
        np.testing.assert_array_equal(keep[r], want)
        assert count[r] == (csum[r] <= np.float32(gamma)).sum() + 1


def test_sorted_cumsum_and_budgets_match_numpy():
    p = rng.random((3, 11)).astype(np.float32)
    p /= p.sum(-1, keepdims=True)
    inc, exc = (np.asarray(a) for a in cumulative.sorted_cumsum(jnp.asarray(p)))
    for r in range(3):
        order = np.argsort(-p[r], kind="stable")
        c = np.cumsum(p[r][order])
        np.testing.assert_allclose(inc[r][order], c, rtol=1e-6)
        np.testing.assert_allclose(exc[r][order], c - p[r][order], atol=1e-6)
        for gamma in (0.3, 0.9):
            # FlexPrefill's score_cover_topk: sum(cumsum_sorted <= gamma) + 1.
            assert int(cumulative.cover_count(jnp.asarray(p[r]), gamma)) == (c <= gamma).sum() + 1
            keep = np.asarray(cumulative.cover_mask(jnp.asarray(p[r]), gamma))
            np.testing.assert_array_equal(np.sort(np.flatnonzero(keep)), np.sort(order[c <= gamma]))


def test_js_distance_matches_formula_and_bounds():
    p = rng.random((5, 7)).astype(np.float32)
    q = rng.random((5, 7)).astype(np.float32)
    p[0, 3] = 0.0  # zero entries follow 0 log 0 = 0
    p /= p.sum(-1, keepdims=True)
    q /= q.sum(-1, keepdims=True)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log(p / m), 0).sum(-1)
        kl_q = np.where(q > 0, q * np.log(q / m), 0).sum(-1)
    want = np.sqrt(0.5 * kl_p + 0.5 * kl_q)
    got = np.asarray(divergence.js_distance(jnp.asarray(p), jnp.asarray(q)))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert float(divergence.js_distance(jnp.asarray(p), jnp.asarray(p)).max()) < 1e-3
    disjoint = divergence.js_distance(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(float(disjoint), math.sqrt(math.log(2)), rtol=1e-6)


@pytest.mark.parametrize("operands", [jnp.float32, None])
def test_grouped_logits_pair_each_query_head_with_its_key_head(operands):
    q = jax.random.normal(jax.random.key(0), (2, 5, 6, 8), jnp.bfloat16)
    k = jax.random.normal(jax.random.key(1), (2, 7, 3, 8), jnp.bfloat16)
    got = np.asarray(estimate.grouped_logits(q, k, operands=operands))
    qf, kf = np.asarray(q, np.float32), np.asarray(k, np.float32)
    want = np.einsum("bthd,bshd->bhts", qf, np.repeat(kf, 2, axis=2))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_last_query_probs_vertical_and_slash_match_loops():
    b, t, h, kh, d, n, q_offset = 1, 9, 4, 2, 8, 4, 3
    s = t + q_offset
    q = rng.standard_normal((b, t, h, d)).astype(np.float32)
    k = rng.standard_normal((b, s, kh, d)).astype(np.float32)
    probs, q_pos = estimate.last_query_probs(
        jnp.asarray(q), jnp.asarray(k), last_q=n, scale=0.3, q_offset=q_offset
    )
    probs = np.asarray(probs)
    np.testing.assert_array_equal(np.asarray(q_pos), q_offset + np.arange(t - n, t))
    want = np.zeros((b, h, n, s), np.float32)
    for hh, r in np.ndindex(h, n):
        pos = q_offset + t - n + r
        logit = 0.3 * k[0, : pos + 1, hh // 2] @ q[0, t - n + r, hh]
        e = np.exp(logit - logit.max())
        want[0, hh, r, : pos + 1] = e / e.sum()
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        np.asarray(estimate.vertical_scores(jnp.asarray(want))), want.sum(2), rtol=1e-6
    )
    slash = np.zeros((b, h, s), np.float32)
    for hh, r, j in np.ndindex(h, n, s):
        o = q_offset + t - n + r - j
        if o >= 0:
            slash[0, hh, o] += want[0, hh, r, j]
    got = estimate.slash_scores(jnp.asarray(want), jnp.asarray(q_offset + np.arange(t - n, t)))
    np.testing.assert_allclose(np.asarray(got), slash, rtol=1e-5, atol=1e-7)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16), n=st.integers(1, 9), s=st.integers(1, 40), first=st.integers(0, 50)
)
def test_slash_scores_equal_diagonal_sums(seed, n, s, first):
    # Any rows at consecutive positions (also past the last key), any key count.
    probs = np.random.default_rng(seed).random((2, n, s)).astype(np.float32)
    want = np.zeros((2, s), np.float32)
    for r, j in np.ndindex(n, s):
        o = first + r - j
        if 0 <= o < s:
            want[:, o] += probs[:, r, j]
    got = jax.jit(estimate.slash_scores)(jnp.asarray(probs), first + jnp.arange(n))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("l, d, lp", [(32, 16, 64), (8, 4, 8), (4, 2, 2), (6, 2, 4)])
def test_compressed_to_blocks_matches_overlap_matrix(l, d, lp):
    nb, s = 7, 7 * lp
    nc = (s - l) // d + 1
    p = rng.random((2, nc)).astype(np.float32)
    # Explicit |[i, i + l/d) intersect [j l'/d, (j+1) l'/d)| in stride segments.
    i, j = np.arange(nc)[:, None], np.arange(nb)[None, :]
    c, r = l // d, lp // d
    overlap = np.maximum(0, np.minimum(i + c, (j + 1) * r) - np.maximum(i, j * r))
    got = remap.compressed_to_blocks(
        jnp.asarray(p), kernel_size=l, stride=d, block_size=lp, num_blocks=nb
    )
    np.testing.assert_allclose(np.asarray(got), p @ overlap, rtol=1e-6)


@pytest.mark.parametrize(
    "out_size, in_size, length", [(4, 1, 10), (4, 3, 10), (6, 4, 23), (8, 8, 16), (5, 10, 9)]
)
def test_reduce_ranges_matches_loops(out_size, in_size, length):
    cells = math.ceil(length / in_size)
    x = rng.random((2, cells, 3)) < 0.6
    n_out = math.ceil(length / out_size)
    lo, hi = ranges.uniform_ranges(n_out, out_size, in_size, length)
    for op, fn in (("any", np.any), ("all", np.all)):
        got = np.asarray(ranges.reduce_ranges(jnp.asarray(x), 1, lo, hi, op=op))
        want = np.stack(
            [
                fn(
                    x[
                        :,
                        (o * out_size) // in_size : (min((o + 1) * out_size, length) - 1) // in_size
                        + 1,
                    ],
                    axis=1,
                )
                for o in range(n_out)
            ],
            axis=1,
        )
        np.testing.assert_array_equal(got, want)
    assert ranges.max_cells(out_size, in_size, length) == int((hi - lo).max()) + 1


def test_map_query_rows_equals_one_pass():
    q = jnp.asarray(rng.standard_normal((2, 11, 3, 4)).astype(np.float32))
    lse = jnp.asarray(rng.standard_normal((2, 11, 3)).astype(np.float32))

    def fn(q_rows, lse_rows, pos):
        out = jnp.moveaxis(q_rows.sum(-1) * lse_rows, 1, 2)[..., None]
        return out + pos.astype(jnp.float32)[None, None, :, None]

    whole = chunks.map_query_rows(fn, (q, lse), rows=100, q_offset=5)
    parts = jax.jit(lambda q, l: chunks.map_query_rows(fn, (q, l), rows=4, q_offset=5))(q, lse)
    np.testing.assert_allclose(np.asarray(parts), np.asarray(whole), rtol=1e-6)
    assert whole.shape == (2, 3, 11, 1)
