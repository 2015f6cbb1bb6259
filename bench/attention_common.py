"""Shared pieces of the attention bench (`attention_gpu.py`): shapes, masks, inputs,
our kernels' callables, the timer, and the JSONL sink every mode writes through.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

B, H, D = 1, 16, 128
WINDOW = 1024
BLOCK = 128
DENSITY = 0.10
SEQS = [int(s) for s in os.environ.get("SEQS", "4096,16384,32768").split(",")]
INTERP: list = []
JSONL: list = []


def emit(**kw):
    """Print a JSON line and append it to the mode's JSONL file (`JSONL`) now
    (a run cut short by a timeout keeps what it measured)."""
    print(json.dumps(kw), flush=True)
    if JSONL:
        with open(JSONL[0], "a") as f:
            f.write(json.dumps(kw) + "\n")


def random_block_mask(nb: int, density: float = DENSITY, seed: int = 0):
    """[nb, nb] bool, diagonal kept, ~density of blocks kept overall."""
    rng = np.random.default_rng(seed)
    p = max(0.0, (density - 1.0 / nb) / (1.0 - 1.0 / nb))
    m = rng.random((nb, nb)) < p
    np.fill_diagonal(m, True)
    return m


def flops(S: int, kind: str, density: float = 1.0) -> float:
    full = 4.0 * B * H * S * S * D
    if kind == "causal":
        return full / 2
    if kind == "window":
        return 4.0 * B * H * S * min(S, WINDOW) * D
    if kind == "blocksparse":
        return full * density
    if kind == "causal_fwd_bwd":
        return 3.5 * full / 2
    return full


def jax_timer():
    import jax

    def timeit(f, arg_sets, target_s=0.04, reps=5):
        jax.block_until_ready(f(*arg_sets[0]))
        jax.block_until_ready(f(*arg_sets[-1]))
        t = time.perf_counter()
        jax.block_until_ready(f(*arg_sets[0]))
        one = time.perf_counter() - t
        iters = max(3, min(200, int(target_s / max(one, 1e-6))))
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            for i in range(iters):
                r = f(*arg_sets[i % len(arg_sets)])
            jax.block_until_ready(r)
            times.append((time.perf_counter() - t) / iters)
        return statistics.median(times), min(times), max(times)

    return timeit


def bench_masks(S):
    """name -> (kind [Tb, Sb] int8, mask_fn, density)."""
    from pallas_kernels.gpu import tables

    nb = S // BLOCK

    def causal_fn(qp, kp, h):
        return kp <= qp

    def window_fn(qp, kp, h):
        return (kp <= qp) & (qp - (WINDOW - 1) <= kp)

    bm = random_block_mask(nb)
    out = {
        "full": (np.full((nb, nb), 2, np.int8), None, 1.0),
        "causal": (tables.kind_causal_window(nb, nb, BLOCK, BLOCK), causal_fn, 0.5),
        "window": (
            tables.kind_causal_window(nb, nb, BLOCK, BLOCK, left=WINDOW - 1),
            window_fn,
            min(S, WINDOW) / S,
        ),
        "blocksparse": (np.where(bm, 2, 0).astype(np.int8), None, float(bm.mean())),
    }
    return out


def api_patterns(S):
    """The same masks as `bench_masks`, as jaxsparse patterns."""
    import jaxsparse as js
    from jaxsparse import patterns as P

    del js
    return {
        "full": P.Full(),
        "causal": P.Causal(),
        "window": P.Causal() & P.SlidingWindow(left=WINDOW - 1),
        "blocksparse": P.BlockMask(random_block_mask(S // BLOCK), block_q=BLOCK, block_kv=BLOCK),
    }


def make_ours(
    kind,
    mask_fn,
    *,
    scale=None,
    fwd_cfg=None,
    bwd_cfg=None,
    interpret=None,
    q_segment_ids=None,
    kv_segment_ids=None,
    **static,
):
    """(fwd(q,k,v) -> (out, lse), attention(q,k,v) -> out with custom_vjp)."""
    import jax
    import jax.numpy as jnp

    from pallas_kernels.gpu import api, tables

    kind = np.asarray(kind)
    if kind.ndim == 2:
        kind = kind[None, None]
    kv_tabs, q_tabs = tables.all_tables(kind)
    kv_tabs = tuple(map(jnp.asarray, kv_tabs))
    q_tabs = tuple(map(jnp.asarray, q_tabs))
    kw = dict(
        mask_fn=mask_fn,
        scale=scale,
        interpret=interpret,
        q_segment_ids=q_segment_ids,
        kv_segment_ids=kv_segment_ids,
        **static,
    )
    fwd_cfg = fwd_cfg or {}
    bwd_cfg = bwd_cfg or {}

    def fwd(q, k, v):
        return api.block_sparse_attention_fwd(q, k, v, *kv_tabs, **kw, **fwd_cfg)

    @jax.custom_vjp
    def attn(q, k, v):
        return fwd(q, k, v)[0]

    def attn_fwd(q, k, v):
        out, lse = fwd(q, k, v)
        return out, (q, k, v, out, lse)

    def attn_bwd(res, dout):
        q, k, v, out, lse = res
        return api.block_sparse_attention_bwd(
            q, k, v, out, lse, dout, None, *kv_tabs, *q_tabs, **kw, **bwd_cfg
        )

    attn.defvjp(attn_fwd, attn_bwd)
    return fwd, attn


def inputs(S, n_sets, dtype, Hh=H, K=None, Dd=D, Dv=None, B_=B, seed=0):
    import jax

    K = Hh if K is None else K
    Dv = Dd if Dv is None else Dv
    sets = []
    for i in range(n_sets):
        ks = jax.random.split(jax.random.key(seed + i), 3)
        sets.append(
            (
                jax.random.normal(ks[0], (B_, S, Hh, Dd), dtype),
                jax.random.normal(ks[1], (B_, S, K, Dd), dtype),
                jax.random.normal(ks[2], (B_, S, K, Dv), dtype),
            )
        )
    return sets


def env_record(mode):
    rec = dict(
        mode=mode,
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        python=platform.python_version(),
        argv=" ".join(sys.argv),
    )
    try:
        import jax
        import jaxlib

        rec.update(
            jax=jax.__version__, jaxlib=jaxlib.__version__, device=jax.devices()[0].device_kind
        )
    except Exception as e:  # pragma: no cover
        rec.update(jax_error=repr(e)[:200])
    try:
        import importlib.metadata as md

        rec["tokamax"] = md.version("tokamax")
    except Exception:
        pass
    return rec
