"""`jaxsparse.attention`: bad input gets a clear error naming the values and the fix."""

from __future__ import annotations

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

import jaxsparse as js
from jaxsparse import patterns as P
from jaxsparse.ops import dispatch
from tests import strategies

B, T, S, H, K, D = 2, 9, 11, 4, 2, 8


def qkv(dtype=jnp.float32, b=B, t=T, s=S, h=H, k=K, d=D, dv=D):
    q = jnp.ones((b, t, h, d), dtype)
    return q, jnp.ones((b, s, k, d), dtype), jnp.ones((b, s, k, dv), dtype)


@pytest.mark.parametrize(
    "make, kwargs, exc, match",
    [
        (lambda: (jnp.ones((T, D)), *qkv()[1:]), {}, ValueError, r"expected \[B, T, H, D\]"),
        (lambda: (qkv()[0], qkv()[1][0], qkv()[2]), {}, ValueError, "batch axis or none"),
        (
            lambda: qkv(b=2)[:2] + (jnp.ones((3, S, K, D)),),
            {},
            ValueError,
            "Batch sizes differ: q 2, k 2, v 3",
        ),
        (lambda: qkv(h=3, k=2), {}, ValueError, "q has 3 heads and k/v have 2"),
        (
            lambda: (qkv()[0], jnp.ones((B, S, K, D + 1)), qkv()[2]),
            {},
            ValueError,
            "same head dim: q 8, k 9",
        ),
        (
            lambda: (qkv()[0], jnp.ones((B, S + 1, K, D)), qkv()[2]),
            {},
            ValueError,
            "same sequence length: k 12, v 11",
        ),
        (
            lambda: (qkv()[0], qkv()[1].astype(jnp.bfloat16), qkv()[2]),
            {},
            TypeError,
            "share one dtype.*float32, bfloat16",
        ),
        (lambda: (qkv()[0].astype(jnp.int32), *qkv()[1:]), {}, TypeError, "floating-point"),
        (lambda: qkv(t=0), {}, ValueError, "Empty dimension"),
        (lambda: ([[1.0]], *qkv()[1:]), {}, TypeError, "q must be an array"),
        (qkv, dict(pattern="causal"), TypeError, "jaxsparse pattern"),
        (qkv, dict(implementation="cuda"), ValueError, "Unknown implementation 'cuda'"),
        (qkv, dict(config={"block_q": 64}), TypeError, "jaxsparse.Config"),
        (qkv, dict(scale=jnp.float32(0.1)), TypeError, "scale must be a Python number"),
        (qkv, dict(logits_soft_cap=-1.0), ValueError, "logits_soft_cap=-1.0"),
        (qkv, dict(logits_soft_cap=1e39), ValueError, "logits_soft_cap=1e.39 is inf in float32"),
        (qkv, dict(scale=-1e39), ValueError, "scale=-1e.39 is -inf in float32"),
        (qkv, dict(logits_soft_cap=1e-50), ValueError, "logits_soft_cap=1e-50 is 0.0 in float32"),
        (qkv, dict(q_offset=jnp.int32(2)), TypeError, "q_offset must be a Python int"),
        (qkv, dict(return_lse=1), TypeError, "return_lse must be a bool"),
        (qkv, dict(segment_ids=jnp.zeros((B, T), jnp.int32)), ValueError, "needs T == S"),
        (qkv, dict(segment_ids=(jnp.zeros((B, T)), jnp.zeros((B, S)))), TypeError, "integer array"),
        (
            qkv,
            dict(segment_ids=(jnp.zeros((B, T + 1), jnp.int32), jnp.zeros((B, S), jnp.int32))),
            ValueError,
            r"expected \[2, 9\]",
        ),
        (qkv, dict(segment_ids=(jnp.zeros((B, T), jnp.int32),)), ValueError, "a pair"),
        (
            qkv,
            dict(segment_ids=(np.full((B, T), 2**63, np.uint64), np.zeros((B, S), np.int64))),
            TypeError,
            "no common integer type",
        ),
        (qkv, dict(q_offset=2**30 - 5), ValueError, "beyond the int32 range"),
        (qkv, dict(q_offset=-(2**31)), ValueError, "q_offset=-2147483648 must be >= -1073741823"),
        (qkv, dict(scale=True), TypeError, "scale must be a Python number.*got bool"),
        (qkv, dict(logits_soft_cap=np.bool_(True)), TypeError, "got bool"),
        (qkv, dict(pattern=P.PerHead([P.Causal()])), ValueError, "1 patterns but the call has 4"),
        (qkv, dict(pattern=P.Mask(np.ones((T, T), bool))), ValueError, "must be \\[..., 9, 11\\]"),
        (
            qkv,
            dict(pattern=P.BlockMask(np.ones((3, 2), bool), block_q=8, block_kv=8)),
            ValueError,
            "block_mask has shape",
        ),
    ],
)
def test_bad_input(make, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        js.attention(*make(), **kwargs)


def test_wide_segment_ids_are_renumbered_together():
    """Ids beyond int32 keep their equalities (query against key ids), eager and, with x64,
    traced under jit: 2**40 and 2**40 + 1 must not meet, nor 2**32 and 0."""
    q, k, v = (jax.random.normal(jax.random.key(i), (1, 6, 2, 8)) for i in range(3))
    big = 2**40
    q_ids = np.array([[big, big, big + 1, big + 1, 2**32, 7]])
    kv_ids = np.array([[big + 1, big + 1, big, 0, 7, 2**32]])
    small = (np.array([[3, 3, 4, 4, 2, 1]]), np.array([[4, 4, 3, 0, 1, 2]]))
    want = js.attention(q, k, v, segment_ids=small, implementation="reference")
    got = js.attention(q, k, v, segment_ids=(q_ids, kv_ids), implementation="xla")
    np.testing.assert_allclose(got, want, atol=1e-6)
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):  # int64 positions mix
        fn = jax.jit(lambda a, b: js.attention(q, k, v, segment_ids=(a, b), implementation="xla"))
        got = fn(jnp.asarray(q_ids, jnp.int64), jnp.asarray(kv_ids, jnp.int64))
    np.testing.assert_allclose(got, want, atol=1e-6)
    # Without x64, jax has no common type for traced ids that need 64 bits: a named error,
    # not ids wrapped to 32 bits (2**32 + 5 would meet 5).
    wide = np.array([[2**32 + 5] * 6], np.int64)
    with pytest.raises(ValueError, match="only be compared as int64.*jax_enable_x64"):
        jax.jit(lambda a: js.attention(q, k, v, segment_ids=(a, wide)))(jnp.full((1, 6), 5))
    mixed = jax.jit(lambda a, b: js.attention(q, k, v, segment_ids=(a, b)))
    with pytest.raises(ValueError, match="uint32 and int32, some traced"):
        mixed(jnp.full((1, 6), 2**31, jnp.uint32), jnp.full((1, 6), -(2**31), jnp.int32))


