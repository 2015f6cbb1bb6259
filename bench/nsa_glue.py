"""NSA's XLA glue with session 17's sort-free candidates in place of the library's forms.

`bench/topk_gpu.py` and `bench/gathered_tiles_gpu.py` time the candidates
alone; this module swaps them into the library for the length of a `with`
block, so that `bench/llm_sparse_gpu.py --nsa-glue` and `bench/profile_llm.py
--nsa-glue` time NSA's whole step with them, side by side with the library's
in one run. A glue is `library` or parts joined by `+`:

- `value sorts`: `topk.topk_mask` by `topk_gpu.grouped_mask` (two value
  sorts, no `top_k`, no one-hot) where the library takes two levels and the
  one-hot (8 < k <= 16 on rows of at least 256);
- `mask scatter`: the same masks as a scatter of the two levels' indices
  (`topk_gpu.scattered_mask`) instead of the one-hot;
- `pair words`, `pair ranks`: `gathered.list_pairs` by
  `gathered_tiles_gpu.by_words` or `by_word_ranks` (no sort of the pairs).
- `items N`: at most N gathered tiles per work item (`gathered.ITEM_TILES`,
  256, and `gathered.DQ_ITEM_TILES`, 32, where the kernel gives dQ); with token
  chunks (`Config.gpu_gathered_chunk`) a long item of a heavy block may outlast
  its chunk and, in the last chunk, leave a tail.
- `dkv partials`: the gathered kernel with dQ writes per-item partial dK/dV
  that XLA sums (`backward_dkv_gathered.ADD_DKV = False`, session 18's form)
  instead of adding them into float32 sums.
- `dq hand-over`: with `Config(gpu_dq_in_dkv=True)` and 128-key blocks, each of
  the two warpgroups computes the whole `[64, D]` dQ of its own keys and the
  second hands it to the first, which adds the sum (session 20's form,
  `backward_dkv.SPLIT_DQ_COLUMNS = False`), instead of each giving half of the
  columns over both key tiles.
- `dq adds apart`: the same, but each warpgroup adds its own dQ tile
  (`SPLIT_DQ_COLUMNS = HAND_OVER_DQ = False`).
- `gathered regs 232`: the gathered kernel's consumer warpgroups get 232 registers a
  thread and the producer 40 (`backward_dkv_gathered.REGISTERS`; the library before
  session 25) instead of 240 and 24.
- `gathered dq 2 stages`: the gathered kernel with dQ keeps two Q/dO slots in all, one
  per consumer warpgroup (`backward_dkv_gathered.DQ_STAGES`; the library: two each, so
  that a warpgroup's next tile loads while it works on this one).
- `first by passes`: each row's first selected blocks (`routed.first_selected`, in
  the gathered tiles and the routed path) by taking the lowest set bit 16 times
  (`gathered_tiles_gpu.by_passes`, the library before session 26) instead of all
  slots at once from running population counts.
- `row sorts`: the sorts of several rows of int keys (the gathered (block, token)
  pairs, two rows of 1M at 64k; the routed and vertical-slash argsorts) each row
  its own, as before session 26 (`sorting.FLATTEN_ROWS = False`), instead of one
  flat sort that XLA:GPU can send to cub.
- `dq regs 240`: with `Config(gpu_dq_in_dkv=True)` the dK/dV kernel's two
  consumer warpgroups get 240 registers a thread and the producer 24
  (`backward_dkv.DQ_REGISTERS`, FA3's split) instead of 232 and 40.

Every candidate gives the library's result element for element
(`tests/test_selection_bench.py`, `tests/test_nsa_glue.py`), so only the
time changes. `patched` yields how many times each part was traced: a part
that is never traced (a cached trace, or a path the run does not take, as the
gathered tiles on CPU) times nothing, and the rows say so.
"""

from __future__ import annotations

import collections
import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gathered_tiles_gpu  # noqa: E402
import jax  # noqa: E402
import topk_gpu  # noqa: E402

from jaxsparse.ops import gathered, routed  # noqa: E402
from jaxsparse.selection import sorting, topk  # noqa: E402
from pallas_kernels.gpu import backward_dkv, backward_dkv_gathered  # noqa: E402


def _value_sorts(scores, k):
    return topk_gpu.grouped_mask(scores, k)


def _mask_scatter(scores, k):
    return topk_gpu.scattered_mask(
        topk._grouped_topk(scores, k, topk.GROUP_WIDTH), scores.shape[-1]
    )


