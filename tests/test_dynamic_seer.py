"""SeerAttention: AttnGate logits, distillation target and loss, block mask, gated attention."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxsparse as js
import jaxsparse.nn as jsnn
from jaxsparse.nn import attn_gate as ag
from tests import dynamic_refs as R


def target_reference(q, k, block_size):
    """Row-normalised 2-D max pool of the causal attention map (float64)."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    b, t, h, d = q.shape
    s, kh = k.shape[1], k.shape[2]
    tb, sb = -(-t // block_size), -(-s // block_size)
    out = np.zeros((b, h, tb, sb))
    for bb, hh in np.ndindex(b, h):
        logits = q[bb, :, hh] @ k[bb, :, hh // (h // kh)].T * d**-0.5
        logits[np.arange(s)[None, :] > (s - t + np.arange(t))[:, None]] = -np.inf
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        for i, j in np.ndindex(tb, sb):
            out[bb, hh, i, j] = p[
                i * block_size : (i + 1) * block_size, j * block_size : (j + 1) * block_size
            ].max()
        out[bb, hh] /= out[bb, hh].sum(1, keepdims=True)
    return out


def test_target_and_loss_match_numpy():
    q, k, _, _ = R.random_qkv(1, 37, 4, 2, 8, seed=41)
    tgt = ag.attn_gate_target(q, k, block_size=8)
    want = target_reference(q, k, 8)
    np.testing.assert_allclose(np.asarray(tgt), want, rtol=1e-5, atol=1e-7)
    logits = jnp.asarray(np.random.default_rng(0).standard_normal(want.shape), jnp.float32)
    logits = jnp.where(jnp.asarray(want) > 0, logits, -jnp.inf)  # block-causal, like the gate
    loss = float(ag.attn_gate_loss(logits, tgt, skip_fraction=0.25))
    rows = slice(int(0.25 * want.shape[2]), None)
    lg = np.asarray(logits, np.float64)[:, :, rows]
    logp = (
        lg
        - np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - lg.max(-1, keepdims=True)
    )
    t_ = want[:, :, rows]
    kl = np.where(t_ > 0, t_ * (np.log(np.where(t_ > 0, t_, 1)) - np.where(t_ > 0, logp, 0)), 0)
    np.testing.assert_allclose(loss, kl.mean(), rtol=1e-5)


def test_gate_logits_follow_the_description():
    gate = jsnn.AttnGate(4, 2, 8, block_size=8, hidden=16, rngs=nnx.Rngs(0))
    q, k, _, _ = R.random_qkv(2, 30, 4, 2, 8, s=46, seed=42)
    got = gate(q, k)
    assert got.shape == (2, 4, 4, 6)

    def pooled(x, kinds):
        blocks = [x[:, i : i + 8] for i in range(0, x.shape[1], 8)]
        fns = {"mean": jnp.mean, "max": jnp.max, "min": jnp.min}
        return jnp.stack(
            [jnp.concatenate([fns[p](blk, axis=1) for p in kinds], -1) for blk in blocks], 1
        )

    qg = jnp.einsum("bthi,hio->btho", pooled(q, ("mean",)), gate.w_q[...])
    kg = jnp.einsum("bskj,kjo->bsko", pooled(k, ("max", "min", "mean")), gate.w_k[...])
    qg = jsnn.apply_rope(qg, 16 + 8 * jnp.arange(4, dtype=jnp.int32))  # block starts, q_offset 16
    kg = jsnn.apply_rope(kg, 8 * jnp.arange(6, dtype=jnp.int32))
    kg = jnp.repeat(kg, 2, axis=2)
    want = jnp.einsum("bthd,bshd->bhts", qg, kg) / math.sqrt(16)
    visible = (8 * np.arange(6))[None, :] <= (16 + np.minimum(8 * np.arange(1, 5), 30) - 1)[:, None]
    want = jnp.where(jnp.asarray(visible)[None, None], want, -jnp.inf)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)


def test_gate_distillation_reduces_loss():
    gate = jsnn.AttnGate(2, 1, 8, block_size=8, hidden=8, rngs=nnx.Rngs(1))
    q, k, _, _ = R.random_qkv(1, 64, 2, 1, 8, seed=43)
    q = q + 2.0 * k[:, :, :1]  # queries resemble keys: a structured map to learn
    tgt = ag.attn_gate_target(q, k, block_size=8)

    @nnx.jit
    def step(gate):
        value, grads = nnx.value_and_grad(lambda g: ag.attn_gate_loss(g(q, k), tgt))(gate)
        params = nnx.state(gate, nnx.Param)
        nnx.update(gate, jax.tree_util.tree_map(lambda p, g: p - 2.0 * g, params, grads))
        return value

    first = float(step(gate))
    for _ in range(15):
        last = float(step(gate))
    assert last < 0.8 * first


def test_block_mask_and_gated_attention():
    q, k, v, cot = R.random_qkv(1, 40, 4, 2, 8, seed=44)
    probs = jax.random.uniform(jax.random.key(0), (1, 4, 5, 5))
    mask = ag.gate_block_mask(probs, q_len=40, kv_len=40, block_size=8, threshold=0.5)
    m = np.asarray(mask)
    p = np.asarray(probs)
    tril = np.tril(np.ones((5, 5), bool))
    want = ((p > 0.5) | np.eye(5, dtype=bool) | (np.arange(5) >= 3)[:, None]) & tril
    np.testing.assert_array_equal(m, np.broadcast_to(want, m.shape))
    topn = np.asarray(
        ag.gate_block_mask(
            probs, q_len=40, kv_len=40, block_size=8, nz_ratio=0.5, last_block_dense=0
        )
    )
    assert (topn.sum(-1) <= 1 + 1).all()  # (1 - sqrt(0.5)) * 5 -> 1 block, plus the diagonal
    # nz_ratio=0.6: (1 - sqrt(0.4)) * 5 = 1.84, floored to one block (SeerAttention's int()).
    topn = ag.gate_block_mask(
        probs, q_len=40, kv_len=40, block_size=8, nz_ratio=0.6, last_block_dense=0
    )
    best = np.where(tril, p, -np.inf).argmax(-1)  # no ties among uniform draws
    want = (np.arange(5) == best[..., None]) | np.eye(5, dtype=bool)
    np.testing.assert_array_equal(np.asarray(topn), want)
    # token_budget=9 with blocks of 8: ceil(9 / 8) = 2 blocks, the two best visible ones.
    budget = ag.gate_block_mask(
        probs, q_len=40, kv_len=40, block_size=8, token_budget=9, last_block_dense=0
    )
    two = np.argsort(-np.where(tril, p, -np.inf), axis=-1, kind="stable")[..., :2]
    want = np.zeros_like(want)
    np.put_along_axis(want, two, True, axis=-1)
    np.testing.assert_array_equal(np.asarray(budget), (want | np.eye(5, dtype=bool)) & tril)
    with pytest.raises(ValueError, match="exactly one of threshold=, nz_ratio= or token_budget="):
        ag.gate_block_mask(probs, q_len=40, kv_len=40, block_size=8, nz_ratio=0.5, token_budget=8)
    with pytest.raises(ValueError, match="token_budget=0 must be >= 1"):
        ag.gate_block_mask(probs, q_len=40, kv_len=40, block_size=8, token_budget=0)
    token_mask = jnp.asarray(R.block_to_token(m, 8, 8, 40, 40) & R.causal_np(40, 40, 0))

    def fn(q, k, v):
        return ag.gated_attention(
            q, k, v, mask, block_size=8, implementation="xla", return_lse=True
        )

    R.assert_close_to_ref(fn, lambda q, k, v: R.dense_ref(q, k, v, token_mask), q, k, v, cot)


def test_gate_errors():
    with pytest.raises(ValueError, match="exactly one"):
        ag.gate_block_mask(jnp.zeros((1, 1, 2, 2)), q_len=4, kv_len=4, block_size=2)
    with pytest.raises(ValueError, match=r"nz_ratio=1.5 must lie in \(0, 1\]"):
        ag.gate_block_mask(jnp.zeros((1, 1, 2, 2)), q_len=4, kv_len=4, block_size=2, nz_ratio=1.5)
    with pytest.raises(ValueError, match="multiple of num_kv_heads=3"):
        jsnn.AttnGate(4, 3, 8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="k_pool"):
        jsnn.AttnGate(4, 2, 8, k_pool=("median",), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("t, s", [(192, 224), (40, 40), (37, 61)])
def test_gate_block_mask_keeps_every_querys_own_key(t, s):
    # An empty gate keeps only the blocks holding the queries' own positions: each query
    # still sees itself, also where q_offset = S - T is not a multiple of the block.
    bs = 16 if t < 64 else 64
    probs = jnp.zeros((1, 1, -(-t // bs), -(-s // bs)))
    mask = ag.gate_block_mask(probs, q_len=t, kv_len=s, block_size=bs, threshold=0.5,
                              last_block_dense=0)  # fmt: skip
    token = R.block_to_token(np.asarray(mask), bs, bs, t, s) & R.causal_np(t, s, s - t)
    rows = np.arange(t)
    assert token[..., rows, rows + s - t].all()
    assert token.sum(-1).max() <= 2 * bs  # and no more than those blocks


@pytest.mark.parametrize("threshold", [1.5, -0.1, 0.0, float("nan")])
def test_gate_threshold_must_be_a_fraction(threshold):
    with pytest.raises(ValueError, match=r"threshold=.* must lie in \(0, 1\]"):
        ag.gate_block_mask(
            jnp.zeros((1, 1, 2, 2)), q_len=4, kv_len=4, block_size=2, threshold=threshold
        )


def test_gate_rejects_shapes_blocks_and_queries_past_the_keys():
    probs = jnp.zeros((1, 2, 5, 5))
    kw = dict(q_len=40, kv_len=40, threshold=0.1)
    with pytest.raises(ValueError, match=r"gate_probs has shape \(1, 2, 5, 5\).*\[B, H, 3, 3\]"):
        ag.gate_block_mask(probs, block_size=16, **kw)  # the gate used blocks of 8
    with pytest.raises(ValueError, match="block_size=0 must be >= 1"):
        ag.gate_block_mask(probs, block_size=0, **kw)
    with pytest.raises(ValueError, match="last_block_dense=-1 must be >= 0"):
        ag.gate_block_mask(probs, block_size=8, last_block_dense=-1, **kw)
    with pytest.raises(ValueError, match="causal-only"):
        ag.gate_block_mask(probs, q_len=40, kv_len=32, block_size=8, threshold=0.1)
    with pytest.raises(ValueError, match="block_size=0 must be >= 1"):
        ag.attn_gate_target(jnp.zeros((1, 8, 2, 4)), jnp.zeros((1, 8, 1, 4)), block_size=0)
    with pytest.raises(ValueError, match="must have one shape"):
        ag.attn_gate_loss(jnp.zeros((1, 2, 5, 5)), jnp.zeros((1, 2, 5, 4)))
    for skip in (-0.5, 1.0, 1.5, float("nan"), "0.25"):
        with pytest.raises(ValueError, match=r"skip_fraction=.* must be a number in \[0, 1\)"):
            ag.attn_gate_loss(jnp.zeros((1, 2, 5, 5)), jnp.zeros((1, 2, 5, 5)), skip_fraction=skip)
    with pytest.raises(ValueError, match="need a batch axis"):
        ag.attn_gate_target(jnp.zeros((8, 2, 4)), jnp.zeros((8, 1, 4)), block_size=8)
    with pytest.raises(ValueError, match="multiple"):
        ag.attn_gate_target(jnp.zeros((1, 16, 3, 8)), jnp.zeros((1, 16, 2, 8)), block_size=8)
    with pytest.raises(TypeError, match="floating-point"):
        ag.attn_gate_target(jnp.zeros((1, 16, 2, 8), int), jnp.zeros((1, 16, 1, 8), int))

    q, k, v, _ = R.random_qkv(1, 64, 2, 1, 16, s=32)  # T > S: queries past the keys
    gate = jsnn.AttnGate(2, 1, 16, block_size=16, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="AttnGate is causal-only"):
        gate(q, k)
    mask = jnp.ones((1, 2, 4, 2), bool)
    with pytest.raises(ValueError, match="gated_attention is causal-only"):
        ag.gated_attention(q, k, v, mask, block_size=16)
    q, k, v, _ = R.random_qkv(1, 32, 2, 1, 16)
    with pytest.raises(ValueError, match=r"block_mask \(1, 3, 2, 2\) must be \[B or 1, H or 1"):
        ag.gated_attention(q, k, v, jnp.ones((1, 3, 2, 2), bool), block_size=16)
    with pytest.raises(TypeError, match="block_mask must be a bool array, got dtype float32"):
        ag.gated_attention(q, k, v, jnp.ones((1, 2, 2, 2)), block_size=16)
    assert js.nsa is not None


def test_nz_ratio_ranks_logits_like_probabilities():
    # A top-k per row needs only the row's order: the gate's logits (-inf off the
    # block-causal region, as AttnGate returns them) keep the blocks their softmax keeps.
    tb = 12
    logits = jax.random.normal(jax.random.key(3), (2, 3, tb, tb)) * 3.0
    logits = jnp.where(np.tril(np.ones((tb, tb), bool)), logits, -jnp.inf)
    kw = dict(q_len=tb * 8, kv_len=tb * 8, block_size=8, nz_ratio=0.4)
    from_logits = np.asarray(ag.gate_block_mask(logits, **kw))
    from_probs = np.asarray(ag.gate_block_mask(jax.nn.softmax(logits, -1), **kw))
    np.testing.assert_array_equal(from_logits, from_probs)
    assert 0 < from_logits.sum() < from_logits.size  # a selection, not all or nothing


def test_kernel_refusal_names_the_blocks_and_tiles_that_would_work():
    # 128-row tiles over 64-token block rows need the bits per element, which the
    # Mosaic GPU kernels cannot read: the refusal says which tiles would run.
    from jaxsparse.ops import pallas_gpu

    q = jnp.zeros((1, 256, 2, 64), jnp.bfloat16)
    k = v = jnp.zeros((1, 256, 1, 64), jnp.bfloat16)
    mask = jnp.tril(jnp.ones((1, 2, 4, 4), bool))
    config = js.Config(block_q=128, interpret=True)
    with pallas_gpu.interpret_context(True), pytest.raises(NotImplementedError) as err:
        ag.gated_attention(q, k, v, mask, block_size=64, implementation="pallas_gpu", config=config)
    msg = str(err.value)
    assert "64x64 blocks" in msg and "128x64 tiles" in msg and "block_q dividing 64" in msg


def test_gated_attention_odd_lengths_under_jit_and_vmap():
    # 37 queries of 8-token blocks (a ragged last block), GQA, under jax.jit(jax.vmap(...))
    # over an extra leading axis (the block mask split with q, k, v): output, lse, dq, dk, dv.
    t, bs = 37, 8
    q, k, v, cot = R.random_qkv(2, t, 4, 2, 8, seed=45)
    probs = jax.random.uniform(jax.random.key(1), (2, 4, 5, 5))
    mask = ag.gate_block_mask(probs, q_len=t, kv_len=t, block_size=bs, threshold=0.5,
                              last_block_dense=0)  # fmt: skip
    m = np.asarray(mask)
    assert 0 < m.sum() < np.tril(np.ones((5, 5))).sum() * m.shape[0] * m.shape[1]
    token_mask = jnp.asarray(R.block_to_token(m, bs, bs, t, t) & R.causal_np(t, t, 0))

    def fn(q, k, v):
        def one(q, k, v, mask):
            return ag.gated_attention(
                q, k, v, mask, block_size=bs, implementation="xla", return_lse=True
            )

        return R.over_leading_axis(one)(q, k, v, mask)

    R.assert_close_to_ref(fn, lambda q, k, v: R.dense_ref(q, k, v, token_mask), q, k, v, cot)