def test_bad_input_beside_attention():
    x = jnp.ones((1, 8, 2, 4))
    with pytest.raises(TypeError, match="dense_mask: pattern must be a jaxsparse pattern"):
        P.dense_mask("causal", q_len=4, kv_len=4)
    with pytest.raises(TypeError, match="q_offset must be a Python int"):
        js.pyramid_attention(x, x, x, q_offset=0.0)
    with pytest.raises(TypeError, match=r"Pass `np.asarray\(mask, bool\)`"):
        js.attention(x, x, x, pattern=P.Mask([[True] * 8] * 8))


def test_bad_config():
    with pytest.raises(ValueError, match="block_q=0 must be >= 1"):
        js.Config(block_q=0)
    with pytest.raises(TypeError, match="gpu_persistent must be True, False or None"):
        js.Config(gpu_persistent="yes")
    with pytest.raises(TypeError, match="gpu_dkv_split_heads must be True, False or None"):
        js.Config(gpu_dkv_split_heads=1)
    with pytest.raises(TypeError, match="gpu_gate_kernel must be True or False"):
        js.Config(gpu_gate_kernel=None)
    with pytest.raises(TypeError, match="gpu_dkv_q_split must be True, False or None"):
        js.Config(gpu_dkv_q_split=1)
    with pytest.raises(TypeError, match="gpu_heavy_first must be True, False or None"):
        js.Config(gpu_heavy_first="no")
    with pytest.raises(ValueError, match="gpu_dkv_list_splits=0 must be >= 1"):
        js.Config(gpu_dkv_list_splits=0)


