"""Device-side (traceable) builders of block metadata.

Everything here runs under `jit` on any backend: block codes come from a traced
block mask, an element mask, top-k indices or segment ids, and are compacted
into the same `BlockSparsity` lists the host builder produces.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.patterns import base as pbase
from jaxsparse.sparsity import block_sparsity

_CODES = (pbase.EMPTY, pbase.PARTIAL, pbase.FULL)


def _as_4d(x: Any, name: str, rank_min: int = 2) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim < rank_min or x.ndim > 4:
        raise ValueError(
            f"{name} must have shape [Tb, Sb], [H, Tb, Sb] or [B, H, Tb, Sb]; got {x.shape}."
        )
    return x.reshape((1,) * (4 - x.ndim) + x.shape)


def _host_values(x: Any) -> np.ndarray | None:
    """`x` as numpy when it is host data (numpy, lists, scalars), else None: device arrays
    are not copied back to check them, and traced ones cannot be."""
    return None if isinstance(x, jax.Array) else np.asarray(x)


def _codes_4d(owner: str, name: str, codes: Any, tiles: tuple[int, int], geo: str) -> jax.Array:
    """`codes` as `[B, H, Tb, Sb]`; raise unless they are integer tile codes for `tiles` = (Tb, Sb).

    Values are checked when they come from the host (`_host_values`); only the
    shape and dtype of device arrays are.
    """
    shape = jnp.shape(codes)
    values = _host_values(codes)
    codes = _as_4d(codes, name)
    if codes.shape[-2:] != tiles:
        raise ValueError(
            f"{owner}: {name} has shape {shape}; {geo} need [..., {tiles[0]}, {tiles[1]}]."
        )
    if not jnp.issubdtype(codes.dtype, jnp.integer):
        raise TypeError(
            f"{owner}: {name} must be integer block codes (0 empty, 1 partial, 2 full), got "
            f"{codes.dtype}; pass codes.astype(jnp.int8)."
        )
    if values is not None and not np.isin(values, _CODES).all():
        bad = np.unique(values[~np.isin(values, _CODES)])[:5].tolist()
        raise ValueError(
            f"{owner}: {name} must hold 0 (empty), 1 (partial) or 2 (full), got {bad}."
        )
    return codes


def _geometry(owner: str, q_len, kv_len, block_q, block_kv, q_offset) -> tuple[int, int, int, str]:
    """Checked `(q_offset, Tb, Sb, description)` of a device builder's call."""
    q_offset = block_sparsity.check_geometry(
        owner, q_len=q_len, kv_len=kv_len, block_q=block_q, block_kv=block_kv, q_offset=q_offset
    )
    geo = f"q_len={q_len}, kv_len={kv_len} with block_q={block_q}, block_kv={block_kv}"
    return q_offset, math.ceil(q_len / block_q), math.ceil(kv_len / block_kv), geo


def intersect_codes(a: Any, b: Any) -> jax.Array:
    """Codes of the AND of two patterns given their exact codes (broadcasting), int8.

    The minimum of the two codes (EMPTY < PARTIAL < FULL): empty if either is,
    full only if both are, and PARTIAL & PARTIAL stays PARTIAL (conservative:
    the tile may turn out empty, which costs time but never correctness). An
    elementwise op instead of a table gather per tile (16M of them for
    BlockTopK's codes at 64k tokens).
    """
    if not _broadcasts(jnp.shape(a), jnp.shape(b)):
        raise ValueError(
            f"intersect_codes: code tables {jnp.shape(a)} and {jnp.shape(b)} do not broadcast; "
            "both must be [..., Tb, Sb] for the same tiles."
        )
    return jnp.minimum(jnp.asarray(a, jnp.int8), jnp.asarray(b, jnp.int8))


