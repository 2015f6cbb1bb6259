"""Issue 3 benchmark: Mosaic GPU block-sparse attention vs cuDNN, tokamax, Flex.

Usage (on the GPU machine, from the repo root):
  PYTHONPATH=/tmp/tk:.carry/stubs:. python bench/attention_gpu.py MODE OUT_DIR

MODE:
  check  compile and check our kernels (forward and gradients) against a
         dense f32 reference at moderate sizes, many variants.
  tune   time a few kernel configurations at S=16384.
  jax    time ours, jax.nn.dot_product_attention(implementation="cudnn") and
         tokamax.dot_product_attention(implementation="mosaic").
  torch  time PyTorch FlexAttention on the same masks (separate process).
  table  merge OUT_DIR/*.jsonl into a markdown table with target ratios.

B=1, H=16, D=128, bf16; SEQS (env, default 4096,16384,32768); VARIANTS=1 (env)
also times the forward kernel in both launch modes (ours[p], ours[np]) and the
causal fwd+bwd with the dK/dV kernel giving dQ (jaxsparse[dq],
`Config(gpu_dq_in_dkv=True)`). Cases: full,
causal, window (causal window of 1024: q-1023 <= k <= q), blocksparse (a
random 128x128 block mask at ~10% density with the diagonal kept, the same
numpy array for every library), causal_fwd_bwd. Each JSON line has the
median time over several repeats of a timed loop (inputs rotated between
calls; warm-up excluded). TFLOP/s as in /work/shared/ANCHORS.md: full
4*B*H*S*S*D, causal half, window 4*B*H*S*1024*D, block-sparse effective =
full * density, fwd+bwd 3.5x the causal forward.

The modes live in attention_check.py, attention_tune.py, attention_torch.py and
attention_table.py; attention_common.py holds what they share.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import traceback

from attention_common import (
    JSONL,
    SEQS,
    WINDOW,
    api_patterns,
    bench_masks,
    emit,
    env_record,
    flops,
    inputs,
    jax_timer,
    make_ours,
)


def jax_bench():
    import jax
    import jax.numpy as jnp

    import jaxsparse as js

    timeit = jax_timer()
    emit(**env_record("jax"))
    try:
        import tokamax
    except Exception as e:
        tokamax = None
        emit(lib="tokamax", error=repr(e)[:300])
    for S in SEQS:
        arg_sets = inputs(S, 3 if S <= 4096 else 2, jnp.bfloat16)
        masks = bench_masks(S)
        cases = []
        for name, (kind, fn, dens) in masks.items():
            fwd, attn = make_ours(kind, fn)
            cases.append(("ours", name, dens, jax.jit(lambda q, k, v, f=fwd: f(q, k, v)[0])))
            if os.environ.get("VARIANTS"):  # both launch modes, whatever the default picks
                for tag, pers in (("ours[p]", True), ("ours[np]", False)):
                    fwd, _ = make_ours(kind, fn, fwd_cfg=dict(persistent=pers))
                    cases.append((tag, name, dens, jax.jit(lambda q, k, v, f=fwd: f(q, k, v)[0])))
        # The public API (what users call): metadata from the pattern, dispatch, padding.
        for name, pattern in api_patterns(S).items():
            api = functools.partial(js.attention, pattern=pattern)
            cases.append(("jaxsparse", name, masks[name][2], jax.jit(api)))
        dpa = functools.partial(jax.nn.dot_product_attention, implementation="cudnn")
        cases += [
            ("cudnn", "full", 1.0, jax.jit(dpa)),
            ("cudnn", "causal", 0.5, jax.jit(functools.partial(dpa, is_causal=True))),
            (
                "cudnn",
                "window",
                masks["window"][2],
                jax.jit(functools.partial(dpa, is_causal=True, local_window_size=(WINDOW - 1, 0))),
            ),
        ]
        if tokamax is not None:
            tk = functools.partial(tokamax.dot_product_attention, implementation="mosaic")
            cases += [
                ("tokamax", "full", 1.0, jax.jit(tk)),
                ("tokamax", "causal", 0.5, jax.jit(functools.partial(tk, is_causal=True))),
                (
                    "tokamax",
                    "window",
                    masks["window"][2],
                    jax.jit(
                        functools.partial(tk, is_causal=True, local_window_size=(WINDOW - 1, 0))
                    ),
                ),
            ]
        # fwd + bwd (causal), gradient of sum(out) as in anchors_gpu.py.
        _, attn_c = make_ours(masks["causal"][0], masks["causal"][1])
        train = [
            ("ours", attn_c),
            ("jaxsparse", functools.partial(js.attention, pattern=js.patterns.Causal())),
            ("cudnn", functools.partial(dpa, is_causal=True)),
        ]
        if tokamax is not None:
            train.append(("tokamax", functools.partial(tk, is_causal=True)))
        if os.environ.get("VARIANTS"):  # the dK/dV kernel giving dQ (no dQ kernel)
            dq_cfg = js.Config(gpu_dq_in_dkv=True)
            train.append(
                (
                    "jaxsparse[dq]",
                    functools.partial(js.attention, pattern=js.patterns.Causal(), config=dq_cfg),
                )
            )
        for impl, fn in train:
            g = jax.jit(
                jax.grad(
                    lambda q, k, v, fn=fn: fn(q, k, v).astype(jnp.float32).sum(), argnums=(0, 1, 2)
                )
            )
            cases.append((impl, "causal_fwd_bwd", 0.5, g))
        for impl, kind, dens, f in cases:
            try:
                t0 = time.perf_counter()
                jax.block_until_ready(f(*arg_sets[0]))
                compile_s = time.perf_counter() - t0
                med, lo, hi = timeit(f, arg_sets)
                fl = flops(S, kind, dens)
                emit(
                    impl=impl,
                    S=S,
                    kind=kind,
                    ms=round(med * 1e3, 4),
                    ms_min=round(lo * 1e3, 4),
                    ms_max=round(hi * 1e3, 4),
                    tflops=round(fl / med / 1e12, 1),
                    density=round(dens, 4),
                    first_call_s=round(compile_s, 2),
                )
            except Exception as e:
                emit(impl=impl, S=S, kind=kind, error=repr(e)[:400])
        del arg_sets


def main(argv):
    mode = argv[1] if len(argv) > 1 else "jax"
    out_dir = argv[2] if len(argv) > 2 else "."
    os.makedirs(out_dir, exist_ok=True)
    if mode == "table":
        import attention_table

        attention_table.table(out_dir)
        return
    if mode == "jax":
        fn = jax_bench
    elif mode == "check":
        import attention_check

        fn = attention_check.check
    elif mode == "tune":
        import attention_tune

        fn = attention_tune.tune
    elif mode == "torch":
        import attention_torch

        fn = attention_torch.torch_bench
    else:
        raise SystemExit(f"mode {mode!r}: use check, tune, jax, torch or table")
    JSONL.append(os.path.join(out_dir, f"attention_gpu_{mode}.jsonl"))
    open(JSONL[0], "w").close()
    try:
        fn()
    except Exception:
        traceback.print_exc()


if __name__ == "__main__":
    main(sys.argv)
