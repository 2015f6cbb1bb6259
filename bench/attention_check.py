"""The attention bench's `check` mode: our kernels, forward and gradients, against a
dense float32 oracle in many variants (`python bench/attention_gpu.py check OUT_DIR`).
"""

from __future__ import annotations

import functools
import os
import time
import traceback

import numpy as np
from attention_common import (
    INTERP,
    B,
    emit,
    env_record,
    inputs,
    make_ours,
    random_block_mask,
)


def check():
    """Compile + compare with the dense f32 oracle, many variants."""
    import jax
    import jax.numpy as jnp

    from pallas_kernels.gpu import reference, tables

    emit(**env_record("check"))

    def win(w):
        return lambda qp, kp, h: (kp <= qp) & (qp - w <= kp)

    def dead(qp, kp, h):
        return (kp <= qp) & (qp % 7 != 3)

    def per_head(qp, kp, h):
        return (kp <= qp) & ((h % 2 == 0) | (qp - 300 <= kp))

    T = int(os.environ.get("CHECK_T", "2048"))
    variants = [
        # name, kwargs for the case
        ("causal-bf16-d128", dict()),
        ("causal-f16-d64", dict(dtype=jnp.float16, Dd=64)),
        ("causal-d256-fwd", dict(Dd=256, bwd=False)),
        ("window-d128", dict(fn=win(300))),
        ("segments-causal", dict(segments=True)),
        ("softcap-causal", dict(cap=20.0)),
        ("gqa-h8k2", dict(Hh=8, K=2)),
        ("dv64-d128", dict(Dv=64)),
        ("bq64-bk64", dict(block_q=64, block_kv=64)),
        ("blocksparse-full-tiles", dict(fn=None, random=True)),
        (
            "dead-rows-pad-offset-perhead",
            dict(fn=per_head, per_head=True, kv_len=T - 100, q_offset=0),
        ),
        ("deadrows", dict(fn=dead)),
        (
            "f16-d128-stages3",
            dict(dtype=jnp.float16, fwd_cfg=dict(num_stages=3, block_kv_compute=64)),
        ),
    ]
    if os.environ.get("INTERPRET"):  # CPU smoke test of this script
        from jax.experimental.pallas import mosaic_gpu as plgpu

        dev = jax.sharding.AbstractDevice(
            device_kind="NVIDIA H100 80GB HBM3", platform="gpu", num_cores=8
        )
        ctx = jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=dev))
        ctx.__enter__()
        INTERP.append(plgpu.InterpretGPUParams())
        variants = [v for v in variants if "d256" not in v[0]]
    for name, cfg in variants:
        try:
            _check_one(name, T, reference, tables, **cfg)
        except Exception as e:
            emit(check=name, error=repr(e)[:600], tb=traceback.format_exc()[-1500:])


def _check_one(
    name,
    T,
    reference,
    tables,
    *,
    dtype=None,
    Dd=128,
    Dv=None,
    Hh=4,
    K=None,
    fn="causal",
    cap=None,
    segments=False,
    random=False,
    per_head=False,
    kv_len=None,
    q_offset=0,
    block_q=128,
    block_kv=128,
    bwd=True,
    fwd_cfg=None,
):
    import jax
    import jax.numpy as jnp

    dtype = dtype or jnp.bfloat16
    if fn == "causal":

        def fn(qp, kp, h):
            return kp <= qp

    K = Hh if K is None else K
    Dv = Dd if Dv is None else Dv
    S = T
    kv_len = S if kv_len is None else kv_len
    ((q, k, v),) = inputs(S, 1, dtype, Hh=Hh, K=K, Dd=Dd, Dv=Dv, seed=3)
    qseg = kvseg = None
    if segments:
        rng = np.random.default_rng(1)
        qseg = np.sort(rng.integers(0, 5, (B, T))).astype(np.int32)
        kvseg = qseg
    if random:
        bm = random_block_mask(T // block_q, 0.3)
        kind = np.where(bm, 2, 0).astype(np.int8)[None, None]
        mask = np.broadcast_to(np.repeat(np.repeat(bm, block_q, 0), block_kv, 1), (B, Hh, T, S))
    else:
        mask = reference.dense_mask(fn, B, Hh, T, S, q_offset, kv_len, qseg, kvseg)
        base = reference.dense_mask(fn, B, Hh, T, S, q_offset, kv_len)
        kind = tables.kind_from_dense(base[:1] if per_head else base[:1, :1], block_q, block_kv)
    scale = Dd**-0.5
    seg = dict(
        q_segment_ids=None if qseg is None else jnp.asarray(qseg),
        kv_segment_ids=None if kvseg is None else jnp.asarray(kvseg),
    )
    fwd, attn = make_ours(
        kind,
        None if random else fn,
        scale=scale,
        logits_soft_cap=cap,
        q_offset=q_offset,
        kv_len=kv_len,
        block_q=block_q,
        block_kv=block_kv,
        fwd_cfg=fwd_cfg,
        interpret=INTERP[0] if INTERP else None,
        **seg,
    )
    t0 = time.perf_counter()
    out, lse = jax.block_until_ready(jax.jit(fwd)(q, k, v))
    t_fwd = time.perf_counter() - t0
    ro, rl = jax.jit(
        functools.partial(reference.attention_reference, scale=scale, logits_soft_cap=cap)
    )(q, k, v, jnp.asarray(mask))

    def rel(a, b):
        return float(
            jnp.linalg.norm((a.astype(jnp.float32) - b).ravel()) / jnp.linalg.norm(b.ravel())
        )

    dead_rows = ~mask.any(-1)
    lse_np, rl_np = np.asarray(lse), np.asarray(rl)
    rec = dict(
        check=name,
        T=T,
        fwd_first_call_s=round(t_fwd, 2),
        out_rel=rel(out, ro),
        out_finite=bool(jnp.isfinite(out).all()),
        lse_max_abs=float(np.abs(lse_np[~dead_rows] - rl_np[~dead_rows]).max()),
        dead_rows=int(dead_rows.sum()),
        dead_ok=bool(np.isneginf(lse_np[dead_rows]).all()),
    )
    if bwd:
        ks = jax.random.split(jax.random.key(9), 2)
        dout = jax.random.normal(ks[0], out.shape, dtype)
        t0 = time.perf_counter()
        vjp = jax.jit(lambda q, k, v, d: jax.vjp(attn, q, k, v)[1](d))
        dq, dk, dv = jax.block_until_ready(vjp(q, k, v, dout))
        rec["bwd_first_call_s"] = round(time.perf_counter() - t0, 2)
        loss = functools.partial(
            reference.reference_loss,
            mask=jnp.asarray(mask),
            scale=scale,
            logits_soft_cap=cap,
            dout=dout,
            dlse=jnp.zeros(lse.shape, jnp.float32),
        )
        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(
            *(x.astype(jnp.float32) for x in (q, k, v))
        )
        for nm, a, b in zip(("dq", "dk", "dv"), (dq, dk, dv), grads, strict=True):
            rec[nm + "_rel"] = rel(a, b)
    emit(**rec)
