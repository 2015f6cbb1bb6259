"""Vertical-slash masks on the GPU kernels (`ops.bitmaps`): diagonal/key bitmaps, gathered keys.

Interpret mode on CPU (GPU interpret mode with the race detector) against the
dense f32 oracle of the exact element mask: output, lse and every gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsparse as js
from jaxsparse import patterns as P
from jaxsparse.ops import bitmaps
from jaxsparse.patterns.dynamic import position_causal, vertical_slash, vertical_slash_mask
from pallas_kernels.gpu import api as kernels
from pallas_kernels.gpu import bitmaps as kernel_bitmaps
from tests import dynamic_refs as R
from tests.test_dynamic_minference import vertical_slash_mask_np


@pytest.fixture
def spy_bitmaps(monkeypatch):
    """The patterns the bitmap path ran."""
    seen = []
    run = bitmaps.run

    def spy(call):
        seen.append(type(call.pattern).__name__)
        return run(call)

    monkeypatch.setattr(bitmaps, "run", spy)
    return seen


def random_selection(rng, b, h, s, p_vert, p_slash, *, main_diagonal):
    vert = rng.random((b, h, s)) < p_vert
    slash = rng.random((b, h, s)) < p_slash
    slash[..., 0] = main_diagonal  # kept: no row is empty; dropped: the first rows may be
    return vert, slash


def check_mask(t, s, *, h, d, include_vertical, density, config, seed):
    """`VerticalSlashMask` on the kernels against the dense f32 oracle of its exact mask.

    Returns the mask. `density`: the chance of a kept column and of a kept diagonal.
    """
    rng = np.random.default_rng(seed)
    vert, slash = random_selection(rng, 1, h, s, *density, main_diagonal=include_vertical)
    q_offset = s - t
    if include_vertical:
        mask = vertical_slash_mask_np(vert, slash, t, s, q_offset)
    else:  # the diagonals minus the columns
        mask = vertical_slash_mask_np(np.zeros_like(vert), slash, t, s, q_offset)
        mask &= ~vert[:, :, None, :]
    pattern = vertical_slash_mask.VerticalSlashMask(
        jnp.asarray(vert), jnp.asarray(slash), include_vertical=include_vertical
    )
    q, k, v, cot = R.random_qkv(1, t, h, 2, d, s=s, seed=seed + 1, dtype=jnp.bfloat16)
    assert_kernels_give_the_mask(js.attention, pattern, mask, config, q, k, v, cot)
    return mask


def assert_kernels_give_the_mask(attend, pattern, mask, config, q, k, v, cot):
    """`attend(..., pattern=pattern)` on the kernels against the dense f32 oracle of `mask`:
    output, lse and every gradient."""
    R.assert_close_to_ref(
        lambda q, k, v: attend(
            q, k, v, pattern=pattern, implementation="pallas_gpu", config=config,
            return_lse=True,
        ),
        lambda q, k, v: R.dense_ref(q, k, v, jnp.asarray(mask)),
        q, k, v, cot, tol=2e-2,
    )  # fmt: skip


@pytest.mark.parametrize(
    "t, s, block, include_vertical",
    [
        (150, 200, 64, True),  # chunked prefill (q_offset 50), ragged tiles, 64-key tiles
        (130, 130, 128, False),  # the diagonal part of the gathered form: columns excluded
    ],
)
def test_vertical_slash_mask_on_the_kernels(t, s, block, include_vertical, spy_bitmaps):
    config = js.Config(interpret=True, block_q=block, block_kv=block)
    mask = check_mask(
        t, s, h=4, d=64, include_vertical=include_vertical, density=(0.05, 0.08),
        config=config, seed=3,
    )  # fmt: skip
    assert spy_bitmaps == ["VerticalSlashMask"]
    if not include_vertical:
        assert (~mask.any(-1)).any(), "the case should include rows that attend nothing"


def check_gathered(pattern, *, t, h, d, config, seed):
    """`vertical_slash_attention` (self-attention) against the dense f32 oracle of its mask."""
    q, k, v, cot = R.random_qkv(1, t, h, 2, d, s=t, seed=seed, dtype=jnp.bfloat16)
    fields = ("vertical_size", "slash_size", "last_q", "init_columns", "local_diagonals")
    vert, slash = R.jitted(
        vertical_slash.vertical_slash_select,
        q,
        k,
        q_offset=0,
        **{name: getattr(pattern, name) for name in fields},
    )
    mask = vertical_slash_mask_np(np.asarray(vert), np.asarray(slash), t, t, 0)
    assert_kernels_give_the_mask(js.vertical_slash_attention, pattern, mask, config, q, k, v, cot)


def test_gathered_vertical_slash_on_the_kernels(spy_bitmaps):
    """`vertical_slash_attention`: both parts on the kernels, merged, equal the exact mask."""
    pattern = P.VerticalSlash(
        vertical_size=9, slash_size=7, last_q=16, init_columns=2, local_diagonals=3
    )
    config = js.Config(interpret=True, block_q=64, block_kv=64)
    check_gathered(pattern, t=140, h=4, d=64, config=config, seed=6)
    assert sorted(set(spy_bitmaps)) == ["PositionCausal", "VerticalSlashMask"]


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 70),
    tp=st.sampled_from([64, 128]),
    sp=st.sampled_from([64, 192]),
    q_offset=st.integers(0, 70),
    seed=st.integers(0, 2**16),
)
def test_diagonal_bitmaps_hold_the_kept_offsets(n, tp, sp, q_offset, seed):
    """Bit `k - q + pad` (query-row tiles) and `q - k + pad` (key-row tiles) of every pair."""
    diag = np.random.default_rng(seed).random((1, 2, n)) < 0.5
    pads, fwd, dkv, _ = kernel_bitmaps.pack(
        jnp.asarray(diag), None, "or", B=1, H=2, Tp=tp, Sp=sp, q_offset=q_offset
    )
    bits = {
        name: np.unpackbits(np.asarray(w).view(np.uint8), bitorder="little").reshape(1, 2, -1)
        for name, w in (("fwd", fwd), ("dkv", dkv))
    }
    qpos = q_offset + np.arange(tp)[:, None]
    kpos = np.arange(sp)[None, :]
    o = qpos - kpos
    want = (o >= 0) & (o < n) & np.take(diag, np.clip(o, 0, n - 1), axis=-1)
    np.testing.assert_array_equal(bits["fwd"][..., kpos - qpos + pads[0]], want)
    np.testing.assert_array_equal(bits["dkv"][..., qpos - kpos + pads[1]], want)


def test_position_causal_needs_a_key_head_per_query_head():
    positions = jnp.arange(64, dtype=jnp.int32)[None, None].repeat(4, 1)
    q, k, v, _ = R.random_qkv(1, 64, 4, 2, 64, s=64, seed=1, dtype=jnp.bfloat16)
    with pytest.raises(NotImplementedError, match="one gathered key head per query head"):
        js.attention(
            q,
            k,
            v,
            pattern=position_causal.PositionCausal(positions),
            implementation="pallas_gpu",
            config=js.Config(interpret=True),
        )


@pytest.mark.gpu
@pytest.mark.parametrize("include_vertical", [True, False])
def test_vertical_slash_mask_on_the_gpu(include_vertical):
    """Both bitmap modes on a Hopper GPU at 4k, default tiles, against the dense f32 oracle."""
    check_mask(
        4096, 4096, h=8, d=128, include_vertical=include_vertical, density=(0.01, 0.02),
        config=js.Config(), seed=7,
    )  # fmt: skip


@pytest.mark.gpu
def test_gathered_vertical_slash_on_the_gpu():
    """MInference's defaults at 8k: both parts on the kernels equal the exact mask."""
    check_gathered(P.VerticalSlash(), t=8192, h=4, d=128, config=js.Config(), seed=9)


