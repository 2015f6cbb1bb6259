"""Loads alone of NSA's selected-branch dK/dV: packed query tiles against gathered ones.

Usage (repo root, GPU machine):
  python bench/gathered_loads_gpu.py [--sizes 65536] [--reps 5] [--tiles-per-cta 8] [--tiny]

The dK/dV kernel walks, for each key block, query tiles of 16 tokens x the 8
heads of a GQA group (128 rows). Packed (today) those are 16 consecutive
tokens, the tiles whose union holds the block: on the needle inputs 4.3x the
tokens that selected it at 64k. Gathered (pallas_kernels/gpu/NOTES.md, "Next"),
a tile would hold 16 tokens that selected the block, taken from the pairs
sorted by block: no wasted rows, but 16 copies of a token's `[8, D]` slab per
operand instead of one `[16, 8, D]` box. Before building that kernel, this
script times what only its producer does: a kernel that TMA-loads the Q and
dO rows of every tile (two SMEM slots, no MMA), with one CTA per
`--tiles-per-cta` consecutive tiles in block order, for

  packed      the union tiles, one box copy per operand and tile;
  packed/16   the same tiles, 16 slab copies each (the copies' cost alone);
  gathered    the selected tokens' tiles, 16 slab copies each.

Inputs: B=1, H=16, K=2, D=128, bf16, the needle task, NSA's defaults with the
mean compressor (`llm_methods.nsa_compressed_branch` and `nsa_select`). Prints
JSON lines: tiles, bytes loaded, ms. `--tiny` runs the kernel in GPU interpret
mode on CPU on the first tiles of each list and checks the rows it loaded (no
timing).
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
from jax import lax  # noqa: E402
from jax.experimental import pallas as pl  # noqa: E402
from jax.experimental.pallas import mosaic_gpu as plgpu  # noqa: E402

from pallas_kernels.gpu import common as cm  # noqa: E402

TOKENS = 16  # tokens per query tile (x 8 heads = 128 rows)


def load_tiles(q, dout, tokens, heads, *, group: int, per_cta: int, boxes: bool, interpret=None):
    """TMA-loads Q and dO of every tile; returns each CTA's last tile `[ctas, 2, 16, G, D]`.

    tokens `[N, 16]` int32 (a tile's tokens; `boxes`: the first of 16 consecutive ones),
    heads `[N]` int32 (the tile's key/value head); N a multiple of `per_cta`.
    """
    _, _, _, d = q.shape
    n = tokens.shape[0]
    ctas = n // per_cta
    box = (TOKENS, group, d)
    copies = 1 if boxes else TOKENS

    def kernel(q_ref, do_ref, tok_ref, head_ref, out_ref, smem, bar):
        c = lax.axis_index("c")

        def issue(i, slot):
            tile = c * per_cta + i
            h0 = head_ref[tile] * group
            for src, which in ((q_ref, 0), (do_ref, 1)):
                if boxes:
                    t0 = tok_ref[tile, 0]
                    view = src.at[0, pl.ds(t0, TOKENS), pl.ds(h0, group)]
                    plgpu.copy_gmem_to_smem(view, smem.at[slot, which], bar.at[slot])
                else:
                    for j in range(TOKENS):
                        view = src.at[0, tok_ref[tile, j], pl.ds(h0, group)]
                        plgpu.copy_gmem_to_smem(view, smem.at[slot, which, j], bar.at[slot])

        issue(0, 0)

        @pl.loop(0, per_cta)
        def _(i):
            @pl.when(i + 1 < per_cta)
            def _():
                issue(i + 1, lax.rem(i + 1, 2))

            plgpu.barrier_wait(bar.at[lax.rem(i, 2)])

        last = (per_cta - 1) % 2
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(smem.at[last], out_ref.at[c])
        plgpu.wait_smem_to_gmem(0)

    call = plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct((ctas, 2) + box, q.dtype),
        scratch_types=(
            plgpu.SMEM((2, 2) + box, q.dtype),
            plgpu.Barrier(num_arrivals=2 * copies, num_barriers=2),
        ),
        grid=(ctas,),
        grid_names=("c",),
        kernel_name="jaxsparse_bench_gathered_loads",
        compiler_params=cm.compiler_params(),
        interpret=interpret,
    )
    return call(q, dout, tokens, heads)


def tile_lists(bits: np.ndarray, *, per_cta: int):
    """`{"packed": (tokens, heads), "gathered": (tokens, heads)}` from NSA's bits `[K, T, nb]`,
    tiles in block order, padded (repeating the last tile) to a multiple of `per_cta`."""
    kh, t, nb = bits.shape
    union = bits[:, : t // TOKENS * TOKENS].reshape(kh, t // TOKENS, TOKENS, nb).any(2)
    g, _, i = np.nonzero(np.moveaxis(union, 2, 1))  # [K, nb, T/16]: (head, block, tile)
    packed = (i[:, None] * TOKENS + np.arange(TOKENS)[None]).astype(np.int32), g.astype(np.int32)
    g, j, tok = np.nonzero(np.moveaxis(bits, 2, 1))  # pairs sorted by (head, block, token)
    run = np.flatnonzero(np.r_[True, (g[1:] != g[:-1]) | (j[1:] != j[:-1])])
    tiles, tile_heads = [], []
    for a, b in zip(run, np.r_[run[1:], len(tok)], strict=True):
        seg = tok[a:b]
        seg = np.pad(seg, (0, -len(seg) % TOKENS), mode="edge")  # repeat the last token
        tiles.append(seg.reshape(-1, TOKENS))
        tile_heads.append(np.full(len(tiles[-1]), g[a]))
    gathered = np.concatenate(tiles).astype(np.int32), np.concatenate(tile_heads).astype(np.int32)

    def pad(x):
        tok, heads = x
        extra = -len(tok) % per_cta
        return (
            np.concatenate([tok, np.repeat(tok[-1:], extra, 0)]),
            np.concatenate([heads, np.repeat(heads[-1:], extra)]),
        )

    return {"packed": pad(packed), "gathered": pad(gathered)}


def nsa_bits(t: int, h: int, kh: int, d: int, dtype):
    """q and NSA's bits `[K, T, blocks]` on the needle inputs (the llm bench's selection)."""
    import llm_methods
    import llm_synthetic

    from jaxsparse.methods import NSAConfig

    task = llm_synthetic.make_task("needle", t=t, h=h, kh=kh, d=d, seed=0, batch=1)
    q, k = (jnp.asarray(x, dtype) for x in (task.q, task.k))
    return q, np.asarray(llm_methods.nsa_bits(q, k, NSAConfig())[0])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="65536")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tiles-per-cta", type=int, default=8)
    ap.add_argument("--tiny", action="store_true", help="CPU check in GPU interpret mode")
    args = ap.parse_args(argv)
    if args.tiny:
        sizes, (h, kh, d), dtype = [1024], (4, 2, 64), jnp.float32
        interpret = plgpu.InterpretGPUParams(detect_races=False)
    else:
        sizes, (h, kh, d) = [int(s) for s in args.sizes.split(",")], (16, 2, 128)
        dtype, interpret = jnp.bfloat16, None
    per_cta, group = args.tiles_per_cta, h // kh
    for t in sizes:
        q, bits = nsa_bits(t, h, kh, d, dtype)
        dout = q[..., ::-1]  # any second operand of q's shape
        lists = tile_lists(bits, per_cta=per_cta)
        if args.tiny:  # a few CTAs' worth: interpret mode is slow
            lists = {k: (tok[: 4 * per_cta], hd[: 4 * per_cta]) for k, (tok, hd) in lists.items()}
        variants = {
            "packed": (lists["packed"], True),
            "packed/16": (lists["packed"], False),
            "gathered": (lists["gathered"], False),
        }
        for name, ((tokens, heads), boxes) in variants.items():
            fn = jax.jit(
                functools.partial(
                    load_tiles, group=group, per_cta=per_cta, boxes=boxes, interpret=interpret
                )
            )
            row = dict(seq_len=t, variant=name, tiles=len(tokens), per_cta=per_cta)
            row["gb_loaded"] = len(tokens) * 2 * TOKENS * group * d * q.dtype.itemsize / 1e9
            if args.tiny:
                last = np.asarray(fn(q, dout, jnp.asarray(tokens), jnp.asarray(heads)))
                ends = np.arange(per_cta - 1, len(tokens), per_cta)  # each CTA's last tile
                hs = heads[ends][:, None, None] * group + np.arange(group)[None, None]
                rows = tokens[ends][:, :, None], hs
                want = np.stack([np.asarray(x[0])[rows] for x in (q, dout)], 1)
                row["loaded_rows_ok"] = bool(np.array_equal(last, want))  # [ctas, 2, 16, G, D]
            else:
                from timing import time_fn

                args_ = (q, dout, jnp.asarray(tokens), jnp.asarray(heads))
                row["ms"] = time_fn(fn, args_, reps=args.reps)[1] * 1e3
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
