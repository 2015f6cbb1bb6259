"""What building the gathered dK/dV tiles costs, and ways to list the selected pairs.

Usage (repo root, GPU machine):
  python bench/gathered_tiles_gpu.py [--sizes 65536,131072] [--reps 5] [--tiny]

`jaxsparse.ops.gathered.Gathering.tiles` turns NSA's bits `[B, K, T, C]` into
gathered tiles and work items inside the backward. Its first step lists each
row's selected blocks: `routed.first_selected` packs a row's bits into C/32
words and finds each slot's bit from running population counts, all slots at
once (session 26); `by_passes`, its form from session 14 to 25, takes the
lowest set bit `slots` times; `by_top_k`, its form before session 14, ranks
every bit with `top_k` (a sort of C entries per row). Its second step lists the (block, token)
pairs by block, then token; three ways (`LISTINGS`):

- `sort`, the library's: one sort of `block * T + token` keys (0.55 ms of
  NSA's 64k step on the H200 in session 16's profile, then a stable sort
  with an iota payload; unstable since session 17, not timed yet);
- `words` and `word ranks`, candidates written in session 17 (which had no
  GPU): no sort, a pair's place from population counts of its block's column
  packed into 32-token words; one scatter over every (token, block) entry, or
  over the selected pairs only.

Each pair of ways is checked to agree element for element, and each is
timed, on the needle inputs with NSA's defaults (B=1, H=16, K=2, D=128,
bf16; `bench/gathered_loads_gpu.nsa_bits`); so is the whole tile build.
Prints JSON lines.
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

from jaxsparse.ops import gathered, routed  # noqa: E402
from jaxsparse.selection import topk  # noqa: E402


def by_top_k(bits, slots: int):
    """The first `slots` set bits per row by `top_k` over their ranks (c where fewer): what
    `routed.first_selected` did before session 14."""
    c = bits.shape[-1]
    score = jnp.where(bits, -jnp.arange(c, dtype=jnp.float32), -jnp.inf)
    idx = topk.topk_indices(score, slots)
    return jnp.where(idx >= 0, idx, c).astype(jnp.int32)


def by_passes(bits, slots: int):
    """The first `slots` set bits per row by taking a row's lowest set bit `slots` times
    (c where fewer): what `routed.first_selected` did from session 14 to 25, in `slots`
    dependent passes over the row's words."""
    from jax import lax

    c = bits.shape[-1]
    words = routed._bit_words(bits)
    nw = words.shape[-1]
    col = jnp.arange(nw, dtype=jnp.int32).reshape((1,) * (words.ndim - 1) + (nw,))
    out = []
    for _ in range(slots):
        w = jnp.argmax(words != 0, axis=-1)[..., None]  # the first word with a bit left
        word = jnp.take_along_axis(words, w, axis=-1)
        low = word & (~word + jnp.uint32(1))  # its lowest set bit
        pos = lax.population_count(low - jnp.uint32(1)).astype(jnp.int32)
        out.append(jnp.where(word != 0, w * 32 + pos, c)[..., 0])
        words = words ^ jnp.where(col == w, low, jnp.uint32(0))
    return jnp.stack(out, -1).astype(jnp.int32)