def test_negative_window_is_refused_at_construction():
    with pytest.raises(ValueError, match="left=-4 must be >= 0"):
        P.SlidingWindow(left=-4)


def test_sparsity_must_match_the_call():
    sp = js.sparsity.from_pattern(P.Causal(), q_len=T, kv_len=T, block_q=4, block_kv=4)
    with pytest.raises(ValueError, match="rebuild it for these lengths"):
        js.attention(*qkv(), sparsity=sp)
    with pytest.raises(TypeError, match="BlockSparsity"):
        js.attention(*qkv(), sparsity="causal")


def test_unbatched_and_lse_shapes():
    q, k, v = qkv(dv=5)
    out, lse = js.attention(q[0], k[0], v[0], pattern=P.Causal(), return_lse=True)
    assert out.shape == (T, H, 5) and lse.shape == (H, T) and lse.dtype == jnp.float32
    out, lse = js.attention(q, k, v, pattern=P.Causal(), return_lse=True)
    assert out.shape == (B, T, H, 5) and lse.shape == (B, H, T)


def test_empty_batch_gives_empty_outputs():
    q, k, v = qkv(jnp.bfloat16, b=0, dv=5)
    out, lse = js.attention(q, k, v, pattern=P.Causal(), return_lse=True)
    assert out.shape == (0, T, H, 5) and out.dtype == jnp.bfloat16
    assert lse.shape == (0, H, T) and lse.dtype == jnp.float32
    q, k, v = qkv(b=0)
    out = jax.jit(lambda q, k, v: js.attention(q, k, v, pattern=P.Causal()))(q, k, v)
    assert out.shape == (0, T, H, D)
    grads = jax.grad(lambda *a: js.attention(*a).sum(), argnums=(0, 1, 2))(q, k, v)
    assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]
    out = jax.vmap(lambda q, k, v: js.attention(q, k, v))(*(x[None].repeat(3, 0) for x in qkv(b=0)))
    assert out.shape == (3, 0, T, H, D)
    with pytest.raises(ValueError, match="must be \\[..., 9, 11\\]"):  # still validated
        js.attention(q, k, v, pattern=P.Mask(np.ones((T, T), bool)))


def test_sparsity_tables_must_fit_their_block_sizes():
    sp = js.sparsity.from_pattern(P.Causal(), q_len=T, kv_len=S, block_q=4, block_kv=4)
    for changed in (dict(block_kv=8), dict(block_q=8)):
        with pytest.raises(ValueError, match="not by replacing block sizes"):
            js.attention(*qkv(), pattern=P.Causal(), sparsity=sp.replace(**changed))
    with pytest.raises(ValueError, match="block_q=0 must be >= 1"):
        js.attention(*qkv(), pattern=P.Causal(), sparsity=sp.replace(block_q=0))


def test_one_head_lists_cannot_serve_a_pattern_that_differs_per_head():
    pattern = P.Causal() & P.Strided(3, block_size=4, local_blocks=0)
    sp = js.sparsity.from_pattern(pattern, q_len=T, kv_len=S, block_q=4, block_kv=4)
    with pytest.raises(ValueError, match="one head list.*num_heads=4"):
        js.attention(*qkv(), pattern=pattern, sparsity=sp)
    per_head = js.sparsity.from_pattern(
        pattern, q_len=T, kv_len=S, block_q=4, block_kv=4, num_heads=H
    )
    js.attention(*qkv(), pattern=pattern, sparsity=per_head)


