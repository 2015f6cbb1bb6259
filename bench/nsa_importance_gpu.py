"""NSA's block importance: the eight attention calls against the fused kernel, side by side.

Usage (repo root, GPU machine):
  python bench/nsa_importance_gpu.py [--sizes 65536,131072] [--reps 5] [--tiny]

For the bench's shapes (B=1, H=16, K=2, D=128, bf16, the needle inputs, NSA's
defaults, mean compressor) it times `nsa_selection.block_importance_by_attention`
(what `nsa_select` runs by default) and `pallas_kernels.gpu.nsa_importance` with
one and with two consumer warpgroups, back to back (`bench/timing.time_fn`),
and gives each kernel's largest error against the attention calls relative to
the largest importance. `--tiny` runs the kernel in GPU interpret mode on CPU
(tiny shapes; checks the script, times nothing meaningful). Prints JSON lines.
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
import llm_methods  # noqa: E402
import llm_synthetic  # noqa: E402
from timing import time_fn  # noqa: E402

from jaxsparse.methods import NSAConfig, nsa_selection  # noqa: E402
from jaxsparse.ops import pallas_gpu  # noqa: E402
from pallas_kernels.gpu import nsa_importance  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="65536,131072")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="CPU check in GPU interpret mode")
    args = ap.parse_args(argv)
    cfg = NSAConfig()
    nsa = dict(kernel_size=cfg.kernel_size, stride=cfg.stride, block_size=cfg.block_size)
    if args.tiny:
        from jax.experimental.pallas import mosaic_gpu as plgpu

        sizes, (h, kh, d), reps = [1536], (4, 2, 64), 1
        interpret = plgpu.InterpretGPUParams(detect_races=False)
    else:
        sizes = [int(x) for x in args.sizes.split(",")]
        (h, kh, d), reps, interpret = (16, 2, 128), args.reps, None
    for t in sizes:
        task = llm_synthetic.make_task("needle", t=t, h=h, kh=kh, d=d, seed=0, batch=1)
        q, k = (jnp.asarray(x, jnp.bfloat16) for x in (task.q, task.k))
        k_cmp, lse = llm_methods.nsa_compressed_branch(q, k, cfg)
        kw = dict(**nsa, num_blocks=-(-t // cfg.block_size), scale=d**-0.5, q_offset=0)
        calls = functools.partial(nsa_selection.block_importance_by_attention, **kw)
        variants = {"attention calls": jax.jit(calls)}
        for nwg in (1, 2):
            kernel = functools.partial(
                nsa_importance.block_importance, **kw, warpgroups=nwg, interpret=interpret
            )
            variants[f"kernel, {nwg} warpgroup(s)"] = jax.jit(kernel)
        want = None
        for name, f in variants.items():
            with pallas_gpu.interpret_context(args.tiny):
                out = f(q, k_cmp, lse)
                first, ms = time_fn(f, (q, k_cmp, lse), reps=reps)
            row = dict(seq_len=t, variant=name, ms=ms * 1e3, first_call_s=first)
            if want is None:
                want = out
            else:
                scale = float(jnp.abs(want).max())
                row["max_error_rel"] = float(jnp.abs(out - want).max()) / scale
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
