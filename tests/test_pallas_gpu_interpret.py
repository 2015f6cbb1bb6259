"""Mosaic GPU block-sparse attention kernels under GPU interpret mode (CPU).

Runs pallas_kernels.gpu forward and backward on tiny shapes with the race
detector on, against a dense f32 reference built from an explicit boolean
mask (the same mask_fn the kernels evaluate in partial tiles). The
interpreted program differs from the GPU one only in the register-LHS wgmma
idiom, which interpret mode cannot run (P and dS are staged through SMEM).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.gpu import api, reference, tables

try:
    from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call as _mi
except ImportError:  # pragma: no cover - private module moved
    _mi = None


dense_mask = reference.dense_mask


# ---------------------------------------------------------------- cases


def causal(qp, kp, h):
    return kp <= qp


def window(left):
    def f(qp, kp, h):
        return (kp <= qp) & (qp - left <= kp)

    return f


def causal_with_dead_rows(qp, kp, h):
    # Rows with q % 7 == 3 see nothing: fully masked rows inside live tiles.
    return (kp <= qp) & (qp % 7 != 3)


def per_head_mask(qp, kp, h):
    # Head 0: causal; head 1: causal window of 48 keys.
    return (kp <= qp) & ((h == 0) | (qp - 48 <= kp))


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    mask_fn: object = causal
    B: int = 1
    H: int = 2
    K: int = 1
    T: int = 256
    S: int = 256
    D: int = 64
    Dv: int = 64
    block_q: int = 128
    block_kv: int = 64
    dtype: str = "bfloat16"
    q_offset: int = 0
    kv_len: int | None = None
    cap: float | None = None
    segments: bool = False
    segments_on_full_tiles: bool = True
    per_head_tables: bool = False
    random_blocks: bool = False  # block mask with all-full tiles
    persistent: bool | None = None
    num_ctas: int | None = 3  # persistent: fewer CTAs than tiles
    bwd: bool = True
    dkv_split_heads: bool | None = None  # None: one dK/dV CTA per query head when H > K
    dkv_q_split: bool | None = None  # None: two dK/dV warpgroups share 64-key blocks
    dkv_list_splits: int = 1  # CTAs sharing one kv block's q list
    word_rows: int = 0  # > 0: random row words (per-token selections), this many rows per bit
    dq_in_dkv: bool = False  # dQ from the dK/dV kernel's adds, no dQ kernel


CASES = [
    Case("causal-gqa"),  # H=2, K=1: dK/dV per query head, shares summed
    Case("causal-gqa-dkv-per-kv-head", dkv_split_heads=False, persistent=False),
    Case("causal-dkv-one-warpgroup", dkv_q_split=False, bwd=True, H=1),
    Case("causal-one-tile-per-cta", persistent=False, bwd=False),
    Case("window", mask_fn=window(96), block_kv=128, K=2),
    Case("segments", segments=True),
    Case("segments-in-tables", segments=True, segments_on_full_tiles=False),
    Case("random-blocks-1wg", mask_fn=None, random_blocks=True, block_q=64),
    Case("softcap", cap=5.0, dtype="float16"),
    Case("dead-rows", mask_fn=causal_with_dead_rows),
    Case(
        "per-head-pad-offset",
        mask_fn=per_head_mask,
        per_head_tables=True,
        T=128,
        S=256,
        kv_len=200,
        q_offset=64,
    ),
    Case("dv128", D=64, Dv=128, H=1, T=128, S=128),
    Case("row-words", word_rows=16),
    Case("dkv-list-splits-gqa", dkv_list_splits=3, dkv_split_heads=False, K=1, H=2),
    Case("dkv-list-splits-one-wg", dkv_list_splits=2, dkv_q_split=False, word_rows=16),
    Case("row-words-1wg-offset", word_rows=8, block_q=64, q_offset=64, S=320, persistent=False),
    # dQ by the dK/dV kernel: two warpgroups on alternate steps (q_split); two on one
    # step (128-key blocks: they hand over before adding), a CTA per kv head; one
    # warpgroup, its list split in two.
    Case("dq-in-dkv-gqa", dq_in_dkv=True, bwd=True),
    Case(
        "dq-in-dkv-window-heads",  # two query heads per CTA: each head's rows added in turn
        mask_fn=window(96),
        block_kv=128,
        H=4,
        K=2,
        dkv_split_heads=False,
        dq_in_dkv=True,
    ),  # fmt: skip
    Case(
        "dq-in-dkv-list-splits", dkv_list_splits=2, dkv_q_split=False, word_rows=16, dq_in_dkv=True
    ),
    # Head dim 128 on 128-key blocks: each warpgroup gives half of dQ's columns from
    # both warpgroups' dS^T tiles (FA3's split), double-buffered by step parity.
    Case("dq-in-dkv-split-columns", D=128, Dv=128, block_kv=128, H=2, K=2, dq_in_dkv=True),
]


def _setup(case: Case, seed=0):
    dt = jnp.dtype(case.dtype)
    B, H, K, T, S = case.B, case.H, case.K, case.T, case.S
    kv_len = S if case.kv_len is None else case.kv_len
    rng = np.random.default_rng(seed)
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (B, T, H, case.D), dt)
    k = jax.random.normal(ks[1], (B, S, K, case.D), dt)
    v = jax.random.normal(ks[2], (B, S, K, case.Dv), dt)
    qseg = kvseg = None
    if case.segments:
        # Sorted segment ids (packed documents) with a few boundaries.
        qseg = np.sort(rng.integers(0, 3, (B, T))).astype(np.int32)
        kvseg = qseg if S == T else np.sort(rng.integers(0, 3, (B, S)))
    mask_fn = case.mask_fn
    if case.random_blocks:
        nq, nk = T // case.block_q, S // case.block_kv
        bm = rng.random((nq, nk)) < 0.4
        bm[np.arange(min(nq, nk)), np.arange(min(nq, nk))] = True
        bm[0] = False  # a q block with an empty list
        dense = np.repeat(np.repeat(bm, case.block_q, 0), case.block_kv, 1)
        mask = np.broadcast_to(dense, (B, H, T, S))
        kind = np.where(bm, 2, 0).astype(np.int8)[None, None]
    else:
        mask = dense_mask(mask_fn, B, H, T, S, case.q_offset, kv_len)
        hsel = slice(None) if case.per_head_tables else slice(0, 1)
        kind = tables.kind_from_dense(mask[:1, hsel], case.block_q, case.block_kv)
    words = None
    if case.word_rows:
        mask, kind, words = _row_words(case, rng, mask)
    if qseg is not None:
        seg_mask = np.asarray(qseg)[:, None, :, None] == np.asarray(kvseg)[:, None, None, :]
        mask = mask & seg_mask
        if not case.segments_on_full_tiles:
            # Tables that know the segments: mixed tiles become partial, tiles with
            # no same-segment pair become empty.
            kind = tables.kind_from_dense(
                mask[:, :1] if not case.per_head_tables else mask, case.block_q, case.block_kv
            )
    (kv_tabs, q_tabs) = tables.all_tables(kind)
    if words is not None:  # each list entry's word: tile (q block, kv block)
        kv_tabs += (np.take_along_axis(words[None, None], kv_tabs[0], -1),)
        q_tabs += (np.take_along_axis(words.T[None, None], q_tabs[0], -1),)
    return dict(
        q=q,
        k=k,
        v=v,
        qseg=qseg,
        kvseg=kvseg,
        mask=mask,
        kv_len=kv_len,
        kv_tabs=kv_tabs,
        q_tabs=q_tabs,
    )


def _row_words(case: Case, rng, mask):
    """Random row words per (q block, kv block) tile, with the mask and tile kinds they give.

    Bit i of a tile's word covers its rows [i * word_rows, (i + 1) * word_rows)
    (rows counted from 0, q_offset not included). Tile (0, 0) selects every row
    (full where the mask is).
    """
    bq, bk, n = case.block_q, case.block_kv, case.block_q // case.word_rows
    nq, nk = case.T // bq, case.S // bk
    on = rng.random((nq, nk, n)) < 0.6
    on[0, 0] = True
    words = (on * (1 << np.arange(n))).sum(-1).astype(np.int32)  # [nq, nk]
    rows = np.repeat(on, case.word_rows, axis=2).transpose(0, 2, 1).reshape(case.T, nk)
    mask = mask & np.repeat(rows, bk, axis=1)[None, None]
    hsel = slice(None) if case.per_head_tables else slice(0, 1)
    return mask, tables.kind_from_dense(mask[:1, hsel], bq, bk), words


def _interpret():
    return plgpu.InterpretGPUParams(detect_races=True)


def _abstract_gpu():
    dev = jax.sharding.AbstractDevice(
        device_kind="NVIDIA H100 80GB HBM3", platform="gpu", num_cores=8
    )
    return jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=dev))


def _kw(case: Case, d):
    return dict(
        mask_fn=case.mask_fn,
        q_offset=case.q_offset,
        kv_len=d["kv_len"],
        scale=case.D**-0.5,
        logits_soft_cap=case.cap,
        block_q=case.block_q,
        block_kv=case.block_kv,
        segments_on_full_tiles=case.segments_on_full_tiles,
        persistent=case.persistent,
        num_ctas=case.num_ctas,
        interpret=_interpret(),
    ) | (dict(word_rows=case.word_rows) if case.word_rows else {})


def _tol(dtype):
    return 1e-2 if jnp.dtype(dtype) == jnp.bfloat16 else 2e-3


def _rel_err(x, ref):
    x = np.asarray(x, np.float32)
    ref = np.asarray(ref, np.float32)
    assert np.isfinite(x).all(), "non-finite values"
    return np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-6)


def _races_found():
    return _mi is not None and _mi.get_races().races_found


# The f32 oracle, jitted once per shape (eager, each of its ops compiles anew: slow on CPU).
_reference_fwd = jax.jit(reference.attention_reference, static_argnums=(4, 5))


@functools.partial(jax.jit, static_argnums=(4, 5))
def _reference_grads(q, k, v, mask, scale, cap, dout, dlse):
    loss = functools.partial(
        reference.reference_loss, mask=mask, scale=scale, logits_soft_cap=cap, dout=dout, dlse=dlse
    )
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)


# ---------------------------------------------------------------- tests


def _races_outside_modelled_adds(printed: str) -> list[str]:
    """The race reports (printed by the detector) that involve anything but the interpret
    twin of a TMA reduce-add (`backward_dkv_step.read_add_write`: a read, an add and a write
    back, which the detector rightly calls a race and the GPU does atomically)."""
    reports = printed.split("RACE DETECTED")[1:]
    return [r for r in reports if r.count("(read_add_write)") < 2]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_forward_and_backward(case: Case, capsys):
    d = _setup(case)
    q, k, v = d["q"], d["k"], d["v"]
    kw = _kw(case, d)
    seg = {}
    if d["qseg"] is not None:
        seg = dict(q_segment_ids=jnp.asarray(d["qseg"]), kv_segment_ids=jnp.asarray(d["kvseg"]))
    kv_tabs = tuple(map(jnp.asarray, d["kv_tabs"]))
    q_tabs = tuple(map(jnp.asarray, d["q_tabs"]))
    words = {}
    if case.word_rows:  # the lists' fourth member
        words = dict(kv_words=kv_tabs[3], q_words=q_tabs[3])
        kv_tabs, q_tabs = kv_tabs[:3], q_tabs[:3]

    def fwd(q, k, v):
        return api.block_sparse_attention_fwd(
            q, k, v, *kv_tabs, **seg, **kw, **({"kv_words": words["kv_words"]} if words else {})
        )

    with _abstract_gpu():
        out, lse = jax.jit(fwd)(q, k, v)
        out, lse = np.asarray(out), np.asarray(lse)
    assert not _races_found()
    ref_out, ref_lse = _reference_fwd(q, k, v, d["mask"], case.D**-0.5, case.cap)
    assert _rel_err(out, ref_out) < _tol(case.dtype)
    dead = ~d["mask"].any(-1)  # [B, H, T]
    assert np.all(np.isneginf(lse[dead]))
    np.testing.assert_allclose(lse[~dead], np.asarray(ref_lse)[~dead], atol=2e-2, rtol=2e-2)
    assert np.all(out.transpose(0, 2, 1, 3)[dead] == 0)

    if not case.bwd:
        return
    ks = jax.random.split(jax.random.key(7), 2)
    dout = jax.random.normal(ks[0], out.shape, q.dtype)
    dlse = jnp.where(jnp.asarray(dead), 0.0, jax.random.normal(ks[1], lse.shape, jnp.float32))

    def bwd(q, k, v, out, lse, dout, dlse):
        return api.block_sparse_attention_bwd(
            q,
            k,
            v,
            out,
            lse,
            dout,
            dlse,
            *kv_tabs,
            *q_tabs,
            **seg,
            **kw,
            **words,
            dkv_split_heads=case.dkv_split_heads,
            dkv_q_split=case.dkv_q_split,
            dkv_list_splits=case.dkv_list_splits,
            dq_in_dkv=case.dq_in_dkv,
        )

    capsys.readouterr()
    with _abstract_gpu():
        dq, dk, dv = jax.jit(bwd)(q, k, v, jnp.asarray(out), jnp.asarray(lse), dout, dlse)
        dq, dk, dv = map(np.asarray, (dq, dk, dv))
    if case.dq_in_dkv:
        assert not _races_outside_modelled_adds(capsys.readouterr().out)
    else:
        assert not _races_found()

    q32, k32, v32 = (x.astype(jnp.float32) for x in (q, k, v))
    rq, rk, rv = _reference_grads(q32, k32, v32, d["mask"], case.D**-0.5, case.cap, dout, dlse)
    for name, got, want in (("dq", dq, rq), ("dk", dk, rk), ("dv", dv, rv)):
        err = _rel_err(got, want)
        assert err < 2 * _tol(case.dtype), f"{name}: rel err {err:.3g}"


def test_unsupported_inputs_raise_not_implemented():
    q = jnp.zeros((1, 128, 1, 64), jnp.float32)
    tabs = (
        jnp.zeros((1, 1, 1, 1), jnp.int32),
        jnp.ones((1, 1, 1), jnp.int32),
        jnp.ones((1, 1, 1, 1), bool),
    )
    with pytest.raises(NotImplementedError, match="bfloat16"):
        api.block_sparse_attention_fwd(q, q, q, *tabs)
    q = jnp.zeros((1, 128, 1, 96), jnp.bfloat16)
    with pytest.raises(NotImplementedError, match="multiple of 64"):
        api.block_sparse_attention_fwd(q, q, q, *tabs)
