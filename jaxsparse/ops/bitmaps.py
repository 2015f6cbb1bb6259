"""MInference's vertical-slash masks on the GPU kernels: diagonal and key bitmaps, gathered keys.

Two patterns index their own arrays inside a tile, which the kernels' generic
`mask_fn` cannot do; the kernels read them as bitmaps instead:

* `VerticalSlashMask` (kept diagonals `q - k` and kept key columns per head):
  the kernels take the diagonals as a bitmap over offsets and the columns as
  a bitmap over keys (`diagonals=`, `key_columns=`), one bit test per element
  of a partial tile. With `include_vertical=False` the columns are excluded
  (the diagonal part of `vertical_slash_attention`, whose columns run
  gathered).
* `PositionCausal` (gathered keys that remember their positions): the
  kernels' segment-id test with `kv id <= q id`; the ids are positions, per
  head, so the heads are folded into the batch (`[B, T, H, D]` ->
  `[B * H, T, 1, D]`); each head gathered its own keys.

Both are exact: the bits are the patterns' own arrays.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxsparse.ops import call as call_lib
from jaxsparse.ops import kernel_common, layout, metadata
from jaxsparse.patterns import causal
from jaxsparse.patterns.dynamic import position_causal, vertical_slash_mask
from jaxsparse.sparsity import block_sparsity


def applies(call: call_lib.Call) -> bool:
    """Whether `run` takes this call: one of the two patterns, without segment ids, with
    head dims the backward kernels take (else the XLA path runs it, gradient included)."""
    kinds = (vertical_slash_mask.VerticalSlashMask, position_causal.PositionCausal)
    return (
        isinstance(call.pattern, kinds)
        and not call.has_segments
        and call.head_dim + call.head_dim_v <= 256
    )


def run(call: call_lib.Call):
    """`(out [B, T, H, Dv], lse [B, H, T])` on the kernels (validated by `pallas_gpu.run`)."""
    if isinstance(call.pattern, position_causal.PositionCausal):
        return _run_gathered(call)
    return _run_diagonals(call)


# The marked keys of a vertical-slash mask are causal. One instance: the kernels key their
# compiled variants on the mask_fn, and bound methods compare by their instance.
_CAUSAL = causal.Causal()


def _blocks(sp: block_sparsity.BlockSparsity) -> tuple[int, int]:
    bq, bk = sp.block_q, sp.block_kv
    if bq not in (64, 128) or bk not in (64, 128):
        raise NotImplementedError(
            f"tiles {bq}x{bk}: the GPU kernels' bitmaps need block_q and block_kv in (64, 128)"
        )
    return bq, bk


def _run_diagonals(call: call_lib.Call):
    from jaxsparse.ops import pallas_gpu

    p = call.pattern
    bq, bk = metadata.blocks_for(call, preferred=128, minimum=64)
    sp = metadata.sparsity_for(call, bq, bk)
    bq, bk = _blocks(sp)
    q, k, v, _ = layout.pad_inputs(call, bq, bk)
    exclude = not p.include_vertical
    out, lse = pallas_gpu.run_tables(
        call,
        q,
        k,
        v,
        kernel_common.tables(sp),
        mask_fn=None if exclude else _CAUSAL.mask_fn,  # kept diagonals are causal already
        mask_factors=None,
        q_offset=call.q_offset,
        kv_len=call.kv_len,
        block_q=bq,
        block_kv=bk,
        arrays={
            "diagonals": jnp.asarray(p.slash, bool),
            "key_columns": jnp.asarray(p.vertical, bool),
        },
        statics=(("key_columns_mode", "exclude" if exclude else "or"),),
    )
    return out[:, : call.q_len], lse[..., : call.q_len]


def _run_gathered(call: call_lib.Call):
    """Heads folded into the batch; segment ids: query positions and the keys' positions."""
    from jaxsparse.ops import pallas_gpu

    p = call.pattern
    b, t, h, d = call.q.shape
    n, dv = call.kv_len, call.head_dim_v
    bq, bk = metadata.blocks_for(call, preferred=128, minimum=64)
    sp = metadata.sparsity_for(call, bq, bk)
    bq, bk = _blocks(sp)
    pos = jnp.broadcast_to(jnp.asarray(p.positions, jnp.int32), (b, h, n))
    if call.num_kv_heads != h:  # gathered keys are per query head
        raise NotImplementedError(
            f"PositionCausal on the GPU kernels needs one gathered key head per query head "
            f"({h}), got {call.num_kv_heads}"
        )

    def fold(x):  # [B, L, H, X] -> [B * H, L, 1, X]
        return jnp.swapaxes(x, 1, 2).reshape(b * h, x.shape[1], 1, x.shape[-1])

    q, k, v = fold(call.q), fold(call.k), fold(call.v)
    q, k, v = layout.pad_axis(q, 1, bq), layout.pad_axis(k, 1, bk), layout.pad_axis(v, 1, bk)
    q_ids = jnp.broadcast_to(
        call.q_offset + jnp.arange(q.shape[1], dtype=jnp.int32), (b * h, q.shape[1])
    )
    # Padding keys sit past every query; the kernel also masks them by kv_len.
    kv_ids = layout.pad_axis(pos.reshape(b * h, n), 1, bk, jnp.iinfo(jnp.int32).max)
    tables = tuple(
        x.reshape((b * h, 1) + x.shape[2:]) for x in kernel_common.tables(_broadcast(sp, b, h))
    )
    out, lse = pallas_gpu.run_tables(
        call,
        q,
        k,
        v,
        tables,
        segs=(q_ids, kv_ids),
        mask_fn=None,
        mask_factors=None,
        q_offset=call.q_offset,
        kv_len=n,
        block_q=bq,
        block_kv=bk,
        statics=(("segments_le", True),),
    )
    out = jnp.swapaxes(out[:, :t, 0].reshape(b, h, t, dv), 1, 2)
    lse = lse[:, 0, :t].reshape(b, h, t)
    return out, lse


def _broadcast(sp: block_sparsity.BlockSparsity, b: int, h: int) -> block_sparsity.BlockSparsity:
    """Tables with leading `[B, H]` (a per-batch, per-head fold needs both axes whole)."""
    names = kernel_common.TABLES
    arrays = {
        name: jnp.broadcast_to(
            jnp.asarray(getattr(sp, name)), (b, h) + jnp.shape(getattr(sp, name))[2:]
        )
        for name in names
    }
    return dataclasses.replace(sp, **arrays)
