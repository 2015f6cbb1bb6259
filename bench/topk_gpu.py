"""Top-k of wide rows on the GPU: the ways `jaxsparse.selection.topk` can pick NSA's blocks.

Usage (repo root, GPU machine):  python bench/topk_gpu.py [--rows 131072] [--width 1024] [--k 16]

NSA at 64k tokens picks 16 of 1,024 selection blocks for each of B*K*T =
131,072 rows. Times (median of back-to-back calls, ms) of: `lax.top_k`;
`k` argmax passes; the two-level grouped top-k with either for its levels.
Every variant's indices are checked against `lax.top_k`'s. Then the masks
(what NSA's selection keeps): `topk.topk_mask`'s (the one-hot of the
two-level indices, whose two `top_k` sorts took 0.40 and 0.44 ms of NSA's 64k
step on the H200 in session 16's profile) against `grouped_mask`, a
candidate written in session 17 (which had no GPU): two value sorts, no
`top_k` and no one-hot; and the same indices' mask by a scatter
(`scattered_mask`, also a session 17 candidate) instead of the one-hot.
(Session 23's rank counts, an `[n, n]` compare per row in place of each
level's sort, did not finish within 60 s on the H100 and were removed in
session 24: BENCHMARKS.md.)
Each is checked against the one-hot of `lax.top_k`'s indices. `--tiny`
runs a CPU check. Prints JSON lines.
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


def value_sort_first(scores, k: int):
    """The first k entries of each row in stable descending order (-inf never): one value
    sort for the k-th value, then `topk.split_mask`."""
    return topk.split_mask(scores, topk.descending(scores)[..., k - 1 : k], k)


def grouped_mask(scores, k: int, width: int = topk.GROUP_WIDTH):
    """`topk.topk_mask` in two levels (as `topk._grouped_topk`) from two value sorts.

    Level 1 keeps the k groups of `width` neighbours with the best maxima (the
    first k of the maxima in stable descending order: `topk.split_mask` at their
    k-th value); their entries, in index order, are the candidates. Level 2
    keeps the first k candidates likewise and maps them back onto the row. Ties
    go to the lower index at both levels, so the mask is `_grouped_topk`'s,
    with no `top_k` (a key-value sort) and no `[..., k, n]` one-hot.
    """
    *lead, n = scores.shape
    ng = -(-n // width)
    s = jnp.pad(scores, [(0, 0)] * len(lead) + [(0, ng * width - n)], constant_values=-jnp.inf)
    s = s.reshape(*lead, ng, width)
    best = s.max(axis=-1)
    chosen = value_sort_first(best, k)  # [..., ng]
    slot = jnp.cumsum(chosen, axis=-1, dtype=jnp.int32) - 1  # a chosen group's place, in order
    place = jnp.arange(k, dtype=jnp.int32).reshape((1,) * len(lead) + (k, 1))
    ids = jnp.argmax(chosen[..., None, :] & (slot[..., None, :] == place), axis=-1)  # [..., k]
    cand = jnp.take_along_axis(s, ids[..., None], axis=-2)  # [..., k, width]
    filled = place[..., 0] < chosen.sum(-1, keepdims=True, dtype=jnp.int32)
    cand = jnp.where(filled[..., None], cand, -jnp.inf).reshape(*lead, k * width)
    keep = value_sort_first(cand, k).reshape(*lead, k, width)
    back = jnp.take_along_axis(keep, jnp.maximum(slot, 0)[..., None], axis=-2)  # [..., ng, width]
    return (back & chosen[..., None]).reshape(*lead, ng * width)[..., :n]


def scattered_mask(indices, n: int):
    """`topk.indices_to_mask` as one scatter of the indices into a False mask (a candidate,
    session 17): a write per index instead of k compares per entry. -1 entries are dropped."""
    *lead, k = indices.shape
    rows = jnp.arange(np.prod(lead, dtype=int), dtype=jnp.int32)[:, None]
    idx = jnp.where(indices >= 0, indices, n).reshape(-1, k)
    mask = jnp.zeros((rows.shape[0], n), bool).at[rows, idx].set(True, mode="drop")
    return mask.reshape(*lead, n)


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
        "mask: topk_mask (one-hot of two levels)": lambda s: topk.topk_mask(s, k),
        "mask: two levels of value sorts": lambda s: grouped_mask(s, k),
        "mask: scatter of two levels' indices": lambda s: scattered_mask(
            topk._grouped_topk(s, k, topk.GROUP_WIDTH), args.width
        ),
    }
    for name, fn in masks.items():
        f = jax.jit(fn)
        ok = bool(np.array_equal(np.asarray(f(x)), want_mask))
        ms = time_fn(f, (x,), reps=5)[1] * 1e3
        print(json.dumps(dict(variant=name, ms=ms, exact=ok, **vars(args))), flush=True)


if __name__ == "__main__":
    main()
