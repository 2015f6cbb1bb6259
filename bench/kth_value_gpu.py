"""Top-k masks of block scores on the GPU: a value sort against the radix select.

Usage (repo root, GPU machine):  python bench/kth_value_gpu.py [--cases blocktopk,seer,nsa]

The selections of issue 4 at 64k tokens keep each row's k best blocks. The
cases, as the bench's methods see them (rows, width, k): BlockTopK (16,384
rows of 1,024, top 100), the Seer gate at nz 0.1 (16,384 of 1,024, top 53),
NSA (131,072 of 1,024, top 16). Row `i` of each query block row has its
causal part finite and the rest `-inf`, as block-causal scores do.

Variants (median of back-to-back calls, ms; every mask is checked against the
one-hot of `lax.top_k`'s indices):
  * `library`: `topk.topk_mask`, what the methods run (the one-hot up to
    k=16; above it `split_mask` at `topk.kth_value`, two levels where
    `topk.grouped_applies`, else one value sort);
  * `sort`: the k-th value from one value sort of the whole row;
  * `radix`: the k-th value by a radix select (`radix_kth`, below: eight
    passes of 4 bits, each one row reduction; tried in session 10 and not
    kept, since it was slower on the H200);
  * `one-hot`: the one-hot of `topk.topk_indices`;
  * `scatter`: the same indices scattered into a zero mask (`scatter_mask`);
  * `grouped4`, `grouped2`: the k-th value in two levels with groups of 4 or 2
    entries (the library's are 8, and only where `2 * k * 8` fits the row).
Prints JSON lines.
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

CASES = {  # name: (rows, width, k); rows = B * heads * query blocks (NSA: B * K * T)
    "blocktopk": (16 * 1024, 1024, 100),
    "seer": (16 * 1024, 1024, 53),
    "nsa": (2 * 65536, 1024, 16),
}


def block_causal_scores(rows: int, width: int):
    """Normal scores with each row's future blocks at -inf (row r sees r mod width + 1)."""
    x = jax.random.normal(jax.random.key(0), (rows, width), jnp.float32)
    seen = jnp.arange(rows)[:, None] % width >= jnp.arange(width)[None, :]
    return jnp.where(seen, x, -jnp.inf)


def radix_kth(scores, k: int):
    """Each row's k-th largest value `[..., 1]` by a most-significant-digit radix select.

    The float32 bits map to an order-preserving uint32 key (-0.0 as 0.0). Each
    of eight passes counts, per row, the entries still sharing the chosen key
    prefix at each of the 16 values of the next 4-bit digit, keeps the digit
    that holds the wanted rank and lowers the rank by the entries above it.
    """
    bits = jax.lax.bitcast_convert_type(scores.astype(jnp.float32), jnp.uint32)
    bits = jnp.where(bits == jnp.uint32(1 << 31), jnp.uint32(0), bits)
    key = jnp.where((bits >> 31) == 1, ~bits, bits | jnp.uint32(1 << 31))
    rank = jnp.full(scores.shape[:-1] + (1,), k, jnp.int32)
    prefix = jnp.zeros(rank.shape, jnp.uint32)
    digits = jnp.arange(16, dtype=jnp.uint32).reshape((1,) * (scores.ndim - 1) + (16, 1))
    for shift in range(28, -1, -4):
        high = jnp.uint32((0xFFFFFFFF << (shift + 4)) & 0xFFFFFFFF)
        live = (key & high) == prefix
        digit = (key >> shift) & jnp.uint32(15)
        at_least = (live[..., None, :] & (digit[..., None, :] >= digits)).sum(-1, dtype=jnp.int32)
        chosen = (at_least >= rank).sum(-1, keepdims=True, dtype=jnp.int32) - 1
        padded = jnp.pad(at_least, [(0, 0)] * (at_least.ndim - 1) + [(0, 1)])
        rank = rank - jnp.take_along_axis(padded, chosen + 1, axis=-1)
        prefix = prefix | (chosen.astype(jnp.uint32) << shift)
    bits = jnp.where((prefix >> 31) == 1, prefix & jnp.uint32(0x7FFFFFFF), ~prefix)
    return jax.lax.bitcast_convert_type(bits, jnp.float32).astype(scores.dtype)


def grouped_kth(scores, k: int, width: int):
    """`topk.kth_value` in two levels with groups of `width` (the library's is
    `topk.GROUP_WIDTH`), where `2 * k * width` fits the row; else one value sort."""
    if 2 * k * width > scores.shape[-1]:
        return topk.descending(scores)[..., k - 1 : k]
    _, cand = topk._group_candidates(scores, k, width, index_order=False)
    return topk.descending(cand)[..., k - 1 : k]


def scatter_mask(indices, n: int):
    """`topk.indices_to_mask` as one scatter of the k indices (-1 dropped) instead of the
    one-hot's k compares per entry."""
    rows = indices.reshape(-1, indices.shape[-1])
    mask = jnp.zeros((rows.shape[0], n), jnp.bool_)
    row = jnp.arange(rows.shape[0])[:, None]
    mask = mask.at[row, jnp.where(rows >= 0, rows, n)].set(True, mode="drop")
    return mask.reshape(indices.shape[:-1] + (n,))


VARIANTS = {
    "library": topk.topk_mask,
    "sort": lambda s, k: topk.split_mask(s, topk.descending(s)[..., k - 1 : k], k),
    "radix": lambda s, k: topk.split_mask(s, radix_kth(s, k), k),
    "one-hot": lambda s, k: topk.indices_to_mask(topk.topk_indices(s, k), s.shape[-1]),
    "scatter": lambda s, k: scatter_mask(topk.topk_indices(s, k), s.shape[-1]),
    "grouped4": lambda s, k: topk.split_mask(s, grouped_kth(s, k, 4), k),
    "grouped2": lambda s, k: topk.split_mask(s, grouped_kth(s, k, 2), k),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="CPU check: 64 rows of each width")
    args = ap.parse_args(argv)
    for case in args.cases.split(","):
        rows, width, k = CASES[case]
        rows = 64 if args.tiny else rows
        s = block_causal_scores(rows, width)
        values, idx = jax.lax.top_k(s, k)
        want = np.asarray(topk.indices_to_mask(jnp.where(values > -jnp.inf, idx, -1), width))
        for name, fn in VARIANTS.items():
            f = jax.jit(lambda s, fn=fn, k=k: fn(s, k))
            exact = bool(np.array_equal(np.asarray(f(s)), want))
            ms = time_fn(f, (s,), reps=args.reps)[1] * 1e3
            row = dict(case=case, variant=name, ms=ms, exact=exact, rows=rows, width=width, k=k)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
