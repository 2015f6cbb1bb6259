"""Quality of the content-aware methods against dense causal attention on synthetic long contexts.

For each task (needle retrieval, multi-query associative recall; see
`llm_synthetic.py`), length and method at its default sparsity:

  * mass_kept: the share of the dense softmax mass that falls on the keys
    the method attends, `exp(lse_method - lse_dense)` (exact for masking
    methods; for PSA the pooled keys' estimate), mean and 10th percentile
    over rows and heads;
  * out_rel_err: `||out - out_dense|| / ||out_dense||`;
  * accuracy: planted facts retrieved (dense gets ~1.0);
  * tile_density: visited tile area / causal area (compute relative to dense
    causal attention in a tile kernel);
  * seconds: selection + attention wall time (CPU numbers are not speed results).

Usage (repo root): `python bench/quality.py [--sizes 8192,32768] [--out FILE]`;
on a GPU the same script runs larger sizes (`--sizes 65536,131072 --dtype bfloat16`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import llm_methods  # noqa: E402
import llm_synthetic  # noqa: E402
import numpy as np  # noqa: E402

import jaxsparse as js  # noqa: E402


def causal_area(b: int, h: int, t: int) -> float:
    return b * h * t * (t + 1) / 2


def static_tiles(pattern, t: int, h: int) -> float:
    sp = js.sparsity.from_pattern(
        pattern, q_len=t, kv_len=t, block_q=128, block_kv=128, num_heads=h
    )
    counts = np.asarray(sp.kv_counts, np.float64)
    return counts.sum() * 128 * 128 * (h // counts.shape[1])


def evaluate(method, q, k, v, dense, task, *, b, h, t):
    t0 = time.perf_counter()
    state = jax.jit(method.select)(q, k)
    out, lse = jax.jit(method.attend)(q, k, v, state)
    out, lse = jax.block_until_ready((out, lse))
    seconds = time.perf_counter() - t0
    out_d, lse_d = dense
    ok = np.isfinite(np.asarray(lse)) & np.isfinite(np.asarray(lse_d))
    mass = np.exp(np.minimum(np.asarray(lse, np.float64) - np.asarray(lse_d, np.float64), 0.0))
    mass = mass[ok]
    num = np.linalg.norm(np.asarray(out, np.float64) - np.asarray(out_d, np.float64))
    den = np.linalg.norm(np.asarray(out_d, np.float64))
    if method.tiles is None:
        area = static_tiles(method.pattern, t, h) * b
    else:
        total, bx, hx = method.tiles(state)
        area = float(total) * (b // int(bx)) * (h // int(hx))
    return dict(
        method=method.name,
        note=method.note,
        mass_kept=float(mass.mean()),
        mass_kept_p10=float(np.percentile(mass, 10)),
        out_rel_err=float(num / den),
        accuracy=llm_synthetic.retrieval_accuracy(np.asarray(out), task),
        tile_density=float(area / causal_area(b, h, t)),
        seconds=round(seconds, 2),
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="8192,32768")
    ap.add_argument("--tasks", default="needle,mqar")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--kv-heads", type=int, default=1)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--methods", default="", help="comma-separated substrings to keep")
    ap.add_argument("--no-oracle", action="store_true", help="skip the O(T^2) Seer oracle")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/quality_cpu.json")
    args = ap.parse_args(argv)
    dtype = jnp.dtype(args.dtype)
    methods = llm_methods.default_methods(include_oracle=not args.no_oracle)
    keep = [m for m in args.methods.split(",") if m]
    if keep:
        methods = [m for m in methods if any(s in m.name for s in keep)]
    methods = [m for m in methods if m.name != "dense-causal"]
    dense_method = llm_methods.static_method("dense-causal", js.patterns.Causal())
    results = []
    for t in (int(x) for x in args.sizes.split(",")):
        for kind in args.tasks.split(","):
            task = llm_synthetic.make_task(
                kind,
                t=t,
                h=args.heads,
                kh=args.kv_heads,
                d=args.dim,
                seed=args.seed,
                batch=args.batch,
            )
            q, k, v = (jnp.asarray(x, dtype) for x in (task.q, task.k, task.v))
            t0 = time.perf_counter()
            dense = jax.block_until_ready(jax.jit(dense_method.attend)(q, k, v, None))
            base = dict(
                task=kind,
                seq_len=t,
                batch=args.batch,
                heads=args.heads,
                kv_heads=args.kv_heads,
                head_dim=args.dim,
                dtype=args.dtype,
            )
            row = dict(
                base,
                method="dense-causal",
                mass_kept=1.0,
                mass_kept_p10=1.0,
                out_rel_err=0.0,
                tile_density=1.0,
                accuracy=llm_synthetic.retrieval_accuracy(np.asarray(dense[0]), task),
                seconds=round(time.perf_counter() - t0, 2),
            )
            print(json.dumps(row), flush=True)
            results.append(row)
            for m in methods:
                try:
                    row = dict(
                        base, **evaluate(m, q, k, v, dense, task, b=args.batch, h=args.heads, t=t)
                    )
                except Exception as e:  # keep going: one failing method must not hide the rest
                    row = dict(base, method=m.name, error=f"{type(e).__name__}: {e}"[:500])
                print(json.dumps(row), flush=True)
                results.append(row)
    meta = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        device=str(jax.devices()[0]),
        platform=platform.platform(),
        jax=jax.__version__,
        argv=sys.argv[1:] if argv is None else argv,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(dict(meta=meta, results=results), indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