def by_sort(bits, pairs: int):
    """The library's listing, `gathered.list_pairs`, given the pair count `T * slots`."""
    return gathered.list_pairs(bits, pairs // bits.shape[1])


def column_words(bits):
    """Each block's column of bits `[F, T, C]` in words of 32 tokens, `[F, W, C]` uint32, with
    per block its pair count and start `[F, C]`, per word the column's pairs before it, and
    the bits padded to whole words `[F, W, 32, C]`."""
    f, t, c = bits.shape
    nw = -(-t // 32)
    bits = jnp.pad(bits, ((0, 0), (0, nw * 32 - t), (0, 0))).reshape(f, nw, 32, c)
    lane = jnp.arange(32, dtype=jnp.uint32)[None, None, :, None]
    words = jnp.left_shift(bits.astype(jnp.uint32), lane).sum(2, dtype=jnp.uint32)
    pop = jax.lax.population_count(words).astype(jnp.int32)
    counts = pop.sum(1, dtype=jnp.int32)
    starts = jnp.cumsum(counts, axis=1, dtype=jnp.int32) - counts
    before = jnp.cumsum(pop, axis=1, dtype=jnp.int32) - pop
    return words, counts, starts, before, bits


def below(words, lane):
    """Set bits of `words` below bit `lane` (uint32 arrays that broadcast), counted."""
    mask = jnp.left_shift(jnp.uint32(1), lane.astype(jnp.uint32)) - jnp.uint32(1)
    return jax.lax.population_count(words & mask).astype(jnp.int32)


def by_words(bits, pairs: int):
    """`by_sort`'s listing with no sort (a candidate, not measured yet): a pair's place is
    its block's start plus the population counts of the column's earlier words and of the
    lower bits of its word; one scatter over every (token, block) entry writes the tokens."""
    f = bits.shape[0]
    words, counts, starts, before, bits = column_words(bits)
    nw = words.shape[1]
    lane = jnp.arange(32, dtype=jnp.int32)[None, None, :, None]
    place = (starts[:, None] + before)[:, :, None] + below(words[:, :, None], lane)
    owner = pairs * jnp.arange(f, dtype=jnp.int32)[:, None, None, None]
    at = jnp.where(bits & (place < pairs), place + owner, f * pairs)  # f * pairs: dropped
    token = jnp.broadcast_to(jnp.arange(nw * 32, dtype=jnp.int32).reshape(1, nw, 32, 1), at.shape)
    tokens = (
        jnp.zeros((f * pairs,), jnp.int32).at[at.reshape(-1)].set(token.reshape(-1), mode="drop")
    )
    return tokens.reshape(f, pairs), counts, starts


def by_word_ranks(bits, pairs: int):
    """`by_words` placing only the selected pairs (a candidate, not measured yet): each row's
    blocks by `first_selected`, each pair's place gathered from its column's words, one
    scatter of `pairs` tokens."""
    f, t, c = bits.shape
    words, counts, starts, before, _ = column_words(bits)
    cell = routed.first_selected(bits, pairs // t).reshape(f, pairs)  # c: no block
    tok = jnp.broadcast_to(jnp.arange(pairs, dtype=jnp.int32) // (pairs // t), (f, pairs))
    live, j, w = cell < c, jnp.minimum(cell, c - 1), tok // 32
    rows = jnp.arange(f)[:, None]
    place = starts[rows, j] + before[rows, w, j] + below(words[rows, w, j], tok % 32)
    at = jnp.where(live & (place < pairs), place + pairs * rows, f * pairs)
    tokens = jnp.zeros((f * pairs,), jnp.int32).at[at.reshape(-1)].set(tok.reshape(-1), mode="drop")
    return tokens.reshape(f, pairs), counts, starts


LISTINGS = {"sort": by_sort, "words": by_words, "word ranks": by_word_ranks}


def listings_agree(got) -> bool:
    """Whether every listing's `(tokens, counts, starts)` equals the first's (tokens up to
    each head's pair count: the tail is unused)."""
    (tok_a, *rest_a), *others = got
    total = rest_a[0].sum(1)
    return all(
        all(np.array_equal(tok_a[i, :n], tok_b[i, :n]) for i, n in enumerate(total))
        and all(np.array_equal(a, b) for a, b in zip(rest_a, rest_b, strict=True))
        for tok_b, *rest_b in others
    )


def main(argv=None):
    from gathered_loads_gpu import nsa_bits

    from jaxsparse.methods import NSAConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="65536,131072")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="CPU check at 2k tokens")
    args = ap.parse_args(argv)
    sizes = [2048] if args.tiny else [int(s) for s in args.sizes.split(",")]
    h, kh, d = (4, 2, 64) if args.tiny else (16, 2, 128)
    from timing import time_fn

    cfg = NSAConfig()
    slots = cfg.top_n  # row_capacity (top_n - 1, the own block forced) + the own block
    for t in sizes:
        _, bits = nsa_bits(t, h, kh, d, jnp.float32 if args.tiny else jnp.bfloat16)
        bits = jnp.asarray(bits)[None]  # [1, K, T, C]
        ways = {
            "top_k": jax.jit(lambda b: by_top_k(b, slots)),
            "passes": jax.jit(lambda b: by_passes(b, slots)),
            "words": jax.jit(lambda b: routed.first_selected(b, slots)),
        }
        got = [np.asarray(fn(bits)) for fn in ways.values()]
        row = dict(seq_len=t, slots=slots, agree=all(np.array_equal(got[0], x) for x in got))
        for name, fn in ways.items():
            row[f"{name}_ms"] = time_fn(fn, (bits,), reps=args.reps)[1] * 1e3
        flat = bits.reshape(-1, *bits.shape[2:])  # [F, T, C]
        fns = {
            name: jax.jit(functools.partial(fn, pairs=t * slots)) for name, fn in LISTINGS.items()
        }
        row["pairs_agree"] = listings_agree(
            [[np.asarray(x) for x in fn(flat)] for fn in fns.values()]
        )
        for name, fn in fns.items():
            row[f"pairs_{name.replace(' ', '_')}_ms"] = (
                time_fn(fn, (flat,), reps=args.reps)[1] * 1e3
            )
        g = gathered.Gathering(
            batch=1, group=h // kh, col_block=cfg.block_size, q_len=t, kv_len=t, q_offset=0,
            causal=True, slots=slots,
        )  # fmt: skip
        row["tiles_ms"] = time_fn(jax.jit(g.tiles), (bits,), reps=args.reps)[1] * 1e3
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
