"""Mosaic GPU (Hopper) block-sparse flash-attention kernels.

Public functions live in `api`: `block_sparse_attention_fwd`,
`block_sparse_attention_bwd`. This package imports jax only.
"""

from pallas_kernels.gpu.api import block_sparse_attention_bwd, block_sparse_attention_fwd

__all__ = ["block_sparse_attention_fwd", "block_sparse_attention_bwd"]
