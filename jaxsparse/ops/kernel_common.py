"""Checks and inputs shared by the Pallas kernel backends (`pallas_gpu`, `pallas_tpu`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsparse.ops import call as call_lib
from jaxsparse.sparsity import block_sparsity

TABLES = ("kv_indices", "kv_counts", "kv_full", "q_indices", "q_counts", "q_full")


def check_head_dims(call: call_lib.Call, kernels: str) -> None:
    """Both kernel families take head dims that are multiples of 64 up to 256."""
    for name, d in (("head dim", call.head_dim), ("value head dim", call.head_dim_v)):
        if d % 64 or d > 256:
            raise NotImplementedError(
                f"the {kernels} kernels need a {name} that is a multiple of 64 up to 256, got {d}"
            )


def tile_mask_fn(call: call_lib.Call, block_q: int, block_kv: int, kernels: str):
    """The pattern's mask_fn for partial tiles, or None when tiles never need it.

    Kernels evaluate arithmetic masks only: a pattern that would index its own
    arrays inside a tile (`Mask`, per-token selections) is refused with
    NotImplementedError, so the call falls back to the XLA path.
    """
    pattern = call.pattern
    if not pattern.needs_tile_mask(block_q, block_kv):
        return None
    if pattern.holds_arrays:
        rb, cb = getattr(pattern, "row_block", None), getattr(pattern, "col_block", None)
        blocks = f" of {rb}x{cb} blocks" if rb and cb else ""
        hint = (  # per-token selections (rb == 1) have their own layouts instead
            f"tiles that lie inside one block (block_q dividing {rb}, block_kv dividing {cb}, "
            "e.g. the method's default tiles or Config(block_q=..., block_kv=...)) or "
            if rb and cb and rb > 1
            else ""
        )
        raise NotImplementedError(
            f"{type(pattern).__name__}{blocks} holds arrays that partial {block_q}x{block_kv} "
            f"tiles would index; the {kernels} kernels evaluate only arithmetic masks (use "
            f"{hint}a BlockMask aligned with the tiles)"
        )
    return pattern.mask_fn


def tables(sp: block_sparsity.BlockSparsity) -> tuple[jax.Array, ...]:
    """The six metadata arrays, q-major then kv-major, as the kernels take them."""
    return tuple(jnp.asarray(getattr(sp, name)) for name in TABLES)
