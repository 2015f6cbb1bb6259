"""NSA's importance kernel (`pallas_kernels.gpu.nsa_importance`) against the float32 XLA form.

CPU: Mosaic GPU interpret mode (with the race detector) and the kernel lowered
for CUDA. The kernel rounds each probability to the input dtype before the
overlap-weighted sum (as the attention kernels round P before P @ V), so it
matches `nsa_selection.block_importance` to about 2^-8 relative.
"""

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st
from jax.experimental.pallas import mosaic_gpu as plgpu

from jaxsparse.methods import nsa_compress, nsa_selection
from jaxsparse.ops import pallas_gpu
from jaxsparse.patterns.compressed_causal import CompressedCausal
from jaxsparse.selection import remap
from pallas_kernels.gpu import nsa_importance as ni

NSA = dict(kernel_size=32, stride=16, block_size=64)


@hypothesis.settings(max_examples=20, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**16), key_blocks=st.integers(1, 4))
def test_weight_tiles_give_the_overlap_remap(seed, key_blocks):
    # Walking key blocks of 64 with the main tile and carrying the spill tile into the
    # next block's columns is eq. 9's remap (`remap.compressed_to_blocks`).
    nc = 64 * key_blocks
    nb = 16 * key_blocks + 1
    p = np.random.default_rng(seed).random((3, nc)).astype(np.float32)
    w = ni.weight_tiles(**NSA)
    got = np.zeros((3, 16 * (key_blocks + 1)), np.float32)
    for i in range(key_blocks):
        pk = p[:, 64 * i : 64 * (i + 1)]
        got[:, 16 * i : 16 * (i + 1)] += pk @ w[0]
        got[:, 16 * (i + 1)] += pk @ w[1][:, 0]
    want = remap.compressed_to_blocks(jnp.asarray(p), **NSA, num_blocks=nb)
    np.testing.assert_allclose(got[:, :nb], np.asarray(want), rtol=1e-6)


