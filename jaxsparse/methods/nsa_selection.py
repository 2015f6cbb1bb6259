"""NSA branch 2 selection: top-n blocks per token, shared by a GQA group (arXiv 2502.11089, 3.3.2).

Importance comes from branch 1 without another `q . k` pass over raw keys:
the compressed attention probabilities `p_cmp = exp(scale q . k_cmp - lse_cmp)`
(using branch 1's lse) are remapped onto selection blocks by window overlap,
summed over the query heads of each key/value group, the initial and local
blocks forced, future blocks excluded, and the top `top_n` kept.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.ops import api, selection_kernels
from jaxsparse.patterns.compressed_causal import CompressedCausal
from jaxsparse.selection import chunks, estimate, remap, topk


def block_importance(
    q_rows,
    lse_rows,
    k_cmp,
    q_pos,
    *,
    kernel_size: int,
    stride: int,
    block_size: int,
    num_blocks: int,
    scale: float,
):
    """Group-summed selection-block importance `[B, K, n, num_blocks]` for some query rows.

    The straightforward form, written from the paper's equations (the
    reference the fused kernel and the attention calls are tested against):
    it holds the `[B, H, n, Nc]` probabilities. q_rows `[B, n, H, D]`,
    lse_rows `[B, n, H]` (branch 1's lse), k_cmp `[B, Nc, K, D]`, q_pos `[n]`
    absolute positions.
    """
    b, n, h, _ = q_rows.shape
    kh, nc = k_cmp.shape[2], k_cmp.shape[1]
    # Operands in q's dtype, accumulated in float32, like branch 1's logits in the kernel.
    logits = estimate.grouped_logits(q_rows, k_cmp, operands=None) * scale  # [B, H, n, Nc]
    rule = CompressedCausal(kernel_size=kernel_size, stride=stride)
    visible = rule.mask_fn(q_pos[:, None], jnp.arange(nc, dtype=jnp.int32)[None, :], 0)
    lse = jnp.moveaxis(lse_rows, 1, 2)[..., None]  # [B, H, n, 1]
    live = visible[None, None] & jnp.isfinite(lse)
    p_cmp = jnp.where(live, jnp.exp(logits - jnp.where(live, lse, 0.0)), 0.0)
    p_slc = remap.compressed_to_blocks(
        p_cmp, kernel_size=kernel_size, stride=stride, block_size=block_size, num_blocks=num_blocks
    )
    return p_slc.reshape(b, kh, h // kh, n, num_blocks).sum(2)


# Largest importance array (float32 elements) `nsa_select` holds at once: 2 GiB, e.g.
# B=1, K=2 up to 128k tokens with NSA's defaults (B*K*T*T/64 elements). Longer inputs
# are scored in slices of query rows (multiples of SLICE_ROWS) through the fused kernel,
# else in chunks of rows by `block_importance`, each ranked on its own.
IMPORTANCE_SLICE_ELEMENTS = 1 << 29
SLICE_ROWS = 64  # the importance kernel's token tile


def block_importance_by_attention(
    q,
    k_cmp,
    lse_cmp,
    *,
    kernel_size: int,
    stride: int,
    block_size: int,
    num_blocks: int,
    scale: float,
    q_offset: int,
    implementation: str | None = None,
    config: Any = None,
    columns: int = 128,
):
    """`block_importance` for all rows, token-major `[B, T, K, num_blocks]`, as attention calls.

    The remap onto selection blocks is linear in `p_cmp`, so it is attention
    with the overlap weights as values: for the blocks `[c, c + columns)`,
    `attention(q, k_cmp[lo:hi], M)` over the compressed keys that overlap them
    (`M[j, b]` = overlap of key j with block b) returns `sum_j softmax_j M[j, b]`
    normalised over those keys with its own lse; multiplying by
    `exp(lse_part - lse_cmp)` renormalises to branch 1's softmax. Each call runs
    on the attention kernels (no `[T, Nc]` score array in memory); queries
    that cannot see key `lo` yet are left out of the call (importance 0).
    Token-major, the layout the calls produce: `nsa_select` ranks the blocks
    in it and transposes only the bits (a quarter of the float32 bytes).
    """
    b, t, h, _ = q.shape
    nc, kh = k_cmp.shape[1], k_cmp.shape[2]
    parts = []
    for first in range(0, num_blocks, columns):
        n_blocks = min(columns, num_blocks - first)
        lo, m = remap.overlap_matrix(
            kernel_size, stride, block_size, blocks=range(first, first + n_blocks), num_keys=nc
        )
        hi = lo + m.shape[0]
        row0 = min(t, max(0, lo * stride + kernel_size - 1 - q_offset))
        if lo >= hi or row0 >= t:
            parts.append(jnp.zeros((b, t, kh, n_blocks), jnp.float32))
            continue
        m = np.pad(m, ((0, 0), (0, columns - n_blocks)))  # the kernels' value width
        v = jnp.broadcast_to(jnp.asarray(m, q.dtype)[None, :, None], (b, hi - lo, kh, columns))
        out, lse = api.attention(
            q[:, row0:],
            k_cmp[:, lo:hi],
            v,
            pattern=CompressedCausal(kernel_size=kernel_size, stride=stride),
            q_offset=q_offset + row0 - lo * stride,
            scale=scale,
            implementation=implementation,
            config=config,
            return_lse=True,
        )
        full = lse_cmp[:, :, row0:]
        live = jnp.isfinite(lse) & jnp.isfinite(full)
        factor = jnp.where(live, jnp.exp(jnp.where(live, lse - full, 0.0)), 0.0)  # [B, H, n]
        part = out[..., :n_blocks].astype(jnp.float32) * jnp.moveaxis(factor, 1, 2)[..., None]
        part = part.reshape(b, t - row0, kh, h // kh, n_blocks).sum(3)
        parts.append(jnp.pad(part, ((0, 0), (row0, 0), (0, 0), (0, 0))))
    return jnp.concatenate(parts, axis=-1)


def whole_importance(
    q,
    k_cmp,
    lse_cmp,
    *,
    kernel_size: int,
    stride: int,
    block_size: int,
    num_blocks: int,
    scale: float,
    q_offset: int,
    implementation: str | None = None,
    config: Any = None,
    calls: bool = True,
):
    """The importance of every given query row at once, token-major `[B, T, K, num_blocks]`.

    From the fused kernel where `selection_kernels.nsa_importance` runs it
    (on a Hopper GPU, unless `Config(gpu_importance_kernel=False)`), else from the
    attention calls (`block_importance_by_attention`), or None there if not
    `calls`. Needs at least one compressed key; `nsa_select` bounds the rows
    (`IMPORTANCE_SLICE_ELEMENTS`).
    """
    kw = dict(
        kernel_size=kernel_size,
        stride=stride,
        block_size=block_size,
        num_blocks=num_blocks,
        scale=scale,
        q_offset=q_offset,
    )
    imp = None
    if implementation in (None, "pallas_gpu"):
        imp = selection_kernels.nsa_importance(q, k_cmp, lse_cmp, **kw, config=config)
    if imp is None and calls:
        imp = block_importance_by_attention(
            q, k_cmp, lse_cmp, **kw, implementation=implementation, config=config
        )
    return imp


def slice_rows(per_row: int) -> int:
    """Query rows `nsa_select` scores at once: `IMPORTANCE_SLICE_ELEMENTS // per_row`,
    rounded down to a multiple of `SLICE_ROWS` where it holds one (at least 1 row)."""
    rows = max(1, IMPORTANCE_SLICE_ELEMENTS // max(1, per_row))
    return rows - rows % SLICE_ROWS if rows >= SLICE_ROWS else rows


def select_blocks(
    importance,
    q_pos,
    *,
    block_size: int,
    top_n: int,
    init_blocks: int,
    local_blocks: int,
    token_axis: int = 2,
):
    """Bits of the top `top_n` blocks, shaped like `importance`; initial and local blocks forced.

    `importance` is `[B, K, n, num_blocks]` (`token_axis=2`) or `[B, n, K,
    num_blocks]` (`token_axis=1`). Ties go to the lower block; a row with
    fewer visible blocks keeps them all.
    """
    nb = importance.shape[-1]
    j = jnp.arange(nb, dtype=jnp.int32)[None, None, None, :]
    own = jnp.expand_dims(q_pos // block_size, [a for a in range(4) if a != token_axis])
    forced = (j < init_blocks) | ((own - j >= 0) & (own - j < local_blocks))
    scores = jnp.where(forced, jnp.inf, importance)
    scores = jnp.where(j > own, -jnp.inf, scores)  # future blocks are never selected
    return topk.topk_mask(scores, top_n)


def nsa_select(
    q,
    k_cmp,
    lse_cmp,
    *,
    kv_len: int,
    kernel_size: int,
    stride: int,
    block_size: int,
    top_n: int,
    init_blocks: int,
    local_blocks: int,
    scale: float,
    q_offset: int,
    implementation: str | None = None,
    config: Any = None,
):
    """NSA's selection bits `[B, K, T, ceil(S / block_size)]` (bool).

    Args:
      q: `[B, T, H, D]`; k_cmp: compressed keys `[B, Nc, K, D]`; lse_cmp:
        branch 1's lse `[B, H, T]`.
      kv_len: S. Other arguments as in `jaxsparse.nsa`; `implementation` and
        `config` go to the attention calls of the importance.

    Details:
      The importance comes from `whole_importance`: on a Hopper GPU one fused
      kernel, `pallas_kernels/gpu/nsa_importance.py`, unless
      `Config(gpu_importance_kernel=False)`; elsewhere attention calls. Above
      `IMPORTANCE_SLICE_ELEMENTS` float32 elements (B=1, K=2: beyond 128k
      tokens) query rows are scored in slices, one call each, so at most that
      many are held at once; a row's blocks do not depend on other rows, so
      the bits are the same. The attention calls return the importance in q's
      dtype: with bfloat16 inputs, blocks whose importance differs by less than
      its rounding (about 2^-8 relative) may be ranked differently than in
      float32 (or by another backend); ties go to the lower block index.
    """
    q, k_cmp, lse_cmp = (jax.lax.stop_gradient(x) for x in (q, k_cmp, lse_cmp))
    nb = -(-kv_len // block_size)
    b, t = q.shape[:2]

    def to_bits(imp, q_pos, token_axis=1):  # token-major importance [B, n, K, nb] by default
        return select_blocks(
            imp,
            q_pos,
            block_size=block_size,
            top_n=top_n,
            init_blocks=init_blocks,
            local_blocks=local_blocks,
            token_axis=token_axis,
        )

    q_pos = q_offset + jnp.arange(t, dtype=jnp.int32)
    kh = k_cmp.shape[2]
    if not k_cmp.shape[1]:  # no compressed token yet: only the forced blocks score
        imp = jnp.zeros((b, t, kh, nb), jnp.float32)
        return jnp.moveaxis(to_bits(imp, q_pos), 1, 2)
    kw = dict(
        kernel_size=kernel_size,
        stride=stride,
        block_size=block_size,
        num_blocks=nb,
        scale=scale,
        implementation=implementation,
        config=config,
    )
    rows = slice_rows(b * kh * nb)
    # One slice: the fused kernel or the attention calls. Longer inputs: slices of whole
    # kernel tiles through the fused kernel, one call each, where it runs.
    bits = []
    for r0 in range(0, max(t, 1), rows):  # an empty q is one (empty) slice
        r1 = min(t, r0 + rows)
        imp = whole_importance(
            q[:, r0:r1],
            k_cmp,
            lse_cmp[:, :, r0:r1],
            **kw,
            q_offset=q_offset + r0,
            calls=rows >= t,
        )
        if imp is None:  # no kernel here (it takes every slice or none)
            break
        bits.append(to_bits(imp, q_pos[r0:r1]))
    else:
        return jnp.moveaxis(jnp.concatenate(bits, axis=1), 1, 2)

    # Without the kernel, the straightforward form in chunks of rows under one lax.map
    # (attention calls per slice would unroll num_blocks / 128 calls in every slice).
    def rows_fn(q_rows, lse_rows, q_pos):
        imp = block_importance(
            q_rows,
            lse_rows,
            k_cmp,
            q_pos,
            kernel_size=kernel_size,
            stride=stride,
            block_size=block_size,
            num_blocks=nb,
            scale=scale,
        )
        return to_bits(imp, q_pos, token_axis=2)

    per_row = b * q.shape[2] * max(k_cmp.shape[1], nb)
    return chunks.map_query_rows(
        rows_fn,
        (q, jnp.moveaxis(lse_cmp, 1, 2)),
        rows=chunks.rows_per_chunk(per_row),
        q_offset=q_offset,
    )
