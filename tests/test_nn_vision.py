"""Vision modules (NeighborhoodAttention, HiLoAttention, BiLevelRoutingAttention).

Each module is checked against a dense reference written here from the
paper's code (NATTEN's rule via `grid_specs`, LITv2's `hilo.py`, BiFormer's
`bra_legacy.py`, ported line by line to jnp with a gather instead of
block-sparse tiles), forward and parameter gradients; plus shapes, dtypes,
jit, parameter counts, video layouts and bad input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxsparse import nn as jnn
from jaxsparse import patterns as P
from tests import grid_specs, oracle


def _x(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _channels(v, ndim):
    """A per-channel vector shaped to broadcast against rank-`ndim` arrays."""
    return v.reshape((1,) * (ndim - 1) + (-1,))


def _lin(layer, y):
    out = y @ layer.kernel[...]
    return out if layer.bias is None else out + _channels(layer.bias[...], out.ndim)


def _n_params(m):
    return sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))


def _check_grads(m, x, reference, tol=1e-5):
    """Parameter and input gradients of <module(x), cot> against the reference's."""
    cot = _x(m(x).shape, 99)
    got = nnx.jit(nnx.grad(lambda m, x: (m(x) * cot).sum(), argnums=(0, 1)))(m, x)
    # The reference is jitted too: eager, its many small ops each compile (slow on CPU).
    want = nnx.jit(nnx.grad(lambda m, x: (reference(m, x) * cot).sum(), argnums=(0, 1)))(m, x)
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got_leaves) == len(want_leaves)
    for a, b in zip(got_leaves, want_leaves, strict=True):
        assert oracle.rel_err(a, b) < tol


def _softmax_attention(q, k, v, scale, mask=None):
    """q `[..., Tq, d]`, k/v `[..., Tk, d]`."""
    s = jnp.einsum("...qd,...kd->...qk", q, k) * scale
    if mask is not None:
        s = jnp.where(mask, s, -jnp.inf)
    return jax.nn.softmax(s, axis=-1) @ v


# --- NeighborhoodAttention -------------------------------------------------------


def na_reference(m, x):
    """Dense softmax with NATTEN's rule as a brute-force mask in natural order."""
    b, grid, c = x.shape[0], x.shape[1:-1], x.shape[-1]
    n, h, d = int(np.prod(grid)), m.num_heads, m.head_dim
    qkv = _lin(m.qkv, x.reshape(b, n, c)).reshape(b, n, 3, h, d).transpose(2, 0, 3, 1, 4)
    pattern = P.Neighborhood(grid, m.window, stride=m.stride, dilation=m.dilation, causal=m.causal)
    mask = jnp.asarray(grid_specs.natural_mask(pattern))
    out = _softmax_attention(qkv[0], qkv[1], qkv[2], d**-0.5, mask)  # [b, h, n, d]
    return _lin(m.proj, out.transpose(0, 2, 1, 3).reshape(b, n, h * d)).reshape(b, *grid, -1)


NA_CASES = [
    dict(shape=(2, 13, 16), window=5, kw=dict(causal=True, dilation=2)),
    dict(shape=(2, 5, 7, 16), window=(3, 5), kw=dict(stride=(1, 2), tile=(1, 7))),
    dict(
        shape=(1, 3, 4, 6, 16),
        window=(2, 3, 3),
        kw=dict(dilation=(1, 1, 2), causal=(True, False, False)),
    ),
]


@pytest.mark.parametrize("case", NA_CASES, ids=lambda c: f"{len(c['shape']) - 2}d")
def test_neighborhood_attention_matches_reference(case):
    m = jnn.NeighborhoodAttention(16, 2, case["window"], **case["kw"], rngs=nnx.Rngs(0))
    x = _x(case["shape"])
    y = m(x)
    assert y.shape == x.shape
    assert oracle.rel_err(y, na_reference(m, x)) < 1e-5
    if x.ndim == 4:  # gradients once (compiles are the slow part on CPU)
        _check_grads(m, x, na_reference)


