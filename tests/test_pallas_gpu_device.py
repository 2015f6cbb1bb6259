"""Mosaic GPU block-sparse attention kernels on a Hopper GPU (pytest -m gpu).

Checks forward and dq/dk/dv against the dense f32 oracle at moderate sizes
(T = S = 2048), bf16 and f16, D = 64/128/256 (backward for D + Dv <= 256),
plus causal T = S = 32768 forward and gradients against cuDNN (a dense f32
oracle does not fit at that size), and bitwise determinism of the backward.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.gpu import api, reference, tables

pytestmark = pytest.mark.gpu


def _on_hopper():
    try:
        d = jax.devices()[0]
    except RuntimeError:
        return False
    return d.platform == "gpu" and ("H100" in d.device_kind or "H200" in d.device_kind)


if not _on_hopper():
    pytest.skip("needs an NVIDIA Hopper GPU", allow_module_level=True)


def causal(qp, kp, h):
    return kp <= qp


def window_256(qp, kp, h):
    return (kp <= qp) & (qp - 256 <= kp)


def _tables(kind):
    kv_tabs, q_tabs = tables.all_tables(kind)
    return tuple(map(jnp.asarray, kv_tabs)), tuple(map(jnp.asarray, q_tabs))


def _rel(a, b):
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    assert bool(jnp.isfinite(a).all())
    return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


def _tol(dtype):
    return 1e-2 if jnp.dtype(dtype) == jnp.bfloat16 else 2e-3


def _qkv(B, T, S, H, K, D, Dv, dtype, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(ks[0], (B, T, H, D), dtype),
        jax.random.normal(ks[1], (B, S, K, D), dtype),
        jax.random.normal(ks[2], (B, S, K, Dv), dtype),
    )


def _run(q, k, v, mask_fn, mask, kind, *, bwd, cap=None, seg=None, bwd_kw=None, **kw):
    kv_tabs, q_tabs = _tables(kind)
    seg = seg or {}
    scale = q.shape[-1] ** -0.5
    fwd = jax.jit(
        lambda q, k, v: api.block_sparse_attention_fwd(
            q, k, v, *kv_tabs, mask_fn=mask_fn, scale=scale, logits_soft_cap=cap, **seg, **kw
        )
    )
    out, lse = fwd(q, k, v)
    ref_out, ref_lse = jax.jit(
        functools.partial(reference.attention_reference, scale=scale, logits_soft_cap=cap)
    )(q, k, v, jnp.asarray(mask))
    assert _rel(out, ref_out) < _tol(q.dtype)
    live = np.asarray(mask).any(-1)
    np.testing.assert_allclose(
        np.asarray(lse)[live], np.asarray(ref_lse)[live], atol=1e-2, rtol=1e-2
    )
    if not bwd:
        return
    ks = jax.random.split(jax.random.key(1), 2)
    dout = jax.random.normal(ks[0], out.shape, q.dtype)
    dlse = jnp.where(jnp.asarray(live), jax.random.normal(ks[1], lse.shape), 0.0)
    bwd_fn = jax.jit(
        lambda *a: api.block_sparse_attention_bwd(
            *a,
            *kv_tabs,
            *q_tabs,
            mask_fn=mask_fn,
            scale=scale,
            logits_soft_cap=cap,
            **seg,
            **kw,
            **(bwd_kw or {}),
        )
    )
    grads = bwd_fn(q, k, v, out, lse, dout, dlse)
    loss = functools.partial(
        reference.reference_loss,
        mask=jnp.asarray(mask),
        scale=scale,
        logits_soft_cap=cap,
        dout=dout,
        dlse=dlse,
    )
    want = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*(x.astype(jnp.float32) for x in (q, k, v)))
    for name, g, w in zip(("dq", "dk", "dv"), grads, want, strict=True):
        assert _rel(g, w) < 2 * _tol(q.dtype), name


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("D", [64, 128, 256])
def test_causal_vs_dense(dtype, D):
    B, T, H = 1, 2048, 4
    q, k, v = _qkv(B, T, T, H, H, D, D, jnp.dtype(dtype))
    mask = reference.dense_mask(causal, B, H, T, T)
    kind = tables.kind_causal_window(T // 128, T // 128, 128, 128)[None, None]
    _run(q, k, v, causal, mask, kind, bwd=D <= 128)


def test_backward_d256_raises_not_implemented():
    q, k, v = _qkv(1, 256, 256, 1, 1, 256, 256, jnp.bfloat16)
    kind = tables.kind_causal_window(2, 2, 128, 128)[None, None]
    kv_tabs, q_tabs = _tables(kind)
    with pytest.raises(NotImplementedError, match="D \\+ Dv"):
        api.block_sparse_attention_bwd(
            q, k, v, q, jnp.zeros((1, 1, 256)), q, None, *kv_tabs, *q_tabs
        )


@pytest.mark.parametrize("split_heads", [None, False])  # None: per query head at this size
def test_window_segments_softcap_gqa_dv(split_heads):
    B, T, H, K, D, Dv = 2, 2048, 8, 2, 128, 64
    q, k, v = _qkv(B, T, T, H, K, D, Dv, jnp.bfloat16, seed=3)
    rng = np.random.default_rng(0)
    qseg = np.sort(rng.integers(0, 4, (B, T))).astype(np.int32)
    mask = reference.dense_mask(window_256, B, H, T, T, q_seg=qseg, kv_seg=qseg)
    base = reference.dense_mask(window_256, 1, 1, T, T)
    kind = tables.kind_from_dense(base, 128, 128)
    seg = dict(q_segment_ids=jnp.asarray(qseg), kv_segment_ids=jnp.asarray(qseg))
    _run(
        q, k, v, window_256, mask, kind, bwd=True, cap=30.0, seg=seg,
        bwd_kw=dict(dkv_split_heads=split_heads),
    )  # fmt: skip


def test_random_block_mask_and_offsets():
    B, T, S, H = 1, 1024, 2048, 4
    q, k, v = _qkv(B, T, S, H, H, 128, 128, jnp.float16, seed=5)

    def per_head(qp, kp, h):
        return (kp <= qp) & ((h % 2 == 0) | (qp - 300 <= kp))

    q_offset, kv_len = S - T, S - 77
    mask = reference.dense_mask(per_head, B, H, T, S, q_offset, kv_len)
    kind = tables.kind_from_dense(mask[:1], 128, 128)  # per-head tables
    _run(q, k, v, per_head, mask, kind, bwd=True, q_offset=q_offset, kv_len=kv_len)


def test_blocks_only_all_full_tiles():
    B, T, H = 1, 2048, 4
    q, k, v = _qkv(B, T, T, H, H, 128, 128, jnp.bfloat16, seed=6)
    rng = np.random.default_rng(2)
    bm = rng.random((16, 16)) < 0.2
    np.fill_diagonal(bm, True)
    bm[3] = False  # an empty q block: out 0, lse -inf
    mask = np.broadcast_to(np.kron(bm, np.ones((128, 128), bool)), (B, H, T, T))
    kind = np.where(bm, 2, 0).astype(np.int8)[None, None]
    _run(q, k, v, None, mask, kind, bwd=True)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_causal_32k_vs_cudnn(dtype):
    B, T, H, D = 1, 32768, 2, 128
    dt = jnp.dtype(dtype)
    q, k, v = _qkv(B, T, T, H, H, D, D, dt, seed=11)
    kind = tables.kind_causal_window(T // 128, T // 128, 128, 128)[None, None]
    kv_tabs, q_tabs = _tables(kind)

    @jax.custom_vjp
    def ours(q, k, v):
        return api.block_sparse_attention_fwd(q, k, v, *kv_tabs, mask_fn=causal)[0]

    def ours_fwd(q, k, v):
        out, lse = api.block_sparse_attention_fwd(q, k, v, *kv_tabs, mask_fn=causal)
        return out, (q, k, v, out, lse)

    def ours_bwd(res, dout):
        return api.block_sparse_attention_bwd(*res, dout, None, *kv_tabs, *q_tabs, mask_fn=causal)

    ours.defvjp(ours_fwd, ours_bwd)
    cudnn = functools.partial(jax.nn.dot_product_attention, implementation="cudnn", is_causal=True)
    dout = jax.random.normal(jax.random.key(12), q.shape, dt)

    def vjp(f):
        return jax.jit(lambda q, k, v: (lambda o, g: (o, g(dout)))(*jax.vjp(f, q, k, v)))

    o1, g1 = vjp(ours)(q, k, v)
    o2, g2 = vjp(cudnn)(q, k, v)
    assert _rel(o1, o2) < _tol(dt)
    for name, a, b in zip(("dq", "dk", "dv"), g1, g2, strict=True):
        assert _rel(a, b) < 2 * _tol(dt), name


def test_backward_is_deterministic():
    B, T, H, K = 1, 4096, 4, 1
    q, k, v = _qkv(B, T, T, H, K, 128, 128, jnp.bfloat16, seed=8)
    kind = tables.kind_causal_window(T // 128, T // 128, 128, 128)[None, None]
    kv_tabs, q_tabs = _tables(kind)
    out, lse = api.block_sparse_attention_fwd(q, k, v, *kv_tabs, mask_fn=causal)
    dout = jax.random.normal(jax.random.key(9), out.shape, q.dtype)
    bwd = jax.jit(lambda *a: api.block_sparse_attention_bwd(*a, *kv_tabs, *q_tabs, mask_fn=causal))
    g1 = bwd(q, k, v, out, lse, dout, None)
    g2 = bwd(q, k, v, out, lse, dout, None)
    for a, b in zip(g1, g2, strict=True):
        assert bool((a == b).all())


@pytest.mark.parametrize(
    "block_kv, dkv_q_split, split_heads", [(128, None, None), (128, None, False),
                                           (64, None, None), (64, False, None)]
)  # fmt: skip
def test_dq_in_dkv_vs_dense(block_kv, dkv_q_split, split_heads):
    """dQ from the dK/dV kernel's TMA reduce-adds (no dQ kernel): two warpgroups on one
    128-key step, alternate steps of a 64-key block, one warpgroup alone; GQA with a CTA
    per query head or per kv head, and a soft cap."""
    B, T, H, K, D = 1, 2048, 8, 2, 128
    q, k, v = _qkv(B, T, T, H, K, D, D, jnp.bfloat16, seed=7)
    mask = reference.dense_mask(window_256, B, H, T, T)
    kind = tables.kind_from_dense(reference.dense_mask(window_256, 1, 1, T, T), 128, block_kv)
    _run(
        q, k, v, window_256, mask, kind, bwd=True, cap=30.0, block_kv=block_kv,
        bwd_kw=dict(dq_in_dkv=True, dkv_q_split=dkv_q_split, dkv_split_heads=split_heads),
    )  # fmt: skip


def test_long_lists_split_by_default_vs_dense(dkv_shapes, monkeypatch):
    """`dkv_list_splits=None` splits long q lists where few CTAs hold them (NSA's
    compressed keys at 64k: 512 CTAs in 4). LIST_STEPS lowered so that this causal GQA
    case (128 CTAs, lists of up to 16 q tiles) runs its dK/dV in 4 partial lists."""
    from pallas_kernels.gpu import api_backward

    monkeypatch.setattr(api_backward, "LIST_STEPS", 4)
    B, T, H, K, D = 1, 2048, 8, 2, 128
    q, k, v = _qkv(B, T, T, H, K, D, D, jnp.bfloat16, seed=8)
    mask = reference.dense_mask(causal, B, H, T, T)
    kind = tables.kind_from_dense(reference.dense_mask(causal, 1, 1, T, T), 128, 128)
    _run(q, k, v, causal, mask, kind, bwd=True)
    assert [sh.list_splits for sh in dkv_shapes] == [4]
