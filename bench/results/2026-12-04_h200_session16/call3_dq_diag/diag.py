"""Session 16, call 3: where the gathered dK/dV kernel with dQ spends its time (NSA 64k step).

Variants of the kernel, set at trace time by JAXSPARSE_GATHERED_DQ_DIAG (a temporary switch,
removed after this call): "" (full), "noreduce" (dQ computed and staged, no TMA reduce-add),
"nomma" (dS^T stored, no dQ wgmma, no reduce); and the dQ kernel (Config(gpu_gathered_dq=False)).
Each full step timed with at least 3 and at least 20 back-to-back calls per sample. The dQ of
the two partial variants is wrong on purpose: only their time is of interest.
"""

import json
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, "bench")
import llm_sparse_gpu as L  # noqa: E402
import llm_synthetic  # noqa: E402
from timing import time_fn  # noqa: E402

import jaxsparse as js  # noqa: E402
from jaxsparse.methods import NSAConfig  # noqa: E402

out = open(sys.argv[1], "w")  # noqa: SIM115 (as run; this comment added after the run)
t, h, kh, d = 65536, 16, 2, 128
task = llm_synthetic.make_task("needle", t=t, h=h, kh=kh, d=d, seed=0, batch=1)
q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in (task.q, task.k, task.v))
del task
cot = jax.random.normal(jax.random.key(1), q.shape, jnp.float32)
gates = L.nsa_gates(q)
runs = [
    ("full", "", None),
    ("noreduce", "noreduce", None),
    ("nomma", "nomma", None),
    ("dQ kernel", "", js.Config(gpu_gathered_dq=False)),
]
for name, diag, config in runs:
    os.environ["JAXSPARSE_GATHERED_DQ_DIAG"] = diag
    fb = jax.jit(jax.grad(L.nsa_loss(NSAConfig(), config), argnums=(0, 1, 2, 3)))
    for min_iters in (3, 20):
        _, sec = time_fn(fb, (q, k, v, gates, cot), reps=5, min_iters=min_iters)
        row = dict(variant=name, min_iters=min_iters, fwd_bwd_ms=sec * 1e3)
        print(row, flush=True)
        out.write(json.dumps(row) + "\n")
        out.flush()
