"""Top-k of wide rows on the GPU: the ways `jaxsparse.selection.topk` can pick NSA's blocks.

Usage (repo root, GPU machine):  python bench/topk_gpu.py [--rows 131072] [--width 1024] [--k 16]

NSA at 64k tokens picks 16 of 1,024 selection blocks for each of B*K*T =
131,072 rows. Times (median of back-to-back calls, ms) of: `lax.top_k`;
`k` argmax passes; the two-level grouped top-k with either for its levels.
Every variant's indices are checked against `lax.top_k`'s. Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxsparse.selection import topk  # noqa: E402


def timeit(f, x, reps=5, iters=10):
    jax.block_until_ready(f(x))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(iters):
            out = f(x)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t) / iters * 1e3)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=131072)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--k", type=int, default=16)
    args = ap.parse_args(argv)
    x = jax.random.normal(jax.random.key(0), (args.rows, args.width), jnp.float32)
    k = args.k
    _, want = jax.lax.top_k(x, k)
    variants = {
        "lax.top_k": lambda s: topk._lax_topk(s, k),
        "argmax passes": lambda s: topk._iterative_topk(s, k),
        "two levels, lax.top_k": lambda s: topk._grouped_topk(s, k, topk.GROUP_WIDTH),
    }
    for name, fn in variants.items():
        f = jax.jit(fn)
        ok = bool(np.array_equal(np.asarray(f(x)), np.asarray(want)))
        print(json.dumps(dict(variant=name, ms=timeit(f, x), exact=ok, **vars(args))), flush=True)
    # Two levels whose levels run as argmax passes.
    saved = topk.ITERATIVE_MAX_K
    topk.ITERATIVE_MAX_K = k
    try:
        f = jax.jit(lambda s: topk._grouped_topk(s, k, topk.GROUP_WIDTH))
        ok = bool(np.array_equal(np.asarray(f(x)), np.asarray(want)))
        row = dict(variant="two levels, argmax passes", ms=timeit(f, x), exact=ok, **vars(args))
        print(json.dumps(row), flush=True)
    finally:
        topk.ITERATIVE_MAX_K = saved


if __name__ == "__main__":
    main()
