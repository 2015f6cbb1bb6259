"""`implementation="pallas_gpu"` through the public API, in Mosaic GPU interpret mode on CPU.

The kernels themselves are tested in test_pallas_gpu_interpret.py; this checks
the wiring (padding, metadata, segment refinement, custom_vjp, the XLA
backward fallback) against the oracle, forward and every gradient.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse import patterns as P
from tests import oracle

bf16 = jnp.bfloat16


def C(pattern, **kw):  # noqa: N802 - reads like a constructor
    base = dict(b=1, t=130, h=2, k=1, d=64, dtype=bf16, block=64, interpret=True)
    return oracle.Case(pattern, **{**base, **kw})


CASES = [
    C(P.Causal() & P.SlidingWindow(left=40, right=9), segments=True),
    C(P.PerHead([P.Causal(), P.ChunkedCausal(48)]), soft_cap=4.0, t=70, s=150),
    C(
        P.BlockMask(np.array([[True, False, True], [False, True, True]]), block_q=64, block_kv=64),
        t=128,
        s=150,
        h=4,
        k=2,
    ),
    C(P.Causal(), d=64, dv=192, t=64),  # backward runs on the XLA path (D + Dv > 256)
    # Grid rules through mask_factors (per-row key intervals), no key padding.
    C(P.Neighborhood((8, 16), (3, 5), tile=64), t=128),
    C(
        P.Neighborhood(
            (2, 8, 8), (2, 3, 3), dilation=(1, 2, 1), causal=(True, False, False), tile=64
        ),
        t=128,
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_oracle(case):
    oracle.assert_matches_oracle(case, "pallas_gpu")


@pytest.mark.parametrize("case", CASES[:1], ids=lambda c: c.id)
def test_matches_oracle_smoke(case):
    oracle.assert_matches_oracle(case, "pallas_gpu")


@pytest.mark.slow
def test_caller_tables_with_segments():
    # Caller-given tables know nothing of the documents: full tiles must still mask them.
    case = C(P.Full(), t=128, segments=True)
    q, k, v, kwargs, cot = oracle.inputs(case)
    sp = js.sparsity.from_pattern(P.Full(), q_len=128, kv_len=128, block_q=64, block_kv=64)
    got = js.attention(q, k, v, sparsity=sp, implementation="pallas_gpu", **kwargs)
    want = js.attention(q, k, v, sparsity=sp, implementation="reference", **kwargs)
    assert oracle.rel_err(got, want) < oracle.TOLERANCE[bf16]


@pytest.mark.parametrize(
    "option, attr, value",
    [
        ("gpu_dkv_split_heads", "split_heads", False),
        ("gpu_dkv_split_heads", "split_heads", True),
        ("gpu_dkv_q_split", "q_split", False),
        ("gpu_dkv_list_splits", "list_splits", 3),
    ],
)
def test_gqa_dkv_split_option(option, attr, value, dkv_shapes):
    """`Config`'s dK/dV options reach the backward kernel; each way matches the oracle."""
    config = js.Config(block_q=64, block_kv=64, interpret=True, **{option: value})
    assert_matches_oracle_with(C(P.Causal(), t=128, h=4, k=2), config)
    assert [getattr(sh, attr) for sh in dkv_shapes] == [value]


def assert_matches_oracle_with(case, config):
    """Output, lse and every gradient of `case` on the kernels with `config` against the
    f32 oracle."""
    q, k, v, kwargs, cot = oracle.inputs(case)
    kwargs["config"] = config
    got = oracle.outputs_and_grads("pallas_gpu", q, k, v, kwargs, cot)
    q32, k32, v32 = (x.astype(jnp.float32) for x in (q, k, v))
    want = oracle.outputs_and_grads("reference", q32, k32, v32, kwargs, cot)
    for name, a, b in zip(oracle.NAMES, got, want, strict=True):
        limit = oracle.TOLERANCE[bf16] * (1 if name in ("out", "lse") else 2)
        assert oracle.rel_err(a, b) <= limit, name


