"""NSA: compression, selection index for index, three-branch output and every gradient vs dense."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsparse as js
import jaxsparse.nn as jsnn
from jaxsparse.methods import NSAConfig, nsa_compress, nsa_selection
from jaxsparse.selection import remap
from tests import dynamic_refs as R

CFG = NSAConfig(
    kernel_size=8, stride=4, block_size=8, top_n=4, init_blocks=1, local_blocks=2, window=16
)


def selection_reference(q, k_cmp, cfg, kv_len, q_offset):
    """NSA's top-n blocks per (token, key head), written from the paper (float64, loops)."""
    q, k_cmp = np.asarray(q, np.float64), np.asarray(k_cmp, np.float64)
    b, t, h, d = q.shape
    nc, kh = k_cmp.shape[1], k_cmp.shape[2]
    g = h // kh
    nb = -(-kv_len // cfg.block_size)
    c, r = cfg.kernel_size // cfg.stride, cfg.block_size // cfg.stride
    i, j = np.arange(nc)[:, None], np.arange(nb)[None, :]
    overlap = np.maximum(0, np.minimum(i + c, (j + 1) * r) - np.maximum(i, j * r))
    bits = np.zeros((b, kh, t, nb), bool)
    for bb, kv, row in np.ndindex(b, kh, t):
        pos = q_offset + row
        visible = np.arange(nc) * cfg.stride + cfg.kernel_size - 1 <= pos
        score = np.zeros(nb)
        for hh in range(kv * g, (kv + 1) * g):
            if visible.any():
                logits = k_cmp[bb, visible, kv] @ q[bb, row, hh] * d**-0.5
                p = np.zeros(nc)
                p[visible] = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
                score += p @ overlap
        own = pos // cfg.block_size
        cand = range(own + 1)
        forced = {jj for jj in cand if jj < cfg.init_blocks or own - jj < cfg.local_blocks}
        ranked = sorted(cand, key=lambda jj: (jj not in forced, -score[jj], jj))
        bits[bb, kv, row, ranked[: cfg.top_n]] = True
    return bits


def nsa_reference(q, k, v, gates, k_cmp, v_cmp, bits, cfg):
    t, s, h, kh = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    off = s - t
    pos = off + np.arange(t)[:, None]
    m_cmp = np.arange(k_cmp.shape[1])[None, :] * cfg.stride + cfg.kernel_size - 1 <= pos
    o_cmp, _ = R.dense_ref(q, k_cmp, v_cmp, jnp.asarray(m_cmp)[None, None])
    sel = np.repeat(bits, h // kh, axis=1)[..., np.arange(s) // cfg.block_size]
    m_slc = sel & (np.arange(s)[None, :] <= pos)[None, None]
    o_slc, _ = R.dense_ref(q, k, v, jnp.asarray(m_slc))
    m_win = (np.arange(s)[None, :] <= pos) & (np.arange(s)[None, :] > pos - cfg.window)
    o_win, _ = R.dense_ref(q, k, v, jnp.asarray(m_win)[None, None])
    g = gates.astype(jnp.float32)
    return g[..., 0:1] * o_cmp + g[..., 1:2] * o_slc + g[..., 2:3] * o_win


@jax.jit
def _selection_bits(q, k, v, gates, k_cmp, v_cmp):
    _, br = js.nsa(q, k, v, gates, k_cmp=k_cmp, v_cmp=v_cmp, config=CFG, return_branches=True)
    return br.selection.bits


def _inputs(b, t, s, h, kh, d, seed):
    q, k, v, cot = R.random_qkv(b, t, h, kh, d, s=s, seed=seed)
    gates = jax.nn.sigmoid(jax.random.normal(jax.random.key(seed + 1), (b, t, h, 3)))
    k_cmp = nsa_compress.mean_compress(k, kernel_size=CFG.kernel_size, stride=CFG.stride)
    v_cmp = nsa_compress.mean_compress(v, kernel_size=CFG.kernel_size, stride=CFG.stride) * 2.0
    return q, k, v, gates, k_cmp, v_cmp, cot


@pytest.mark.parametrize("t, s, tiles", [(70, 70, (16, 8)), (24, 70, (8, 16))])
def test_nsa_selection_output_and_gradients(t, s, tiles):
    q, k, v, gates, k_cmp, v_cmp, cot = _inputs(2, t, s, 4, 2, 16, seed=31)
    bits = np.asarray(_selection_bits(q, k, v, gates, k_cmp, v_cmp))
    want = selection_reference(q, k_cmp, CFG, s, s - t)
    np.testing.assert_array_equal(bits, want)
    assert bits.sum(-1).max() == CFG.top_n and not bits.all()
    zero_lse = jnp.zeros((2, 4, t), jnp.float32)
    cfg = js.Config(block_q=tiles[0], block_kv=tiles[1])

    def fn(q, k, v, gates, k_cmp, v_cmp):
        out = js.nsa(
            q,
            k,
            v,
            gates,
            k_cmp=k_cmp,
            v_cmp=v_cmp,
            config=CFG,
            implementation="xla",
            attention_config=cfg,
        )
        return out, zero_lse

    def ref(q, k, v, gates, k_cmp, v_cmp):
        return nsa_reference(q, k, v, gates, k_cmp, v_cmp, want, CFG), zero_lse

    R.assert_close_to_ref(fn, ref, q, k, v, cot, extra=(gates, k_cmp, v_cmp))


def test_nsa_short_sequence_has_no_compressed_branch_and_dense_selection():
    q, k, v, gates, k_cmp, v_cmp, cot = _inputs(1, 6, 6, 2, 1, 8, seed=32)
    assert k_cmp.shape[1] == 0  # T < kernel_size: nothing to compress yet
    out, br = jax.jit(
        lambda *a: js.nsa(*a[:4], k_cmp=a[4], v_cmp=a[5], config=CFG, return_branches=True)
    )(q, k, v, gates, k_cmp, v_cmp)
    np.testing.assert_array_equal(np.asarray(br.o_cmp), 0.0)
    dense = js.attention(q, k, v, pattern=js.patterns.Causal())
    np.testing.assert_allclose(np.asarray(br.o_slc), np.asarray(dense), atol=2e-6)
    np.testing.assert_allclose(np.asarray(br.o_win), np.asarray(dense), atol=2e-6)


@settings(max_examples=25, deadline=None)
@given(
    length=st.integers(1, 70),
    stride=st.integers(1, 8),
    ratio=st.integers(1, 4),
    extra=st.sampled_from([0, 1, 3]),
)
def test_windows_match_their_positions_values_and_gradient(length, stride, ratio, extra):
    """Every window holds keys `[i*stride, i*stride + kernel_size)`, whether it is
    cut from stride segments (kernel_size a multiple of stride) or gathered
    (`extra` makes it no multiple); its gradient sends each key the sum of its
    windows' cotangents."""
    kernel_size = ratio * stride + extra
    x = jnp.asarray(np.random.default_rng(length).standard_normal((2, length, 2, 3)), jnp.float32)
    w = nsa_compress.windows(x, kernel_size=kernel_size, stride=stride)
    nc = nsa_compress.num_compressed(length, kernel_size, stride)
    idx = np.arange(nc)[:, None] * stride + np.arange(kernel_size)[None, :]
    assert w.shape == (2, nc, kernel_size, 2, 3)
    np.testing.assert_array_equal(np.asarray(w), np.asarray(x)[:, idx])
    cot = np.random.default_rng(1).standard_normal(w.shape).astype(np.float32)
    grad = jax.grad(
        lambda x: (nsa_compress.windows(x, kernel_size=kernel_size, stride=stride) * cot).sum()
    )(x)
    want = np.zeros(x.shape, np.float32)
    np.add.at(want, (slice(None), idx), cot)
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-6, atol=1e-6)


def test_compression_windows_and_mlp():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 21, 2, 3)), jnp.float32)
    w = nsa_compress.windows(x, kernel_size=8, stride=4)
    assert w.shape == (1, 4, 8, 2, 3)  # floor((21 - 8) / 4) + 1
    for i in range(4):
        np.testing.assert_array_equal(np.asarray(w[0, i]), np.asarray(x[0, 4 * i : 4 * i + 8]))
    assert nsa_compress.num_compressed(7, 8, 4) == 0
    ks = jax.random.split(jax.random.key(0), 5)
    params = nsa_compress.CompressorParams(
        pe=jax.random.normal(ks[0], (2, 8, 3)),
        w1=jax.random.normal(ks[1], (2, 24, 5)),
        b1=jax.random.normal(ks[2], (2, 5)),
        w2=jax.random.normal(ks[3], (2, 5, 3)),
        b2=jax.random.normal(ks[4], (2, 3)),
    )
    got = nsa_compress.compress(x, params, kernel_size=8, stride=4)
    window = np.asarray(x[0, 4:12, 1]) + np.asarray(params.pe[1])  # token 1, head 1
    hid = jax.nn.gelu(window.reshape(-1) @ np.asarray(params.w1[1]) + np.asarray(params.b1[1]))
    want = np.asarray(hid) @ np.asarray(params.w2[1]) + np.asarray(params.b2[1])
    np.testing.assert_allclose(np.asarray(got[0, 1, 1]), want, rtol=1e-5, atol=1e-5)


