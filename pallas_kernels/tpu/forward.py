"""Forward kernel: online softmax of each query block over its key-block list.

Grid `(B, H, Tb, Kmax)`: one query tile per (batch, head, q block), the last
axis walks the tile's list. The list (packed entries and counts) is scalar
prefetched into SMEM, and the K/V BlockSpec index maps read the key block of
entry j from it, so the pipeline DMAs exactly the listed tiles. Entries past
the count repeat the last valid block: the block index does not change, so
the pipeline issues no new copy, and `pl.when(j < count)` skips the compute.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.tpu import common as cm
from pallas_kernels.tpu import layout, tables, tile


def forward_kernel(
    entries_ref, counts_ref, q_ref, k_ref, v_ref, *refs, st: cm.Statics, sh: cm.Shapes, kmax: int
):
    """One grid step: (batch b, query head h, q block i, list entry j)."""
    if st.has_segments:
        q_seg_ref, kv_seg_ref, out_ref, lse_ref, m_ref, l_ref, acc_ref, q_seg_col_ref = refs
    else:
        out_ref, lse_ref, m_ref, l_ref, acc_ref = refs
        q_seg_ref = kv_seg_ref = q_seg_col_ref = None
    b, h, i, j = (pl.program_id(a) for a in range(4))
    bq, bkv = st.block_q, st.block_kv
    row = sh.table_row(b, h) * (sh.Tp // bq) + i
    count = counts_ref[row]
    entry = entries_ref[row * kmax + j]

    @pl.when(j == 0)
    def _init():
        m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)
        if q_seg_col_ref is not None:
            q_seg_col_ref[...] = tile.row_to_column(q_seg_ref[...], bq)

    def step(partial: bool):
        s, _ = tile.logits(st, q_ref[...], k_ref[...])  # [bq, bkv] f32
        q_pos = kv_pos = None
        if partial:
            q_pos, kv_pos = tile.positions(
                s.shape, st.q_offset + i * bq, tables.entry_block(entry) * bkv, q_axis=0
            )
        mask = tile.tile_mask(
            st,
            partial=partial,
            q_pos=q_pos,
            kv_pos=kv_pos,
            head=h,
            q_seg=None if q_seg_col_ref is None else q_seg_col_ref[:, :1],
            kv_seg=None if kv_seg_ref is None else kv_seg_ref[...],
        )
        if mask is not None:
            s = jnp.where(mask, s, -jnp.inf)
        _online_softmax_update(s, v_ref[...], m_ref, l_ref, acc_ref)

    live = j < count
    full = tables.entry_is_full(entry)
    pl.when(live & full)(functools.partial(step, False))
    pl.when(live & jnp.logical_not(full))(functools.partial(step, True))

    @pl.when(j == kmax - 1)
    def _finish():
        l = l_ref[...]
        has_keys = l > 0.0
        l_safe = jnp.where(has_keys, l, 1.0)
        out = acc_ref[...] / tile.widen(l_safe, acc_ref.shape[1])
        out_ref[...] = out.astype(out_ref.dtype)
        lse = jnp.where(has_keys, m_ref[...] + jnp.log(l_safe), -jnp.inf)
        lse_ref[...] = tile.column_to_row(lse)


def _online_softmax_update(s, v, m_ref, l_ref, acc_ref):
    """Fold one tile of masked logits `s [bq, bkv]` into the running (m, l, acc).

    A row with no allowed key so far keeps m = -inf; its reference point is 0
    so that exp(-inf - 0) = 0 instead of exp(-inf + inf) = NaN.
    """
    m_prev = m_ref[...]  # [bq, 128], lane-replicated
    m_next = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))
    m_ref_point = jnp.where(m_next == -jnp.inf, 0.0, m_next)
    alpha = jnp.exp(m_prev - m_ref_point)
    p = jnp.exp(s - tile.widen(m_ref_point, s.shape[1]))
    l_ref[...] = alpha * l_ref[...] + p.sum(axis=1, keepdims=True)
    m_ref[...] = m_next
    pv = lax.dot_general(p.astype(v.dtype), v, tile.NN, preferred_element_type=jnp.float32)
    acc_ref[...] = acc_ref[...] * tile.widen(alpha, acc_ref.shape[1]) + pv


def forward_call(
    q, k, v, entries, counts, q_seg, kv_seg, *, st: cm.Statics, sh: cm.Shapes, kmax: int, interpret
):
    """Runs the forward kernel on kernel-layout operands (see `layout.to_kernel_layout`).

    Returns out in kernel layout and lse `[B, H, 1, Tp]` f32.
    """
    bq, bkv = st.block_q, st.block_kv
    nb = sh.Tp // bq

    kv_index = tables.q_major_kv_index(sh, nb, kmax)

    def q_index(b, h, i, j, *_):
        return b, h, i

    def kv_block(*args):
        return kv_index(*args)[2]

    in_specs = [
        layout.tile_spec(st, bq, sh.D, q_index),
        layout.tile_spec(st, bkv, sh.D, kv_index),
        layout.tile_spec(st, bkv, sh.Dv, kv_index),
    ]
    operands = [q, k, v]
    scratch = [
        pltpu.VMEM((bq, cm.LANES), jnp.float32),
        pltpu.VMEM((bq, cm.LANES), jnp.float32),
        pltpu.VMEM((bq, sh.Dv), jnp.float32),
    ]
    if st.has_segments:
        in_specs += [
            layout.segment_spec(bq, lambda b, h, i, j, *_: (b, i)),
            layout.segment_spec(bkv, lambda b, *r: (b, kv_block(b, *r))),
        ]
        operands += [q_seg, kv_seg]
        scratch.append(pltpu.VMEM((bq, cm.LANES), jnp.int32))
    out_specs = [layout.tile_spec(st, bq, sh.Dv, q_index), layout.row_spec(bq, q_index)]
    out_shape = [
        jax.ShapeDtypeStruct(layout.kernel_shape(sh.B, sh.Tp, sh.H, sh.Dv, st), q.dtype),
        jax.ShapeDtypeStruct((sh.B, sh.H, 1, sh.Tp), jnp.float32),
    ]
    kernel = functools.partial(forward_kernel, st=st, sh=sh, kmax=kmax)
    return pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(sh.B, sh.H, nb, kmax),
            in_specs=in_specs,
            out_specs=out_specs,
            scratch_shapes=scratch,
        ),
        compiler_params=cm.compiler_params(3, 1, interpret),
        interpret=interpret,
        name="jaxsparse_block_sparse_fwd",
    )(entries, counts, *operands)


def vmem_bytes(st: cm.Statics, sh: cm.Shapes, dtype) -> int:
    """VMEM of the forward: double-buffered blocks, scratch, temporaries (an estimate)."""
    bq, bkv = st.block_q, st.block_kv
    blocks = [
        ((bq, sh.D), dtype),
        ((bkv, sh.D), dtype),
        ((bkv, sh.Dv), dtype),
        ((bq, sh.Dv), dtype),
        ((8, bq), jnp.float32),
    ]
    scratch = [((bq, cm.LANES), jnp.float32)] * 3 + [((bq, sh.Dv), jnp.float32)]
    return cm.vmem_bytes(blocks) + cm.vmem_bytes(scratch, buffers=1) + cm.temporaries_bytes(st)
