"""The XLA path against the dense oracle: forward and every gradient, by name."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse import patterns as P
from tests import dynamic_refs as R
from tests import oracle

rng = np.random.default_rng(0)
C = oracle.Case

CASES = [
    # Every static pattern, odd lengths, GQA (H4 K2).
    C(P.Full()),
    C(P.Causal()),
    C(P.SlidingWindow(left=5)),
    C(P.SlidingWindow(left=4, right=3)),
    C(P.Causal() & (P.Sink(3) | P.SlidingWindow(left=6))),
    C(P.ChunkedCausal(7)),
    C(P.PrefixLM(9)),
    C(P.Causal() & P.Strided(stride=3, block_size=4)),
    C(P.Dilated(left=8, dilation=2)),
    C(P.PowerOfTwo(block_size=4, window_blocks=1, sink_blocks=1)),
    C(P.PerHead([P.Causal(), P.SlidingWindow(left=3), P.Full(), P.ChunkedCausal(5)])),
    C(P.BlockMask(rng.random((3, 3)) < 0.5, block_q=16, block_kv=16)),
    C(P.BlockMask(rng.random((3, 3)) < 0.7, block_q=16, block_kv=16) & P.Causal()),
    C(P.Strided(stride=4, block_size=4, local_blocks=1, head_step=0)),  # non-causal, unaligned
    C(P.Mask(rng.random((37, 37)) < 0.3)),
    # CAB modes: causal / non-causal x self / cross (bottom-right aligned).
    C(P.Full(), t=13, s=45),
    C(P.Causal(), t=13, s=45),
    C(P.Full(), t=45, s=13),
    C(P.Causal(), t=45, s=13),  # T > S: the first 32 queries see nothing
    C(P.Causal(), q_offset=-3),  # explicit offset, fully masked rows
    # Heads and head dims.
    C(P.Causal(), h=4, k=1),  # MQA
    C(P.Causal(), h=3, k=3),  # MHA, odd head count
    C(P.Causal(), d=16, dv=24),  # Dv != D
    # Logit soft cap, document masking.
    C(P.Causal(), soft_cap=2.0),
    C(P.Causal(), segments=True),
    C(P.SlidingWindow(left=6, right=2), segments=True, soft_cap=3.0),
    # Half precision (f32 math inside, looser tolerance for rounded inputs/outputs).
    C(P.Causal(), dtype=jnp.bfloat16),
    C(P.Causal() & P.SlidingWindow(left=9), dtype=jnp.float16),
    # Default tile sizes (no config), longer sequence with several chunks.
    C(P.Causal() & P.SlidingWindow(left=40), t=300, b=1, h=2, k=1, d=32, block=None),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_oracle(case):
    oracle.assert_matches_oracle(case, "xla")


@pytest.mark.parametrize(
    "case",
    [C(P.Causal() & P.SlidingWindow(left=7), segments=True), C(P.ChunkedCausal(5), t=21, s=29)],
    ids=lambda c: c.id,
)
def test_matches_oracle_under_jit(case):
    oracle.assert_matches_oracle(case, "xla", transform=jax.jit)


def test_vmap_equals_batched_call():
    case = C(P.Causal() & (P.Sink(2) | P.SlidingWindow(left=5)), t=29, segments=True)
    q, k, v, kwargs, cot = oracle.inputs(case)

    def loss(q, k, v, batched):
        if batched:
            out = js.attention(q, k, v, implementation="xla", **kwargs)
        else:
            q_ids, kv_ids = kwargs["segment_ids"]
            kw = {**kwargs, "segment_ids": None}

            def one(q, k, v, qi, ki):
                kw_one = {**kw, "segment_ids": (qi, ki)}
                return js.attention(q, k, v, implementation="xla", **kw_one)

            out = jax.vmap(one)(q, k, v, q_ids, kv_ids)
        return (out * cot).sum()

    a = jax.jit(jax.value_and_grad(lambda *x: loss(*x, True), argnums=(0, 1, 2)))(q, k, v)
    b = jax.jit(jax.value_and_grad(lambda *x: loss(*x, False), argnums=(0, 1, 2)))(q, k, v)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_deterministic():
    case = C(P.Causal(), t=64, segments=True)
    q, k, v, kwargs, cot = oracle.inputs(case)
    f = jax.jit(lambda q, k, v: oracle.outputs_and_grads("xla", q, k, v, kwargs, cot))
    a, b = f(q, k, v), f(q, k, v)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_fully_masked_rows_are_zero_with_finite_grads():
    case = C(P.Causal(), q_offset=-5)
    q, k, v, kwargs, cot = oracle.inputs(case)
    out, lse, dq, dk, dv = oracle.outputs_and_grads("xla", q, k, v, kwargs, cot)
    np.testing.assert_array_equal(np.asarray(out[:, :5]), 0.0)
    assert np.isneginf(np.asarray(lse[:, :, :5])).all()
    for g in (dq, dk, dv):
        assert np.isfinite(np.asarray(g)).all()
    np.testing.assert_array_equal(np.asarray(dq[:, :5]), 0.0)


def test_many_chunks_equal_one_chunk():
    case = C(P.Causal(), t=70, block=8)
    q, k, v, kwargs, _ = oracle.inputs(case)
    one = js.attention(q, k, v, implementation="xla", **kwargs)
    small = js.Config(block_q=8, block_kv=8, xla_chunk_elements=8 * 8 * 2 * 4 * 3)
    many = js.attention(q, k, v, implementation="xla", **{**kwargs, "config": small})
    np.testing.assert_allclose(one, many, rtol=1e-6, atol=1e-6)


def test_checkpoint_and_unbatched():
    case = C(P.Causal(), b=1)
    q, k, v, kwargs, _ = oracle.inputs(case)

    def loss(q):
        return js.attention(q[0], k[0], v[0], implementation="xla", **kwargs).sum()

    g1 = jax.jit(jax.grad(jax.checkpoint(loss)))(q)
    g2 = jax.jit(jax.grad(loss))(q)
    np.testing.assert_allclose(g1, g2, rtol=1e-6, atol=1e-6)


# One case per static pattern class (and the combinators), odd lengths (37 of 16-token
# tiles) and GQA (H4 K2), under jax.jit(jax.vmap(...)) over an extra leading axis:
# output, lse, dq, dk, dv against the oracle of the whole batch.
JIT_VMAP_CASES = [
    C(P.Full()),
    C(P.Causal()),
    C(P.SlidingWindow(left=4, right=3)),
    C(P.ChunkedCausal(7)),
    C(P.PrefixLM(9)),
    C(P.Sink(3)),
    C(P.Causal() & P.Strided(stride=3, block_size=4)),
    C(P.Dilated(left=8, dilation=2)),
    C(P.PowerOfTwo(block_size=4, window_blocks=1, sink_blocks=1)),
    C(P.PerHead([P.Causal(), P.SlidingWindow(left=3), P.Full(), P.ChunkedCausal(5)])),
    C(P.BlockMask(rng.random((3, 3)) < 0.5, block_q=16, block_kv=16)),
    C(P.Mask(rng.random((37, 37)) < 0.3)),
    C(P.AShape(n_init=3, n_local=6)),
    C(P.CompressedCausal(kernel_size=4, stride=2), s=17, q_offset=0),  # rows 0-2 see nothing
    C(P.Causal() & (P.Sink(2) | P.SlidingWindow(left=5)), t=29, segments=True),  # And, Or
    C(P.Window((5, 7), (2, 3), shift=(1, 1), tile=(1, 7)), t=35, block=8),  # short windows
]


@pytest.mark.parametrize("case", JIT_VMAP_CASES, ids=lambda c: c.id)
def test_matches_oracle_under_jit_vmap(case):
    oracle.assert_matches_oracle_under_jit_vmap(case, "xla")


@pytest.mark.parametrize("kind", ["BlockMask", "Mask"])
def test_per_example_array_patterns_under_jit_vmap(kind):
    # A pattern built inside jax.vmap from per-example (batched, traced) arrays: each
    # example's mask against the oracle of its own pattern; output, lse, dq, dk, dv.
    b, t = 2, 37
    case = C(P.Full(), b=b, t=t)
    q, k, v, kwargs, cot = oracle.inputs(case)
    config = kwargs["config"]
    if kind == "BlockMask":
        arrays = rng.random((b, 4, 3, 3)) < 0.5

        def make(a):
            return P.BlockMask(a, block_q=16, block_kv=16)
    else:
        arrays = rng.random((b, 4, t, t)) < 0.3
        make = P.Mask

    def one(q, k, v, a):  # q [1, T, H, D], a [H, ...]: one example
        return js.attention(
            q, k, v, pattern=make(a), implementation="xla", config=config, return_lse=True
        )

    def vmapped(q, k, v):
        split = (x[:, None] for x in (q, k, v))
        out, lse = jax.vmap(one)(*split, jnp.asarray(arrays))
        return out[:, 0], lse[:, 0]

    def reference(q, k, v):
        outs = [
            js.attention(
                q[i : i + 1],
                k[i : i + 1],
                v[i : i + 1],
                pattern=make(jnp.asarray(arrays[i])),
                implementation="reference",
                return_lse=True,
            )
            for i in range(b)
        ]
        return tuple(jnp.concatenate(x) for x in zip(*outs, strict=True))

    R.assert_close_to_ref(vmapped, reference, q, k, v, cot)
