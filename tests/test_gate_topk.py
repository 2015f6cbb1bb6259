"""MoBA's fused gate + top-k kernel (`pallas_kernels.gpu.gate_topk`), index for index.

Inputs are small integers, so every score is an exact integer in float32 and
the kernel must match the straightforward jnp version exactly, ties (to the
lower index) included. CPU: Mosaic GPU interpret mode; `-m gpu`: the H100.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import mosaic_gpu as plgpu

import jaxsparse as js
from jaxsparse.ops import pallas_gpu, selection_kernels
from jaxsparse.patterns.dynamic import moba
from jaxsparse.selection import topk
from pallas_kernels.gpu import gate_topk as gk


def reference(q, k_mean, *, k, block_size, q_offset):
    """Scores of every past chunk in float32, then `topk_indices`: `[B, H, T, k]`."""
    b, t, h, d = q.shape
    c, kh = k_mean.shape[1], k_mean.shape[2]
    km = jnp.repeat(k_mean, h // kh, axis=2).astype(jnp.float32)
    s = jnp.einsum("bthd,bchd->bhtc", q.astype(jnp.float32), km)
    own = (q_offset + jnp.arange(t)) // block_size
    s = jnp.where(jnp.arange(c)[None, :] < own[:, None], s, -jnp.inf)
    return topk._iterative_topk(s, k)


def integer_inputs(b, t, h, kh, d, c, seed):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.integers(-2, 3, (b, t, h, d)), jnp.bfloat16)
    k_mean = jnp.asarray(rng.integers(-2, 3, (b, c, kh, d)), jnp.bfloat16)
    return q, k_mean


CASES = [
    # b, t, h, kh, d, c, k, block_size, q_offset, blocks per CTA
    (1, 128, 2, 1, 64, 5, 2, 32, 0, 1),  # two warpgroups, chunks padded to 64
    (2, 64, 4, 2, 64, 9, 3, 16, 100, 1),  # one warpgroup, GQA, offset rows past the keys
    (1, 192, 2, 2, 128, 70, 2, 8, 0, 1),  # 70 chunks -> 128 columns
    (1, 512, 2, 1, 64, 16, 3, 32, 0, 4),  # a CTA walks 4 blocks (double-buffered q)
    (1, 384, 1, 1, 64, 12, 2, 32, 0, 3),  # 3 blocks: both buffers, odd count
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:7] + c[9:])))
def test_kernel_matches_reference_in_interpret_mode(case):
    b, t, h, kh, d, c, k, bs, off, per_cta = case
    q, k_mean = integer_inputs(b, t, h, kh, d, c, seed=sum(case))
    with pallas_gpu.interpret_context(True):
        got = gk.gate_topk(
            q,
            k_mean,
            k=k,
            block_size=bs,
            q_offset=off,
            blocks_per_cta=per_cta,
            interpret=plgpu.InterpretGPUParams(detect_races=True),
        )
    want = reference(q, k_mean, k=k, block_size=bs, q_offset=off)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_moba_bits_through_the_kernel_equal_the_xla_gate():
    q, _ = integer_inputs(1, 256, 2, 1, 64, 1, seed=3)
    k = jnp.asarray(np.random.default_rng(4).integers(-2, 3, (1, 256, 1, 64)), jnp.bfloat16)
    kw = dict(block_size=32, top_k=3, q_offset=0)
    fused = moba.moba_select(q, k, **kw, config=js.Config(interpret=True))
    xla = moba.moba_select(q, k, **kw, config=js.Config(gpu_gate_kernel=False))
    np.testing.assert_array_equal(np.asarray(fused), np.asarray(xla))


@pytest.mark.parametrize("top_k", [6, 12])
def test_moba_with_more_chunks_to_pick_than_there_are_is_dense_causal(top_k):
    # MoBA(4096, 12) at 16k has 4 chunks: the fused path once raised for k=11 > 4 chunks
    # instead of choosing every past chunk as the XLA path does.
    q, _ = integer_inputs(1, 128, 2, 1, 64, 1, seed=5)
    k = jnp.asarray(np.random.default_rng(6).integers(-2, 3, (1, 128, 1, 64)), jnp.bfloat16)
    kw = dict(block_size=32, top_k=top_k, q_offset=0)  # 4 chunks
    fused = moba.moba_select(q, k, **kw, config=js.Config(interpret=True))
    xla = moba.moba_select(q, k, **kw, config=js.Config(gpu_gate_kernel=False))
    np.testing.assert_array_equal(np.asarray(fused), np.asarray(xla))
    pos = np.arange(128) // 32
    np.testing.assert_array_equal(np.asarray(fused)[0, 0], np.arange(4) <= pos[None, :].T)


@pytest.mark.parametrize(
    "shape, dtype, k, error",
    [
        ((1, 128, 2, 64), jnp.float32, 2, "bfloat16/float16"),
        ((1, 128, 2, 96), jnp.bfloat16, 2, "multiple of 64"),
        ((1, 100, 2, 64), jnp.bfloat16, 2, "multiple of 64"),
    ],
)
def test_unsupported_inputs_fall_back(shape, dtype, k, error):
    q = jnp.zeros(shape, dtype)
    k_mean = jnp.zeros((1, 8, 1, shape[-1]), dtype)
    with pytest.raises(NotImplementedError, match=error):
        gk.check(q, k_mean, k=k)
    # The selection then runs in XLA: chunk_topk says so with None.
    kw = dict(k=k, block_size=16, q_offset=0, config=js.Config(interpret=True))
    assert selection_kernels.chunk_topk(q, k_mean, **kw) is None


def test_too_many_chunks_and_bad_k():
    q = jnp.zeros((1, 64, 1, 64), jnp.bfloat16)
    with pytest.raises(NotImplementedError, match="chunks"):
        gk.check(q, jnp.zeros((1, 300, 1, 64), jnp.bfloat16), k=2)
    with pytest.raises(ValueError, match="k=0"):
        gk.check(q, jnp.zeros((1, 8, 1, 64), jnp.bfloat16), k=0)


@pytest.mark.gpu
@pytest.mark.parametrize("t, c, k", [(8192, 16, 2), (65536, 128, 2), (131072, 256, 3)])
def test_kernel_on_the_gpu(t, c, k):
    """On the H100 at MoBA's sizes (block 512), jitted and under vmap over the batch."""
    bs = t // c
    q, k_mean = integer_inputs(2, t, 16, 2, 128, c, seed=t)
    fn = jax.jit(lambda q, km: gk.gate_topk(q, km, k=k, block_size=bs))
    want = reference(q, k_mean, k=k, block_size=bs, q_offset=0)
    np.testing.assert_array_equal(np.asarray(fn(q, k_mean)), np.asarray(want))
    vm = jax.vmap(lambda q, km: gk.gate_topk(q[None], km[None], k=k, block_size=bs)[0])
    np.testing.assert_array_equal(np.asarray(jax.jit(vm)(q, k_mean)), np.asarray(want))
