"""The dK/dV kernel's work splits, each on and off side by side (GPU).

Usage (repo root, GPU machine):
  python bench/dkv_split_gpu.py OUT_DIR [--sizes 16384,65536] [--reps 5]
      [--option heads|q|lists]

Times forward+backward of GQA attention (B=1, H=16, K=2, D=128, bf16, as the
LLM benchmarks), in one run:
  * `--option heads` (`Config(gpu_dkv_split_heads=...)`: one CTA per query
    head, or per kv head): dense causal attention, a short key sequence
    (NSA's compressed keys: T queries over T/16 keys, `CompressedCausal(32, 16)`)
    and a 512-key sliding window (NSA's third branch).
  * `--option q` (`Config(gpu_dkv_q_split=...)`: two warpgroups share each
    64-key block, or one works alone): causal attention on 128x64 tiles and a
    512-key sliding window on 128x64 tiles.
  * `--option lists` (`Config(gpu_dkv_list_splits=P)`, P = 1, 2, 4, 8: CTAs
    sharing each key block's list of query tiles): NSA's compressed keys and
    its 512-key sliding window, as in `heads`.
Writes OUT_DIR/dkv_split_gpu.jsonl (`split` says which setting ran).
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
from timing import time_fn  # noqa: E402

import jaxsparse as js  # noqa: E402
from jaxsparse import patterns as P  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--sizes", default="16384,65536")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="CPU check (XLA path, tiny sizes)")
    ap.add_argument("--option", default="heads", choices=("heads", "q", "lists"))
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [512] if args.tiny else [int(s) for s in args.sizes.split(",")]
    h, kh, d = (2, 1, 64) if args.tiny else (16, 2, 128)
    dtype = jnp.float32 if args.tiny else jnp.bfloat16
    impl = "xla" if args.tiny else "pallas_gpu"
    rows = []
    for t in sizes:
        keys = jax.random.split(jax.random.key(t), 4)
        q = jax.random.normal(keys[0], (1, t, h, d), dtype)
        nsa_branches = {
            "compressed keys (NSA branch 1)": (P.CompressedCausal(32, 16), (t - 32) // 16 + 1),
            "sliding window 512 (NSA branch 3)": (P.Causal() & P.SlidingWindow(left=511), t),
        }
        settings = (False, True)
        if args.option == "heads":
            field, tiles = "gpu_dkv_split_heads", {}
            cases = {"causal": (P.Causal(), t), **nsa_branches}
        elif args.option == "lists":
            field, tiles, cases, settings = "gpu_dkv_list_splits", {}, nsa_branches, (1, 2, 4, 8)
        else:
            field, tiles = "gpu_dkv_q_split", dict(block_q=128, block_kv=64)
            cases = {
                "causal, 128x64 tiles": (P.Causal(), t),
                "sliding window 512, 128x64 tiles": (P.Causal() & P.SlidingWindow(left=511), t),
            }
        for name, (pattern, s) in cases.items():
            k = jax.random.normal(keys[1], (1, s, kh, d), dtype)
            v = jax.random.normal(keys[2], (1, s, kh, d), dtype)
            cot = jax.random.normal(keys[3], q.shape, dtype)
            for split in settings:
                config = js.Config(**{field: split}, **tiles)

                def loss(q, k, v, pattern=pattern, config=config, cot=cot):
                    o = js.attention(
                        q, k, v, pattern=pattern, q_offset=0, implementation=impl, config=config
                    )
                    return jnp.sum(o.astype(jnp.float32) * cot.astype(jnp.float32))

                fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
                _, sec = time_fn(fn, (q, k, v), reps=args.reps)
                row = dict(
                    case=name,
                    seq_len=t,
                    kv_len=s,
                    option=field,
                    split=split,
                    fwd_bwd_ms=sec * 1e3,
                    device=str(jax.devices()[0].device_kind),
                    jax=jax.__version__,
                )
                print(json.dumps(row), flush=True)
                rows.append(row)
    with (out / "dkv_split_gpu.jsonl").open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