@pytest.mark.parametrize(
    "requested, b, h, k, kv_blocks, list_splits, q_steps, want",
    [
        (None, 1, 16, 2, 32, 1, 512, True),  # NSA's compressed keys at 64k: 64 CTAs per kv head
        (None, 1, 16, 2, 512, 1, 5, False),  # a 64k sliding window: 1,024 CTAs, 40 steps
        (None, 1, 16, 2, 128, 1, 5, False),  # a 16k sliding window: 256 CTAs, 40 steps
        (None, 1, 16, 2, 128, 1, 128, True),  # dense causal at 16k: 1,024 steps per kv head
        (None, 1, 16, 2, 64, 2, 5, False),  # 256 CTAs with the list splits: not below 256
        (None, 1, 16, 2, 512, 4, 128, False),  # lists in 4: 8 * 32 = 256 steps, not above
        (None, 1, 16, 2, 512, 4, 132, True),  # 8 * 33 = 264 steps
        (None, 1, 16, 16, 4, 1, 512, False),  # no group to split
        (True, 1, 16, 2, 512, 1, 5, True),
        (False, 1, 16, 2, 4, 1, 512, False),
    ],
)
def test_dkv_split_heads_default(requested, b, h, k, kv_blocks, list_splits, q_steps, want):
    from pallas_kernels.gpu import api_backward

    got = api_backward._split_heads(
        requested, B=b, H=h, K=k, kv_blocks=kv_blocks, list_splits=list_splits, q_steps=q_steps
    )
    assert got is want


@pytest.mark.parametrize(
    "requested, ctas, q_steps, want",
    [
        (None, 16 * 32, 512, 4),  # NSA's compressed keys at 64k: 512 CTAs, lists up to 512
        (None, 2 * 512, 5, 1),  # a 64k sliding window: 1,024 CTAs of 5 q tiles
        (None, 16 * 512, 512, 1),  # dense causal at 64k: 8,192 CTAs
        (None, 16 * 8, 128, 1),  # NSA's compressed keys at 16k: lists of 128 at most
        (None, 16 * 4, 4096, 8),  # at most MAX_LIST_SPLITS
        (None, 1023, 129, 2),
        (3, 16 * 512, 512, 3),  # asked for: kept
        (1, 16 * 32, 512, 1),
    ],
)
def test_dkv_list_splits_default(requested, ctas, q_steps, want):
    from pallas_kernels.gpu import api_backward

    assert api_backward._list_splits(requested, ctas=ctas, q_steps=q_steps) == want


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_dkv_list_splits_rejects_bad_values(bad):
    from pallas_kernels.gpu import api_backward

    with pytest.raises(ValueError, match="dkv_list_splits must be a positive int"):
        api_backward._list_splits(bad, ctas=1, q_steps=1)


@pytest.mark.parametrize("config_splits, want", [(None, 2), (1, 1)])
def test_dkv_list_splits_by_default_match_the_oracle(config_splits, want, dkv_shapes, monkeypatch):
    """With no `Config.gpu_dkv_list_splits`, long lists are split (LIST_STEPS lowered so
    that a small case has them) and every gradient still matches the oracle; asking
    for 1 keeps whole lists."""
    from pallas_kernels.gpu import api_backward

    monkeypatch.setattr(api_backward, "LIST_STEPS", 1)  # 2 q tiles a list: 2 splits
    config = js.Config(block_q=64, block_kv=64, interpret=True, gpu_dkv_list_splits=config_splits)
    assert_matches_oracle_with(C(P.Causal(), t=128, h=4, k=2), config)
    assert [sh.list_splits for sh in dkv_shapes] == [want]


def test_unsupported_inputs_raise_not_implemented():
    q = jnp.ones((1, 64, 2, 64), jnp.float32)
    cfg = js.Config(interpret=True)
    with pytest.raises(NotImplementedError, match="bfloat16 or float16"):
        js.attention(q, q, q, implementation="pallas_gpu", config=cfg)
    q = jnp.ones((1, 64, 2, 48), bf16)
    with pytest.raises(NotImplementedError, match="multiple of 64"):
        js.attention(q, q, q, implementation="pallas_gpu", config=cfg)
    q = jnp.ones((1, 64, 2, 64), bf16)
    with pytest.raises(NotImplementedError, match="holds arrays"):
        js.attention(
            q,
            q,
            q,
            pattern=P.Mask(np.ones((64, 64), bool)),
            implementation="pallas_gpu",
            config=cfg,
        )


def test_without_a_gpu_the_default_is_the_xla_path():
    q = jnp.ones((1, 8, 2, 64), bf16)
    with pytest.raises(NotImplementedError, match="Hopper"):
        js.attention(q, q, q, implementation="pallas_gpu")
    assert js.attention(q, q, q).shape == (1, 8, 2, 64)  # falls back, no error


