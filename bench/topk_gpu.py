"""Top-k of wide rows on the GPU: the ways `jaxsparse.selection.topk` can pick NSA's blocks.

Usage (repo root, GPU machine):  python bench/topk_gpu.py [--rows 131072] [--width 1024] [--k 16]

NSA at 64k tokens picks 16 of 1,024 selection blocks for each of B*K*T =
131,072 rows. Times (median of back-to-back calls, ms) of: `lax.top_k`;
`k` argmax passes; the two-level grouped top-k with either for its levels.
Every variant's indices are checked against `lax.top_k`'s. Then the masks
(what NSA's selection keeps): the one-hot of the two-level indices (up to
session 16) against `topk._grouped_mask` (two value sorts, session 17), each
checked against the one-hot of `lax.top_k`'s indices. `--tiny` runs a CPU
check. Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from timing import time_fn  # noqa: E402

from jaxsparse.selection import topk  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=131072)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--tiny", action="store_true", help="CPU check: 64 rows")
    args = ap.parse_args(argv)
    if args.tiny:
        args.rows = 64
    x = jax.random.normal(jax.random.key(0), (args.rows, args.width), jnp.float32)
    k = args.k
    _, want = jax.lax.top_k(x, k)
    variants = {
        "lax.top_k": lambda s: topk._lax_topk(s, k),
        "argmax passes": lambda s: topk._iterative_topk(s, k),
        "two levels, lax.top_k": lambda s: topk._grouped_topk(s, k, topk.GROUP_WIDTH),
    }

    def report(name, fn):
        f = jax.jit(fn)
        ok = bool(np.array_equal(np.asarray(f(x)), np.asarray(want)))
        ms = time_fn(f, (x,), reps=5)[1] * 1e3
        print(json.dumps(dict(variant=name, ms=ms, exact=ok, **vars(args))), flush=True)

    for name, fn in variants.items():
        report(name, fn)
    saved = topk.ITERATIVE_MAX_K  # two levels whose levels run as argmax passes
    topk.ITERATIVE_MAX_K = k
    try:
        report("two levels, argmax passes", variants["two levels, lax.top_k"])
    finally:
        topk.ITERATIVE_MAX_K = saved

    want_mask = np.asarray(topk.indices_to_mask(want, args.width))
    masks = {
        "mask: one-hot of two levels": lambda s: topk.indices_to_mask(
            topk._grouped_topk(s, k, topk.GROUP_WIDTH), args.width
        ),
        "mask: two levels of value sorts": lambda s: topk._grouped_mask(s, k, topk.GROUP_WIDTH),
    }
    for name, fn in masks.items():
        f = jax.jit(fn)
        ok = bool(np.array_equal(np.asarray(f(x)), want_mask))
        ms = time_fn(f, (x,), reps=5)[1] * 1e3
        print(json.dumps(dict(variant=name, ms=ms, exact=ok, **vars(args))), flush=True)


if __name__ == "__main__":
    main()