@pytest.mark.parametrize("mode", ["or", "exclude", "positions"])
def test_kernels_lower_for_a_gpu(mode):
    """Mosaic GPU's lowering (run on CPU for the cuda platform) takes every bitmap mode.

    Interpret mode does not lower the kernels: a construct Mosaic GPU cannot
    lower (a boolean not of a 2-element vector did, in the dK/dV kernel's key
    mask) passes there and fails only on the GPU; lowering here catches it.
    """
    from jaxsparse.ops import pallas_gpu

    b, t, h, d = 1, 256, 2, 128
    q = jnp.zeros((b, t, h, d), jnp.bfloat16)
    k = jnp.zeros((b, t, 1, d), jnp.bfloat16)
    lse = jnp.zeros((b, h, t), jnp.float32)
    tb = t // 128
    lists = (
        jnp.broadcast_to(jnp.arange(tb, dtype=jnp.int32), (1, 1, tb, tb)),
        jnp.full((1, 1, tb), tb, jnp.int32),
        jnp.zeros((1, 1, tb, tb), bool),
    )
    if mode == "positions":
        ids = jnp.zeros((b, t), jnp.int32)
        kw = dict(q_segment_ids=ids, kv_segment_ids=ids, segments_le=True)
    else:
        kw = dict(
            diagonals=jnp.ones((1, h, t), bool),
            key_columns=jnp.ones((1, h, t), bool),
            key_columns_mode=mode,
        )

    def fwd(q, k):
        return kernels.block_sparse_attention_fwd(q, k, k, *lists, **kw)

    def bwd(q, k):
        return kernels.block_sparse_attention_bwd(q, k, k, q, lse, q, None, *lists, *lists, **kw)

    with pallas_gpu.interpret_context(True):  # an abstract H100 for the architecture queries
        for f in (fwd, bwd):
            jax.jit(f).trace(q, k).lower(lowering_platforms=("cuda",))


def test_bitmaps_leave_what_the_backward_kernels_cannot_take_to_xla():
    """Head dims over the backward kernels' D + Dv <= 256, or segment ids: not this path."""
    from jaxsparse.ops import call as call_lib

    def call(d, segments=False):
        q, k, v, _ = R.random_qkv(1, 64, 2, 2, d, s=64, seed=1, dtype=jnp.bfloat16)
        ids = jnp.zeros((1, 64), jnp.int32) if segments else None
        pattern = vertical_slash_mask.VerticalSlashMask(
            jnp.ones((1, 2, 64), bool), jnp.ones((1, 2, 64), bool)
        )
        return call_lib.Call(
            q=q, k=k, v=v, pattern=pattern, sparsity=None, q_segment_ids=ids,
            kv_segment_ids=ids, scale=1.0, logits_soft_cap=None, q_offset=0,
            config=js.Config(),
        )  # fmt: skip

    assert bitmaps.applies(call(128))
    assert not bitmaps.applies(call(192))
    assert not bitmaps.applies(call(128, segments=True))
