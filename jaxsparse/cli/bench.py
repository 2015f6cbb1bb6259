"""`jaxsparse bench`: density, time, speed-up over dense and error per pattern."""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxsparse as js
from jaxsparse import patterns as P
from jaxsparse.cli import presets
from jaxsparse.cli.argtypes import positive_int

# Above this many logits the dense oracle is skipped (memory).
ORACLE_LIMIT = 1 << 28


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="time each pattern against dense attention")
    p.add_argument("--seq", type=positive_int, default=2048, help="sequence length (default 2048)")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--heads", type=positive_int, default=4)
    p.add_argument("--kv-heads", type=positive_int, default=None, help="default: --heads")
    p.add_argument("--dim", type=positive_int, default=64, help="head dim (default 64)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument(
        "--pattern",
        action="append",
        default=None,
        help="preset or expression; repeat for several (default: all presets)",
    )
    p.add_argument(
        "--implementation",
        default=None,
        help="xla, pallas_gpu, pallas_tpu, reference (default: best for device)",
    )
    p.add_argument("--backward", action="store_true", help="time forward+backward")
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.set_defaults(run=run)


def _time(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _measure(name, pattern, q, k, v, args) -> dict:
    kw = dict(pattern=pattern, implementation=args.implementation)
    if args.backward:
        fn = jax.jit(
            jax.grad(
                lambda q, k, v: js.attention(q, k, v, **kw).astype(jnp.float32).sum(),
                argnums=(0, 1, 2),
            )
        )
    else:
        fn = jax.jit(lambda q, k, v: js.attention(q, k, v, **kw))
    seconds = _time(fn, (q, k, v), args.repeats)
    t = q.shape[1]
    sp = js.sparsity.from_pattern(
        pattern, q_len=t, kv_len=k.shape[1], block_q=128, block_kv=128, num_heads=q.shape[2]
    )
    mask = P.dense_mask(pattern, q_len=t, kv_len=k.shape[1], num_heads=q.shape[2], xp=np)
    row = dict(
        pattern=name,
        expr=repr(pattern),
        element_density=float(mask.mean()),
        tile_density=sp.density(),
        ms=seconds * 1e3,
    )
    if q.shape[0] * q.shape[2] * t * k.shape[1] <= ORACLE_LIMIT:
        got = jax.jit(lambda q, k, v: js.attention(q, k, v, **kw))(q, k, v)
        want = js.attention(
            q.astype(jnp.float32),
            k.astype(jnp.float32),
            v.astype(jnp.float32),
            pattern=pattern,
            implementation="reference",
        )
        row["max_error"] = float(jnp.abs(got.astype(jnp.float32) - want).max())
    return row


MASK_MAX_ELEMENTS = 2**31  # the dense bool mask `run` measures densities on


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    console = Console(stderr=args.json)
    dtype = jnp.dtype(args.dtype)
    entries = args.seq * args.seq * args.heads
    if entries > MASK_MAX_ELEMENTS:  # each row's element density comes from the dense mask
        raise ValueError(
            f"--seq {args.seq} with --heads {args.heads}: the element density is measured on "
            f"the dense mask, T x T x H = {entries:,} entries, at most {MASK_MAX_ELEMENTS:,} "
            "(e.g. --seq 16384 with 8 heads); time longer sequences with bench/attention_gpu.py"
        )
    kh = args.heads if args.kv_heads is None else args.kv_heads
    if args.heads % kh:
        raise ValueError(
            f"--kv-heads {kh} does not divide --heads {args.heads}; "
            f"use a divisor of {args.heads} (GQA/MQA)"
        )
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (args.batch, args.seq, args.heads, args.dim), dtype)
    k = jax.random.normal(keys[1], (args.batch, args.seq, kh, args.dim), dtype)
    v = jax.random.normal(keys[2], (args.batch, args.seq, kh, args.dim), dtype)
    chosen = [presets.resolve(p, args.seq) for p in (args.pattern or presets.presets(args.seq))]
    if all(name != "full" for name, _ in chosen):
        chosen.insert(0, ("full", P.Full()))
    rows = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(chosen))
        for name, pattern in chosen:
            progress.update(task, description=f"{name}")
            rows.append(_measure(name, pattern, q, k, v, args))
            progress.advance(task)
    dense_ms = next(r["ms"] for r in rows if r["pattern"] == "full")
    device = jax.devices()[0]
    for r in rows:
        r.update(
            speedup=dense_ms / r["ms"],
            batch=args.batch,
            seq=args.seq,
            heads=args.heads,
            kv_heads=kh,
            dim=args.dim,
            dtype=args.dtype,
            backward=args.backward,
            device=f"{device.platform}:{device.device_kind}",
            implementation=args.implementation or "auto",
        )
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    what = "forward+backward" if args.backward else "forward"
    table = Table(
        title=f"jaxsparse bench: B={args.batch} T=S={args.seq} H={args.heads} "
        f"K={kh} D={args.dim} {args.dtype} {what} on {device.device_kind}"
    )
    for col in ("pattern", "density", "tiles", "time (ms)", "speed-up", "max |err| vs oracle"):
        table.add_column(col, justify="left" if col == "pattern" else "right")
    for r in rows:
        err = f"{r['max_error']:.2e}" if "max_error" in r else "—"
        table.add_row(
            r["pattern"],
            f"{r['element_density']:.1%}",
            f"{r['tile_density']:.1%}",
            f"{r['ms']:.1f}",
            f"{r['speedup']:.2f}x",
            err,
        )
    console.print(table)
    return 0
