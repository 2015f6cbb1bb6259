"""dQ kernel: each query block walks its (q-major) key-block list, as the forward does.

Grid `(B, H, Tb, Kmax)`, the same tables and index maps as the forward.
Probabilities are recomputed from the saved lse, `p = exp(s - lse)`, and
`dS = P * (dP - delta)` with `delta = rowsum(dO * O) - dlse`; dQ accumulates
in an f32 VMEM tile and is written once, after the last list entry.
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


def dq_kernel(
    entries_ref,
    counts_ref,
    q_ref,
    k_ref,
    v_ref,
    do_ref,
    lse_ref,
    delta_ref,
    *refs,
    st: cm.Statics,
    sh: cm.Shapes,
    kmax: int,
):
    """One grid step: (batch b, query head h, q block i, list entry j)."""
    if st.has_segments:
        q_seg_ref, kv_seg_ref, dq_ref, acc_ref, lse_col_ref, delta_col_ref, q_seg_col_ref = refs
    else:
        dq_ref, acc_ref, lse_col_ref, delta_col_ref = refs
        q_seg_ref = kv_seg_ref = q_seg_col_ref = None
    b, h, i, j = (pl.program_id(a) for a in range(4))
    bq, bkv = st.block_q, st.block_kv
    row = sh.table_row(b, h) * (sh.Tp // bq) + i
    count = counts_ref[row]
    entry = entries_ref[row * kmax + j]

    @pl.when(j == 0)
    def _init():
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)
        # Per-row statistics arrive as lane-dense rows; the logits tile wants columns.
        lse_col_ref[...] = tile.dead_rows_to_inf(tile.row_to_column(lse_ref[...], bq))
        delta_col_ref[...] = tile.row_to_column(delta_ref[...], bq)
        if q_seg_col_ref is not None:
            q_seg_col_ref[...] = tile.row_to_column(q_seg_ref[...], bq)

    def step(partial: bool):
        k = k_ref[...]
        s, dcap = tile.logits(st, q_ref[...], k)  # [bq, bkv]
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
        p = jnp.exp(s - tile.widen(lse_col_ref[...], bkv))
        dp = lax.dot_general(do_ref[...], v_ref[...], tile.NT, preferred_element_type=jnp.float32)
        ds = p * (dp - tile.widen(delta_col_ref[...], bkv))
        if dcap is not None:
            ds = ds * dcap
        acc_ref[...] += lax.dot_general(
            ds.astype(k.dtype), k, tile.NN, preferred_element_type=jnp.float32
        )

    live = j < count
    full = tables.entry_is_full(entry)
    pl.when(live & full)(functools.partial(step, False))
    pl.when(live & jnp.logical_not(full))(functools.partial(step, True))

    @pl.when(j == kmax - 1)
    def _finish():
        dq_ref[...] = (acc_ref[...] * st.scale).astype(dq_ref.dtype)


def dq_call(
    q,
    k,
    v,
    do,
    lse_rows,
    delta_rows,
    entries,
    counts,
    q_seg,
    kv_seg,
    *,
    st: cm.Statics,
    sh: cm.Shapes,
    kmax: int,
    interpret,
):
    """Runs the dQ kernel on kernel-layout operands; returns dq in kernel layout."""
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
        layout.tile_spec(st, bq, sh.Dv, q_index),
        layout.row_spec(bq, q_index),
        layout.row_spec(bq, q_index),
    ]
    operands = [q, k, v, do, lse_rows, delta_rows]
    scratch = [
        pltpu.VMEM((bq, sh.D), jnp.float32),
        pltpu.VMEM((bq, cm.LANES), jnp.float32),
        pltpu.VMEM((bq, cm.LANES), jnp.float32),
    ]
    if st.has_segments:
        in_specs += [
            layout.segment_spec(bq, lambda b, h, i, j, *_: (b, i)),
            layout.segment_spec(bkv, lambda b, *r: (b, kv_block(b, *r))),
        ]
        operands += [q_seg, kv_seg]
        scratch.append(pltpu.VMEM((bq, cm.LANES), jnp.int32))
    kernel = functools.partial(dq_kernel, st=st, sh=sh, kmax=kmax)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct(layout.kernel_shape(sh.B, sh.Tp, sh.H, sh.D, st), q.dtype),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(sh.B, sh.H, nb, kmax),
            in_specs=in_specs,
            out_specs=layout.tile_spec(st, bq, sh.D, q_index),
            scratch_shapes=scratch,
        ),
        compiler_params=cm.compiler_params(3, 1, interpret),
        interpret=interpret,
        name="jaxsparse_block_sparse_dq",
    )(entries, counts, *operands)


def vmem_bytes(st: cm.Statics, sh: cm.Shapes, dtype) -> int:
    """VMEM of the dQ kernel: double-buffered blocks, scratch, temporaries (an estimate)."""
    bq, bkv = st.block_q, st.block_kv
    blocks = [
        ((bq, sh.D), dtype),
        ((bkv, sh.D), dtype),
        ((bkv, sh.Dv), dtype),
        ((bq, sh.Dv), dtype),
        ((bq, sh.D), dtype),
        ((8, bq), jnp.float32),
        ((8, bq), jnp.float32),
    ]
    scratch = [((bq, sh.D), jnp.float32)] + [((bq, cm.LANES), jnp.float32)] * 3
    return cm.vmem_bytes(blocks) + cm.vmem_bytes(scratch, buffers=1) + cm.temporaries_bytes(st)
