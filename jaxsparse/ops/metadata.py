"""Block metadata for one call, for the tile sizes a backend asks for."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxsparse.ops import call as call_lib
from jaxsparse.ops import config as config_lib
from jaxsparse.patterns import base as pbase
from jaxsparse.patterns import materialize
from jaxsparse.sparsity import block_sparsity, device, host


def blocks_for(call: call_lib.Call, *, preferred: int = 128, minimum: int = 16):
    """Tile sizes: given metadata > config > the pattern's own tiles > a default."""
    if call.sparsity is not None:
        return call.sparsity.block_q, call.sparsity.block_kv
    natural = preferred_blocks(call.pattern)
    bq = (
        call.config.block_q
        or (natural and natural[0])
        or config_lib.default_block(call.q_len, preferred, minimum)
    )
    bk = (
        call.config.block_kv
        or (natural and natural[1])
        or config_lib.default_block(call.kv_len, preferred, minimum)
    )
    return bq, bk


def preferred_blocks(pattern: pbase.Pattern):
    """The tiles an explicit block mask is defined on, if any."""
    if hasattr(pattern, "block_mask"):
        return pattern.block_q, pattern.block_kv
    for child in (getattr(pattern, "a", None), getattr(pattern, "b", None)):
        if child is not None and (found := preferred_blocks(child)):
            return found
    return None


def within_pattern(
    sp: block_sparsity.BlockSparsity, pattern: pbase.Pattern, *, num_heads: int
) -> block_sparsity.BlockSparsity:
    """A caller's metadata (`attention(sparsity=...)`) that cannot lift the pattern's mask.

    The backends skip the element mask in FULL tiles, so a tile the caller marks
    FULL (`from_topk` and `from_block_mask` mark every listed tile FULL) stays
    FULL only where the bound `pattern` is full there too; elsewhere it becomes
    PARTIAL and the pattern masks inside it. Explicit masks (`BlockMask`, `Mask`,
    and patterns combining them) also drop the listed tiles they do not have (a
    BlockMask is not evaluated inside its own tiles), so their lists are rebuilt
    on device from the two tables' intersection; their own tiles come from their
    arrays (for a traced element mask or a combination, from the `[T, S]`
    mask). Lists with one head cannot serve a pattern whose tiles differ per
    head (ValueError). The library's content-aware selections
    (`exact_given_lists`) come with lists built from their own arrays, which
    are trusted as they are.
    """
    if pattern.holds_arrays and pattern.exact_given_lists:
        return sp
    if sp.num_heads == 1 and num_heads > 1 and pattern.head_dependent:
        raise ValueError(
            f"sparsity has one head list, but {pattern!r} differs per head; build it with "
            f"num_heads={num_heads} (e.g. jaxsparse.sparsity.from_pattern(..., "
            f"num_heads={num_heads}))."
        )
    kw = dict(
        q_len=sp.q_len,
        kv_len=sp.kv_len,
        block_q=sp.block_q,
        block_kv=sp.block_kv,
        q_offset=sp.q_offset,
    )
    try:
        own = host.from_pattern(pattern, num_heads=num_heads, **kw)
    except pbase.TracedPatternError:
        own = _from_traced_pattern(pattern, num_heads, **kw)
    if own.is_host:
        if (own.kv_counts == own.num_kv_blocks).all() and own.kv_full.all():
            return sp  # every tile of the pattern is full (e.g. Full())
        if sp.is_host and all(
            np.array_equal(getattr(sp, name), getattr(own, name))
            for name in ("kv_indices", "kv_counts", "kv_full", "q_indices", "q_counts", "q_full")
        ):
            return sp  # built from this pattern (metadata shared across layers): nothing to do
    if pattern.holds_arrays:
        # An explicit mask is not evaluated inside tiles it is constant on (a BlockMask on
        # its own tiles): keep only the listed tiles it has, FULL only where it is full.
        codes = device.intersect_codes(sp.to_dense(), own.to_dense())
        return device.from_block_codes(
            codes,
            max_kv_blocks=sp.kv_indices.shape[-1],
            max_q_blocks=None if sp.q_indices is None else sp.q_indices.shape[-1],
            **kw,
        )
    xp = np if sp.is_host else jnp  # `own` is host here: static patterns build on the host
    full = xp.asarray(own.to_dense() == pbase.FULL)  # [1, 1 or H, Tb, Sb]: dense only here
    kv_full = sp.kv_full & xp.take_along_axis(full, sp.kv_indices, axis=-1)
    if sp.q_indices is None:  # forward-only lists: no key-major half to refine
        return sp.replace(kv_full=kv_full)
    q_full = sp.q_full & xp.take_along_axis(xp.swapaxes(full, -1, -2), sp.q_indices, axis=-1)
    return sp.replace(kv_full=kv_full, q_full=q_full)


def sparsity_for(
    call: call_lib.Call, block_q: int, block_kv: int, *, refine_segments: bool = False
) -> block_sparsity.BlockSparsity:
    """The metadata a backend iterates over.

    Args:
      call: the validated call.
      block_q, block_kv: the backend's tiles (ignored when the caller gave
        metadata).
      refine_segments: also drop tiles that segment ids fully mask (built on
        device; worth it for kernels that skip work per tile).
    """
    if call.sparsity is not None:
        return call.sparsity
    kw = dict(
        q_len=call.q_len,
        kv_len=call.kv_len,
        block_q=block_q,
        block_kv=block_kv,
        q_offset=call.q_offset,
    )
    sp = call.pattern.device_sparsity(num_heads=call.num_heads, **kw)
    if sp is None:
        try:
            sp = host.from_pattern(call.pattern, num_heads=call.num_heads, **kw)
        except pbase.TracedPatternError:
            sp = _from_traced_pattern(call.pattern, call.num_heads, **kw)
    if refine_segments and call.has_segments:
        seg = device.segment_codes(
            call.q_segment_ids, call.kv_segment_ids, block_q=block_q, block_kv=block_kv
        )
        codes = device.intersect_codes(jnp.asarray(sp.to_dense()), seg)
        sp = device.from_block_codes(
            codes, max_kv_blocks=sp.kv_indices.shape[-1], max_q_blocks=sp.q_indices.shape[-1], **kw
        )
    return sp


def _from_traced_pattern(pattern, num_heads, *, q_len, kv_len, block_q, block_kv, q_offset):
    """Device metadata for patterns holding traced arrays (explicit masks)."""
    if getattr(pattern, "block_mask", None) is not None and (pattern.block_q, pattern.block_kv) == (
        block_q,
        block_kv,
    ):
        return device.from_block_mask(
            pattern.block_mask,
            block_q=block_q,
            block_kv=block_kv,
            q_len=q_len,
            kv_len=kv_len,
            q_offset=q_offset,
        )
    mask = materialize.dense_mask(
        pattern, q_len=q_len, kv_len=kv_len, q_offset=q_offset, num_heads=num_heads
    )
    codes = device.codes_from_element_mask(mask, block_q=block_q, block_kv=block_kv)
    return device.from_block_codes(
        codes, block_q=block_q, block_kv=block_kv, q_len=q_len, kv_len=kv_len, q_offset=q_offset
    )
