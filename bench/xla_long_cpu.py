"""The XLA path at long context on CPU: causal T = S = 65,536, H = 4, D = 64, forward + backward.

Usage: python bench/xla_long_cpu.py [OUT_JSON] [--seq N]

Checks that memory stays O(T * block) (peak RSS is reported) and that the
result is finite; prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import jax
import jax.numpy as jnp

import jaxsparse as js
from jaxsparse import patterns as P


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?")
    ap.add_argument("--seq", type=int, default=65536)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    args = ap.parse_args()
    t, h, d = args.seq, args.heads, args.dim
    ks = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(kk, (1, t, h, d), jnp.float32) for kk in ks)

    def loss(q, k, v):
        return js.attention(q, k, v, pattern=P.Causal(), implementation="xla").sum()

    fwd = jax.jit(lambda q, k, v: js.attention(q, k, v, pattern=P.Causal(), implementation="xla"))
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    start = time.perf_counter()
    out = jax.block_until_ready(fwd(q, k, v))
    fwd_s = time.perf_counter() - start
    start = time.perf_counter()
    dq, dk, dv = jax.block_until_ready(grad(q, k, v))
    bwd_s = time.perf_counter() - start
    finite = bool(
        jnp.isfinite(out).all()
        & jnp.isfinite(dq).all()
        & jnp.isfinite(dk).all()
        & jnp.isfinite(dv).all()
    )
    row = dict(
        seq=t,
        heads=h,
        dim=d,
        dtype="float32",
        pattern="Causal()",
        forward_s_incl_compile=round(fwd_s, 1),
        fwd_bwd_s_incl_compile=round(bwd_s, 1),
        peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        dense_logits_gb=round(h * t * t * 4 / 2**30, 1),
        finite=finite,
        device=jax.devices()[0].device_kind,
    )
    print(json.dumps(row))
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
