"""Where the time of an issue-4 method goes: the top device operations of two calls.

Usage (repo root, on the GPU machine):
  python bench/profile_llm.py OUT_DIR [--what nsa|moba|select:NAME] [--seq 65536]
      [--nsa-variant NAME] [--nsa-glue GLUE]

`nsa`: NSA forward+backward, exactly the `nsa_train` row of
`bench/llm_sparse_gpu.py` (three branches, mean compressor, gradients to q, k,
v and the gates), with the attention config of `--nsa-variant` (a key of
`llm_sparse_gpu.NSA_TRAIN_VARIANTS`, default "NSA") and the selection glue
of `--nsa-glue` (`bench/nsa_glue.py`, default "library"). `moba`: MoBA(512, 3)
forward, selection and attention in one jitted call (the bench's `total`).
`select:NAME`: the selection alone, as a forward call needs it (the bench's
`select_fwd`: no backward-only lists) of the `llm_methods.default_methods()`
entry named NAME, else the first whose name starts with NAME (e.g.
`select:FlexPrefill`, `select:Seer-gate`). Same
shapes and inputs as that bench (B=1, H=16, K=2, D=128, bf16, the "needle"
task). Prints the median time, then the 40 operations with the largest total
device time over two traced calls as JSON lines (also OUT_DIR/top_ops.jsonl;
the Perfetto trace is under OUT_DIR/trace). `--hlo` also writes the compiled
HLO, gzipped, to read which operations a fusion named in the profile holds.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import llm_methods  # noqa: E402
import llm_sparse_gpu  # noqa: E402
import llm_synthetic  # noqa: E402
import nsa_glue  # noqa: E402
from trace_ops import top_ops  # noqa: E402

from jaxsparse.methods import NSAConfig  # noqa: E402


def nsa_fn(q, cfg: NSAConfig, attention_config=None):
    """The jitted step and its extra arguments (gates, cotangent: arguments, not constants)."""
    cot = jax.random.normal(jax.random.key(1), q.shape, jnp.float32)  # as llm_sparse_gpu's
    grad = jax.grad(llm_sparse_gpu.nsa_loss(cfg, attention_config), argnums=(0, 1, 2, 3))
    return jax.jit(grad), (llm_sparse_gpu.nsa_gates(q), cot)


def moba_fn():
    m = next(m for m in llm_methods.default_methods() if m.name == "MoBA(512,3)")
    return jax.jit(lambda q, k, v: m.attend(q, k, v, m.select(q, k)))


def select_fn(name: str, h: int, kh: int, d: int):
    methods = llm_methods.default_methods() + [llm_methods.seer_gate_method(h, kh, d)]
    m = next((m for m in methods if m.name == name), None)  # an exact name first
    m = m or next((m for m in methods if m.name.startswith(name)), None)
    if m is None:
        raise SystemExit(f"--what select:{name}: no method named so; {[m.name for m in methods]}")
    return jax.jit(lambda q, k, v: llm_sparse_gpu.forward_state(m.select(q, k)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--what", default="nsa", help="nsa, moba or select:NAME")
    ap.add_argument("--seq", type=int, default=65536)
    ap.add_argument(
        "--nsa-variant",
        default="NSA",
        choices=list(llm_sparse_gpu.NSA_TRAIN_VARIANTS),
        help="--what nsa: the attention config of this llm_sparse_gpu NSA row",
    )
    ap.add_argument(
        "--nsa-glue",
        default="library",
        help="--what nsa: 'library' or session 17's candidates (bench/nsa_glue.py)",
    )
    ap.add_argument("--tiny", action="store_true", help="CPU check (H=2, K=1, D=64, f32)")
    ap.add_argument(
        "--hlo", action="store_true", help="also write the compiled HLO (OUT/compiled_hlo.txt.gz)"
    )
    args = ap.parse_args(argv)
    try:
        nsa_glue.parse(args.nsa_glue)
    except ValueError as e:
        ap.error(str(e))
    with nsa_glue.patched(args.nsa_glue if args.what == "nsa" else "library") as traced:
        profile(args)
    if args.what == "nsa":
        print(json.dumps({"glue": args.nsa_glue, "glue_traced": dict(traced)}), flush=True)


def profile(args):
    """Time, trace and (with `--hlo`) compile `args.what`; print and write the top ops."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (b, h, kh, d), dtype = (
        ((1, 2, 1, 64), jnp.float32) if args.tiny else ((1, 16, 2, 128), jnp.bfloat16)
    )
    task = llm_synthetic.make_task("needle", t=args.seq, h=h, kh=kh, d=d, seed=0, batch=b)
    q, k, v = (jnp.asarray(x, dtype) for x in (task.q, task.k, task.v))
    if args.what == "nsa":
        cfg = NSAConfig(window=min(512, args.seq // 2))
        fn, extra = nsa_fn(q, cfg, llm_sparse_gpu.NSA_TRAIN_VARIANTS[args.nsa_variant])
    elif args.what == "moba":
        fn, extra = moba_fn(), ()
    elif args.what.startswith("select:"):
        fn, extra = select_fn(args.what.removeprefix("select:"), h, kh, d), ()
    else:
        raise SystemExit(f"--what {args.what!r}: nsa, moba or select:NAME")
    if args.hlo:  # to read which operations a fusion of the profile holds
        text = fn.lower(q, k, v, *extra).compile().as_text()
        (out / "compiled_hlo.txt.gz").write_bytes(gzip.compress(text.encode()))
    ms = llm_sparse_gpu.timed(fn, q, k, v, *extra, reps=3)
    print(json.dumps({"what": args.what, "seq_len": args.seq, "median_ms": ms}), flush=True)
    trace = out / "trace"
    with jax.profiler.trace(str(trace), create_perfetto_trace=True):
        for _ in range(2):
            jax.block_until_ready(fn(q, k, v, *extra))
    top, totals = top_ops(trace, n=40)
    with (out / "top_ops.jsonl").open("w") as fh:
        for row in [totals] + [
            {"op": name[:160], "total_ms_2_calls": round(t, 3), "calls": c} for name, t, c in top
        ]:
            print(json.dumps(row))
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