def test_importance_is_overlap_weighted_group_sum():
    q, k, _, _, k_cmp, _, _ = _inputs(1, 40, 40, 4, 2, 8, seed=33)
    o_cmp, lse = js.attention(
        q, k_cmp, k_cmp, pattern=js.patterns.CompressedCausal(8, 4), q_offset=0, return_lse=True
    )
    del o_cmp
    imp = nsa_selection.block_importance(
        q,
        jnp.moveaxis(lse, 1, 2),
        k_cmp,
        jnp.arange(40, dtype=jnp.int32),
        kernel_size=8,
        stride=4,
        block_size=8,
        num_blocks=5,
        scale=8**-0.5,
    )
    # Each token's probabilities sum to one over compressed tokens, each of which
    # overlaps kernel_size / stride = 2 stride segments: a group of 2 heads sums to 4.
    total = np.asarray(imp).sum(-1)[0]  # [K, T]
    seen = np.arange(40) >= 7
    np.testing.assert_allclose(total[:, seen], 4.0, rtol=1e-5)
    np.testing.assert_array_equal(total[:, ~seen], 0.0)


@pytest.mark.parametrize(
    "b, t, s, h, kh, kernel, stride, block, columns",
    [
        (1, 200, 200, 4, 2, 8, 4, 16, 8),  # several column chunks
        (2, 33, 150, 2, 1, 32, 16, 64, 128),  # chunked prefill (q_offset 117), paper sizes
        (1, 90, 90, 2, 2, 4, 4, 8, 4),  # kernel == stride, many chunks
    ],
)
def test_importance_by_attention_equals_the_scored_version(
    b, t, s, h, kh, kernel, stride, block, columns
):
    """The importance as attention with the overlap weights as values (one call per
    `columns` blocks) equals the explicit `exp(q . k_cmp - lse)` remap."""
    q, k, _, _ = R.random_qkv(b, t, h, kh, 8, s=s, seed=35)
    k_cmp = nsa_compress.mean_compress(k, kernel_size=kernel, stride=stride)
    pattern = js.patterns.CompressedCausal(kernel, stride)
    _, lse = js.attention(q, k_cmp, k_cmp, pattern=pattern, q_offset=s - t, return_lse=True)
    geometry = dict(kernel_size=kernel, stride=stride, block_size=block, num_blocks=-(-s // block))
    want = nsa_selection.block_importance(
        q, jnp.moveaxis(lse, 1, 2), k_cmp, s - t + jnp.arange(t), scale=8**-0.5, **geometry
    )
    got = jax.jit(
        lambda q, k_cmp, lse: nsa_selection.block_importance_by_attention(
            q, k_cmp, lse, scale=8**-0.5, q_offset=s - t, columns=columns, **geometry
        )
    )(q, k_cmp, lse)
    np.testing.assert_allclose(jnp.moveaxis(got, 1, 2), want, atol=2e-6)  # token-major


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kernel_size=32, stride=12), "stride=12 must divide kernel_size=32"),
        (dict(block_size=40, stride=16), "stride=16 must divide"),
        (dict(top_n=2, init_blocks=1, local_blocks=2), "top_n=2 cannot hold"),
        (dict(top_n=0), "top_n=0 must be >= 1"),
        (dict(window=0), "window=0 must be >= 1"),
    ],
)
def test_nsa_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NSAConfig(**kwargs)


