"""Selection utilities (P4): pure jnp, jit-able, used by the content-aware patterns.

* `pooling`     — block mean / max / min / sum pooling along the sequence.
* `estimate`    — grouped logits, last-query attention estimates, vertical
                  (column) and slash (diagonal) scores.
* `topk`        — stable top-k, per-row rank masks, index lists to masks.
* `cumulative`  — sorted cumulative mass: coverage budgets and bands.
* `divergence`  — Jensen-Shannon distance.
* `remap`       — NSA compressed-token importance onto selection blocks.
* `ranges`      — reduce a selection over a kernel's tiles.
* `chunks`      — run a per-query selection in row chunks.
* `sorting`     — row sorts of small int keys as one flat sort.
"""

from jaxsparse.selection import (
    chunks,
    cumulative,
    divergence,
    estimate,
    pooling,
    ranges,
    remap,
    sorting,
    topk,
)

__all__ = [
    "chunks",
    "cumulative",
    "divergence",
    "estimate",
    "pooling",
    "ranges",
    "remap",
    "sorting",
    "topk",
]