TOPK_PARTS = {"value sorts": _value_sorts, "mask scatter": _mask_scatter}
PAIR_PARTS = {
    "pair words": gathered_tiles_gpu.by_words,
    "pair ranks": gathered_tiles_gpu.by_word_ranks,
}
# A switch sets library constants, `(module, name, value)`, for the block's length.
SWITCHES = {
    "dkv partials": ((backward_dkv_gathered, "ADD_DKV", False),),
    "dq hand-over": ((backward_dkv, "SPLIT_DQ_COLUMNS", False),),
    "dq adds apart": (
        (backward_dkv, "SPLIT_DQ_COLUMNS", False),
        (backward_dkv, "HAND_OVER_DQ", False),
    ),
    "dq regs 240": ((backward_dkv, "DQ_REGISTERS", (240, 24)),),
    "gathered regs 232": ((backward_dkv_gathered, "REGISTERS", (232, 40)),),
    "gathered dq 2 stages": ((backward_dkv_gathered, "DQ_STAGES", 2),),
    "first by passes": ((routed, "first_selected", gathered_tiles_gpu.by_passes),),
    "row sorts": ((sorting, "FLATTEN_ROWS", False),),
}
PARTS = tuple(TOPK_PARTS) + tuple(PAIR_PARTS) + tuple(SWITCHES)


def parse(glue: str) -> tuple[str, ...]:
    """The parts of a glue name (`()` for `library`); ValueError naming an unknown or
    doubled part."""
    if glue == "library":
        return ()
    parts = tuple(p.strip() for p in glue.split("+"))
    unknown = [p for p in parts if p not in PARTS and _item_tiles(p) is None]
    if unknown:
        raise ValueError(f"NSA glue {glue!r}: unknown part(s) {unknown}; use 'library' or "
                         f"parts of {list(PARTS)} joined by '+'")  # fmt: skip
    if (
        sum(p in TOPK_PARTS for p in parts) > 1
        or sum(p in PAIR_PARTS for p in parts) > 1
        or sum(_item_tiles(p) is not None for p in parts) > 1
    ):
        raise ValueError(f"NSA glue {glue!r}: at most one of {list(TOPK_PARTS)}, one of "
                         f"{list(PAIR_PARTS)} and one 'items N'")  # fmt: skip
    return parts


def _item_tiles(part: str) -> int | None:
    """N of an `items N` part (N >= 1), else None."""
    name, _, n = part.partition(" ")
    return int(n) if name == "items" and n.isdigit() and int(n) > 0 else None


@contextlib.contextmanager
def patched(glue: str):
    """Run the library with `glue`'s parts; yields a Counter of the parts' traces.

    jax's caches are cleared on entry and exit, so no trace made with other
    glue is reused inside the block, or outside it with this one.
    """
    parts = parse(glue)
    traced = collections.Counter()
    library_mask, library_pairs = topk.topk_mask, gathered.list_pairs
    library_item_tiles = gathered.ITEM_TILES, gathered.DQ_ITEM_TILES
    constants = {(m, name) for sets in SWITCHES.values() for m, name, _ in sets}
    library_constants = {(m, name): getattr(m, name) for m, name in constants}

    def candidate_mask(make, name):
        def topk_mask(scores, k):
            n = scores.shape[-1]
            k = max(1, min(int(k), n))
            if topk.ITERATIVE_MAX_K < k <= topk.ONEHOT_MAX_K and topk.grouped_applies(n, k):
                traced[name] += 1
                return make(scores, k)
            return library_mask(scores, k)

        return topk_mask

    def candidate_pairs(listing, name):
        def list_pairs(bits, slots):
            traced[name] += 1
            return listing(bits, bits.shape[1] * slots)

        return list_pairs

    try:
        for p in parts:
            if _item_tiles(p) is not None:
                gathered.ITEM_TILES = gathered.DQ_ITEM_TILES = _item_tiles(p)
            elif p in SWITCHES:
                for module, name, value in SWITCHES[p]:
                    setattr(module, name, value)
            elif p in TOPK_PARTS:
                topk.topk_mask = candidate_mask(TOPK_PARTS[p], p)
            else:
                gathered.list_pairs = candidate_pairs(PAIR_PARTS[p], p)
        jax.clear_caches()
        yield traced
    finally:
        topk.topk_mask, gathered.list_pairs = library_mask, library_pairs
        gathered.ITEM_TILES, gathered.DQ_ITEM_TILES = library_item_tiles
        for (module, name), value in library_constants.items():
            setattr(module, name, value)
        jax.clear_caches()
