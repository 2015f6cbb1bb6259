"""Block metadata: which key blocks each query block visits (`BlockSparsity`).

Builders:
  * `from_pattern` — host, closed form, cached (static patterns).
  * `from_block_mask`, `from_topk`, `from_block_codes` — device, traceable.
  * `segment_codes`, `codes_from_element_mask`, `intersect_codes` — device
    block codes to combine before `from_block_codes`.
"""

from jaxsparse.sparsity.block_sparsity import BlockSparsity
from jaxsparse.sparsity.device import (
    codes_from_element_mask,
    from_block_codes,
    from_block_mask,
    from_topk,
    intersect_codes,
    segment_codes,
    topk_codes,
)
from jaxsparse.sparsity.host import from_pattern

__all__ = [
    "BlockSparsity",
    "codes_from_element_mask",
    "from_block_codes",
    "from_block_mask",
    "from_pattern",
    "from_topk",
    "intersect_codes",
    "segment_codes",
    "topk_codes",
]
