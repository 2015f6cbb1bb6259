"""One neighborhood-attention call, a few times, for a profiler (ncu) or a compiler dump.

Usage (GPU machine, repo root):
  python bench/vision_once.py [--case na2d] [--mode fwd|fwd_bwd] [--calls 3] [--dense]

Runs the `pattern_tiled` variant of `bench/vision_gpu.py` (tokens already in
box order, so the attention kernels are the only device work of note), or
dense attention with `--dense`, and prints the median time per call of
`--calls` samples of back-to-back calls (`bench/timing.py`). Wrap it in
`ncu --clock-control none ...` or set `MOSAIC_GPU_DUMP_PTXAS=1
MOSAIC_GPU_DUMP_TO=DIR` to see registers and spills.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import vision_gpu  # noqa: E402
from timing import time_fn  # noqa: E402

import jaxsparse as js  # noqa: E402
from jaxsparse import patterns as P  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", default="na2d", choices=[c.name for c in vision_gpu.FULL])
    ap.add_argument("--mode", default="fwd", choices=("fwd", "fwd_bwd"))
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--dense", action="store_true", help="dense attention instead")
    ap.add_argument("--tiny", action="store_true", help="CPU check (tiny case, XLA path)")
    ap.add_argument("--tile", default="", help="box shape, e.g. 4,4,8 (default: the pattern's)")
    ap.add_argument(
        "--persistent",
        default="auto",
        choices=("auto", "yes", "no"),
        help="Config.gpu_persistent for the forward kernel (auto: the kernels' rule)",
    )
    args = ap.parse_args(argv)
    cases = vision_gpu.TINY if args.tiny else vision_gpu.FULL
    case = next(c for c in cases if c.name == args.case)
    tile = tuple(int(x) for x in args.tile.split(",")) if args.tile else None
    pattern = (
        None if args.dense else P.Neighborhood(case.grid, case.window, tile=tile, tiled_order=True)
    )
    persistent = {"auto": None, "yes": True, "no": False}[args.persistent]
    config = js.Config(
        block_q=vision_gpu.BLOCK, block_kv=vision_gpu.BLOCK, gpu_persistent=persistent
    )
    impl = "xla" if args.tiny else "pallas_gpu"
    n = P.Neighborhood(case.grid, case.window).num_tokens
    keys = jax.random.split(jax.random.key(0), 4)
    shape = (1, n, case.heads, case.head_dim)
    q, k, v, dout = (jax.random.normal(x, shape, jnp.float32).astype(case.dtype) for x in keys)

    def attend(q, k, v):
        return js.attention(q, k, v, pattern=pattern, implementation=impl, config=config)

    if args.mode == "fwd":
        fn = jax.jit(attend)
        call_args = (q, k, v)
    else:
        fn = jax.jit(lambda q, k, v, dout: jax.vjp(attend, q, k, v)[1](dout))
        call_args = (q, k, v, dout)
    _, seconds = time_fn(fn, call_args, reps=args.calls)
    what = "dense" if args.dense else repr(pattern)
    print(
        f"{case.name} {args.mode} {what} persistent={args.persistent}: "
        f"median {seconds * 1e3:.3f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
