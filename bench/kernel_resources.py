"""Registers, spills and shared memory of our Mosaic GPU kernels, from ptxas.

Usage (on the GPU machine, from the repo root):
  PYTHONPATH=. python bench/kernel_resources.py [--seq 4096] [--configs default,dq_in_dkv]

Compiles dense causal attention's forward and backward (B=1, H=16, D=128, bf16)
once per named Config with Mosaic GPU's ptxas report on (`MOSAIC_GPU_DUMP_PTXAS`),
and prints what ptxas said of each kernel: registers per thread, spill stores and
loads, stack frame. A kernel that spills its accumulators runs far below the
speed its matmuls allow; this is how to see it without hardware counters.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("MOSAIC_GPU_DUMP_PTXAS", "1")

# name: (Config fields, bench/nsa_glue.py switches, "+"-joined or "library")
CONFIGS = {
    "default": ({}, "library"),
    "dq_in_dkv": ({"gpu_dq_in_dkv": True}, "library"),
    "dq_in_dkv_hand_over": ({"gpu_dq_in_dkv": True}, "dq hand-over"),
    "dq_in_dkv_regs_240": ({"gpu_dq_in_dkv": True}, "dq regs 240"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)}")
    args = ap.parse_args()
    names = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        ap.error(f"--configs: unknown {unknown}; choose from {sorted(CONFIGS)}")

    import jax
    import jax.numpy as jnp
    import nsa_glue

    import jaxsparse as js

    key = jax.random.split(jax.random.key(0), 3)
    shape = (1, args.seq, 16, 128)
    q, k, v = (jax.random.normal(kk, shape, jnp.bfloat16) for kk in key)
    for name in names:
        fields, glue = CONFIGS[name]
        config = js.Config(**fields)

        def loss(q, k, v, config=config):
            out = js.attention(q, k, v, pattern=js.patterns.Causal(), config=config)
            return out.astype(jnp.float32).sum()

        print(f"===== config {name}: {fields}, {glue}", flush=True)
        with nsa_glue.patched(glue):
            grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
            jax.block_until_ready(grads)
        print(f"===== end {name}", flush=True)


if __name__ == "__main__":
    main()
