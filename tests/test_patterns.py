"""Patterns: truth tables, algebra, validation, parsing."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jaxsparse as js
from jaxsparse import patterns as P
from tests import pattern_specs, strategies

X, _ = True, False

# Literal truth tables on 5 queries x 5 keys (T == S, q_offset 0).
TRUTH_TABLES = {
    P.Causal(): [
        [X, _, _, _, _],
        [X, X, _, _, _],
        [X, X, X, _, _],
        [X, X, X, X, _],
        [X, X, X, X, X],
    ],
    P.SlidingWindow(left=1): [
        [X, _, _, _, _],
        [X, X, _, _, _],
        [_, X, X, _, _],
        [_, _, X, X, _],
        [_, _, _, X, X],
    ],
    P.SlidingWindow(left=1, right=1): [
        [X, X, _, _, _],
        [X, X, X, _, _],
        [_, X, X, X, _],
        [_, _, X, X, X],
        [_, _, _, X, X],
    ],
    P.ChunkedCausal(2): [
        [X, _, _, _, _],
        [X, X, _, _, _],
        [_, _, X, _, _],
        [_, _, X, X, _],
        [_, _, _, _, X],
    ],
    P.PrefixLM(2): [
        [X, X, _, _, _],
        [X, X, _, _, _],
        [X, X, X, _, _],
        [X, X, X, X, _],
        [X, X, X, X, X],
    ],
    P.Causal() & (P.Sink(1) | P.SlidingWindow(left=1)): [
        [X, _, _, _, _],
        [X, X, _, _, _],
        [X, X, X, _, _],
        [X, _, X, X, _],
        [X, _, _, X, X],
    ],
    P.Full(): [[X] * 5] * 5,
}


@pytest.mark.parametrize("pattern", list(TRUTH_TABLES), ids=repr)
def test_truth_table(pattern):
    got = P.dense_mask(pattern, q_len=5, kv_len=5, xp=np)[0]
    np.testing.assert_array_equal(got, np.array(TRUTH_TABLES[pattern]))


def test_decode_alignment_is_bottom_right():
    # One query against 6 keys: by default it sits at the last position.
    got = P.dense_mask(P.Causal() & P.SlidingWindow(left=2), q_len=1, kv_len=6, xp=np)[0]
    np.testing.assert_array_equal(got, [[_, _, _, X, X, X]])


def _all_examples():
    out = []
    for name, cls in sorted(P.REGISTRY.items()):
        for i, p in enumerate(cls.examples()):
            out.append(pytest.param(p, id=f"{name}-{i}"))
    return out


@pytest.mark.parametrize("pattern", _all_examples())
def test_examples_numpy_and_jnp_agree(pattern):
    num_heads = len(pattern.patterns) if isinstance(pattern, P.PerHead) else 2
    shape = np.shape(getattr(pattern, "mask", np.zeros((13, 17))))[-2:]
    t, s = shape if isinstance(pattern, P.Mask) else (13, 17)
    if isinstance(pattern, P.BlockMask):
        t, s = (
            pattern.block_mask.shape[-2] * pattern.block_q,
            pattern.block_mask.shape[-1] * (pattern.block_kv),
        )
    if isinstance(pattern, (P.Neighborhood, P.Window)):  # self-attention over the whole grid
        t = s = pattern.num_tokens
    a = P.dense_mask(pattern, q_len=t, kv_len=s, num_heads=num_heads, xp=np)
    # jnp under jit (int32 positions, as in the kernels); one compile instead of one per op.
    b = jax.jit(lambda: P.dense_mask(pattern, q_len=t, kv_len=s, num_heads=num_heads))()
    np.testing.assert_array_equal(a, np.asarray(b))


@given(
    strategies.patterns,
    st.integers(1, 12),
    st.integers(1, 12),
    st.integers(-4, 12),
    st.integers(1, 3),
)
def test_mask_fn_matches_spec(pattern, t, s, q_offset, h):
    got = P.dense_mask(pattern, q_len=t, kv_len=s, q_offset=q_offset, num_heads=h, xp=np)
    got = np.broadcast_to(got, (h, t, s))
    for hh, i, j in itertools.product(range(h), range(t), range(s)):
        want = pattern_specs.allowed(pattern, q_offset + i, j, hh, h)
        assert got[hh, i, j] == want, (pattern, hh, i, j)


def test_power_of_two_keeps_distances_inside_its_window():
    # Distance 3 is neither 0 nor a power of two: only window_blocks >= 4 keeps it.
    got = P.dense_mask(
        P.PowerOfTwo(block_size=1, window_blocks=4, sink_blocks=0), q_len=8, kv_len=8, xp=np
    )[0]
    d = np.arange(8)[:, None] - np.arange(8)[None, :]
    want = (d >= 0) & ((d < 4) | np.isin(d, [4]))  # 0..3 by the window, 4 by the power
    np.testing.assert_array_equal(got, want)
    narrow = P.dense_mask(P.PowerOfTwo(1, window_blocks=3, sink_blocks=0), q_len=8, kv_len=8, xp=np)
    np.testing.assert_array_equal(narrow[0], (d >= 0) & np.isin(d, [0, 1, 2, 4]))


def test_strided_defaults_are_dkernels():
    """dkernel's get_sparse_attn_mask defaults: local_blocks=4 and head_sliding_step
    max(1, stride // heads), so 2 heads with stride 8 take the stripes 0 and 4."""
    got = P.dense_mask(
        P.Causal() & P.Strided(stride=8, block_size=2), q_len=40, kv_len=40, num_heads=2, xp=np
    )
    qb, kb = np.arange(40)[:, None] // 2, np.arange(40)[None, :] // 2
    for h in range(2):
        want = (kb <= qb) & (((kb + 4 * h) % 8 == 0) | (qb - kb < 4))
        np.testing.assert_array_equal(
            got[h], want & (np.arange(40)[None, :] <= np.arange(40)[:, None])
        )
    with pytest.raises(ValueError, match="bind it first"):
        P.Strided(stride=8).mask_fn(np.arange(3), np.arange(3), 0)


def test_per_head_spec():
    p = P.PerHead([P.Causal(), P.SlidingWindow(left=1), P.Sink(2)])
    got = P.dense_mask(p, q_len=6, kv_len=6, num_heads=3, xp=np)
    for hh, i, j in itertools.product(range(3), range(6), range(6)):
        assert got[hh, i, j] == pattern_specs.allowed(p, i, j, hh)


def test_composition_is_elementwise():
    a, b = P.Causal(), P.Sink(3) | P.SlidingWindow(left=2, right=1)
    ma, mb = (P.dense_mask(x, q_len=9, kv_len=11, xp=np) for x in (a, b))
    np.testing.assert_array_equal(P.dense_mask(a & b, q_len=9, kv_len=11, xp=np), ma & mb)
    np.testing.assert_array_equal(P.dense_mask(a | b, q_len=9, kv_len=11, xp=np), ma | mb)


def test_bool_raises():
    with pytest.raises(TypeError, match="`&` and `\\|`"):
        bool(P.Causal())
    with pytest.raises(TypeError):
        _ = P.Causal() and P.Sink(2)  # noqa: SIM222 - the point of the test


def test_combining_with_non_pattern_raises():
    with pytest.raises(TypeError, match="must be jaxsparse patterns"):
        _ = P.Causal() & True


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: P.SlidingWindow(left=-1), "left=-1 must be >= 0"),
        (lambda: P.SlidingWindow(left=2, right=-3), "right=-3"),
        (lambda: P.SlidingWindow(left=1.5), "must be an int"),
        (lambda: P.ChunkedCausal(0), "chunk_size=0"),
        (lambda: P.Sink(-2), "num_tokens=-2"),
        (lambda: P.Strided(stride=0), "stride=0"),
        (lambda: P.Dilated(left=4, dilation=0), "dilation=0"),
        (lambda: P.PowerOfTwo(block_size=0), "block_size=0"),
        (lambda: P.PerHead([]), "non-empty list"),
        (lambda: P.PerHead([P.Causal(), "causal"]), "not a jaxsparse pattern"),
        (
            lambda: P.SlidingWindow(2**40),
            "left=1099511627776 must be <= 1073741823. Masks add sizes to int32 positions",
        ),
        (lambda: P.SlidingWindow(2, right=2**31), "right=2147483648 must be <= 1073741823"),
        (lambda: P.Sink(2**35), "num_tokens=34359738368 must be <= .* int32"),
        (lambda: P.ChunkedCausal(2**33), "chunk_size=8589934592 must be <= .* int32"),
        (lambda: P.PrefixLM(2**31), "prefix_length=2147483648 must be <="),
        (lambda: P.Dilated(left=4, dilation=2**32), "dilation=4294967296 must be <="),
        (lambda: P.AShape(n_local=2**31), "n_local=2147483648 must be <="),
    ],
)
def test_bad_parameters(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_strided_reduces_head_step_modulo_the_stride_and_bounds_its_offsets():
    # h * head_step wrapped int32 for a head_step near 2**30 (a wrong mask, no error).
    p = P.Strided(stride=3, block_size=1, local_blocks=0, head_step=2**30 - 2)
    got = np.asarray(P.dense_mask(p, q_len=16, kv_len=16, num_heads=4))
    kb = np.arange(16)
    for h in range(4):
        np.testing.assert_array_equal(
            got[h], np.broadcast_to((kb + h * (2**30 - 2)) % 3 == 0, (16, 16))
        )
    huge = P.Strided(stride=2**29, block_size=1, head_step=2**29 - 1)
    with pytest.raises(ValueError, match="beyond the int32 range.*smaller stride"):
        P.dense_mask(huge, q_len=16, kv_len=16, num_heads=8)


def test_unsigned_numpy_sizes_work():
    out = js.attention(*(jnp.ones((1, 64, 1, 8)),) * 3, pattern=P.PowerOfTwo(np.uint64(4)))
    assert out.shape == (1, 64, 1, 8)


def test_largest_window_does_not_wrap_around():
    # q + right and q - left must stay within int32 for the largest sizes and positions.
    big = P.base.MAX_SIZE
    for p in (P.SlidingWindow(left=big, right=big), P.Dilated(left=big, dilation=1, right=big)):
        for q_offset in (big - 4, -big + 4):
            assert np.asarray(P.dense_mask(p, q_len=4, kv_len=4, q_offset=q_offset)).all()
    upper = np.triu(np.ones((4, 4), bool))
    mask = P.dense_mask(P.SlidingWindow(left=0, right=big), q_len=4, kv_len=4)
    np.testing.assert_array_equal(np.asarray(mask)[0], upper)
    with pytest.raises(ValueError, match="below 2\\*\\*30"):
        P.SlidingWindow(left=big + 1)


@pytest.mark.parametrize(
    "kw, error, match",
    [
        (dict(q_len=-1), ValueError, "dense_mask: q_len=-1 must be >= 1"),
        (dict(kv_len=2.0), TypeError, "dense_mask: kv_len must be an int"),
        (dict(num_heads=0), ValueError, "dense_mask: num_heads=0 must be >= 1"),
        (dict(q_offset=2**31 - 2), ValueError, "q_offset=2147483646 .* beyond the int32"),
    ],
)
def test_dense_mask_validation(kw, error, match):
    with pytest.raises(error, match=match):
        P.dense_mask(P.Causal(), **{"q_len": 4, "kv_len": 4, **kw})


def test_config_flags_must_be_bools():
    from jaxsparse.ops.config import Config

    with pytest.raises(TypeError, match="Config: interpret must be True or False, got 'yes'"):
        Config(interpret="yes")
    assert Config(interpret=True).interpret is True


def test_bind_rejects_patterns_that_do_not_fit():
    with pytest.raises(ValueError, match="2 patterns but the call has 4 query heads"):
        P.PerHead([P.Causal(), P.Full()]).bind(q_len=4, kv_len=4, q_offset=0, num_heads=4)
    with pytest.raises(ValueError, match=r"need \[\.\.\., 2, 3\]"):
        P.BlockMask(np.ones((3, 3), bool), block_q=4, block_kv=4).bind(
            q_len=8, kv_len=12, q_offset=4, num_heads=1
        )
    with pytest.raises(ValueError, match="must be \\[..., 5, 6\\]"):
        P.Mask(np.ones((5, 5), bool)).bind(q_len=5, kv_len=6, q_offset=1, num_heads=1)
    with pytest.raises(TypeError, match="boolean array"):
        P.Mask(np.ones((5, 5), np.int32)).bind(q_len=5, kv_len=5, q_offset=0, num_heads=1)


def test_hashable_and_static_under_jit():
    p = P.Causal() & P.SlidingWindow(left=4)
    assert hash(p) == hash(P.Causal() & P.SlidingWindow(left=4))
    assert p == P.Causal() & P.SlidingWindow(left=4)

    @jax.jit
    def f(x):
        return P.dense_mask(p, q_len=x.shape[0], kv_len=x.shape[0])[0] & (x > 0)

    assert f(jnp.ones((6, 6))).shape == (6, 6)


def test_patterns_are_pytrees_with_array_leaves():
    bm = P.BlockMask(np.ones((2, 2), bool), block_q=4, block_kv=4)
    assert len(jax.tree_util.tree_leaves(bm)) == 1
    assert jax.tree_util.tree_leaves(P.Causal() & P.Sink(2)) == []


@pytest.mark.parametrize(
    "text, want",
    [
        ("causal", P.Causal()),
        ("Causal() & SlidingWindow(left=3)", P.Causal() & P.SlidingWindow(left=3)),
        (
            "causal() & (sink(4) | sliding_window(128))",
            P.Causal() & (P.Sink(4) | P.SlidingWindow(128)),
        ),
        ("PerHead([Causal(), Full()])", P.PerHead([P.Causal(), P.Full()])),
        # Bare names mean the class with its defaults anywhere, not only at the top.
        (
            "causal & (sink(4) | sliding_window(left=8))",
            P.Causal() & (P.Sink(4) | P.SlidingWindow(left=8)),
        ),
        ("Full | causal", P.Full() | P.Causal()),
        ("a_shape & (Causal | full)", P.AShape() & (P.Causal() | P.Full())),
        ("PerHead([causal, Full])", P.PerHead([P.Causal(), P.Full()])),
        ("per_head(patterns=[causal, full])", P.PerHead([P.Causal(), P.Full()])),
    ],
)
def test_parse(text, want):
    assert P.parse(text) == want


def test_parse_round_trips_repr():
    for p in [
        P.Strided(stride=3, block_size=4),
        P.Dilated(left=9, dilation=3, right=3),
        P.PowerOfTwo(block_size=4),
        P.Causal() & (P.Sink(4) | P.SlidingWindow(left=8)),
    ]:
        assert P.parse(repr(p)) == p


@pytest.mark.parametrize(
    "text, match",
    [
        ("__import__('os')", "Unknown pattern|may only use"),
        ("Causal() + Sink(2)", "may only use"),
        ("Nope()", "Unknown pattern 'Nope'"),
        ("SlidingWindow(left=-1)", "left=-1"),
        ("Causal(", "Cannot parse"),
    ],
)
def test_parse_errors(text, match):
    with pytest.raises(ValueError, match=match):
        P.parse(text)
