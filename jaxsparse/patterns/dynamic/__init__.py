"""Content-aware (dynamic) patterns: selection from q and k on device, then block-sparse attention.

Methods (pass alone as `jaxsparse.attention(..., pattern=...)`):
  * `MoBA` — per-token top-k chunks by `q . mean(K)` (Moonshot).
  * `VerticalSlash`, `BlockTopK` — MInference's online prefill patterns
    (`AShape`, the static third one, lives in `jaxsparse.patterns`).
  * `FlexPrefill` — per-head query-aware / vertical-slash blocks, mass budgets.
  * `Pyramid` — PSA's multi-level pooled keys (use `jaxsparse.pyramid_attention`).

Generic selections they produce (batched patterns, exact inside tiles):
  * `TokenBlockMask` — bits per (query row or row block, key block).
  * `VerticalSlashMask` — kept key columns and diagonals.
  * `PositionCausal` — gathered keys with their original positions.
  * `PyramidMask` — a pooling level per (query block, key block) over
    concatenated key levels.
"""

from jaxsparse.patterns.dynamic.block_topk import BlockTopK, block_topk_select
from jaxsparse.patterns.dynamic.flex_prefill import FlexPrefill, flex_prefill_select
from jaxsparse.patterns.dynamic.moba import MoBA, moba_select
from jaxsparse.patterns.dynamic.position_causal import PositionCausal, position_causal_sparsity
from jaxsparse.patterns.dynamic.pyramid import Pyramid, pyramid_select
from jaxsparse.patterns.dynamic.pyramid_mask import PyramidLayout, PyramidMask, pyramid_sparsity
from jaxsparse.patterns.dynamic.token_block_mask import TokenBlockMask, token_block_sparsity
from jaxsparse.patterns.dynamic.vertical_slash import VerticalSlash, vertical_slash_select
from jaxsparse.patterns.dynamic.vertical_slash_mask import (
    VerticalSlashMask,
    vertical_slash_sparsity,
)

__all__ = [
    "BlockTopK",
    "FlexPrefill",
    "MoBA",
    "PositionCausal",
    "Pyramid",
    "PyramidLayout",
    "PyramidMask",
    "TokenBlockMask",
    "VerticalSlash",
    "VerticalSlashMask",
    "block_topk_select",
    "flex_prefill_select",
    "moba_select",
    "position_causal_sparsity",
    "pyramid_select",
    "pyramid_sparsity",
    "token_block_sparsity",
    "vertical_slash_select",
    "vertical_slash_sparsity",
]
