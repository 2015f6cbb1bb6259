"""What building the gathered dK/dV tiles costs, and ways to list the selected pairs.

Usage (repo root, GPU machine):
  python bench/gathered_tiles_gpu.py [--sizes 65536,131072] [--reps 5] [--tiny]

`jaxsparse.ops.gathered.Gathering.tiles` turns NSA's bits `[B, K, T, C]` into
gathered tiles and work items inside the backward. It lists the selected
(block, token) pairs by block, then token. Two ways are timed and checked
to agree element for element on the needle inputs with NSA's defaults (B=1,
H=16, K=2, D=128, bf16; `bench/gathered_loads_gpu.nsa_bits`):

- `sort` (before session 17): each row's blocks by `routed.first_selected`,
  then one sort of `block * T + token` keys and a scatter of each run's start;
- `words` (`gathered._pairs_by_block`): no sort; each block's column of bits
  in 32-token words, a pair's place from population counts.

Also timed: `first_selected` against `top_k` over the bits' ranks (its form
before session 14), and the whole tile build. Prints JSON lines.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxsparse.ops import gathered, routed  # noqa: E402
from jaxsparse.selection import topk  # noqa: E402


def by_top_k(bits, slots: int):
    """The first `slots` set bits per row by `top_k` over their ranks (c where fewer): what
    `routed.first_selected` did before session 14."""
    c = bits.shape[-1]
    score = jnp.where(bits, -jnp.arange(c, dtype=jnp.float32), -jnp.inf)
    idx = topk.topk_indices(score, slots)
    return jnp.where(idx >= 0, idx, c).astype(jnp.int32)


def by_sort(bits, pairs: int):
    """`gathered._pairs_by_block`'s `(tokens, counts, starts)` by one sort of int32 keys
    (`Gathering.tiles`' listing before session 17); bits `[F, T, C]`."""
    f, t, c = bits.shape
    cell = routed.first_selected(bits, pairs // t).reshape(f, pairs)  # c: no block
    tok = jnp.broadcast_to(jnp.arange(pairs, dtype=jnp.int32) // (pairs // t), (f, pairs))
    key = jnp.sort(cell * t + tok, axis=1)
    cell, tok = key // t, key % t
    first = jnp.concatenate([jnp.ones((f, 1), bool), cell[:, 1:] != cell[:, :-1]], axis=1)
    at = jnp.where(first, cell, c + 1)  # c + 1: dropped
    rows = jnp.broadcast_to(jnp.arange(f)[:, None], at.shape)
    p = jnp.broadcast_to(jnp.arange(pairs, dtype=jnp.int32)[None], at.shape)
    starts = jnp.full((f, c + 1), pairs, jnp.int32).at[rows, at].set(p, mode="drop")
    starts = jax.lax.cummin(starts, axis=1, reverse=True)
    return tok, starts[:, 1:] - starts[:, :-1], starts[:, :c]


def main(argv=None):
    from gathered_loads_gpu import nsa_bits

    from jaxsparse.methods import NSAConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="65536,131072")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="CPU check at 2k tokens")
    args = ap.parse_args(argv)
    sizes = [2048] if args.tiny else [int(s) for s in args.sizes.split(",")]
    h, kh, d = (4, 2, 64) if args.tiny else (16, 2, 128)
    from timing import time_fn

    cfg = NSAConfig()
    slots = cfg.top_n  # row_capacity (top_n - 1, the own block forced) + the own block
    for t in sizes:
        _, bits = nsa_bits(t, h, kh, d, jnp.float32 if args.tiny else jnp.bfloat16)
        bits = jnp.asarray(bits)[None]  # [1, K, T, C]
        ways = {
            "top_k": jax.jit(lambda b: by_top_k(b, slots)),
            "words": jax.jit(lambda b: routed.first_selected(b, slots)),
        }
        got = {name: np.asarray(fn(bits)) for name, fn in ways.items()}
        row = dict(seq_len=t, slots=slots, agree=bool(np.array_equal(got["top_k"], got["words"])))
        for name, fn in ways.items():
            row[f"{name}_ms"] = time_fn(fn, (bits,), reps=args.reps)[1] * 1e3
        flat = bits.reshape(-1, *bits.shape[2:])  # [F, T, C]
        pairs = t * slots
        listings = {
            "pairs_sort": jax.jit(functools.partial(by_sort, pairs=pairs)),
            "pairs_words": jax.jit(functools.partial(gathered._pairs_by_block, pairs=pairs)),
        }
        got = {name: [np.asarray(x) for x in fn(flat)] for name, fn in listings.items()}
        (tok_a, *rest_a), (tok_b, *rest_b) = got.values()
        total = rest_b[0].sum(1)  # a head's pairs; the tail past them is unused
        row["pairs_agree"] = all(
            np.array_equal(tok_a[i, :n], tok_b[i, :n]) for i, n in enumerate(total)
        ) and all(np.array_equal(a, b) for a, b in zip(rest_a, rest_b, strict=True))
        for name, fn in listings.items():
            row[f"{name}_ms"] = time_fn(fn, (flat,), reps=args.reps)[1] * 1e3
        g = gathered.Gathering(
            batch=1, group=h // kh, col_block=cfg.block_size, q_len=t, kv_len=t, q_offset=0,
            causal=True, slots=slots,
        )  # fmt: skip
        row["tiles_ms"] = time_fn(jax.jit(g.tiles), (bits,), reps=args.reps)[1] * 1e3
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