def test_dq_in_dkv_option_skips_the_dq_kernel(dkv_shapes, monkeypatch):
    """`Config(gpu_dq_in_dkv=True)`: the dK/dV kernel gives dQ (no dQ kernel runs); every
    gradient matches the oracle."""
    from pallas_kernels.gpu import backward_dq

    monkeypatch.setattr(backward_dq, "dq_call", None)  # calling it would fail
    config = js.Config(block_q=64, block_kv=128, interpret=True, gpu_dq_in_dkv=True)
    assert_matches_oracle_with(C(P.Causal() & P.SlidingWindow(left=70), t=130, h=4, k=2), config)
    assert [sh.with_dq for sh in dkv_shapes] == [True]
    with pytest.raises(TypeError, match="gpu_dq_in_dkv must be True or False"):
        js.Config(gpu_dq_in_dkv=None)


@pytest.mark.parametrize(
    "block_kv, d, dv, dq_kernel, registers",
    [(128, 128, 128, False, None), (128, 128, 128, False, (240, 24)),
     (64, 128, 128, False, None), (128, 192, 64, True, None)],
)  # fmt: skip
def test_dq_in_dkv_lowers_for_a_gpu(block_kv, d, dv, dq_kernel, registers, monkeypatch):
    # Interpret mode runs the logic, not the Mosaic GPU lowering of the dK/dV kernel's
    # dS^T tiles, transposed dQ wgmma, staging and TMA reduce-adds (128-key blocks: two
    # warpgroups on one step; 64-key blocks: alternate steps, staging shared with the
    # sums): lower the whole backward for CUDA. At head dim 192 the staging does not fit
    # in SMEM beside the rest, and the dQ kernel runs instead.
    import jax

    from jaxsparse.ops import pallas_gpu
    from pallas_kernels.gpu import backward_dkv

    monkeypatch.setattr(pallas_gpu, "check_device", lambda interpret: None)
    monkeypatch.setattr(backward_dkv, "DQ_REGISTERS", registers)  # (240, 24): not yet run
    q = jnp.zeros((1, 256, 4, d), bf16)
    k = jnp.zeros((1, 256, 2, d), bf16)
    v = jnp.zeros((1, 256, 2, dv), bf16)
    config = js.Config(block_q=128, block_kv=block_kv, gpu_dq_in_dkv=True)

    def loss(q, k, v):
        out = js.attention(q, k, v, pattern=P.Causal(), implementation="pallas_gpu", config=config)
        return out.astype(jnp.float32).sum()

    with pallas_gpu.interpret_context(True):  # an abstract H100 for the architecture queries
        lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, k, v)
        text = lowered.lower(lowering_platforms=("cuda",)).as_text()
    assert "jaxsparse_attention_dkv" in text
    assert ("jaxsparse_attention_dq" in text) == dq_kernel


def test_block_mask_and_causal_lower_for_a_gpu(monkeypatch):
    # `BlockMask & Causal()` on the Mosaic GPU kernels: the BlockMask drops out inside its
    # tiles, and the kernels take Causal()'s mask and factors (forward and backward).
    import jax

    from jaxsparse.ops import pallas_gpu

    monkeypatch.setattr(pallas_gpu, "check_device", lambda interpret: None)
    q = jnp.zeros((1, 256, 2, 64), bf16)
    pattern = P.BlockMask(np.array([[True, False], [True, True]]), 128, 128) & P.Causal()

    def loss(q, k, v):
        out = js.attention(q, k, v, pattern=pattern, implementation="pallas_gpu")
        return out.astype(jnp.float32).sum()

    with pallas_gpu.interpret_context(True):
        lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, q, q)
        text = lowered.lower(lowering_platforms=("cuda",)).as_text()
    assert "jaxsparse_attention_fwd" in text and "jaxsparse_attention_dkv" in text


def test_dq_in_dkv_under_vmap_matches_each_call():
    """The dK/dV kernel's float32 dQ is a `jax.new_ref` it adds into in place: under vmap
    each batch element must add into its own (interpret mode)."""
    import jax

    config = js.Config(block_q=64, block_kv=64, interpret=True, gpu_dq_in_dkv=True)
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (2, 1, 64, 2, 64), bf16)
    k, v = (jax.random.normal(x, (1, 64, 1, 64), bf16) for x in keys[1:3])
    cot = jax.random.normal(keys[3], (1, 64, 2, 64), jnp.float32)

    def grad_q(q):
        def loss(q):
            out = js.attention(
                q, k, v, pattern=P.Causal(), implementation="pallas_gpu", config=config
            )
            return (out.astype(jnp.float32) * cot).sum()

        return jax.grad(loss)(q)

    batched = jax.jit(jax.vmap(grad_q))(q)
    for i in range(2):
        each = jax.jit(grad_q)(q[i])
        np.testing.assert_allclose(
            np.asarray(batched[i], np.float32), np.asarray(each, np.float32), atol=1e-2
        )
        assert float(jnp.abs(each.astype(jnp.float32)).max()) > 0