def test_neighborhood_attention_parameters_dtypes_and_jit():
    m = jnn.NeighborhoodAttention(16, 2, 3, rngs=nnx.Rngs(0))
    assert _n_params(m) == 4 * 16 * 16 + 4 * 16  # qkv + proj, with biases (NATTEN)
    bf = jnn.NeighborhoodAttention(16, 2, 3, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf, nnx.Param)))
    x = _x((2, 6, 8, 16))
    y = nnx.jit(lambda m, x: m(x))(bf, x)
    assert y.dtype == jnp.bfloat16 and y.shape == x.shape
    assert oracle.rel_err(y, m(x)) < 3e-2


# --- HiLoAttention ---------------------------------------------------------------


def hilo_reference(m, x):
    """LITv2 `HiLo.forward` (hilo.py), ported to jnp (its default scale: head_dim ** -0.5)."""
    b, hh, ww, c = x.shape
    ws, d, outs = m.window_size, m.head_dim, []
    assert m.head_dim == c // (m.h_heads + m.l_heads)
    assert m.scale == pytest.approx(d**-0.5)  # the references below use the paper's scale
    if m.h_heads:  # hifi
        h, hg, wg = m.h_heads, hh // ws, ww // ws
        xw = x.reshape(b, hg, ws, wg, ws, c).transpose(0, 1, 3, 2, 4, 5)
        qkv = _lin(m.h_qkv, xw).reshape(b, hg * wg, -1, 3, h, d).transpose(3, 0, 1, 4, 2, 5)
        att = _softmax_attention(qkv[0], qkv[1], qkv[2], d**-0.5)  # [b, hw, h, ws*ws, d]
        att = att.transpose(0, 1, 3, 2, 4).reshape(b, hg, wg, ws, ws, h * d)
        outs.append(_lin(m.h_proj, att.transpose(0, 1, 3, 2, 4, 5).reshape(b, hh, ww, h * d)))
    if m.l_heads:  # lofi
        l = m.l_heads
        q = _lin(m.l_q, x).reshape(b, hh * ww, l, d).transpose(0, 2, 1, 3)
        pooled = x.reshape(b, hh // ws, ws, ww // ws, ws, c).mean((2, 4)) if ws > 1 else x
        kv = _lin(m.l_kv, pooled.reshape(b, -1, c)).reshape(b, -1, 2, l, d)
        kv = kv.transpose(2, 0, 3, 1, 4)
        att = _softmax_attention(q, kv[0], kv[1], d**-0.5)  # [b, l, n, d]
        outs.append(_lin(m.l_proj, att.transpose(0, 2, 1, 3).reshape(b, hh, ww, l * d)))
    return jnp.concatenate(outs, axis=-1)


@pytest.mark.parametrize("alpha, ws", [(0.5, 2), (0.0, 2), (1.0, 3), (0.75, 1)])
def test_hilo_matches_litv2(alpha, ws):
    m = jnn.HiLoAttention(16, 4, window_size=ws, alpha=alpha, qkv_bias=True, rngs=nnx.Rngs(0))
    x = _x((2, 6, 12, 16))
    y = m(x)
    assert y.shape == x.shape
    assert oracle.rel_err(y, hilo_reference(m, x)) < 1e-5
    if alpha == 0.5:
        _check_grads(m, x, hilo_reference)


def test_hilo_parameter_count_and_head_split():
    dim, heads = 32, 8
    for alpha, ws in [(0.5, 2), (0.9, 2), (0.0, 2), (1.0, 2), (0.5, 1)]:
        m = jnn.HiLoAttention(dim, heads, window_size=ws, alpha=alpha, rngs=nnx.Rngs(0))
        l_heads = heads if ws == 1 else int(heads * alpha)
        ld, hd = l_heads * dim // heads, (heads - l_heads) * dim // heads
        hifi = 3 * dim * hd + hd * hd + hd if hd else 0
        lofi = dim * ld + 2 * dim * ld + ld * ld + ld if ld else 0
        assert (m.l_heads, m.h_heads) == (l_heads, heads - l_heads)
        assert _n_params(m) == hifi + lofi


def test_hilo_video_is_per_frame_and_bf16():
    m = jnn.HiLoAttention(16, 4, rngs=nnx.Rngs(0))
    video = _x((2, 3, 4, 6, 16))
    y = nnx.jit(lambda m, x: m(x))(m, video)
    frames = m(video.reshape(6, 4, 6, 16)).reshape(video.shape)
    assert oracle.rel_err(y, frames) < 1e-6
    bf = jnn.HiLoAttention(16, 4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    yb = bf(video)
    assert yb.dtype == jnp.bfloat16 and oracle.rel_err(yb, y) < 3e-2


# --- BiLevelRoutingAttention ------------------------------------------------------


def _depthwise_conv(v, kernel, bias):
    """`[B, H, W, C]` * `[k, k, 1, C]`, zero padding k // 2 (torch Conv2d, groups=C)."""
    k, (hh, ww) = kernel.shape[0], v.shape[1:3]
    vp = jnp.pad(v, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    out = sum(
        vp[:, i : i + hh, j : j + ww] * _channels(kernel[i, j, 0], 4)
        for i in range(k)
        for j in range(k)
    )
    return out + _channels(bias, 4)


def bra_reference(m, x):
    """BiFormer `BiLevelRoutingAttention.forward` (ops/bra_legacy.py), ported to jnp.

    Its default scale is the whole `qk_dim ** -0.5`, not a head's, in routing and attention.
    """
    b, hh, ww, c = x.shape
    n, qk, heads = m.n_win, m.qk_dim, m.num_heads
    h, w = hh // n, ww // n
    # "n (j h) (i w) c -> n (j i) h w c"
    xr = x.reshape(b, n, h, n, w, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, n * n, h, w, c)
    qkv = _lin(m.qkv, xr)
    q, kv = qkv[..., :qk], qkv[..., qk:]
    q_pix, kv_pix = q.reshape(b, n * n, h * w, qk), kv.reshape(b, n * n, h * w, qk + c)
    q_win = jax.lax.stop_gradient(q.mean((2, 3)))
    k_win = jax.lax.stop_gradient(kv[..., :qk].mean((2, 3)))
    v_img = kv[..., qk:].reshape(b, n, n, h, w, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hh, ww, c)
    lepe = _depthwise_conv(v_img, m.lepe.kernel[...], m.lepe.bias[...])
    logits = (q_win * qk**-0.5) @ k_win.transpose(0, 2, 1)
    r_idx = jnp.argsort(-logits, axis=-1, stable=True)[..., : m.topk]  # torch.topk order
    sel = kv_pix[jnp.arange(b)[:, None, None], r_idx]  # [b, p2, topk, w2, qk + c]
    k_sel = sel[..., :qk].reshape(b, n * n, -1, heads, qk // heads).transpose(0, 1, 3, 2, 4)
    v_sel = sel[..., qk:].reshape(b, n * n, -1, heads, c // heads).transpose(0, 1, 3, 2, 4)
    q_h = q_pix.reshape(b, n * n, h * w, heads, qk // heads).transpose(0, 1, 3, 2, 4)
    out = _softmax_attention(q_h, k_sel, v_sel, qk**-0.5)  # [b, p2, m, w2, c/m]
    # "(n j i) m (h w) c -> n (j h) (i w) (m c)"
    out = out.transpose(0, 1, 3, 2, 4).reshape(b, n, n, h, w, c)
    out = out.transpose(0, 1, 3, 2, 4, 5).reshape(b, hh, ww, c)
    return _lin(m.wo, out + lepe)


@pytest.mark.parametrize("n_win, topk, qk_dim", [(2, 2, None), (3, 4, 8)])
def test_biformer_matches_bra_legacy(n_win, topk, qk_dim):
    m = jnn.BiLevelRoutingAttention(
        16, 2, n_win=n_win, topk=topk, qk_dim=qk_dim, side_dwconv=3, rngs=nnx.Rngs(0)
    )
    x = _x((2, 6, 12, 16))
    y = m(x)
    assert y.shape == x.shape
    assert oracle.rel_err(y, bra_reference(m, x)) < 1e-5
    if qk_dim is not None:
        _check_grads(m, x, bra_reference)


def _route_straightforward(q, k, n_win, topk, scale):
    """Region means and top-k by sorting, per query region, in float64 numpy."""
    b, hh, ww, c = q.shape
    h, w = hh // n_win, ww // n_win
    out = np.zeros((b, n_win * n_win, topk), np.int64)
    for bi in range(b):
        means_q, means_k = [], []
        for j in range(n_win):
            for i in range(n_win):
                means_q.append(q[bi, j * h : (j + 1) * h, i * w : (i + 1) * w].mean((0, 1)))
                means_k.append(k[bi, j * h : (j + 1) * h, i * w : (i + 1) * w].mean((0, 1)))
        for r, mq in enumerate(means_q):
            scores = [float(mq @ mk) * scale for mk in means_k]
            out[bi, r] = sorted(range(len(scores)), key=lambda s: (-scores[s], s))[:topk]
    return out


@pytest.mark.parametrize("seed, constant", [(0, False), (1, False), (2, True)])
def test_biformer_routing_index_for_index(seed, constant):
    m = jnn.BiLevelRoutingAttention(8, 2, n_win=3, topk=4, rngs=nnx.Rngs(seed))
    x = jnp.ones((2, 6, 9, 8)) if constant else _x((2, 6, 9, 8), seed)  # constant: all ties
    qkv = np.asarray(m.qkv(x), np.float64)
    want = _route_straightforward(qkv[..., :8], qkv[..., 8:16], 3, 4, m.qk_dim**-0.5)
    q, k = m.qkv(x)[..., :8], m.qkv(x)[..., 8:16]
    got = m.route(m._regions(q), m._regions(k))
    np.testing.assert_array_equal(got, want)


def test_biformer_parameters_and_padding():
    dim, qk, k = 16, 8, 5
    m = jnn.BiLevelRoutingAttention(dim, 2, n_win=2, topk=2, qk_dim=qk, rngs=nnx.Rngs(0))
    want = dim * (2 * qk + dim) + 2 * qk + dim + dim * dim + dim + k * k * dim + dim
    assert _n_params(m) == want
    # auto_pad: pad to multiples of n_win, attend, crop (reference on the padded input).
    padded = jnn.BiLevelRoutingAttention(
        dim, 2, n_win=2, topk=2, qk_dim=qk, auto_pad=True, rngs=nnx.Rngs(0)
    )
    x = _x((1, 5, 7, dim))
    want = bra_reference(padded, jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))[:, :5, :7]
    assert oracle.rel_err(padded(x), want) < 1e-5


@pytest.mark.slow
def test_biformer_video_and_bf16():
    m = jnn.BiLevelRoutingAttention(16, 2, n_win=2, topk=2, qk_dim=8, rngs=nnx.Rngs(0))
    video = _x((2, 2, 4, 6, 16))
    y = nnx.jit(lambda m, x: m(x))(m, video)
    assert oracle.rel_err(y, m(video.reshape(4, 4, 6, 16)).reshape(video.shape)) < 1e-6
    bf = jnn.BiLevelRoutingAttention(
        16, 2, n_win=2, topk=2, qk_dim=8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)
    )
    yb = bf(video)
    assert yb.dtype == jnp.bfloat16 and oracle.rel_err(yb, y) < 3e-2


# --- bad input and interop -----------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: jnn.HiLoAttention(16, 4, alpha=1.5, rngs=nnx.Rngs(0)), r"alpha=1.5 .* \[0, 1\]"),
        (lambda: jnn.HiLoAttention(16, 4, alpha=-0.1, rngs=nnx.Rngs(0)), "alpha=-0.1"),
        (
            lambda: jnn.BiLevelRoutingAttention(16, 2, n_win=2, topk=5, rngs=nnx.Rngs(0)),
            "topk=5 must be between 1 and the number of regions n_win\\*\\*2 = 4",
        ),
        (lambda: jnn.NeighborhoodAttention(16, 2, 3, stride=0, rngs=nnx.Rngs(0)), "stride=0"),
        (
            lambda: jnn.NeighborhoodAttention(16, 2, (3, 3), dilation=(1, -1), rngs=nnx.Rngs(0)),
            "dilation=.* has -1 on axis 1",
        ),
    ],
)
def test_bad_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


HILO, BRA, NA = jnn.HiLoAttention, jnn.BiLevelRoutingAttention, jnn.NeighborhoodAttention


@pytest.mark.parametrize(
    "cls, args, kwargs, exc, match",
    [
        (HILO, (16, 0), {}, ValueError, "HiLoAttention: num_heads=0 must be >= 1"),
        (HILO, (16, -4), {}, ValueError, "HiLoAttention: num_heads=-4 must be >= 1"),
        (HILO, (0, 4), {}, ValueError, "HiLoAttention: dim=0 must be >= 1"),
        (BRA, (16, 0), {}, ValueError, "BiLevelRoutingAttention: num_heads=0 must be >= 1"),
        (BRA, (16, 2), dict(qk_dim=0), ValueError, "qk_dim=0 must be >= 1"),
        (BRA, (0, 2), {}, ValueError, "BiLevelRoutingAttention: dim=0 must be >= 1"),
        (BRA, (16, 2), dict(side_dwconv=3.0), TypeError, "side_dwconv must be an int, got 3.0"),
        (BRA, (16, 2), dict(side_dwconv=-1), ValueError, "side_dwconv=-1 must be >= 0. Use an odd"),
        (NA, (16, 0, 3), {}, ValueError, "NeighborhoodAttention: num_heads=0 must be >= 1"),
        (NA, (0, 2, 3), {}, ValueError, "NeighborhoodAttention: in_features=0 must be >= 1"),
        (NA, (16, 2, 3), dict(head_dim=0), ValueError, "head_dim=0 must be >= 1"),
        (NA, (16, 2, 3), dict(out_features=0), ValueError, "out_features=0 must be >= 1"),
    ],
)
def test_bad_sizes(cls, args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        cls(*args, **kwargs, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "make, x",
    [
        (lambda r: HILO(16, 4, rngs=r), (1, 4, 4, 12)),
        (lambda r: BRA(16, 2, n_win=2, topk=1, rngs=r), (1, 2, 4, 4, 12)),
        (lambda r: NA(16, 2, 3, rngs=r), (1, 5, 5, 12)),
    ],
)
def test_wrong_channel_count(make, x):
    m = make(nnx.Rngs(0))
    name = "dim" if isinstance(m, (HILO, BRA)) else "in_features"
    with pytest.raises(ValueError, match=f"12 channels; expected {name}=16 channels last"):
        m(_x(x))


@pytest.mark.parametrize(
    "make, x",
    [
        (lambda r: HILO(16, 4, rngs=r), (0, 4, 4, 16)),
        (lambda r: HILO(16, 4, window_size=1, rngs=r), (0, 2, 4, 4, 16)),
        (lambda r: BRA(16, 2, n_win=2, topk=1, rngs=r), (0, 4, 4, 16)),
        (lambda r: NA(16, 2, 3, rngs=r), (0, 4, 4, 16)),
    ],
)
def test_empty_batch(make, x):
    assert make(nnx.Rngs(0))(_x(x)).shape == x


def test_bad_layouts():
    hilo = jnn.HiLoAttention(16, 4, window_size=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\(5, 6\) is not a multiple of window_size=2"):
        hilo(_x((1, 5, 6, 16)))
    with pytest.raises(ValueError, match=r"images \[B, H, W, C\] or videos"):
        hilo(_x((1, 36, 16)))
    bra = jnn.BiLevelRoutingAttention(16, 2, n_win=2, topk=1, rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError, match="not a multiple of n_win=2; pad the input or pass auto_pad=True"
    ):
        bra(_x((1, 5, 6, 16)))
    na = jnn.NeighborhoodAttention(16, 2, (3, 3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="with 2 grid axes"):
        na(_x((1, 4, 5, 6, 16)))
    with pytest.raises(ValueError, match="window 3 x dilation 1 = 3 is larger than grid axis 0"):
        na(_x((1, 2, 6, 16)))


def test_linen_bridge_example():
    # The docs/nn.md example: an NNX module inside a Linen model.
    from flax import linen

    class Block(linen.Module):
        @linen.compact
        def __call__(self, x):
            attn = nnx.bridge.to_linen(jnn.NeighborhoodAttention, 16, 2, (3, 3))
            return x + attn(linen.LayerNorm()(x))

    x = _x((1, 6, 8, 16))
    variables = Block().init(jax.random.key(0), x)
    y = Block().apply(variables, x)
    assert y.shape == x.shape
    leaves = jax.tree.leaves(variables["params"])
    assert sum(p.size for p in leaves) == 4 * 16 * 16 + 4 * 16 + 2 * 16  # attention + norm
