"""Grid patterns (Neighborhood, Window): rule, tiling, closed-form metadata, attention.

The masks are checked pair by pair against the brute-force rules in
`grid_specs.py` (natural order), metadata against the block-OR of the element
mask, and attention against the dense oracle (forward and gradients, jit and
vmap) and against a dense softmax written here with the brute-force mask.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsparse as js
from jaxsparse import patterns as P
from jaxsparse import sparsity as S
from jaxsparse.patterns import tiling
from tests import grid_specs, oracle
from tests.test_sparsity import check_list_invariants, expected_codes

# --- strategies ----------------------------------------------------------------


@st.composite
def grids(draw, max_tokens=96):
    ndim = draw(st.integers(1, 3))
    top = {1: 24, 2: 10, 3: 5}[ndim]
    grid = tuple(draw(st.integers(1, top)) for _ in range(ndim))
    if math.prod(grid) > max_tokens:
        grid = grid[:1] + tuple(min(n, 3) for n in grid[1:])
    return grid


@st.composite
def tiles(draw, grid):
    kind = draw(st.sampled_from(["auto", "budget", "shape"]))
    if kind == "auto":
        return None
    if kind == "budget":
        return draw(st.integers(1, 24))
    return tuple(draw(st.sampled_from(tiling.divisors(n))) for n in grid)


@st.composite
def neighborhoods(draw):
    grid = draw(grids())
    window, stride, dilation, causal = [], [], [], []
    for n in grid:
        d = draw(st.integers(1, n))
        w = draw(st.integers(1, n // d))
        window.append(w)
        dilation.append(d)
        stride.append(draw(st.integers(1, w)))
        causal.append(draw(st.booleans()))
    return P.Neighborhood(
        grid,
        tuple(window),
        stride=tuple(stride),
        dilation=tuple(dilation),
        causal=tuple(causal),
        tile=draw(tiles(grid)),
    )


@st.composite
def windows(draw):
    grid = draw(grids())
    window = tuple(draw(st.integers(1, n)) for n in grid)
    shift = tuple(draw(st.integers(0, w - 1)) for w in window)
    return P.Window(grid, window, shift=shift, tile=draw(tiles(grid)))


grid_patterns = st.one_of(neighborhoods(), windows())


def tiled_mask(p):
    n = p.num_tokens
    return np.asarray(P.dense_mask(p, q_len=n, kv_len=n, xp=np)[0])


# --- the rule --------------------------------------------------------------------


@given(grid_patterns)
def test_mask_matches_brute_force_rule(p):
    got = grid_specs.tiled_to_natural(p, tiled_mask(p))
    np.testing.assert_array_equal(got, grid_specs.natural_mask(p), err_msg=repr(p))


@given(grid_patterns)
def test_natural_mask_is_kronecker_of_axis_masks(p):
    m = np.ones((1, 1), bool)
    for axis in range(len(p.grid)):
        m = np.kron(m, p.axis_mask(axis)).astype(bool)
    np.testing.assert_array_equal(m, grid_specs.natural_mask(p))


@settings(max_examples=10)
@given(grid_patterns)
def test_numpy_and_jnp_masks_agree(p):
    n = p.num_tokens
    got = jax.jit(lambda: P.dense_mask(p, q_len=n, kv_len=n))()  # jnp, int32 positions
    np.testing.assert_array_equal(np.asarray(got)[0], tiled_mask(p))


@pytest.mark.parametrize("p", P.Neighborhood.examples() + P.Window.examples(), ids=repr)
def test_examples_match_brute_force(p):
    got = grid_specs.tiled_to_natural(p, tiled_mask(p))
    np.testing.assert_array_equal(got, grid_specs.natural_mask(p))


def test_known_small_cases():
    # 1-D, window 3 on 5 tokens: the border windows slide instead of shrinking.
    m = tiled_mask(P.Neighborhood((5,), 3))
    np.testing.assert_array_equal(m.sum(1), [3] * 5)
    np.testing.assert_array_equal(np.flatnonzero(m[0]), [0, 1, 2])
    np.testing.assert_array_equal(np.flatnonzero(m[4]), [2, 3, 4])
    # Every query of a non-causal 2-D neighbourhood sees exactly prod(window) keys.
    p = P.Neighborhood((7, 9), (3, 5), dilation=(2, 1))
    assert (tiled_mask(p).sum(1) == 15).all()
    # stride == window and a divisible axis: blocked attention == windows.
    a = P.Neighborhood((6, 8), (3, 4), stride=(3, 4), tile=(3, 4))
    b = P.Window((6, 8), (3, 4), tile=(3, 4))
    np.testing.assert_array_equal(tiled_mask(a), tiled_mask(b))
    # A window as long as the grid: full attention.
    assert tiled_mask(P.Neighborhood((4, 5), (4, 5))).all()


# --- tiling ---------------------------------------------------------------------


@given(st.integers(-(2**30), 2**30), st.integers(0, 2**30))
def test_in_span_is_a_two_sided_bound(x, n):
    # One unsigned compare in jax (kernels), two compares in numpy (host metadata).
    want = 0 <= x < n
    assert bool(tiling.in_span(np.int64(x), n)) == want
    assert bool(tiling.in_span(jnp.int32(x), n)) == want
    assert bool(tiling.in_span(jnp.int32(x), jnp.int32(n))) == want


@given(grids(), st.data())
def test_tiled_order_is_boxes(grid, data):
    tile = data.draw(tiles(grid).filter(lambda t: isinstance(t, tuple)))
    perm = tiling.permutation(grid, tile)
    assert sorted(perm) == list(range(math.prod(grid)))
    volume = math.prod(tile)
    xs = np.stack(np.unravel_index(perm, grid), -1)  # coordinates in tiled order
    for start in range(0, len(perm), volume):
        box = xs[start : start + volume]
        extent = box.max(0) - box.min(0) + 1
        np.testing.assert_array_equal(extent, tile)  # a contiguous chunk is one box
    back = tiling.positions(list(xs.T), grid, tile)
    np.testing.assert_array_equal(back, np.arange(len(perm)))
    # The in-kernel decode (`coords`) names the same order as the permutation.
    decoded = np.ravel_multi_index(tuple(tiling.coords(np.arange(len(perm)), grid, tile)), grid)
    np.testing.assert_array_equal(decoded, perm)
    # The reshape/transpose form (modules) is the gather by `perm`, both ways.
    x = np.arange(2 * len(perm) * 3).reshape(2, *grid, 3)
    tiled = tiling.to_tiled(x, grid, tile)
    np.testing.assert_array_equal(tiled, x.reshape(2, -1, 3)[:, perm])
    np.testing.assert_array_equal(tiling.from_tiled(tiled, grid, tile), x)


def test_default_tiles_for_the_benchmark_shapes():
    assert P.Neighborhood((128, 128), 13).tile == (8, 16)
    t = P.Neighborhood((16, 64, 64), (5, 9, 9)).tile
    assert math.prod(t) == 128
    assert P.Window((56, 56), 2).tile in ((2, 56), (8, 14), (14, 8), (4, 28), (28, 4))


# --- metadata ---------------------------------------------------------------------


@given(grid_patterns, st.integers(1, 20), st.integers(1, 20))
def test_from_pattern_is_block_or_of_mask(p, bq, bk):
    n = p.num_tokens
    sp = S.from_pattern(p, q_len=n, kv_len=n, block_q=bq, block_kv=bk)
    want = expected_codes(tiled_mask(p)[None], n, n, bq, bk)
    np.testing.assert_array_equal(sp.to_dense()[0], want)
    np.testing.assert_array_equal(sp.to_dense_transposed()[0], np.swapaxes(want, -1, -2))
    check_list_invariants(sp.kv_indices, sp.kv_counts, sp.kv_full, sp.num_kv_blocks)
    check_list_invariants(sp.q_indices, sp.q_counts, sp.q_full, sp.num_q_blocks)


@given(grid_patterns, st.data())
def test_classify_is_sound_on_any_ranges(p, data):
    n = p.num_tokens
    q_lo = data.draw(st.integers(0, n - 1))
    q_hi = data.draw(st.integers(q_lo, n - 1))
    k_lo = data.draw(st.integers(0, n - 1))
    k_hi = data.draw(st.integers(k_lo, n - 1))
    code = int(p.classify(np.array(q_lo), np.array(q_hi), np.array(k_lo), np.array(k_hi), 0))
    tile = tiled_mask(p)[q_lo : q_hi + 1, k_lo : k_hi + 1]
    want = P.EMPTY if not tile.any() else (P.FULL if tile.all() else P.PARTIAL)
    assert code in (want, P.UNSURE), (p, q_lo, q_hi, k_lo, k_hi, code, want)
    lo, hi = p.kv_range(np.array(q_lo), np.array(q_hi), 0)
    cols = np.flatnonzero(tiled_mask(p)[q_lo : q_hi + 1].any(0))
    assert cols.size == 0 or (lo <= cols.min() and cols.max() <= hi)


@settings(max_examples=100)
@given(st.integers(1, 14), st.data())
def test_classify_every_range_pair_1d(n, data):
    # On one axis the tile codes *are* the per-axis codes: check every pair of
    # ranges, so a wrong FULL/EMPTY bound cannot hide behind other axes.
    d = data.draw(st.integers(1, n))
    w = data.draw(st.integers(1, n // d))
    p = data.draw(
        st.one_of(
            st.builds(
                P.Neighborhood,
                st.just((n,)),
                st.just(w),
                stride=st.integers(1, w),
                dilation=st.just(d),
                causal=st.booleans(),
            ),
            st.builds(P.Window, st.just((n,)), st.just(w), shift=st.integers(0, w - 1)),
        )
    )
    lo, hi = np.triu_indices(n)  # every range [lo, hi]
    q_lo, q_hi, k_lo, k_hi = lo[:, None], hi[:, None], lo[None], hi[None]
    codes = p.classify(q_lo, q_hi, k_lo, k_hi, 0)
    m = tiled_mask(p).astype(np.int64)
    sat = np.zeros((n + 1, n + 1), np.int64)
    sat[1:, 1:] = m.cumsum(0).cumsum(1)
    kept = sat[q_hi + 1, k_hi + 1] - sat[q_lo, k_hi + 1] - sat[q_hi + 1, k_lo] + sat[q_lo, k_lo]
    area = (q_hi - q_lo + 1) * (k_hi - k_lo + 1)
    want = np.where(kept == 0, P.EMPTY, np.where(kept == area, P.FULL, P.PARTIAL))
    np.testing.assert_array_equal(codes, want, err_msg=repr(p))  # 1-D ranges are exact boxes


@given(grid_patterns)
def test_box_tiles_are_classified_in_closed_form(p):
    # With one box per kernel tile nothing is left UNSURE: no element-wise pass.
    v, n = math.prod(p.tile), p.num_tokens
    starts = np.arange(0, n, v)
    codes = p.classify(
        starts[:, None], starts[:, None] + v - 1, starts[None], starts[None] + v - 1, 0
    )
    assert not (codes == P.UNSURE).any()
    want = expected_codes(tiled_mask(p)[None], n, n, v, v)[0]
    np.testing.assert_array_equal(codes, want)


def test_large_grid_metadata_is_closed_form(monkeypatch):
    # 16384 tokens: building the metadata must not evaluate mask_fn element-wise.
    p = P.Neighborhood((128, 128), 13)
    monkeypatch.setattr(P.Neighborhood, "mask_fn", _no_elementwise)
    sp = S.from_pattern(p, q_len=16384, kv_len=16384, block_q=128, block_kv=128)
    # A q tile of 8x16 cells and a 13x13 window touch 3x3 key boxes inside the grid.
    assert sp.kv_counts.max() == 9
    assert 0.05 < sp.density() < 0.07


def _no_elementwise(*args):
    raise AssertionError("mask_fn was evaluated element-wise")


# --- attention ---------------------------------------------------------------------

ORACLE_PATTERNS = [
    P.Neighborhood((6, 7), (3, 5), tile=(2, 7)),
    P.Neighborhood(
        (3, 4, 6),
        (2, 3, 3),
        stride=(1, 2, 1),
        dilation=(1, 1, 2),
        causal=(True, False, False),
        tile=(1, 2, 6),
    ),
    P.Window((8, 6), (4, 3), shift=(2, 1), tile=(4, 3)),
]


@pytest.mark.parametrize("p", ORACLE_PATTERNS, ids=repr)
def test_attention_matches_oracle_under_jit(p):
    case = oracle.Case(pattern=p, t=p.num_tokens, block=8)
    oracle.assert_matches_oracle(case, "xla", transform=jax.jit)


def test_attention_matches_oracle_bf16_gqa():
    p = P.Neighborhood((5, 6, 4), (3, 3, 3), tile=(1, 3, 4))
    case = oracle.Case(
        pattern=p, t=p.num_tokens, h=4, k=1, d=16, dv=8, dtype=jnp.bfloat16, block=16
    )
    oracle.assert_matches_oracle(case, "xla")


def _dense_softmax(q, k, v, mask):
    """Softmax attention with an explicit `[T, S]` mask, f32, GQA by repetition."""
    g = q.shape[-2] // k.shape[-2]
    k, v = jnp.repeat(k, g, axis=-2), jnp.repeat(v, g, axis=-2)
    s = jnp.einsum("...thd,...shd->...hts", q, k) * q.shape[-1] ** -0.5
    s = jnp.where(mask, s, -jnp.inf)
    return jnp.einsum("...hts,...shd->...thd", jax.nn.softmax(s, axis=-1), v)


@pytest.mark.parametrize("p", ORACLE_PATTERNS[1:2], ids=repr)
def test_natural_order_in_and_out_under_vmap(p):
    # Tokens in row-major order against a dense softmax with the brute-force mask:
    # checks the token reordering and its inverse, forward and gradients, under vmap.
    n = p.num_tokens
    kq, kk, kv, kc = jax.random.split(jax.random.key(3), 4)
    q = jax.random.normal(kq, (2, n, 4, 8), jnp.float32)
    k = jax.random.normal(kk, (2, n, 2, 8), jnp.float32)
    v = jax.random.normal(kv, (2, n, 2, 8), jnp.float32)
    cot = jax.random.normal(kc, (2, n, 4, 8), jnp.float32)
    mask = jnp.asarray(grid_specs.natural_mask(p))

    def one(q, k, v):  # a single example: [T, H, D]
        config = js.Config(block_q=8, block_kv=8)
        return js.attention(q, k, v, pattern=p, implementation="xla", config=config)

    def ours(q, k, v):
        return (jax.vmap(one)(q, k, v) * cot).sum()

    def ref(q, k, v):
        return (_dense_softmax(q, k, v, mask) * cot).sum()

    got = jax.jit(jax.value_and_grad(ours, argnums=(0, 1, 2)))(q, k, v)
    want = jax.value_and_grad(ref, argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip(
        ("loss", "dq", "dk", "dv"), jax.tree.leaves(got), jax.tree.leaves(want), strict=True
    ):
        assert oracle.rel_err(a, b) < 1e-5, name


def test_tiled_order_input_skips_the_reordering():
    p = P.Neighborhood((6, 8), (3, 5), causal=(True, False), tile=(2, 4))
    tiled = P.Neighborhood((6, 8), (3, 5), causal=(True, False), tile=(2, 4), tiled_order=True)
    assert tiled.token_permutation(q_len=48, kv_len=48) is None
    perm = p.permutation()
    q, k, v = (
        jax.random.normal(key, (1, 48, 2, 8), jnp.float32)
        for key in jax.random.split(jax.random.key(1), 3)
    )
    a = js.attention(q, k, v, pattern=p, implementation="xla")
    b = js.attention(q[:, perm], k[:, perm], v[:, perm], pattern=tiled, implementation="xla")
    assert oracle.rel_err(b[:, np.argsort(perm)], a) < 1e-6


def test_explicit_mask_in_natural_order_agrees():
    # The same attention written as an element mask (patterns.Mask) without reordering.
    p = P.Neighborhood((6, 8), 3, dilation=(2, 1), tile=(2, 4))
    n = p.num_tokens
    q, k, v = (
        jax.random.normal(key, (1, n, 2, 8), jnp.float32)
        for key in jax.random.split(jax.random.key(0), 3)
    )
    a = js.attention(q, k, v, pattern=p, implementation="xla")
    b = js.attention(q, k, v, pattern=P.Mask(grid_specs.natural_mask(p)), implementation="xla")
    assert oracle.rel_err(a, b) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("dilation", [1, (1, 2)])
def test_gpu_kernel_in_interpret_mode_runs_the_pattern(dilation):
    # The Mosaic GPU kernels evaluate the pattern's mask factors (per-row and
    # per-column terms) inside partial tiles, forward and both backward kernels
    # (CPU interpret mode).
    p = P.Neighborhood((16, 16), (5, 5), dilation=dilation, causal=(False, True))
    assert p.mask_factors() is not None
    case = oracle.Case(
        p, b=1, t=p.num_tokens, h=2, k=1, d=64, dtype=jnp.bfloat16, block=128, interpret=True
    )
    oracle.assert_matches_oracle(case, "pallas_gpu")


# --- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: P.Neighborhood((8, 8), (9, 3)), "window 9 x dilation 1 = 9 is larger"),
        (lambda: P.Neighborhood((8, 8), 3, dilation=3), r"window 3 x dilation 3 = 9 .* at most 2"),
        (lambda: P.Neighborhood((8, 8), 3, stride=0), "stride=0 .* must be >= 1"),
        (lambda: P.Neighborhood((8, 8), 3, stride=(1, -2)), "stride=.* has -2 on axis 1"),
        (lambda: P.Neighborhood((8, 8), 3, dilation=0), "dilation=0"),
        (lambda: P.Neighborhood((8, 8), 3, stride=4), "stride 4 is larger than window 3"),
        (lambda: P.Neighborhood((8, 8), (3, 3, 3)), r"tuple of 2 ints \(one per grid axis\)"),
        (lambda: P.Neighborhood((2, 2, 2, 2), 1), "1, 2 or 3 ints"),
        (lambda: P.Neighborhood((8, 8), 3, tile=(3, 4)), r"tile=\(3, 4\) does not divide"),
        (lambda: P.Neighborhood((8, 8), 3, causal="yes"), "causal must be a bool"),
        (lambda: P.Window((4, 6), (5, 2)), "window 5 is larger than grid axis 0"),
        (lambda: P.Window((4, 6), 2, shift=2), "shift 2 on axis 0 must be smaller"),
    ],
)
def test_bad_parameters(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_grid_must_match_token_count():
    q = jnp.zeros((1, 60, 2, 8))
    with pytest.raises(ValueError, match=r"holds 64 tokens but the call has q_len=60"):
        js.attention(q, q, q, pattern=P.Neighborhood((8, 8), 3))


def test_reordering_patterns_do_not_mix_with_positional_ones():
    p = P.Neighborhood((4, 4), 3, tile=(2, 2))
    q = jnp.zeros((1, 16, 1, 8))
    with pytest.raises(ValueError, match="reorder"):
        js.attention(q, q, q, pattern=p & P.Causal())
    # Two grid patterns with the same token order combine.
    both = p | P.Window((4, 4), 2, tile=(2, 2))
    out = js.attention(q, q, q, pattern=both, implementation="xla")
    assert out.shape == q.shape


def test_repr_round_trips_and_hashes():
    for p in P.Neighborhood.examples() + P.Window.examples():
        assert P.parse(repr(p)) == p
        assert hash(p) == hash(P.parse(repr(p)))


@settings(max_examples=30, deadline=None)
@given(d=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_tiling_div_mod_match_floor_division_for_non_negative_values(d, seed):
    # The kernels' box coordinates: shifts / truncating division instead of `//`, `%`.
    x = np.random.default_rng(seed).integers(0, 1 << 20, size=64).astype(np.int32)
    for fn, want in ((tiling.div, x // d), (tiling.mod, x % d)):
        np.testing.assert_array_equal(fn(x, d), want)  # numpy
        np.testing.assert_array_equal(jax.jit(lambda v, fn=fn: fn(v, d))(jnp.asarray(x)), want)
