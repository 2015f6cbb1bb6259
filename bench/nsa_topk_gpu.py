"""NSA's top-n block selection alone: XLA against the Pallas Triton kernel (GPU).

Usage (repo root, GPU machine):
  python bench/nsa_topk_gpu.py OUT_DIR [--seq 65536] [--reps 5] [--tiny]

Times `jaxsparse.methods.nsa_selection.select_blocks` on token-major
importance `[1, T, 2, T / 64]` (B=1, K=2, NSA's defaults: 16 blocks of 64
tokens, the initial block and two local ones forced) in XLA
(`Config(gpu_topk_kernel=False)`) and through `pallas_kernels/gpu/nsa_topk.py`
with 1, 2 and 4 rows a program, and checks that each gives XLA's bits. The
scores are rounded to multiples of 1/64 so that rows hold ties (ranked by
the lower block in both). Writes OUT_DIR/nsa_topk_gpu.jsonl, one row per
form. `--tiny` runs them at 2,048 tokens on CPU (the kernel in interpret mode).
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
import numpy as np  # noqa: E402

FORMS = {"xla": None, "kernel, 1 row a program": 1, "kernel, 2 rows": 2, "kernel, 4 rows": 4}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seq", type=int, default=65536)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="CPU, the kernel in interpret mode")
    args = ap.parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    import jaxsparse as js
    from jaxsparse.methods import nsa_selection
    from pallas_kernels.gpu import nsa_topk

    t = 2048 if args.tiny else args.seq
    nb = t // 64
    rng = np.random.default_rng(0)
    imp = jnp.asarray(np.round(rng.uniform(0, 1, (1, t, 2, nb)) * 64) / 64, jnp.float32)
    q_pos = jnp.arange(t, dtype=jnp.int32)
    kw = dict(block_size=64, top_n=16, init_blocks=1, local_blocks=2, token_axis=1)
    rows_out, want = [], None
    for name, rows in FORMS.items():
        cfg = js.Config(gpu_topk_kernel=rows is not None, interpret=args.tiny)
        patch = {} if rows is None else {"ROWS": rows}
        saved = {k: getattr(nsa_topk, k) for k in patch}
        for k, v in patch.items():
            setattr(nsa_topk, k, v)
        try:
            fn = jax.jit(functools.partial(nsa_selection.select_blocks, **kw, config=cfg))
            got = np.asarray(fn(imp, q_pos))
            row = dict(form=name, seq_len=t, blocks=nb, device=str(jax.devices()[0].device_kind))
            row["jax"] = jax.__version__
            want = got if want is None else want
            row["bits_equal_xla"] = bool(np.array_equal(got, want))
            row["selected"] = int(got.sum())
            if not args.tiny:
                from timing import time_fn

                row["ms"] = time_fn(fn, (imp, q_pos), reps=args.reps)[1] * 1e3
        finally:
            for k, v in saved.items():
                setattr(nsa_topk, k, v)
        print(json.dumps(row), flush=True)
        rows_out.append(row)
    with (out_dir / "nsa_topk_gpu.jsonl").open("w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows_out)
    return 0 if all(r["bits_equal_xla"] for r in rows_out) else 1


if __name__ == "__main__":
    raise SystemExit(main())
