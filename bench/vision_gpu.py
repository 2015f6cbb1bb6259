"""Issue 5 benchmark: neighbourhood attention on image and video grids (H100).

Usage (GPU machine, repo root):
  python bench/vision_gpu.py OUT_DIR          # full sizes -> OUT_DIR/vision_gpu.jsonl
  python bench/vision_gpu.py OUT_DIR --tiny   # CPU check at tiny sizes -> vision_tiny.jsonl
                                              # (or JAXSPARSE_BENCH_TINY=1)
  --variants dense,pattern_tiled  --cases na2d  # a subset

Cases (B=1, H=16 heads, D=128, bfloat16; the head count and dim match
bench/attention_gpu.py so dense times are comparable):
  na2d  128x128 grid (16384 tokens), 13x13 window
  na3d  16x64x64 grid (65536 tokens), 5x9x9 window
Variants, each forward ("fwd") and forward+backward ("fwd_bwd"):
  dense        jaxsparse.attention with no pattern (full attention)
  cudnn        jax.nn.dot_product_attention(implementation="cudnn"), full (anchor)
  pattern      patterns.Neighborhood: tokens reordered into 128-token boxes
               internally (two gathers per call), closed-form block lists,
               mask only on partial tiles
  pattern_tiled  the same with tokens already in the tiled order
               (`tiled_order=True`, as a model that keeps activations tiled):
               the attention itself, without the gathers
  pattern_tiled_kv64  pattern_tiled with 64-key tiles (Config(block_q=128, block_kv=64)):
               half a box per key tile, so fewer wasted keys per visited tile
  mask         the same attention as an explicit element mask (patterns.Mask,
               natural token order), passed as a jit argument, so its metadata is
               built on device from the N x N mask in every call
Every variant (but pattern_tiled_kv64) uses Config(block_q=128, block_kv=128); each first tries
implementation="pallas_gpu"; if the kernel raises NotImplementedError (explicit
element masks do: the kernels evaluate only arithmetic masks) it runs on
implementation="xla". A variant that fails otherwise (e.g. out of memory) is
recorded with its error and the run goes on.

Each JSON line: case, variant, mode, implementation, time_ms (median per call of
back-to-back calls, see `bench/timing.py`), plus
  density_element  kept pairs / N^2 (what the mask allows)
  density_tile     visited 128x128 tiles / all tiles (what a block-sparse kernel
                   must compute: the FLOP bound of block-sparse attention)
  ratio_tile       density_tile * dense_ms / time_ms   (issue target: >= 0.7)
  ratio_element    density_element * dense_ms / time_ms
  rel_err          (pattern_tiled, mask) output vs the pattern variant's
  implementation   "pallas_gpu" when the kernel ran, else "xla" (with the kernel's
                   NotImplementedError reason in pallas_gpu_error)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from timing import time_fn

import jaxsparse as js
from jaxsparse import patterns as P
from jaxsparse import sparsity as S


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    grid: tuple[int, ...]
    window: tuple[int, ...]
    heads: int
    head_dim: int
    dtype: str = "bfloat16"


FULL = [
    Case("na2d", (128, 128), (13, 13), heads=16, head_dim=128),
    Case("na3d", (16, 64, 64), (5, 9, 9), heads=16, head_dim=128),
]
TINY = [
    Case("na2d", (32, 32), (5, 5), heads=2, head_dim=64),
    Case("na3d", (4, 16, 16), (3, 3, 3), heads=2, head_dim=64),
]
BLOCK = 128


def emit(out_path: str, **record) -> None:
    print(json.dumps(record), flush=True)
    with open(out_path, "a") as f:
        f.write(json.dumps(record) + "\n")


def element_density(pattern: P.Neighborhood) -> float:
    """Kept pairs / N^2 in closed form: the rule is a product over axes."""
    kept = math.prod(int(pattern.axis_mask(a).sum()) for a in range(len(pattern.grid)))
    return kept / pattern.num_tokens**2


def natural_mask(pattern: P.Neighborhood) -> np.ndarray:
    """The element mask `[N, N]` in natural row-major order (Kronecker product of axes)."""
    m = np.ones((1, 1), bool)
    for a in range(len(pattern.grid)):
        m = np.kron(m, pattern.axis_mask(a)).astype(bool)
    return m


def make_variants(case: Case, tiny: bool):
    pattern = P.Neighborhood(case.grid, case.window)
    config = js.Config(block_q=BLOCK, block_kv=BLOCK)

    def ours(pattern_or_none, config=config):
        def f(q, k, v, impl):
            return js.attention(
                q, k, v, pattern=pattern_or_none, implementation=impl, config=config
            )

        return f

    def with_mask(q, k, v, mask, impl):
        return js.attention(q, k, v, pattern=P.Mask(mask), implementation=impl, config=config)

    def cudnn(q, k, v, impl):
        del impl
        return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")

    tiled = dataclasses.replace(pattern, tiled_order=True)
    variants = {  # name -> (function, takes the mask, takes tokens in tiled order)
        "dense": (ours(None), False, False),
        "pattern": (ours(pattern), False, False),
        "pattern_tiled": (ours(tiled), False, True),
        "pattern_tiled_kv64": (ours(tiled, js.Config(block_q=BLOCK, block_kv=64)), False, True),
        "mask": (with_mask, True, False),
    }
    if not tiny:
        variants["cudnn"] = (cudnn, False, False)
    return pattern, variants


def run_variant(f, uses_mask, mode, q, k, v, mask, impl, reps):
    """Jit `f` for one mode and time it; returns (first_s, median_s, output)."""
    extra = (mask,) if uses_mask else ()
    if mode == "fwd":
        g = jax.jit(lambda q, k, v, *m: f(q, k, v, *m, impl))
        args = (q, k, v, *extra)
    else:

        def g(q, k, v, dout, *m):
            out, vjp = jax.vjp(lambda q, k, v: f(q, k, v, *m, impl), q, k, v)
            return out, vjp(dout)

        g = jax.jit(g)
        # The cotangent is an argument: a constant one lets XLA fold whole backward ops.
        dout = jax.random.normal(jax.random.key(7), q.shape, jnp.float32).astype(q.dtype)
        args = (q, k, v, dout, *extra)
    first, med = time_fn(g, args, reps=reps)
    out = g(*args)
    return first, med, (out if mode == "fwd" else out[0])


def bench_case(
    case: Case, out_path: str, *, tiny: bool, reps: int, common: dict, keep=None
) -> None:
    pattern, variants = make_variants(case, tiny)
    if keep is not None:
        variants = {name: v for name, v in variants.items() if name in keep}
    n = pattern.num_tokens
    dtype = jnp.dtype(case.dtype)
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    shape = (1, n, case.heads, case.head_dim)
    q, k, v = (jax.random.normal(key, shape, jnp.float32).astype(dtype) for key in (kq, kk, kv))
    mask = jnp.asarray(natural_mask(pattern))
    t = time.perf_counter()
    sp = S.from_pattern(pattern, q_len=n, kv_len=n, block_q=BLOCK, block_kv=BLOCK)
    metadata_s = time.perf_counter() - t
    info = dict(
        case.__dict__,
        tokens=n,
        tile=pattern.tile,
        block=BLOCK,
        metadata_s=round(metadata_s, 4),
        density_element=element_density(pattern),
        density_tile=sp.density(),
        max_kv_tiles=int(sp.kv_counts.max()),
        **common,
    )
    perm = pattern.permutation()
    inverse = np.argsort(perm)
    tiled_inputs = tuple(x[:, perm] for x in (q, k, v))  # reordered once, outside the timing
    candidates = ("xla",) if tiny else ("pallas_gpu", "xla")
    dense_ms, outputs = {}, {}
    names = ("dense", "cudnn", "pattern", "pattern_tiled", "pattern_tiled_kv64", "mask")
    for mode in ("fwd", "fwd_bwd"):
        # Explicit masks last: at 65k tokens their N x N metadata build may run out of memory.
        for name in [v for v in names if v in variants]:
            f, uses_mask, takes_tiled = variants[name]
            args = tiled_inputs if takes_tiled else (q, k, v)
            record = dict(info, variant=name, mode=mode)
            try:
                for impl in candidates:
                    try:
                        first, med, out = run_variant(f, uses_mask, mode, *args, mask, impl, reps)
                        break
                    except NotImplementedError as e:  # not on the kernel: try the XLA path
                        record[f"{impl}_error"] = str(e)[:300]
                else:
                    raise RuntimeError("no implementation could run this variant")
                out = out[:, inverse] if takes_tiled else out
            except Exception as e:  # noqa: BLE001 - record it and go on with other variants
                record.update(
                    error=f"{type(e).__name__}: {e}"[:500], traceback=traceback.format_exc()[-1500:]
                )
                emit(out_path, **record)
                continue
            record.update(
                implementation="cudnn" if name == "cudnn" else impl,
                compile_s=round(first, 3),
                time_ms=round(med * 1e3, 4),
            )
            outputs[name, mode] = out
            if name == "dense":
                dense_ms[mode] = med * 1e3
            if (name.startswith("pattern_") or name == "mask") and ("pattern", mode) in outputs:
                # The same attention by another route: outputs must agree.
                a, b = out.astype(jnp.float32), outputs["pattern", mode].astype(jnp.float32)
                record["rel_err"] = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))
            if mode in dense_ms and (name.startswith("pattern") or name == "mask"):
                for kind in ("tile", "element"):
                    bound = info[f"density_{kind}"] * dense_ms[mode]
                    record[f"ratio_{kind}"] = round(bound / (med * 1e3), 4)
            emit(out_path, **record)
        outputs.clear()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--tiny", action="store_true", help="CPU check at tiny sizes")
    ap.add_argument(
        "--variants",
        default="",
        help="comma-separated variants to run (default all; dense is always run: the ratios "
        "need it)",
    )
    ap.add_argument("--cases", default="", help="comma-separated cases (na2d, na3d); default all")
    args = ap.parse_args(argv)
    tiny = args.tiny or os.environ.get("JAXSPARSE_BENCH_TINY") == "1"
    os.makedirs(args.out_dir, exist_ok=True)
    name = "vision_gpu.jsonl" if not tiny else "vision_tiny.jsonl"
    out_path = os.path.join(args.out_dir, name)
    keep = {v for v in args.variants.split(",") if v} | {"dense"} if args.variants else None
    # The device machine's copy of the tree may carry a stale .git: a command
    # script names the commit it runs in JAXSPARSE_COMMIT.
    commit = os.environ.get("JAXSPARSE_COMMIT", "")
    if not commit:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
            ).stdout.strip()
        except OSError:
            commit = ""
    common = dict(
        device=str(jax.devices()[0].device_kind),
        jax=jax.__version__,
        commit=commit,
        host=platform.node(),
        tiny=tiny,
        when=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    cases = [
        c for c in (TINY if tiny else FULL) if not args.cases or c.name in args.cases.split(",")
    ]
    for case in cases:
        bench_case(case, out_path, tiny=tiny, reps=3 if tiny else 10, common=common, keep=keep)
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