def from_block_codes(
    codes: Any,
    *,
    block_q: int,
    block_kv: int,
    q_len: int,
    kv_len: int,
    q_offset: int | None = None,
    max_kv_blocks: int | None = None,
    max_q_blocks: int | None = None,
) -> block_sparsity.BlockSparsity:
    """Lists from block codes `[Bx, Hx, Tb, Sb]` (0 empty, 1 partial, 2 full).

    `max_kv_blocks` / `max_q_blocks` bound the list lengths (static, >= 1); pass
    a true upper bound (or None for Sb / Tb): host codes that a bound would cut
    are refused (ValueError), device codes are not checked and would be cut.
    Codes from the host (numpy, lists) are checked to be 0, 1 or 2; device
    arrays are not (that would copy them back; the library's own builders pass
    valid codes).
    """
    owner = "from_block_codes"
    q_offset, tb, sb, geo = _geometry(owner, q_len, kv_len, block_q, block_kv, q_offset)
    for name, value in (("max_kv_blocks", max_kv_blocks), ("max_q_blocks", max_q_blocks)):
        if value is not None:
            pbase.check_int(
                name, value, minimum=1, owner=owner, fix="Pass None for no bound on the lists."
            )
    host = _host_values(codes)
    codes = _codes_4d(owner, "codes", codes, (tb, sb), geo).astype(jnp.int8)
    if host is not None:  # a cap that cuts a list would leave the two directions unequal
        listed = np.asarray(codes) != pbase.EMPTY
        for name, cap, most, what in (
            ("max_kv_blocks", max_kv_blocks, listed.sum(-1).max(initial=0), "query block row"),
            ("max_q_blocks", max_q_blocks, listed.sum(-2).max(initial=0), "key block column"),
        ):
            if cap is not None and cap < most:
                raise ValueError(
                    f"{owner}: {name}={cap} would cut a {what} that lists {most} tiles (the "
                    f"forward's and the backward's lists would then differ); pass at least "
                    f"{most}, or None."
                )
    if kv_len % block_kv:  # the last key block holds padding: never FULL
        last = codes[..., -1:]
        codes = codes.at[..., -1:].set(jnp.where(last == pbase.FULL, pbase.PARTIAL, last))
    kv = _compact(codes, max_kv_blocks)
    q = _compact(jnp.swapaxes(codes, -1, -2), max_q_blocks)
    return block_sparsity.BlockSparsity(
        kv_indices=kv[0],
        kv_counts=kv[1],
        kv_full=kv[2],
        q_indices=q[0],
        q_counts=q[1],
        q_full=q[2],
        block_q=block_q,
        block_kv=block_kv,
        q_len=q_len,
        kv_len=kv_len,
        q_offset=q_offset,
    )


def _compact(codes, kmax):
    """Ascending non-empty columns of every row, padded with the last one.

    Each non-empty column's slot is its rank among the row's non-empty columns
    (a running count), and one scatter writes it there: no sort, which on
    XLA:GPU took 1.2 ms per list direction for BlockTopK's `[16, 1024, 1024]`
    codes at 64k tokens (H200, 2026-12-03).
    """
    n = codes.shape[-1]
    kmax = n if kmax is None else min(kmax, n)
    lead = codes.shape[:-1]
    nonzero = (codes != pbase.EMPTY).reshape(-1, n)
    rank = jnp.cumsum(nonzero, axis=-1, dtype=jnp.int32) - 1
    slot = jnp.where(nonzero & (rank < kmax), rank, kmax)  # kmax: out of range, dropped
    col = jax.lax.broadcasted_iota(jnp.int32, nonzero.shape, 1)
    rows = jax.lax.broadcasted_iota(jnp.int32, nonzero.shape, 0)
    idx = jnp.zeros((nonzero.shape[0], kmax), jnp.int32)
    idx = idx.at[rows, slot].set(col, mode="drop").reshape(lead + (kmax,))
    counts = jnp.minimum(nonzero.sum(-1, dtype=jnp.int32), kmax).reshape(lead)
    e = jax.lax.broadcasted_iota(jnp.int32, idx.shape, idx.ndim - 1)
    last = jnp.take_along_axis(idx, jnp.maximum(counts - 1, 0)[..., None], axis=-1)
    idx = jnp.where(e < counts[..., None], idx, jnp.where(counts[..., None] > 0, last, 0))
    full = (jnp.take_along_axis(codes, idx, axis=-1) == pbase.FULL) & (e < counts[..., None])
    return idx, counts, full


