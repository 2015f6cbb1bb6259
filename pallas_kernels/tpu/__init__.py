"""Pallas TPU block-sparse flash-attention kernels (scalar-prefetched block tables).

Public functions live in `api`: `block_sparse_attention_fwd`,
`block_sparse_attention_bwd`, `check_support`. This package imports jax only.
"""

from pallas_kernels.tpu.api import (
    block_sparse_attention_bwd,
    block_sparse_attention_fwd,
    check_support,
)

__all__ = ["block_sparse_attention_fwd", "block_sparse_attention_bwd", "check_support"]