@pytest.mark.parametrize(
    "pattern, sparsity",
    [
        (
            P.Causal(),
            lambda: js.sparsity.from_block_mask(
                np.tril(np.ones((4, 4), bool)), block_q=8, block_kv=8, q_len=32, kv_len=32
            ),
        ),
        (
            P.Causal(),
            lambda: js.sparsity.from_topk(
                jnp.array([[[[0, 1], [0, 1], [1, 2], [2, 3]]]]),
                block_q=8,
                block_kv=8,
                q_len=32,
                kv_len=32,
            ),  # fmt: skip
        ),
        (
            P.SlidingWindow(left=3) & P.Causal(),
            lambda: js.sparsity.from_pattern(
                P.Full(), q_len=32, kv_len=32, block_q=8, block_kv=8, num_heads=2
            ),
        ),
        # Explicit masks too: their arrays, not the caller's FULL marks, decide.
        (
            P.Causal() & P.Mask(np.ones((32, 32), bool)),
            lambda: js.sparsity.from_block_mask(
                np.ones((2, 2), bool), block_q=16, block_kv=16, q_len=32, kv_len=32
            ),
        ),
        (
            P.BlockMask(np.eye(4, dtype=bool), block_q=8, block_kv=8),
            lambda: js.sparsity.from_block_mask(
                np.ones((2, 2), bool), block_q=16, block_kv=16, q_len=32, kv_len=32
            ),
        ),
    ],
)
def test_full_tiles_of_given_sparsity_keep_the_pattern_mask(pattern, sparsity):
    # from_block_mask / from_topk mark every listed tile FULL; the pattern must still mask
    # inside them (the XLA path skipped the mask there and ignored causality).
    sp = sparsity()
    q, k, v = (jax.random.normal(jax.random.key(i), (1, 32, 2, 8)) for i in range(3))

    def run(impl, q, k, v):
        out, lse = js.attention(
            q, k, v, pattern=pattern, sparsity=sp, implementation=impl, return_lse=True
        )
        return out, lse

    got, want = run("xla", q, k, v), run("reference", q, k, v)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    if pattern.holds_arrays:  # and with the mask traced under jit
        traced = jax.jit(
            lambda p, q, k, v: js.attention(
                q, k, v, pattern=p, sparsity=sp, implementation="xla", return_lse=True
            )
        )(pattern, q, k, v)
        for a, b in zip(traced, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    grads = [
        jax.grad(lambda *a, i=i: run(i, *a)[0].sum(), argnums=(0, 1, 2))(q, k, v)
        for i in ("xla", "reference")
    ]
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@hypothesis.settings(max_examples=8, deadline=None)
@hypothesis.given(
    pattern=strategies.patterns,
    geo=strategies.geometry(),
    seed=st.integers(0, 2**16),
    builder=st.sampled_from(["block_mask", "topk"]),
)
def test_given_sparsity_never_lifts_the_pattern_mask(pattern, geo, seed, builder):
    # Any tiles, marked FULL by the builder, with any static pattern: the XLA path equals
    # the oracle (the pattern masks inside every listed tile), forward, lse and gradients.
    t, s, q_offset, bq, bk, h = geo
    q_offset = s - t if q_offset is None else q_offset
    tb, sb = -(-t // bq), -(-s // bk)
    rng = np.random.default_rng(seed)
    geometry = dict(block_q=bq, block_kv=bk, q_len=t, kv_len=s, q_offset=q_offset)
    if builder == "block_mask":
        sp = js.sparsity.from_block_mask(rng.random((h, tb, sb)) < 0.6, **geometry)
    else:
        idx = rng.integers(-1, sb, (h, tb, min(3, sb)))
        sp = js.sparsity.from_topk(idx, **geometry)
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (1, t, h, 8))
    k, v = (jax.random.normal(x, (1, s, 1, 8)) for x in keys[1:])

    def run(impl):
        def f(q, k, v):
            return js.attention(
                q, k, v, pattern=pattern, sparsity=sp, q_offset=q_offset,
                implementation=impl, return_lse=True,
            )  # fmt: skip

        (out, lse), vjp = jax.vjp(f, q, k, v)
        cot = (jnp.ones_like(out), jnp.zeros_like(lse))
        return (out, lse, *vjp(cot))

    for got, want in zip(run("xla"), run("reference"), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_forward_only_lists_with_an_explicit_mask():
    # Lists without their key-major half (forward only) are rebuilt for a BlockMask too.
    q = jax.random.normal(jax.random.key(0), (1, 32, 1, 16))
    sp = js.sparsity.from_block_mask(
        np.ones((2, 2), bool), block_q=16, block_kv=16, q_len=32, kv_len=32
    ).replace(q_indices=None, q_counts=None, q_full=None)
    pattern = P.BlockMask(np.eye(4, dtype=bool), block_q=8, block_kv=8)
    got = js.attention(q, q, q, pattern=pattern, sparsity=sp, implementation="xla")
    want = js.attention(q, q, q, pattern=pattern, implementation="reference")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_forward_only_lists_with_a_static_pattern():
    """Forward-only lists run on the XLA path (forward and gradients); the kernels, which walk
    the key-major half in the backward, refuse them by name (dispatch then falls back)."""
    q = jax.random.normal(jax.random.key(1), (1, 32, 2, 64))
    sp = js.sparsity.from_pattern(P.Causal(), q_len=32, kv_len=32, block_q=16, block_kv=16).replace(
        q_indices=None, q_counts=None, q_full=None
    )

    def loss(q, impl, sparsity):
        out = js.attention(q, q, q, pattern=P.Causal(), sparsity=sparsity, implementation=impl)
        return (out * jnp.cos(out)).sum()

    got, want = (
        jax.value_and_grad(loss)(q, "xla", sp),
        jax.value_and_grad(loss)(q, "reference", None),
    )
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    config, bf = js.Config(interpret=True), q.astype(jnp.bfloat16)
    for impl in ("pallas_gpu", "pallas_tpu"):
        with pytest.raises(NotImplementedError, match="need the sparsity's key-major lists"):
            js.attention(
                bf, bf, bf, pattern=P.Causal(), sparsity=sp, implementation=impl, config=config
            )


def test_given_sparsity_restricts_tiles():
    q, k, v = (jax.random.normal(jax.random.key(i), (1, 16, 2, 8)) for i in range(3))
    keep = np.array([[True, False], [True, True]])
    sp = js.sparsity.from_block_mask(keep, block_q=8, block_kv=8, q_len=16, kv_len=16)
    got = js.attention(q, k, v, sparsity=sp, implementation="xla")
    want = js.attention(
        q, k, v, pattern=P.BlockMask(keep, block_q=8, block_kv=8), implementation="reference"
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fallback_and_exception_group(monkeypatch):
    class Refuses:
        @staticmethod
        def run(call):
            raise NotImplementedError("not on this backend")

    monkeypatch.setitem(dispatch._ORDER, jax.default_backend(), ("nope", "xla"))
    monkeypatch.setitem(dispatch._MODULES, "nope", __name__)
    monkeypatch.setattr(
        dispatch,
        "_module",
        lambda name: (
            Refuses if name == "nope" else __import__("jaxsparse.ops.xla.impl", fromlist=["run"])
        ),
    )
    out = js.attention(*qkv(), pattern=P.Causal())
    assert out.shape == (B, T, H, D)
    monkeypatch.setitem(dispatch._ORDER, jax.default_backend(), ("nope",))
    with pytest.raises(ExceptionGroup, match="no jaxsparse implementation") as info:
        js.attention(*qkv(), pattern=P.Causal())
    assert "not on this backend" in str(info.value.exceptions[0])


def test_default_scale_and_explicit_scale():
    q, k, v = (jax.random.normal(jax.random.key(i), (1, 6, 1, 8)) for i in range(3))
    a = js.attention(q, k, v)
    b = js.attention(q, k, v, scale=8**-0.5)
    c = js.attention(q * 2, k, v, scale=0.5 * 8**-0.5)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(a, c, rtol=1e-5)


def test_a_fallback_from_a_kernel_warns_once_per_reason(monkeypatch, caplog):
    """float32 inputs are declined by the Mosaic GPU kernels: the XLA path runs the call,
    and the reason is logged as a warning once, then at debug level."""
    import logging

    monkeypatch.setattr(dispatch, "order_for", lambda platform: ("pallas_gpu", "xla"))
    monkeypatch.setattr(dispatch, "_WARNED", set())
    q = jnp.ones((1, 32, 2, 64), jnp.float32)
    with caplog.at_level(logging.DEBUG, logger="jaxsparse"):
        for _ in range(2):
            out = js.attention(q, q, q, pattern=js.patterns.Causal())
    assert out.shape == q.shape
    records = [r for r in caplog.records if "pallas_gpu cannot run this call" in r.getMessage()]
    assert [r.levelno for r in records] == [logging.WARNING, logging.DEBUG]