def from_block_mask(
    block_mask: Any,
    *,
    block_q: int,
    block_kv: int,
    q_len: int,
    kv_len: int,
    q_offset: int | None = None,
    max_kv_blocks: int | None = None,
) -> block_sparsity.BlockSparsity:
    """Lists from a (possibly traced) boolean block mask `[..., Tb, Sb]`; kept tiles are FULL."""
    owner = "from_block_mask"
    q_offset, tb, sb, geo = _geometry(owner, q_len, kv_len, block_q, block_kv, q_offset)
    mask = _as_4d(block_mask, "block_mask")
    if mask.shape[-2:] != (tb, sb):
        raise ValueError(
            f"{owner}: block_mask has shape {jnp.shape(block_mask)}; {geo} need [..., {tb}, {sb}]."
        )
    if mask.dtype != jnp.bool_:
        raise TypeError(f"block_mask must be boolean, got {mask.dtype}; pass mask.astype(bool).")
    # A host mask gives host codes, which from_block_codes checks the bounds against.
    host = _host_values(block_mask)
    xp, mask = (jnp, mask) if host is None else (np, host)
    codes = xp.where(mask, xp.int8(pbase.FULL), xp.int8(pbase.EMPTY))
    return from_block_codes(
        codes,
        block_q=block_q,
        block_kv=block_kv,
        q_len=q_len,
        kv_len=kv_len,
        q_offset=q_offset,
        max_kv_blocks=max_kv_blocks,
    )


def topk_codes(indices: Any, *, num_kv_blocks: int) -> jax.Array:
    """FULL codes `[..., Tb, Sb]` for selected key blocks `indices [..., Tb, k]` (-1: none).

    Indices must lie in [-1, num_kv_blocks); that is checked for host arrays
    (numpy, lists). Device arrays are not checked (that would copy them back,
    and under jit it cannot be done): other out-of-range entries are then
    ignored like -1.
    """
    pbase.check_int("num_kv_blocks", num_kv_blocks, minimum=1, owner="topk_codes")
    values = _host_values(indices)
    indices = jnp.asarray(indices)
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise TypeError(f"top-k indices must be integers, got {indices.dtype}.")
    if values is not None and ((values < -1) | (values >= num_kv_blocks)).any():
        bad = np.unique(values[(values < -1) | (values >= num_kv_blocks)])[:5].tolist()
        raise ValueError(
            f"top-k indices must be key blocks in [0, {num_kv_blocks}) or -1 for none, got "
            f"{bad}; num_kv_blocks is ceil(kv_len / block_kv)."
        )
    onehot = jax.nn.one_hot(indices, num_kv_blocks, dtype=jnp.int8)  # -1 -> all zeros
    return onehot.max(axis=-2) * jnp.int8(pbase.FULL)


def from_topk(
    indices: Any,
    *,
    block_q: int,
    block_kv: int,
    q_len: int,
    kv_len: int,
    q_offset: int | None = None,
    codes: Any = None,
) -> block_sparsity.BlockSparsity:
    """Lists from per-query-block top-k key blocks `indices [..., Tb, k]` (traceable).

    Duplicates and -1 entries are ignored; lists come out ascending. Entries
    must be -1 or key blocks in [0, Sb): checked for host arrays; in device
    arrays other out-of-range entries are ignored like -1. `codes` (optional, `[..., Tb, Sb]`)
    are the exact codes of a static pattern the selection is combined with,
    e.g. causal, so the diagonal tiles stay PARTIAL.
    """
    owner = "from_topk"
    q_offset, tb, sb, geo = _geometry(owner, q_len, kv_len, block_q, block_kv, q_offset)
    shape = jnp.shape(indices)
    if len(shape) < 2 or shape[-2] != tb or shape[-1] < 1:
        raise ValueError(
            f"{owner}: indices has shape {shape}; {geo} need [..., {tb}, k] with k >= 1 key "
            "blocks per query block (-1 for none)."
        )
    sel = _as_4d(topk_codes(indices, num_kv_blocks=sb), "indices")  # host indices checked
    indices = _as_4d(indices, "indices")
    if codes is not None:
        codes = _codes_4d(owner, "codes", codes, (tb, sb), geo)
        if not _broadcasts(codes.shape, sel.shape):
            raise ValueError(
                f"{owner}: codes of shape {codes.shape} and indices of shape {indices.shape} "
                "differ in batch or heads ([B, H, Tb, ...]: each size must match or be 1)."
            )
        sel = intersect_codes(sel, codes)
    return from_block_codes(
        sel,
        block_q=block_q,
        block_kv=block_kv,
        q_len=q_len,
        kv_len=kv_len,
        q_offset=q_offset,
        max_kv_blocks=indices.shape[-1],
    )


