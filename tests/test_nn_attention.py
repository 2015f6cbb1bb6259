"""`SparseAttention` and RoPE: dense reference, dtypes, jit, grad, parameter counts, decoding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxsparse import nn as jnn
from jaxsparse import patterns as P
from tests import oracle

C, H, K = 24, 4, 2


def _x(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _rope_reference(x, positions, base):
    """RoPE as complex rotation of the pairs (x_i, x_{i + D/2})."""
    d = x.shape[-1]
    theta = positions[:, None] * base ** (-np.arange(d // 2) / (d // 2))  # [T, D/2]
    z = (x[..., : d // 2] + 1j * x[..., d // 2 :]) * np.exp(1j * theta)[:, None, :]
    return np.concatenate([z.real, z.imag], axis=-1)


def _dense_reference(m, x, mask):
    """The module by hand: projections, RoPE, GQA softmax with an explicit mask, output."""
    xn = np.asarray(x, np.float64)
    t = xn.shape[1]

    def lin(layer, y):
        out = y @ np.asarray(layer.kernel[...], np.float64)
        return out if layer.bias is None else out + np.asarray(layer.bias[...], np.float64)

    q = lin(m.q_proj, xn).reshape(*xn.shape[:2], m.num_heads, m.head_dim)
    k = lin(m.k_proj, xn).reshape(*xn.shape[:2], m.num_kv_heads, m.head_dim)
    v = lin(m.v_proj, xn).reshape(*xn.shape[:2], m.num_kv_heads, m.head_dim)
    if m.rope is not None:
        pos = np.arange(t, dtype=np.float64)
        q, k = _rope_reference(q, pos, m.rope.base), _rope_reference(k, pos, m.rope.base)
    g = m.num_heads // m.num_kv_heads
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    s = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(m.head_dim)
    s = np.where(mask, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("bhts,bshd->bthd", p, v).reshape(*xn.shape[:2], -1)
    return lin(m.o_proj, out)


def test_rope_matches_complex_rotation_and_keeps_norms():
    x = _x((2, 7, 3, 8))
    pos = jnp.arange(7, dtype=jnp.int32) * 5
    got = jnn.apply_rope(x, pos, base=100.0)
    want = _rope_reference(np.asarray(x, np.float64), np.asarray(pos, np.float64), 100.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        jnp.linalg.norm(got, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5
    )
    # Partial rotation rotates the head as a 4-wide one and leaves the tail alone; each
    # example takes its own positions.
    rows = jnp.stack([pos, pos + 1])
    part = jnn.apply_rope(x, rows, rotary_dim=4)
    np.testing.assert_array_equal(part[..., 4:], x[..., 4:])
    for b in range(2):
        want = _rope_reference(
            np.asarray(x[b : b + 1, ..., :4], np.float64), np.asarray(rows[b], np.float64), 10000.0
        )
        np.testing.assert_allclose(part[b : b + 1, ..., :4], want, rtol=1e-5, atol=1e-5)
    # Relative property: <rope(q, i), rope(k, j)> depends on i - j only.
    q, k = _x((1, 1, 1, 8), 1), _x((1, 1, 1, 8), 2)

    def dot(i, j):
        a = jnn.apply_rope(q, jnp.array([i], jnp.int32))
        b = jnn.apply_rope(k, jnp.array([j], jnp.int32))
        return float((a * b).sum())

    assert dot(3, 1) == pytest.approx(dot(10, 8), abs=1e-5)


@pytest.mark.parametrize("rope", [None, jnn.RoPE(base=50.0)], ids=["plain", "rope"])
def test_matches_dense_reference(rope):
    pattern = P.Causal() & P.SlidingWindow(left=3)
    m = jnn.SparseAttention(
        C,
        H,
        num_kv_heads=K,
        pattern=pattern,
        rope=rope,
        qkv_bias=True,
        out_bias=True,
        rngs=nnx.Rngs(0),
    )
    x = _x((2, 11, C))
    mask = np.asarray(P.dense_mask(pattern, q_len=11, kv_len=11, xp=np))[None]
    np.testing.assert_allclose(m(x), _dense_reference(m, x, mask), rtol=2e-5, atol=2e-5)


def test_parameter_count_formula():
    m = jnn.SparseAttention(
        C,
        H,
        num_kv_heads=K,
        head_dim=6,
        out_features=10,
        qkv_bias=True,
        out_bias=True,
        rngs=nnx.Rngs(0),
    )
    n = sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
    want = C * H * 6 + 2 * C * K * 6 + (H * 6 + 2 * K * 6) + H * 6 * 10 + 10
    assert n == want
    bare = jnn.SparseAttention(C, H, rngs=nnx.Rngs(0))  # no biases, K = H, D = C / H
    assert sum(x.size for x in jax.tree.leaves(nnx.state(bare, nnx.Param))) == 4 * C * C


def test_bf16_compute_with_f32_params_under_jit():
    m = jnn.SparseAttention(
        C,
        H,
        num_kv_heads=K,
        pattern=P.Causal(),
        rope=jnn.RoPE(),
        dtype=jnp.bfloat16,
        rngs=nnx.Rngs(0),
    )
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(m, nnx.Param)))
    x = _x((2, 9, C))
    y = nnx.jit(lambda m, x: m(x))(m, x)
    assert y.dtype == jnp.bfloat16 and y.shape == (2, 9, C)
    m32 = jnn.SparseAttention(
        C, H, num_kv_heads=K, pattern=P.Causal(), rope=jnn.RoPE(), rngs=nnx.Rngs(0)
    )
    assert oracle.rel_err(y, m32(x)) < 3e-2


def test_grad_matches_dense_reference_grad():
    pattern = P.Causal() & (P.Sink(2) | P.SlidingWindow(left=2))
    m = jnn.SparseAttention(
        C, H, num_kv_heads=K, pattern=pattern, rope=jnn.RoPE(), rngs=nnx.Rngs(1)
    )
    x = _x((2, 10, C), 3)
    cot = _x((2, 10, C), 4)
    mask = P.dense_mask(pattern, q_len=10, kv_len=10)[None]

    def loss(m, x):
        return (m(x) * cot).sum()

    def ref_loss(m, x):  # the same module math with a dense masked softmax in jnp
        q, k, v = m._project(x)
        pos = jnp.arange(10, dtype=jnp.int32)
        q, k = m.rope(q, pos), m.rope(k, pos)
        g = H // K
        k, v = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
        s = jnp.einsum("bthd,bshd->bhts", q, k) * m.head_dim**-0.5
        p = jax.nn.softmax(jnp.where(mask, s, -jnp.inf), axis=-1)
        out = jnp.einsum("bhts,bshd->bthd", p, v).reshape(2, 10, -1)
        return (m.o_proj(out) * cot).sum()

    got = nnx.jit(nnx.grad(loss, argnums=(0, 1)))(m, x)
    want = nnx.jit(nnx.grad(ref_loss, argnums=(0, 1)))(m, x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert oracle.rel_err(a, b) < 1e-5


DECODE_PATTERNS = [
    P.Causal(),
    P.Causal() & P.SlidingWindow(left=3),
    P.Causal() & (P.Sink(2) | P.SlidingWindow(left=2)),
    P.ChunkedCausal(4),
    P.PerHead(
        [P.Causal(), P.Causal() & P.SlidingWindow(left=1), P.Causal(), P.Causal() & P.Sink(3)]
    ),
]


@pytest.mark.parametrize("pattern", DECODE_PATTERNS, ids=repr)
def test_decode_with_cache_equals_full_pass(pattern):
    m = jnn.SparseAttention(
        C, H, num_kv_heads=K, pattern=pattern, rope=jnn.RoPE(), rngs=nnx.Rngs(2)
    )
    x = _x((2, 12, C), 5)
    full = m(x)
    m.init_cache(batch_size=2, max_length=16)
    step = nnx.jit(lambda m, x: m(x, decode=True))
    outs = [step(m, x[:, :5])]  # chunked prefill, then one token at a time
    outs += [step(m, x[:, i : i + 1]) for i in range(5, 12)]
    assert int(m.cache_index[...]) == 12
    assert oracle.rel_err(jnp.concatenate(outs, axis=1), full) < 1e-5


def test_bad_input():
    with pytest.raises(ValueError, match="multiple of num_kv_heads=3"):
        jnn.SparseAttention(C, 4, num_kv_heads=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="not divisible by num_heads=5; pass head_dim"):
        jnn.SparseAttention(C, 5, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="must be a jaxsparse pattern"):
        jnn.SparseAttention(C, H, pattern="causal", rngs=nnx.Rngs(0))
    m = jnn.SparseAttention(C, H, pattern=P.Causal(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"takes tokens \[B, T, C\]"):
        m(_x((2, 3, 4, C)))
    with pytest.raises(ValueError, match="call init_cache"):
        m(_x((2, 3, C)), decode=True)
    m.init_cache(batch_size=2, max_length=4)
    with pytest.raises(ValueError, match="does not fit the cache"):
        m(_x((2, 5, C)), decode=True)
    grid = jnn.SparseAttention(C, H, pattern=P.Neighborhood((2, 2), 2), rngs=nnx.Rngs(0))
    grid.init_cache(batch_size=1, max_length=4)
    with pytest.raises(ValueError, match="cannot decode with Neighborhood"):
        grid(_x((1, 1, C)), decode=True)
    line = jnn.SparseAttention(C, H, pattern=P.Neighborhood((4,), 3), rngs=nnx.Rngs(0))
    line.init_cache(batch_size=1, max_length=4)  # a 1-D grid keeps the token order
    with pytest.raises(ValueError, match="cannot decode with Neighborhood.*whole token grid"):
        line(_x((1, 1, C)), decode=True)
    with pytest.raises(ValueError, match="rotary_dim=3"):
        jnn.RoPE(rotary_dim=3)


@pytest.mark.parametrize(
    "make",
    [
        lambda: jnn.SparseAttention(15, 3, rope=jnn.RoPE(), rngs=nnx.Rngs(0)),
        lambda: jnn.NativeSparseAttention(30, 6, rngs=nnx.Rngs(0)),
        lambda: jnn.AttnGate(2, 2, 8, block_size=4, hidden=5, rngs=nnx.Rngs(0)),
        lambda: jnn.apply_rope(jnp.ones((4, 1, 5)), jnp.arange(4)),
    ],
)
def test_rope_on_an_odd_head_dim_is_named(make):
    # Channels rotate in pairs: an odd width is refused with the fixes, at construction.
    with pytest.raises(ValueError, match=r"RoPE rotates channels in pairs.*\(odd\).*rope=None"):
        make()


def test_modules_take_numpy_integer_sizes():
    m = jnn.NativeSparseAttention(np.int64(16), np.int64(2), rngs=nnx.Rngs(0))
    assert m(jnp.ones((1, 8, 16))).shape == (1, 8, 16)
    jnn.AttnGate(np.int64(2), head_dim=8, rngs=nnx.Rngs(0))
    assert jnn.BiLevelRoutingAttention(12, 3, n_win=2, topk=np.int64(2), rngs=nnx.Rngs(0)).topk == 2
    jnn.HiLoAttention(12, 4, alpha=np.float32(0.5), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="alpha=True"):
        jnn.HiLoAttention(12, 4, alpha=True, rngs=nnx.Rngs(0))


def test_default_pattern_is_full_attention():
    m = jnn.SparseAttention(C, H, rngs=nnx.Rngs(0))
    x = _x((1, 6, C))
    np.testing.assert_allclose(
        m(x), _dense_reference(m, x, np.ones((1, 1, 6, 6), bool)), rtol=2e-5, atol=2e-5
    )
    assert isinstance(m.pattern, P.Full)


def test_decode_past_max_length_is_refused_and_leaves_the_cache_alone():
    m = jnn.SparseAttention(C, H, pattern=P.Causal(), rope=jnn.RoPE(), rngs=nnx.Rngs(0))
    x = _x((1, 6, C))
    m.init_cache(batch_size=1, max_length=4)
    for i in range(4):
        m(x[:, i : i + 1], decode=True)
    with pytest.raises(ValueError, match="cache index 4 needs max_length >= 5, but the cache has"):
        m(x[:, 4:5], decode=True)
    assert int(m.cache_index[...]) == 4
    m.init_cache(batch_size=1, max_length=4)
    m(x[:, :3], decode=True)  # prefill 3, then a chunk of 3 does not fit
    with pytest.raises(ValueError, match="T=3 tokens at cache index 3 needs max_length >= 6"):
        m(x[:, 3:6], decode=True)


def test_more_bad_input():
    m = jnn.SparseAttention(C, H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="12 channels; expected in_features=24"):
        m(_x((2, 5, 12)))
    with pytest.raises(ValueError, match="SparseAttention: out_features=0 must be >= 1"):
        jnn.SparseAttention(C, H, out_features=0, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="SparseAttention: num_heads must be an int"):
        jnn.SparseAttention(C, 4.0, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="SparseAttention: dtype=.*int32.* floating-point"):
        jnn.SparseAttention(C, H, dtype=jnp.int32, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="SparseAttention: param_dtype=.*int32"):
        jnn.SparseAttention(C, H, param_dtype=jnp.int32, rngs=nnx.Rngs(0))


def test_explicit_mask_patterns_work_in_the_full_pass():
    x = _x((2, 6, C))
    causal = jnn.SparseAttention(C, H, pattern=P.Causal(), rngs=nnx.Rngs(0))
    tril = np.tril(np.ones((6, 6), bool))
    block = np.tril(np.ones((3, 3), bool))
    block_pattern = P.BlockMask(block, block_q=2, block_kv=2)
    block_dense = np.asarray(P.dense_mask(block_pattern, q_len=6, kv_len=6, xp=np))
    for pattern, want in [
        (P.Mask(tril), causal(x)),
        (P.Mask(jnp.asarray(tril)), causal(x)),
        (block_pattern, None),
    ]:
        m = jnn.SparseAttention(C, H, pattern=pattern, rngs=nnx.Rngs(0))
        if want is None:
            want = _dense_reference(m, x, block_dense.reshape(1, 1, 6, 6))
        np.testing.assert_allclose(m(x), want, rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(m, x), want, rtol=2e-5, atol=2e-5)
        grads = nnx.grad(lambda m, x: m(x).sum())(m, x)
        assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    m.init_cache(batch_size=2, max_length=8)
    with pytest.raises(ValueError, match="(?s)cannot decode with BlockMask.*explicit mask"):
        m(x[:, :1], decode=True)
    # The message names the array by its shape (not its values) and only the reason that holds.
    m = jnn.SparseAttention(C, H, pattern=P.Mask(tril), rngs=nnx.Rngs(0))
    m.init_cache(batch_size=2, max_length=8)
    with pytest.raises(
        ValueError, match=r"decode with Mask\(mask\[6, 6\]\): it holds an explicit mask"
    ) as e:
        m(x[:, :1], decode=True)
    assert "\n" not in str(e.value) and "grid" not in str(e.value)


@pytest.mark.parametrize(
    "x, positions, kwargs, exc, match",
    [
        ((2, 5, 3, 8), (3, 5), {}, ValueError, r"positions have shape \(3, 5\); expected \[5\] or"),
        ((5, 3, 8), (2, 5), {}, ValueError, r"positions have shape \(2, 5\); expected \[5\] for"),
        ((5, 8), (5,), {}, ValueError, r"x has shape \(5, 8\); expected \[B, T, H, D\]"),
        ((2, 5, 3, 8), (5,), dict(rotary_dim=-2), ValueError, "rotary_dim=-2 must be a positive"),
        ((2, 5, 3, 8), (5,), dict(rotary_dim=0), ValueError, "rotary_dim=0 must be a positive"),
        ((2, 5, 3, 8), (5,), dict(rotary_dim=10), ValueError, "larger than the head dim 8"),
        ((2, 5, 3, 8), (5,), dict(base=0.0), ValueError, "apply_rope: base=0.0 must be a positive"),
        ((2, 5, 3, 8), (5,), dict(dtype=jnp.int32), TypeError, "x must be a floating-point array"),
    ],
)
def test_apply_rope_bad_input(x, positions, kwargs, exc, match):
    dtype = kwargs.pop("dtype", jnp.float32)
    with pytest.raises(exc, match=match):
        jnn.apply_rope(jnp.ones(x, dtype), jnp.zeros(positions, jnp.int32), **kwargs)


def test_empty_batch():
    m = jnn.SparseAttention(C, H, num_kv_heads=K, rope=jnn.RoPE(), rngs=nnx.Rngs(0))
    y = m(_x((0, 5, C)))
    assert y.shape == (0, 5, C) and y.dtype == jnp.float32