def test_nsa_input_errors():
    q, k, v, gates, k_cmp, v_cmp, _ = _inputs(1, 20, 20, 2, 1, 8, seed=34)
    with pytest.raises(ValueError, match="gates have shape"):
        js.nsa(q, k, v, gates[..., :2], k_cmp=k_cmp, v_cmp=v_cmp, config=CFG)
    with pytest.raises(ValueError, match="k_cmp has shape"):
        js.nsa(q, k, v, gates, k_cmp=k_cmp[:, 1:], v_cmp=v_cmp, config=CFG)
    with pytest.raises(ValueError, match="causal-only"):
        js.nsa(q, k[:, :10], v[:, :10], gates, k_cmp=k_cmp[:, :1], v_cmp=v_cmp[:, :1], config=CFG)
    with pytest.raises(TypeError, match="config must be an NSAConfig, got dict"):
        js.nsa(q, k, v, gates, k_cmp=k_cmp, v_cmp=v_cmp, config=dict(top_n=2))
    with pytest.raises(ValueError, match="need a batch axis"):
        js.nsa(q[0], k[0], v[0], gates[0], k_cmp=k_cmp[0], v_cmp=v_cmp[0], config=CFG)
    bf = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    with pytest.raises(TypeError, match="k_cmp has dtype float32, q/k/v have bfloat16"):
        js.nsa(*bf, gates, k_cmp=k_cmp, v_cmp=v_cmp, config=CFG)
    with pytest.raises(TypeError, match="gates must be a float array .*got list"):
        js.nsa(q, k, v, gates.tolist(), k_cmp=k_cmp, v_cmp=v_cmp, config=CFG)
    with pytest.raises(TypeError, match="gate_per_head must be True or False, got 'no'"):
        _module(gate_per_head="no")