def _broadcasts(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    try:
        np.broadcast_shapes(a, b)
    except ValueError:
        return False
    return True


def codes_from_element_mask(mask: Any, *, block_q: int, block_kv: int) -> jax.Array:
    """Exact tile codes of a bool element mask `[..., T, S]` (traceable)."""
    for name, value in (("block_q", block_q), ("block_kv", block_kv)):
        pbase.check_int(name, value, minimum=1, owner="codes_from_element_mask")
    dtype = mask.dtype if hasattr(mask, "dtype") else np.asarray(mask).dtype
    if dtype != np.bool_:
        raise TypeError(
            f"codes_from_element_mask: mask must be bool (True: may attend), got dtype "
            f"{dtype}; e.g. mask.astype(bool)."
        )
    mask = _as_4d(mask, "mask")
    t, s = mask.shape[-2:]
    tb, sb = math.ceil(t / block_q), math.ceil(s / block_kv)
    pad = ((0, 0), (0, 0), (0, tb * block_q - t), (0, sb * block_kv - s))
    valid = jnp.pad(jnp.ones((t, s), bool), pad[2:])
    m = jnp.pad(mask, pad).reshape(mask.shape[:2] + (tb, block_q, sb, block_kv))
    valid = valid.reshape(1, 1, tb, block_q, sb, block_kv)
    kept = (m & valid).sum((-3, -1))
    total = valid.sum((-3, -1))  # [1, 1, Tb, Sb]
    return jnp.where(
        kept == 0, pbase.EMPTY, jnp.where(kept == total, pbase.FULL, pbase.PARTIAL)
    ).astype(jnp.int8)


def segment_codes(
    q_segment_ids: Any, kv_segment_ids: Any, *, block_q: int, block_kv: int
) -> jax.Array:
    """Tile codes `[B, 1, Tb, Sb]` of document masking (equal ids attend).

    Sound for any ids: a tile is EMPTY when the id ranges of its queries and
    keys do not overlap, FULL when both hold one and the same id. Exact when
    ids are sorted (packed documents).
    """
    for name, value in (("block_q", block_q), ("block_kv", block_kv)):
        pbase.check_int(name, value, minimum=1, owner="segment_codes")
    for name, ids in (("q_segment_ids", q_segment_ids), ("kv_segment_ids", kv_segment_ids)):
        if jnp.ndim(ids) != 2 or not jnp.issubdtype(jnp.result_type(ids), jnp.integer):
            raise ValueError(
                f"segment_codes: {name} must be integer ids [B, length], got shape "
                f"{jnp.shape(ids)} and dtype {jnp.result_type(ids)}."
            )
    if jnp.shape(q_segment_ids)[0] != jnp.shape(kv_segment_ids)[0]:
        raise ValueError(
            f"segment_codes: q_segment_ids {jnp.shape(q_segment_ids)} and kv_segment_ids "
            f"{jnp.shape(kv_segment_ids)} must have one batch size."
        )

    def block_min_max(ids, block):
        b, n = ids.shape
        nb = math.ceil(n / block)
        big = jnp.iinfo(jnp.int32).max
        pad = ((0, 0), (0, nb * block - n))
        lo = jnp.pad(ids.astype(jnp.int32), pad, constant_values=big).reshape(b, nb, block).min(-1)
        hi = jnp.pad(ids.astype(jnp.int32), pad, constant_values=-big).reshape(b, nb, block).max(-1)
        return lo, hi

    q_lo, q_hi = block_min_max(jnp.asarray(q_segment_ids), block_q)
    k_lo, k_hi = block_min_max(jnp.asarray(kv_segment_ids), block_kv)
    q_lo, q_hi = q_lo[:, :, None], q_hi[:, :, None]
    k_lo, k_hi = k_lo[:, None, :], k_hi[:, None, :]
    empty = (q_hi < k_lo) | (k_hi < q_lo)
    full = (q_lo == q_hi) & (k_lo == k_hi) & (q_lo == k_lo)
    codes = jnp.where(full, pbase.FULL, jnp.where(empty, pbase.EMPTY, pbase.PARTIAL))
    return codes.astype(jnp.int8)[:, None]
