"""Checks and inputs shared by the Pallas kernel backends (`pallas_gpu`, `pallas_tpu`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsparse.ops import call as call_lib
from jaxsparse.patterns import base as pbase
from jaxsparse.patterns.full import Full
from jaxsparse.sparsity import block_sparsity

TABLES = ("kv_indices", "kv_counts", "kv_full", "q_indices", "q_counts", "q_full")


def check_head_dims(call: call_lib.Call, kernels: str) -> None:
    """Both kernel families take head dims that are multiples of 64 up to 256."""
    for name, d in (("head dim", call.head_dim), ("value head dim", call.head_dim_v)):
        if d % 64 or d > 256:
            raise NotImplementedError(
                f"the {kernels} kernels need a {name} that is a multiple of 64 up to 256, got {d}"
            )


def check_both_directions(call: call_lib.Call, kernels: str) -> None:
    """The kernels take given lists with both halves (the backward walks the key-major one)."""
    if call.sparsity is not None and call.sparsity.q_indices is None:
        raise NotImplementedError(
            f"the {kernels} kernels need the sparsity's key-major lists (q_indices, q_counts, "
            "q_full), which these forward-only lists lack; build it with the "
            "jaxsparse.sparsity builders, which list both directions"
        )


def tile_mask(call: call_lib.Call, block_q: int, block_kv: int, kernels: str):
    """The pattern the kernels evaluate in partial tiles, or None when tiles never need it.

    Kernels evaluate arithmetic masks only. A part holding arrays that is constant
    on every tile at this tiling (a `BlockMask` on its own tiles) is true in every
    tile the lists hold (its empty tiles are not listed) and drops out of a
    conjunction: `BlockMask(...) & Causal()` runs as `Causal()` inside its tiles.
    A pattern that would index its arrays inside a tile (`Mask`, a BlockMask cut
    by the tiles, per-token selections) is refused with NotImplementedError, so
    the call falls back to the XLA path. Returns the pattern (its `mask_fn` and
    `mask_factors()` are what the kernels take).
    """
    pattern = call.pattern
    if not pattern.needs_tile_mask(block_q, block_kv):
        return None
    arithmetic = _in_listed_tiles(pattern, block_q, block_kv)
    if arithmetic is None:
        part = _indexed_part(pattern, block_q, block_kv)
        rb, cb = getattr(part, "row_block", None), getattr(part, "col_block", None)
        blocks = f" of {rb}x{cb} blocks" if rb and cb else ""
        hint = (  # per-token selections (rb == 1) have their own layouts instead
            f"tiles that lie inside one block (block_q dividing {rb}, block_kv dividing {cb}, "
            "e.g. the method's default tiles or Config(block_q=..., block_kv=...)) or "
            if rb and cb and rb > 1
            else ""
        )
        raise NotImplementedError(
            f"{type(part).__name__}{blocks} holds arrays that partial {block_q}x{block_kv} "
            f"tiles would index; the {kernels} kernels evaluate only arithmetic masks (use "
            f"{hint}a BlockMask aligned with the tiles)"
        )
    return arithmetic


def _in_listed_tiles(pattern, block_q: int, block_kv: int):
    """`pattern` inside the tiles its lists hold, without arrays; None if it needs them."""
    if not pattern.holds_arrays:
        return pattern
    if not pattern.needs_tile_mask(block_q, block_kv):
        return Full()  # constant on each tile, and listed tiles are its full ones
    if isinstance(pattern, pbase.And):
        a = _in_listed_tiles(pattern.a, block_q, block_kv)
        b = _in_listed_tiles(pattern.b, block_q, block_kv)
        if a is None or b is None:
            return None
        return b if isinstance(a, Full) else a if isinstance(b, Full) else a & b
    return None


def _indexed_part(pattern, block_q: int, block_kv: int):
    """The part of `pattern` whose arrays the tiles would index (for the error message)."""
    if isinstance(pattern, pbase.And):
        for child in (pattern.a, pattern.b):
            if _in_listed_tiles(child, block_q, block_kv) is None:
                return _indexed_part(child, block_q, block_kv)
    return pattern


def tables(sp: block_sparsity.BlockSparsity) -> tuple[jax.Array, ...]:
    """The six metadata arrays, q-major then kv-major, as the kernels take them."""
    return tuple(jnp.asarray(getattr(sp, name)) for name in TABLES)
