"""The attention bench's `tune` mode: a few kernel configurations timed at one size
(`python bench/attention_gpu.py tune OUT_DIR`).
"""

from __future__ import annotations

import json
import os

from attention_common import (
    bench_masks,
    emit,
    env_record,
    flops,
    inputs,
    jax_timer,
    make_ours,
)


def tune():
    """A few forward/backward configurations at one size."""
    import jax
    import jax.numpy as jnp

    timeit = jax_timer()
    emit(**env_record("tune"))
    S = int(os.environ.get("TUNE_S", "16384"))
    arg_sets = inputs(S, 2, jnp.bfloat16)
    masks = bench_masks(S)
    fwd_cfgs = json.loads(
        os.environ.get(
            "TUNE_FWD",
            json.dumps(
                [
                    dict(),
                    dict(num_stages=3, block_kv_compute=64),
                    dict(block_kv_compute=64),
                    dict(heavy_first=False),
                ]
            ),
        )
    )
    bwd_cfgs = json.loads(
        os.environ.get(
            "TUNE_BWD", json.dumps([dict(), dict(dq_block_kv_compute=128), dict(bwd_num_stages=3)])
        )
    )
    kinds = os.environ.get("TUNE_KINDS", "causal,full").split(",")
    for kind in kinds:
        km, fn, dens = masks[kind]
        for cfg in fwd_cfgs:
            try:
                fwd, _ = make_ours(km, fn, fwd_cfg=cfg)
                f = jax.jit(lambda q, k, v, f=fwd: f(q, k, v)[0])
                med, lo, hi = timeit(f, arg_sets)
                emit(
                    tune="fwd",
                    kind=kind,
                    S=S,
                    cfg=cfg,
                    ms=round(med * 1e3, 4),
                    tflops=round(flops(S, kind, dens) / med / 1e12, 1),
                )
            except Exception as e:
                emit(tune="fwd", kind=kind, S=S, cfg=cfg, error=repr(e)[:400])
    km, fn, _ = masks["causal"]
    for cfg in bwd_cfgs:
        try:
            _, attn = make_ours(km, fn, bwd_cfg=cfg)
            g = jax.jit(
                jax.grad(
                    lambda q, k, v, a=attn: a(q, k, v).astype(jnp.float32).sum(), argnums=(0, 1, 2)
                )
            )
            med, lo, hi = timeit(g, arg_sets)
            emit(
                tune="fwd_bwd",
                kind="causal",
                S=S,
                cfg=cfg,
                ms=round(med * 1e3, 4),
                tflops=round(flops(S, "causal_fwd_bwd") / med / 1e12, 1),
            )
        except Exception as e:
            emit(tune="fwd_bwd", kind="causal", S=S, cfg=cfg, error=repr(e)[:400])