def _module(dtype=jnp.float32, **kw):
    return jsnn.NativeSparseAttention(
        32, 4, num_kv_heads=2, nsa=CFG, dtype=dtype, rngs=nnx.Rngs(0), **kw
    )


def test_module_matches_functional_composition():
    m = _module()
    x = jax.random.normal(jax.random.key(35), (2, 30, 32))

    @nnx.jit
    def both(m, x):
        b, t = x.shape[:2]
        q = m.q_proj(x).reshape(b, t, 4, 8)
        k = m.k_proj(x).reshape(b, t, 2, 8)
        v = m.v_proj(x).reshape(b, t, 2, 8)
        k_cmp, v_cmp = m.compress_k(k), m.compress_v(v)  # compressed before RoPE
        pos = jnp.arange(t, dtype=jnp.int32)
        q, k = jsnn.apply_rope(q, pos), jsnn.apply_rope(k, pos)
        # Compressed token i sits at the start of its window, i * stride.
        k_cmp = jsnn.apply_rope(k_cmp, 4 * jnp.arange(k_cmp.shape[1], dtype=jnp.int32))
        gates = jax.nn.sigmoid(m.gate(x)).reshape(b, t, 4, 3)
        out = js.nsa(q, k, v, gates, k_cmp=k_cmp, v_cmp=v_cmp, config=CFG)
        return m(x), m.o_proj(out.reshape(b, t, 32))

    y, want = both(m, x)
    assert y.shape == (2, 30, 32)
    np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_module_trains_end_to_end():
    m = _module(gate_per_head=False)
    x = jax.random.normal(jax.random.key(36), (2, 40, 32))

    @nnx.jit
    def step(m, x):
        def loss(m):
            return ((m(x) - x) ** 2).mean()

        value, grads = nnx.value_and_grad(loss)(m)
        params = nnx.state(m, nnx.Param)
        nnx.update(m, jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads))
        return value, grads

    first, grads = step(m, x)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert float(jnp.abs(g).max()) > 0, f"no gradient reaches {jax.tree_util.keystr(path)}"
    for _ in range(3):
        last, _ = step(m, x)
    assert float(last) < float(first)


