"""The gathered dK/dV(/dQ) kernel alone, in each of its modes, on NSA's real tiles (GPU).

Usage (repo root, GPU machine):
  python bench/gathered_modes_gpu.py OUT_DIR [--seq 65536] [--reps 5] [--modes a,b,...]
      [--tiny]

Session 22 found this kernel, NSA's selected-branch backward, to be where
the H100 loses against the H200: 8.25 against 5.90 ms a step at 64k, the
ratio of the cards' HBM bandwidth, so bound by DRAM traffic. Which traffic:
Q/dO reads, the float32 dQ reduce-adds or the dK/dV ones? This script times
the kernel (with its stats gather, the float32 sums' zeroing and their final
cast: what the step pays for it) on the tiles of NSA's selection of the
needle inputs (`bench/llm_methods.nsa_bits`: B=1, H=16, K=2, D=128, bf16,
NSA's defaults, mean compressor), the tiles built beforehand, in the modes

  dq N chunks (512, 1k, 2k, 4k, 8k; the library: 4k): dQ, dK, dV all
      added into float32 sums by TMA reduce-adds, items in token chunks;
  dq block order: the same, items block by block (chunk 0);
  dq 4k chunks dK/dV partials: each item writes its partial dK/dV, summed
      by XLA;
  dq 1k chunks live items only: the items with tiles alone, the empty tail
      of the static bound cut off (timing only: what the empty CTAs cost);
  dq Nk chunks one slot a warpgroup: one Q/dO slot per consumer warpgroup
      (the library before session 25; it now has two, so that a
      warpgroup's next tile loads while it works on this one);
  dq Nk chunks regs 232: the consumer warpgroups get 232 registers a thread
      and the producer 40 (the library before session 25; now 240 and 24);
  dq Nk chunks without dq adds: dQ computed and staged in SMEM as in the
      library, its reduce-adds left out (timing only: the dQ is wrong), so
      the adds' cost is the difference to `dq Nk chunks`;
  no dq 4k chunks / no dq block order: dK/dV only (per-item partials), the
      library below 64k tokens, where the dQ kernel runs instead.

Run it on both cards: the modes whose time grows by the bandwidth ratio are
the traffic that misses L2. Writes OUT_DIR/gathered_modes_gpu.jsonl (one row
per mode: ms, selected pairs, tiles, items). `--tiny` runs every mode in GPU
interpret mode on CPU at 256 tokens and checks each against the first one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Mode:
    name: str
    chunk: int  # query tokens per chunk of the items' order; 0: block order
    dq: bool = True
    add_dkv: bool = True  # with dq: dK/dV by reduce-adds (else per-item partials)
    dq_adds: bool = True  # False: dQ computed and staged, never added (timing only: dQ wrong)
    regs_232: bool = False  # consumers 232 registers a thread, producer 40 (else 240 and 24)
    live_only: bool = False  # items with tiles only (timing only: what empty CTAs cost)
    one_slot: bool = False  # with dq: one Q/dO slot a warpgroup (else two)

    @property
    def glue(self) -> str:
        """The `bench/nsa_glue.py` switches this mode runs the kernel with."""
        parts = (
            ([] if self.add_dkv else ["dkv partials"])
            + (["gathered regs 232"] if self.regs_232 else [])
            + (["gathered dq 2 stages"] if self.one_slot else [])
        )
        return "+".join(parts) or "library"


MODES = {
    m.name: m
    for m in (
        Mode("dq 512 chunks", 512),
        Mode("dq 1k chunks", 1024),
        Mode("dq 2k chunks", 2048),
        Mode("dq 4k chunks (library)", 4096),
        Mode("dq 8k chunks", 8192),
        Mode("dq block order", 0),
        Mode("dq 4k chunks dK/dV partials", 4096, add_dkv=False),
        Mode("dq 1k chunks live items only", 1024, live_only=True),
        Mode("dq 1k chunks one slot a warpgroup", 1024, one_slot=True),
        Mode("dq 4k chunks one slot a warpgroup", 4096, one_slot=True),
        Mode("dq 1k chunks regs 232", 1024, regs_232=True),
        Mode("dq 4k chunks regs 232", 4096, regs_232=True),
        Mode("dq 1k chunks without dq adds", 1024, dq_adds=False),
        Mode("dq 4k chunks without dq adds", 4096, dq_adds=False),
        Mode("no dq 4k chunks", 4096, dq=False),
        Mode("no dq block order", 0, dq=False),
    )
}


def inputs(t: int, h: int, kh: int, d: int, dtype):
    """q, k, v (natural layout), NSA's bits `[B, K, T, blocks]` on the needle inputs."""
    import llm_methods
    import llm_synthetic

    from jaxsparse.methods import NSAConfig

    task = llm_synthetic.make_task("needle", t=t, h=h, kh=kh, d=d, seed=0, batch=1)
    q, k, v = (jnp.asarray(x, dtype) for x in (task.q, task.k, task.v))
    return q, k, v, llm_methods.nsa_bits(q, k, NSAConfig())


