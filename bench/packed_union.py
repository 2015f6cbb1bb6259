"""How much wider a packed tile's block list is than its tokens' own selections (CPU).

Usage (repo root):
  python bench/packed_union.py [--sizes 8192,16384,32768]

Runs NSA's selection (`jaxsparse.nsa`, paper defaults, mean compressor) on the
synthetic "needle" inputs of the LLM benchmarks (H=16, K=2, D=128, float32)
and prints, for query tiles of 4, 8 and 16 tokens, the mean number of 64-key
blocks in the union of the tile's tokens' selections and its ratio to the
mean selected per token: the factor by which `jaxsparse.ops.packed` visits
more tiles than the selected (token, block) pairs. One JSON line per size and
tile.

`--regroup 64,256` also packs 16-token tiles from the tokens of each window
of that many consecutive tokens in another order (what a packed kernel with
per-row positions could do; nothing in `jaxsparse` regroups yet), two ways:
`sorted`, the window's tokens ordered by their selection read as a binary
number with the latest block most significant (one sort key per token: cheap
on device), and `greedy`, each tile grown from the window's first free token
by the token that adds the fewest blocks to its union (an estimate of what
regrouping can reach; not meant for the device).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax.numpy as jnp  # noqa: E402
import llm_synthetic  # noqa: E402
import numpy as np  # noqa: E402

import jaxsparse as js  # noqa: E402
from jaxsparse.methods import NSAConfig, nsa_compress  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="8192,16384,32768")
    ap.add_argument("--regroup", default="", help="window lengths in tokens, e.g. 64,256")
    args = ap.parse_args(argv)
    windows = [int(x) for x in args.regroup.split(",") if x]
    cfg = NSAConfig()
    for t in (int(x) for x in args.sizes.split(",")):
        task = llm_synthetic.make_task("needle", t=t, h=16, kh=2, d=128, seed=0, batch=1)
        q, k, v = (jnp.asarray(x, jnp.float32) for x in (task.q, task.k, task.v))
        k_cmp, v_cmp = (
            nsa_compress.mean_compress(x, kernel_size=cfg.kernel_size, stride=cfg.stride)
            for x in (k, v)
        )
        gates = jnp.full(q.shape[:3] + (3,), 0.5, jnp.float32)
        _, branches = js.nsa(
            q, k, v, gates, k_cmp=k_cmp, v_cmp=v_cmp, config=cfg, return_branches=True
        )
        bits = np.asarray(branches.selection.bits)  # [B, K, T, blocks]
        per_token = bits.sum(-1).mean()
        for tokens in (4, 8, 16):
            tiles = bits.reshape(bits.shape[0], bits.shape[1], t // tokens, tokens, -1)
            union = tiles.any(3).sum(-1).mean()
            row = dict(
                seq_len=t,
                tokens_per_tile=tokens,
                blocks_per_token=float(per_token),
                union_blocks_per_tile=float(union),
                ratio=float(union / per_token),
            )
            print(json.dumps(row), flush=True)
        for window in windows:
            for how in ("sorted", "greedy"):
                union = regrouped_union(bits, window=window, tokens=16, how=how)
                row = dict(
                    seq_len=t,
                    tokens_per_tile=16,
                    regroup_window=window,
                    regroup=how,
                    union_blocks_per_tile=union,
                    ratio=union / float(per_token),
                )
                print(json.dumps(row), flush=True)
    return 0


def regrouped_union(bits, *, window: int, tokens: int, how: str) -> float:
    """Mean union (blocks) of `tokens`-token tiles packed within windows of `window` tokens."""
    b, kh, t, nb = bits.shape
    if t % window or window % tokens:
        raise SystemExit(f"--regroup {window}: must divide T={t} and be a multiple of {tokens}")
    words = np.packbits(bits[..., ::-1], axis=-1)  # latest block first, most significant
    rows = words.reshape(-1, window, words.shape[-1])
    total = 0
    for w in rows:  # one (batch, kv head, window) at a time
        if how == "sorted":
            order = sorted(range(window), key=lambda i: w[i].tobytes())
            tiles = [order[i : i + tokens] for i in range(0, window, tokens)]
        else:
            tiles = _greedy_tiles(w, tokens)
        for tile in tiles:
            total += int(np.bitwise_count(np.bitwise_or.reduce(w[tile], axis=0)).sum())
    return total / (b * kh * t / tokens)


def _greedy_tiles(w, tokens: int):
    free = list(range(w.shape[0]))
    tiles = []
    while free:
        tile = [free.pop(0)]
        union = w[tile[0]].copy()
        while len(tile) < tokens:
            cand = w[free]
            growth = np.bitwise_count(cand & ~union).sum(-1)
            pick = free.pop(int(np.argmin(growth)))
            tile.append(pick)
            union |= w[pick]
        tiles.append(tile)
    return tiles


if __name__ == "__main__":
    raise SystemExit(main())
