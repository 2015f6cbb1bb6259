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
    args = ap.parse_args(argv)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
