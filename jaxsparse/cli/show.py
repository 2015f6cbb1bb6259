"""`jaxsparse show PATTERN`: the block map in the terminal, the mask as a picture."""

from __future__ import annotations

import argparse
import os

import numpy as np

from jaxsparse import patterns as P
from jaxsparse import sparsity as S
from jaxsparse.cli import presets
from jaxsparse.cli.argtypes import nonnegative_int, positive_int

GLYPH = {P.EMPTY: "·", P.PARTIAL: "▒", P.FULL: "█"}


def add_parser(sub) -> None:
    p = sub.add_parser("show", help="draw a pattern's block map (and optionally its mask)")
    p.add_argument(
        "pattern",
        help="a preset (causal, sliding_window, a_shape, ...) or an "
        "expression like 'Causal() & SlidingWindow(left=256)'",
    )
    p.add_argument("--seq", type=positive_int, default=1024, help="query length T (default 1024)")
    p.add_argument("--kv-seq", type=positive_int, default=None, help="key length S (default T)")
    p.add_argument(
        "--block", type=positive_int, default=None, help="tile size (default: seq/32, at least 16)"
    )
    p.add_argument("--heads", type=positive_int, default=1, help="query heads (per-head patterns)")
    p.add_argument("--head", type=nonnegative_int, default=0, help="which head to draw")
    p.add_argument("--q-offset", type=int, default=None, help="position of query 0")
    p.add_argument("--png", metavar="PATH", help="also write a picture of the element mask")
    p.set_defaults(run=run)


def _title(name: str, pattern) -> str:
    return repr(pattern) if name == repr(pattern) else f"{name}: {pattern!r}"


PNG_MAX_ELEMENTS = 8192 * 8192  # --png draws the dense element mask


def block_map(codes: np.ndarray) -> str:
    return "\n".join("".join(GLYPH[int(c)] * 2 for c in row) for row in codes)


def run(args: argparse.Namespace) -> int:
    if args.head >= args.heads:
        raise ValueError(
            f"--head {args.head} is out of range for --heads {args.heads}; "
            f"use 0 to {args.heads - 1} (or raise --heads)"
        )
    t = args.seq
    s = t if args.kv_seq is None else args.kv_seq
    if args.png:
        folder = os.path.dirname(os.path.abspath(args.png))
        if not args.png.lower().endswith(".png") or os.path.isdir(args.png):
            raise ValueError(f"--png {args.png}: give a file name ending in .png")
        if not os.path.isdir(folder):
            raise ValueError(
                f"--png {args.png}: directory {folder} does not exist; create it first"
            )
        if t * s > PNG_MAX_ELEMENTS:
            raise ValueError(
                f"--png draws the element mask, T x S = {t * s:,} entries here; at most "
                f"{PNG_MAX_ELEMENTS:,} (e.g. --seq 8192): use a shorter --seq for the picture"
            )
    name, pattern = presets.resolve(args.pattern, t)
    block = args.block if args.block is not None else max(16, max(t, s) // 32)
    sp = S.from_pattern(
        pattern,
        q_len=t,
        kv_len=s,
        block_q=block,
        block_kv=block,
        num_heads=args.heads,
        q_offset=args.q_offset,
    )
    head = args.head
    codes = sp.to_dense()[0, min(head, sp.num_heads - 1)]  # 1 row when heads are alike
    print(_title(name, pattern))
    print(
        f"T={t} S={s} q_offset={sp.q_offset} tiles {block}x{block}, head {head}: "
        f"{(codes != P.EMPTY).mean():.1%} of tiles visited "
        f"({(codes == P.FULL).mean():.1%} full, {(codes == P.PARTIAL).mean():.1%} partial)"
    )
    print(block_map(codes))
    print(
        f"{GLYPH[P.FULL]} full tile   {GLYPH[P.PARTIAL]} partial tile (mask applied)   "
        f"{GLYPH[P.EMPTY]} skipped"
    )
    if args.png:
        try:
            write_png(args.png, pattern, name, t, s, sp.q_offset, args.heads, head, block, codes)
        except OSError as e:
            raise ValueError(f"--png {args.png}: cannot write it ({e.strerror or e})") from None
        print(f"wrote {args.png}")
    return 0


def write_png(path, pattern, name, t, s, q_offset, heads, head, block, codes) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mask = P.dense_mask(pattern, q_len=t, kv_len=s, q_offset=q_offset, num_heads=heads, xp=np)
    mask = mask[min(head, mask.shape[0] - 1)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 5), constrained_layout=True)
    axes[0].imshow(mask, cmap="Blues", interpolation="nearest", aspect="auto")
    axes[0].set(
        title=f"element mask ({mask.mean():.1%} kept)", xlabel="key position", ylabel="query row"
    )
    axes[1].imshow(codes, cmap="Greys", vmin=0, vmax=2, interpolation="nearest", aspect="auto")
    axes[1].set(
        title=f"{block}x{block} tiles: white skipped, grey partial, black full",
        xlabel="key tile",
        ylabel="query tile",
    )
    fig.suptitle(_title(name, pattern), fontsize=9)
    fig.savefig(path, dpi=120)
    plt.close(fig)
