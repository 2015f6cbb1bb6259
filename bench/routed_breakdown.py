"""Where the time of a per-token selection goes: MoBA and NSA stage by stage (GPU).

Usage (repo root, on the GPU machine):
  python bench/routed_breakdown.py OUT_DIR [--seq 65536] [--tiny]

Each stage of `jaxsparse.ops.routed` (and the selections feeding it) is
jitted and timed on its own, on the same inputs as `bench/llm_sparse_gpu.py`
(B=1, H=16, K=2, D=128, bf16, synthetic needle task), next to dense causal
attention. Writes OUT_DIR/routed_breakdown.jsonl (one line per stage, in ms).
Stage times do not add up exactly to the end-to-end ones (XLA fuses across
stage boundaries in the full call), but they show which stage dominates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import llm_synthetic  # noqa: E402
from llm_sparse_gpu import timed  # noqa: E402

import jaxsparse as js  # noqa: E402
from jaxsparse import patterns as P  # noqa: E402
from jaxsparse.methods import NSAConfig, nsa_compress, nsa_selection  # noqa: E402
from jaxsparse.ops import routed, selection_kernels  # noqa: E402
from jaxsparse.patterns.dynamic import moba, token_block_mask  # noqa: E402
from jaxsparse.selection import pooling  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out_dir")
    ap.add_argument("--seq", type=int, default=65536)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="CPU check (T=1024, f32, xla)")
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "routed_breakdown.jsonl"
    if args.tiny:
        t, (h, kh, d), dtype, impl = 1024, (2, 1, 64), jnp.float32, "xla"
    else:
        t, (h, kh, d), dtype, impl = args.seq, (16, 2, 128), jnp.bfloat16, None
    task = llm_synthetic.make_task("needle", t=t, h=h, kh=kh, d=d, seed=0, batch=1)
    q, k, v = (jnp.asarray(x, dtype) for x in (task.q, task.k, task.v))

    def emit(stage, fn, *xs):
        ms = timed(jax.jit(fn), *xs, reps=args.reps)
        row = dict(seq_len=t, stage=stage, ms=ms)
        print(json.dumps(row), flush=True)
        with path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        return ms

    emit("dense causal (ours)", lambda q, k, v: js.attention(q, k, v, pattern=P.Causal()), q, k, v)
    # MoBA(512, 3): selection, then routed attention stage by stage.
    bs, top_k = 512, 3
    sel = jax.jit(lambda q, k: moba.moba_select(q, k, block_size=bs, top_k=top_k, q_offset=0))
    emit("moba: gate + top-k (moba_select)", sel, q, k)
    xla_gate = js.Config(gpu_gate_kernel=False)
    emit(
        "moba: gate + top-k in XLA (moba_select, gpu_gate_kernel=False)",
        lambda q, k: moba.moba_select(
            q, k, block_size=bs, top_k=top_k, q_offset=0, config=xla_gate
        ),
        q,
        k,
    )
    pool = jax.jit(lambda k: pooling.pool(k, bs, kind="mean", axis=1).astype(k.dtype))
    emit("moba: chunk means (pool)", pool, k)
    k_mean = pool(k)
    emit(
        "moba: fused gate kernel alone (chunk_topk)",
        lambda q, km: selection_kernels.chunk_topk(q, km, k=top_k - 1, block_size=bs, q_offset=0),
        q,
        k_mean,
    )
    bits = sel(q, k)
    pattern = P.TokenBlockMask(bits, col_block=bs, row_capacity=top_k - 1, q_offset=0)
    # Union tile lists: what the XLA path visits (the kernels' routed path ignores them).
    sp = jax.jit(
        lambda bits: token_block_mask.token_block_sparsity(
            dataclasses.replace(pattern, bits=bits),
            num_heads=h,
            block_q=128,
            block_kv=128,
            q_len=t,
            kv_len=t,
            q_offset=0,
        )
    )(bits)
    emit(
        "moba: attention given bits (routed, all stages)",
        lambda q, k, v: js.attention(q, k, v, pattern=pattern, sparsity=sp, implementation=impl),
        q,
        k,
        v,
    )
    emit(
        "moba: own chunk (ChunkedCausal)",
        lambda q, k, v: js.attention(q, k, v, pattern=P.ChunkedCausal(bs), implementation=impl),
        q,
        k,
        v,
    )
    past = bits & (jnp.arange(bits.shape[-1])[None, :] < (jnp.arange(t) // bs)[:, None])[None, None]
    emit("moba: first selected (slots)", lambda b: routed.first_selected(b, top_k - 1), past)
    cell = routed.first_selected(past, top_k - 1).reshape(h, -1)
    emit("moba: argsort pairs", lambda c: jnp.argsort(c, axis=1, stable=True), cell)
    sorted_cell = jnp.sort(cell, axis=1)
    c = bits.shape[-1]
    emit(
        "moba: pair tables (closed form)",
        lambda sc: routed._pair_sparsity(sc, c, bs, t, 128, 128),
        sorted_cell,
    )
    emit(
        "moba: full (select + attention)",
        lambda q, k, v: js.attention(
            q, k, v, pattern=P.MoBA(block_size=bs, top_k=top_k), implementation=impl
        ),
        q,
        k,
        v,
    )
    # NSA's importance pass (branch 2's selection) next to branch 1 itself.
    cfg = NSAConfig()
    k_cmp = nsa_compress.mean_compress(k, kernel_size=cfg.kernel_size, stride=cfg.stride)

    def branch1(q, k_cmp):
        return js.attention(
            q,
            k_cmp,
            k_cmp,
            pattern=P.CompressedCausal(cfg.kernel_size, cfg.stride),
            q_offset=t - t,
            return_lse=True,
            implementation=impl,
        )

    emit("nsa: compressed branch (attention + lse)", branch1, q, k_cmp)
    _, lse_cmp = jax.jit(branch1)(q, k_cmp)
    emit(
        "nsa: selection (importance + top-n)",
        lambda q, k_cmp, lse: nsa_selection.nsa_select(
            q,
            k_cmp,
            lse,
            kv_len=t,
            kernel_size=cfg.kernel_size,
            stride=cfg.stride,
            block_size=cfg.block_size,
            top_n=cfg.top_n,
            init_blocks=cfg.init_blocks,
            local_blocks=cfg.local_blocks,
            scale=d**-0.5,
            q_offset=0,
        ),
        q,
        k_cmp,
        lse_cmp,
    )


if __name__ == "__main__":
    main()
