"""What building the gathered dK/dV tiles costs, and two ways to list each row's blocks.

Usage (repo root, GPU machine):
  python bench/gathered_tiles_gpu.py [--sizes 65536,131072] [--reps 5] [--tiny]

`jaxsparse.ops.gathered.Gathering.tiles` turns NSA's bits `[B, K, T, C]` into
gathered tiles and work items inside the backward. Its first step lists each
row's selected blocks: `routed.first_selected` packs a row's bits into C/32
words and takes the lowest set bit `slots` times (population counts, no
sort); `by_top_k`, its form before session 14, ranks every bit with `top_k` (a
sort of C entries per row). This script checks the two agree index for index and times them, and
the whole tile build, on the needle inputs with NSA's defaults (B=1, H=16,
K=2, D=128, bf16; `bench/gathered_loads_gpu.nsa_bits`). Prints JSON lines.
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

from jaxsparse.ops import gathered, routed  # noqa: E402
from jaxsparse.selection import topk  # noqa: E402


def by_top_k(bits, slots: int):
    """The first `slots` set bits per row by `top_k` over their ranks (c where fewer): what
    `routed.first_selected` did before session 14."""
    c = bits.shape[-1]
    score = jnp.where(bits, -jnp.arange(c, dtype=jnp.float32), -jnp.inf)
    idx = topk.topk_indices(score, slots)
    return jnp.where(idx >= 0, idx, c).astype(jnp.int32)


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
        g = gathered.Gathering(
            batch=1, group=h // kh, col_block=cfg.block_size, q_len=t, kv_len=t, q_offset=0,
            causal=True, slots=slots,
        )  # fmt: skip
        row["tiles_ms"] = time_fn(jax.jit(g.tiles), (bits,), reps=args.reps)[1] * 1e3
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