def _inputs(t, h, kh, d, q_offset, seed, batch=1):
    s = t + q_offset
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((batch, t, h, d)), jnp.bfloat16)
    k = jnp.asarray(rng.standard_normal((batch, s, kh, d)), jnp.bfloat16)
    nc = nsa_compress.num_compressed(s, NSA["kernel_size"], NSA["stride"])
    k_cmp = nsa_compress.mean_compress(k, kernel_size=32, stride=16)[:, :nc]
    scale = d**-0.5
    logits = jnp.einsum(
        "bthd,bchd->bhtc",
        q.astype(jnp.float32),
        jnp.repeat(k_cmp, h // kh, axis=2).astype(jnp.float32),
    )
    rule = CompressedCausal(kernel_size=NSA["kernel_size"], stride=NSA["stride"])
    pos = q_offset + jnp.arange(t)
    visible = rule.mask_fn(pos[:, None], jnp.arange(nc)[None, :], 0)
    lse = jax.nn.logsumexp(jnp.where(visible, logits * scale, -jnp.inf), axis=-1)  # [B, H, T]
    return q, k_cmp, lse, scale, -(-s // NSA["block_size"]), pos


CASES = [
    # t, h, kh, d, q_offset, warpgroups, batch: tokens padded to 64s; key blocks; rows that
    # see no key
    (120, 4, 2, 64, 1400, 1, 1),  # 94 compressed keys: two key blocks, the spill crosses
    (192, 2, 1, 64, 0, 1, 1),  # 11 keys; the first 31 rows see none (lse -inf, importance 0)
    (120, 4, 2, 64, 1400, 2, 1),  # two warpgroups, a head each, sums handed over per key block
    (64, 8, 2, 64, 2500, 2, 1),  # four heads in two warpgroups, three key blocks (slot reuse)
    (100, 4, 2, 64, 900, 2, 2),  # two batch rows with their own queries, keys and lse
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_kernel_matches_the_float32_importance_in_interpret_mode(case):
    t, h, kh, d, off, nwg, batch = case
    q, k_cmp, lse, scale, nb, pos = _inputs(t, h, kh, d, off, seed=sum(case), batch=batch)
    with pallas_gpu.interpret_context(True):
        got = ni.block_importance(
            q,
            k_cmp,
            lse,
            **NSA,
            num_blocks=nb,
            scale=scale,
            q_offset=off,
            warpgroups=nwg,
            interpret=plgpu.InterpretGPUParams(detect_races=True),
        )
    want = nsa_selection.block_importance(
        q, jnp.moveaxis(lse, 1, 2), k_cmp, pos, **NSA, num_blocks=nb, scale=scale
    )  # [B, K, T, nb]
    want = np.asarray(jnp.moveaxis(want, 1, 2))
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-2, atol=2e-3)
    assert np.abs(want).sum() > 0 and (want[:, : max(0, 31 - off)] == 0).all()
    races = jax._src.pallas.mosaic_gpu.interpret.interpret_pallas_call.get_races()
    assert not races.races_found


@pytest.mark.parametrize("nwg", [1, 2])
def test_kernel_lowers_for_a_gpu(nwg):
    # Interpret mode runs the kernel's logic, not its Mosaic GPU lowering (layouts,
    # swizzles, the register-LHS wgmma): lower it for CUDA here.
    t, h, kh, d, off, _, batch = CASES[-1]  # two batch rows
    q, k_cmp, lse, scale, nb, _ = _inputs(t, h, kh, d, off, seed=1, batch=batch)

    def f(q, k_cmp, lse):
        return ni.block_importance(
            q, k_cmp, lse, **NSA, num_blocks=nb, scale=scale, q_offset=off, warpgroups=nwg
        )

    with pallas_gpu.interpret_context(True):  # an abstract H100 for the architecture queries
        jax.jit(f).trace(q, k_cmp, lse).lower(lowering_platforms=("cuda",))


def test_settings_the_kernel_does_not_take_are_refused():
    q = jnp.zeros((1, 64, 4, 64), jnp.bfloat16)
    k_cmp = jnp.zeros((1, 8, 2, 64), jnp.bfloat16)
    with pytest.raises(NotImplementedError, match="16 selection blocks"):
        ni.check(q, k_cmp, kernel_size=32, stride=16, block_size=32)
    with pytest.raises(NotImplementedError, match="bfloat16/float16"):
        ni.check(q.astype(jnp.float32), k_cmp, **NSA)


def test_nsa_select_through_the_kernel_keeps_the_blocks_of_the_attention_calls(monkeypatch):
    # gpu_importance_kernel (on by default, here in interpret mode) swaps the
    # importance's source inside nsa_select; the kept blocks agree with the eight
    # attention calls' up to near-ties that the two roundings order differently.
    from jaxsparse.ops import config as config_lib

    t, h, kh, d, off = 128, 4, 2, 64, 1400
    q, k_cmp, lse, scale, nb, _ = _inputs(t, h, kh, d, off, seed=7)
    kw = dict(
        kv_len=t + off, **NSA, top_n=6, init_blocks=1, local_blocks=2, scale=scale, q_offset=off
    )
    on = config_lib.Config(gpu_importance_kernel=True, interpret=True)
    ran = []
    kernel = ni.block_importance
    monkeypatch.setattr(ni, "block_importance", lambda *a, **k: ran.append(1) or kernel(*a, **k))
    fused = np.asarray(nsa_selection.nsa_select(q, k_cmp, lse, **kw, config=on))
    assert ran  # the kernel, not the attention calls
    off = config_lib.Config(gpu_importance_kernel=False, interpret=True)
    ran.clear()
    calls = np.asarray(nsa_selection.nsa_select(q, k_cmp, lse, **kw, config=off))
    assert not ran  # the attention calls
    assert fused.shape == calls.shape == (1, kh, t, nb)
    assert (fused.sum(-1) == 6).all()  # every row keeps top_n blocks
    assert (fused != calls).mean() < 0.01


def test_nsa_select_in_slices_through_the_kernel(monkeypatch):
    # Beyond IMPORTANCE_SLICE_ELEMENTS nsa_select calls the kernel once per slice of
    # 64-token tiles (q_offset moved along): the same tiles, so the same bits.
    from jaxsparse.ops import config as config_lib

    t, h, kh, d, off = 192, 4, 2, 64, 700
    q, k_cmp, lse, scale, nb, _ = _inputs(t, h, kh, d, off, seed=11)
    kw = dict(
        kv_len=t + off, **NSA, top_n=4, init_blocks=1, local_blocks=2, scale=scale, q_offset=off
    )
    on = config_lib.Config(interpret=True)  # the kernel is on by default
    whole = np.asarray(nsa_selection.nsa_select(q, k_cmp, lse, **kw, config=on))
    ran = []
    kernel = ni.block_importance
    monkeypatch.setattr(ni, "block_importance", lambda *a, **k: ran.append(1) or kernel(*a, **k))
    monkeypatch.setattr(nsa_selection, "IMPORTANCE_SLICE_ELEMENTS", kh * nb * 64)
    sliced = np.asarray(nsa_selection.nsa_select(q, k_cmp, lse, **kw, config=on))
    assert len(ran) == 3  # three slices of 64 tokens, each through the kernel
    np.testing.assert_array_equal(whole, sliced)


@pytest.mark.gpu
@pytest.mark.parametrize("t, off", [(2048, 0), (4096, 6000)])
def test_kernel_on_the_gpu(t, off):
    """On a Hopper GPU at H=16, K=2, D=128, jitted, against the float32 XLA form."""
    q, k_cmp, lse, scale, nb, pos = _inputs(t, 16, 2, 128, off, seed=t)
    fn = jax.jit(
        lambda q, k_cmp, lse: ni.block_importance(
            q, k_cmp, lse, **NSA, num_blocks=nb, scale=scale, q_offset=off
        )
    )
    want = nsa_selection.block_importance(
        q, jnp.moveaxis(lse, 1, 2), k_cmp, pos, **NSA, num_blocks=nb, scale=scale
    )
    want = np.asarray(jnp.moveaxis(want, 1, 2))
    np.testing.assert_allclose(np.asarray(fn(q, k_cmp, lse)), want, rtol=2e-2, atol=2e-3)


@pytest.mark.gpu
def test_nsa_select_through_the_kernel_on_the_gpu():
    """At 8k tokens with NSA's defaults: the kernel's blocks agree with the attention calls'
    up to near-ties."""
    from jaxsparse.ops import config as config_lib

    t = 8192
    q, k_cmp, lse, scale, nb, _ = _inputs(t, 16, 2, 128, 0, seed=2)
    kw = dict(kv_len=t, **NSA, top_n=16, init_blocks=1, local_blocks=2, scale=scale, q_offset=0)
    off = config_lib.Config(gpu_importance_kernel=False)
    fused = jax.jit(lambda *a: nsa_selection.nsa_select(*a, **kw))(q, k_cmp, lse)  # the default
    calls = jax.jit(lambda *a: nsa_selection.nsa_select(*a, **kw, config=off))(q, k_cmp, lse)
    fused, calls = np.asarray(fused), np.asarray(calls)
    assert (fused.sum(-1) == np.minimum(16, np.arange(t) // 64 + 1)[None, None]).all()
    assert (fused != calls).mean() < 0.01