def test_module_bf16_and_errors():
    m = _module(dtype=jnp.bfloat16)
    y = nnx.jit(lambda m, x: m(x))(m, jax.random.normal(jax.random.key(37), (1, 20, 32)))
    assert y.dtype == jnp.bfloat16 and bool(jnp.isfinite(y.astype(jnp.float32)).all())
    with pytest.raises(ValueError, match="multiple of num_kv_heads=3"):
        jsnn.NativeSparseAttention(32, 4, num_kv_heads=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"takes \[B, T, C\]"):
        m(jnp.zeros((20, 32)))
    with pytest.raises(ValueError, match="C = in_features = 32"):
        m(jnp.zeros((1, 20, 16)))
    with pytest.raises(TypeError, match="nsa must be a jaxsparse.methods.NSAConfig"):
        jsnn.NativeSparseAttention(32, 4, nsa=dict(top_n=4), rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(head_dim=0), "head_dim=0"),
        (dict(head_dim=-2), "head_dim=-2"),
        (dict(compress_hidden=0), "compress_hidden=0"),
        (dict(compress_hidden=-1), "compress_hidden=-1"),
        (dict(compress_hidden=2.5), "compress_hidden=2.5"),
        (dict(out_features=0), "out_features=0"),
        (dict(num_heads=0), "num_heads=0"),
    ],
)
def test_module_rejects_sizes_that_cannot_work(kw, name):
    # Named at construction, not as a shape error inside a projection or a compressor.
    kw = {"num_heads": 4, **kw}
    with pytest.raises(ValueError, match=f"{name} must be a positive int"):
        jsnn.NativeSparseAttention(32, rngs=nnx.Rngs(0), **kw)


@pytest.mark.parametrize("q_offset", [0, 19])
def test_long_inputs_score_rows_in_chunks_with_the_same_bits(monkeypatch, q_offset):
    """Above `IMPORTANCE_SLICE_ELEMENTS`, without the fused kernel (here: CPU), the selection
    scores rows in chunks by `block_importance`: the same bits as one call. (Through the
    kernel it takes slices: tests/test_nsa_importance.py.)"""
    q, k, _, _, k_cmp, _, _ = _inputs(1, 60, 60 + q_offset, 4, 2, 8, seed=37)
    _, lse = js.attention(
        q,
        k_cmp,
        k_cmp,
        pattern=js.patterns.CompressedCausal(8, 4),
        q_offset=q_offset,
        return_lse=True,
    )
    kw = dict(
        kv_len=60 + q_offset,
        kernel_size=8,
        stride=4,
        block_size=8,
        top_n=3,
        init_blocks=1,
        local_blocks=1,
        scale=8**-0.5,
        q_offset=q_offset,
    )
    whole = nsa_selection.nsa_select(q, k_cmp, lse, **kw)
    rows = []
    importance = nsa_selection.block_importance
    monkeypatch.setattr(
        nsa_selection,
        "block_importance",
        lambda q_rows, *a, **k: rows.append(q_rows.shape[1]) or importance(q_rows, *a, **k),
    )
    monkeypatch.setattr(nsa_selection, "IMPORTANCE_SLICE_ELEMENTS", 0)
    monkeypatch.setattr(nsa_selection.chunks, "DEFAULT_ELEMENTS", 8 * 4 * k_cmp.shape[1])
    in_chunks = nsa_selection.nsa_select(q, k_cmp, lse, **kw)
    assert rows == [8]  # traced once, under lax.map over chunks of 8 rows
    np.testing.assert_array_equal(whole, in_chunks)
    assert 0 < int(whole.sum()) < whole.size