@contextlib.contextmanager
def _without_dq_adds(bdg, group: int):
    """Trace `bdg`'s kernel with its dQ reduce-adds (TMA reduce-adds of `[group, D]` boxes)
    left out: `bdg.plgpu` is swapped for a namespace whose `copy_smem_to_gmem` drops them.
    The dK/dV sums' adds (`[64, D]` boxes) and every other copy are kept."""
    real = bdg.plgpu

    def copy_smem_to_gmem(src, dst, *args, reduction_op=None, **kw):
        if reduction_op == "add" and src.shape[0] == group:
            return None
        return real.copy_smem_to_gmem(src, dst, *args, reduction_op=reduction_op, **kw)

    proxy = types.SimpleNamespace(
        **{n: getattr(real, n) for n in dir(real) if not n.startswith("__")}
    )
    proxy.copy_smem_to_gmem = copy_smem_to_gmem
    bdg.plgpu = proxy
    try:
        yield
    finally:
        bdg.plgpu = real


def kernel_fn(mode: Mode, *, group: int, kv_len: int, interpret=None):
    """`f(q_p, k, v, do_p, lse2, delta, tiles) -> (dq or None, dk, dv)` of `mode` (trace it
    under `nsa_glue.patched(mode.glue)`)."""
    from pallas_kernels.gpu import api_args
    from pallas_kernels.gpu import backward_dkv_gathered as bdg

    def f(q, k, v, do, lse2, delta, tiles):
        st = api_args.statics(
            q, k, mask_fn=None, mask_factors=None, q_offset=0, kv_len=kv_len, scale=None,
            logits_soft_cap=None, has_segments=False, segments_on_full_tiles=False,
            interpret=interpret,
        )  # fmt: skip
        adds = contextlib.nullcontext() if mode.dq_adds else _without_dq_adds(bdg, group)
        with adds:  # traced here: the kernel's body is built inside
            out = bdg.dkv(
                q, k, v, do, lse2, delta, tiles, group=group, num_stages=2, st=st,
                with_dq=mode.dq,
            )  # fmt: skip
        return out if mode.dq else (None, *out)

    return jax.jit(f)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seq", type=int, default=65536)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated of {list(MODES)}")
    ap.add_argument("--tiny", action="store_true", help="CPU check in GPU interpret mode")
    args = ap.parse_args(argv)
    names = [n for n in args.modes.split(",") if n]
    unknown = sorted(set(names) - set(MODES))
    if unknown:
        ap.error(f"--modes: unknown {unknown}; choose from {list(MODES)}")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    import nsa_glue
    from jax.experimental.pallas import mosaic_gpu as plgpu

    from jaxsparse.ops import gathered, pallas_gpu
    from pallas_kernels.gpu import backward_dkv_gathered as bdg

    if args.tiny:
        t, (h, kh, d), dtype = 256, (16, 2, 64), jnp.bfloat16
        interpret = plgpu.InterpretGPUParams(detect_races=False)
    else:
        t, (h, kh, d), dtype, interpret = args.seq, (16, 2, 128), jnp.bfloat16, None
    g = h // kh
    q, k, v, bits = inputs(t, h, kh, d, dtype)
    keys = jax.random.split(jax.random.key(1), 2)
    do = jax.random.normal(keys[0], q.shape, dtype)
    q_p, do_p = (bdg.by_row(bdg.token_view(x, g)) for x in (q, do))
    rows = q_p.shape[1]
    lse2 = jax.random.uniform(keys[1], (1, kh, rows), jnp.float32, 4.0, 6.0)  # log2 units
    delta = jnp.zeros((1, kh, rows), jnp.float32)
    pairs = int(np.asarray(bits).sum())
    rows_out, first = [], None
    for name in names:
        mode = MODES[name]
        gathering = gathered.Gathering(
            batch=1, group=g, col_block=64, q_len=t, kv_len=t, q_offset=0, causal=True,
            slots=16, dq=mode.dq, chunk=mode.chunk,
            # the library's (until session 25's call 9 this script kept ITEM_TILES)
            item_tiles=gathered.item_tiles(mode.dq),
        )  # fmt: skip
        tiles = jax.jit(gathering.tiles)(bits)
        if mode.live_only:  # (the kernel's output is the same: an empty item adds nothing)
            live = np.asarray(tiles.items[:, 3] > tiles.items[:, 2])
            tiles = tiles._replace(items=tiles.items[live])
        fn = kernel_fn(mode, group=g, kv_len=t, interpret=interpret)
        operands = (q_p, k, v, do_p, lse2, delta, tiles)
        row = dict(
            mode=name, seq_len=t, pairs=pairs, tiles=int(tiles.tokens.shape[0]),
            items=int(tiles.items.shape[0]), device=str(jax.devices()[0].device_kind),
            jax=jax.__version__,
        )  # fmt: skip
        with nsa_glue.patched(mode.glue):  # dK/dV adds or partials
            if args.tiny:
                with pallas_gpu.interpret_context(True):
                    got = [None if x is None else np.asarray(x, np.float32) for x in fn(*operands)]
                first = first or got
                # (interpret mode adds dQ by read-add-writes: `dq_adds=False` keeps them there)
                for label, a, b in zip(("dq", "dk", "dv"), got, first, strict=True):
                    if a is not None and b is not None:
                        row[f"{label}_max_diff_vs_first"] = float(np.abs(a - b).max())
            else:
                from timing import time_fn

                row["ms"] = time_fn(fn, operands, reps=args.reps)[1] * 1e3
        print(json.dumps(row), flush=True)
        rows_out.append(row)
    with (out_dir / "gathered_modes_gpu.jsonl").open("w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