def test_slice_rows_keep_the_kernels_token_tile():
    per_row = 2 * 2048
    assert nsa_selection.slice_rows(per_row) == nsa_selection.IMPORTANCE_SLICE_ELEMENTS // per_row
    assert nsa_selection.slice_rows(per_row) % nsa_selection.SLICE_ROWS == 0
    assert nsa_selection.slice_rows(nsa_selection.IMPORTANCE_SLICE_ELEMENTS // 100) == 64
    assert nsa_selection.slice_rows(nsa_selection.IMPORTANCE_SLICE_ELEMENTS // 10) == 10
    assert nsa_selection.slice_rows(nsa_selection.IMPORTANCE_SLICE_ELEMENTS * 4) == 1


def test_importance_by_attention_on_the_gpu_kernels_in_interpret_mode():
    """The importance's attention calls (values = overlap weights, Dv 128) run on the
    Mosaic GPU kernels (interpret mode) and agree with the XLA path to bf16 rounding."""
    q, k, _, _ = R.random_qkv(1, 256, 2, 1, 64, seed=39, dtype=jnp.bfloat16)
    k_cmp = nsa_compress.mean_compress(k, kernel_size=32, stride=16).astype(jnp.bfloat16)
    pattern = js.patterns.CompressedCausal(32, 16)
    _, lse = js.attention(
        q, k_cmp, k_cmp, pattern=pattern, q_offset=0, return_lse=True, implementation="xla"
    )
    kw = dict(kernel_size=32, stride=16, block_size=64, num_blocks=4, scale=64**-0.5, q_offset=0)
    got = nsa_selection.block_importance_by_attention(
        q, k_cmp, lse, implementation="pallas_gpu", config=js.Config(interpret=True), **kw
    )
    want = nsa_selection.block_importance_by_attention(q, k_cmp, lse, implementation="xla", **kw)
    assert float(jnp.abs(want).max()) > 1.0
    np.testing.assert_allclose(got, want, atol=4.0 * 2**-7)


@pytest.mark.parametrize("kernel, stride, block, nc, nb", [(32, 16, 64, 30, 9), (8, 4, 8, 13, 7)])
def test_overlap_matrix_is_the_remap_as_a_matrix(kernel, stride, block, nc, nb):
    p = np.random.default_rng(0).random((3, nc)).astype(np.float32)
    lo, m = remap.overlap_matrix(kernel, stride, block, blocks=range(nb), num_keys=nc)
    want = remap.compressed_to_blocks(
        p, kernel_size=kernel, stride=stride, block_size=block, num_blocks=nb
    )
    np.testing.assert_allclose(p[:, lo : lo + len(m)] @ m, want, rtol=1e-6)


def test_nsa_under_jit_and_vmap():
    # jax.jit(jax.vmap(nsa)) over an extra leading axis, odd lengths (45 tokens of
    # 16-row tiles), GQA: output and the gradients of q, k, v, gates, k_cmp, v_cmp.
    t = 45
    q, k, v, gates, k_cmp, v_cmp, cot = _inputs(2, t, t, 4, 2, 8, seed=38)
    want = selection_reference(q, k_cmp, CFG, t, 0)
    assert want.sum(-1).max() == CFG.top_n and not want.all()
    cfg = js.Config(block_q=16, block_kv=8)

    def one(q, k, v, gates, k_cmp, v_cmp):
        out = js.nsa(
            q, k, v, gates, k_cmp=k_cmp, v_cmp=v_cmp, config=CFG, implementation="xla",
            attention_config=cfg,
        )  # fmt: skip
        return out, jnp.zeros((q.shape[0], q.shape[2], q.shape[1]), jnp.float32)

    def ref(q, k, v, gates, k_cmp, v_cmp):
        out = nsa_reference(q, k, v, gates, k_cmp, v_cmp, want, CFG)
        return out, jnp.zeros((q.shape[0], q.shape[2], q.shape[1]), jnp.float32)

    R.assert_close_to_ref(R.over_leading_axis(one), ref, q, k, v, cot, extra=(gates, k_cmp, v_cmp))
