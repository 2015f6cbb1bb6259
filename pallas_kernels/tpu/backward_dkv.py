"""dK/dV kernel: each key block walks its (kv-major) query-block lists, for every
query head of its GQA group.

Grid `(B, K, Sb, G, Qmax)`: one key/value tile per (batch, kv head, kv block);
the last two axes walk the group's query heads and, per head, that head's list
of query blocks (scalar-prefetched like the forward's). dK and dV accumulate
in f32 VMEM tiles over the whole (head, entry) walk, in a fixed order, and are
written once: deterministic, no atomics, no cross-step reduction.

Tiles are computed transposed, `s^T = k q^T` of shape `[bkv, bq]`, so that
per-query statistics (lse, delta) and query segment ids are lane-dense rows
that broadcast down the sublanes, and every matmul is A @ B or A @ B^T:
  p^T = exp(s^T - lse),  dV += p^T dO,  dp^T = v dO^T,
  ds^T = p^T * (dp^T - delta),  dK += ds^T q.
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


def dkv_kernel(
    entries_ref,
    counts_ref,
    q_ref,
    do_ref,
    lse_ref,
    delta_ref,
    k_ref,
    v_ref,
    *refs,
    st: cm.Statics,
    sh: cm.Shapes,
    qmax: int,
):
    """One grid step: (batch b, kv head kh, kv block jb, group member g, list entry e)."""
    if st.has_segments:
        q_seg_ref, kv_seg_ref, dk_ref, dv_ref, dk_acc_ref, dv_acc_ref, kv_seg_col_ref = refs
    else:
        dk_ref, dv_ref, dk_acc_ref, dv_acc_ref = refs
        q_seg_ref = kv_seg_ref = kv_seg_col_ref = None
    b, kh, jb, g, e = (pl.program_id(a) for a in range(5))
    bq, bkv = st.block_q, st.block_kv
    h = kh * sh.G + g
    row = sh.table_row(b, h) * (sh.Sp // bkv) + jb
    count = counts_ref[row]
    entry = entries_ref[row * qmax + e]

    @pl.when((g == 0) & (e == 0))
    def _init():
        dk_acc_ref[...] = jnp.zeros(dk_acc_ref.shape, jnp.float32)
        dv_acc_ref[...] = jnp.zeros(dv_acc_ref.shape, jnp.float32)
        if kv_seg_col_ref is not None:
            kv_seg_col_ref[...] = tile.row_to_column(kv_seg_ref[...], bkv)

    def step(partial: bool):
        q, do = q_ref[...], do_ref[...]
        s_t, dcap_t = tile.logits(st, k_ref[...], q)  # [bkv, bq]
        q_pos = kv_pos = None
        if partial:
            q_pos, kv_pos = tile.positions(
                s_t.shape, st.q_offset + tables.entry_block(entry) * bq, jb * bkv, q_axis=1
            )
        mask = tile.tile_mask(
            st,
            partial=partial,
            q_pos=q_pos,
            kv_pos=kv_pos,
            head=h,
            q_seg=None if q_seg_ref is None else q_seg_ref[...],
            kv_seg=None if kv_seg_col_ref is None else kv_seg_col_ref[:, :1],
        )
        if mask is not None:
            s_t = jnp.where(mask, s_t, -jnp.inf)
        p_t = jnp.exp(s_t - tile.dead_rows_to_inf(lse_ref[...]))
        dv_acc_ref[...] += lax.dot_general(
            p_t.astype(do.dtype), do, tile.NN, preferred_element_type=jnp.float32
        )
        dp_t = lax.dot_general(v_ref[...], do, tile.NT, preferred_element_type=jnp.float32)
        ds_t = p_t * (dp_t - delta_ref[...])
        if dcap_t is not None:
            ds_t = ds_t * dcap_t
        dk_acc_ref[...] += lax.dot_general(
            ds_t.astype(q.dtype), q, tile.NN, preferred_element_type=jnp.float32
        )

    live = e < count
    full = tables.entry_is_full(entry)
    pl.when(live & full)(functools.partial(step, False))
    pl.when(live & jnp.logical_not(full))(functools.partial(step, True))

    @pl.when((g == sh.G - 1) & (e == qmax - 1))
    def _finish():
        dk_ref[...] = (dk_acc_ref[...] * st.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_acc_ref[...].astype(dv_ref.dtype)


def dkv_call(
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
    qmax: int,
    interpret,
):
    """Runs the dK/dV kernel on kernel-layout operands; returns (dk, dv) in kernel layout."""
    bq, bkv = st.block_q, st.block_kv
    nb = sh.Sp // bkv

    q_index = tables.kv_major_q_index(sh, nb, qmax)

    def kv_index(b, kh, jb, g, e, *_):
        return b, kh, jb

    in_specs = [
        layout.tile_spec(st, bq, sh.D, q_index),
        layout.tile_spec(st, bq, sh.Dv, q_index),
        layout.row_spec(bq, q_index),
        layout.row_spec(bq, q_index),
        layout.tile_spec(st, bkv, sh.D, kv_index),
        layout.tile_spec(st, bkv, sh.Dv, kv_index),
    ]
    operands = [q, do, lse_rows, delta_rows, k, v]
    scratch = [pltpu.VMEM((bkv, sh.D), jnp.float32), pltpu.VMEM((bkv, sh.Dv), jnp.float32)]
    if st.has_segments:
        in_specs += [
            layout.segment_spec(bq, lambda *a: (a[0], q_index(*a)[2])),
            layout.segment_spec(bkv, lambda b, kh, jb, g, e, *_: (b, jb)),
        ]
        operands += [q_seg, kv_seg]
        scratch.append(pltpu.VMEM((bkv, cm.LANES), jnp.int32))
    kernel = functools.partial(dkv_kernel, st=st, sh=sh, qmax=qmax)
    return pl.pallas_call(
        kernel,
        out_shape=[
            jax.ShapeDtypeStruct(layout.kernel_shape(sh.B, sh.Sp, sh.K, sh.D, st), k.dtype),
            jax.ShapeDtypeStruct(layout.kernel_shape(sh.B, sh.Sp, sh.K, sh.Dv, st), v.dtype),
        ],
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(sh.B, sh.K, nb, sh.G, qmax),
            in_specs=in_specs,
            out_specs=[
                layout.tile_spec(st, bkv, sh.D, kv_index),
                layout.tile_spec(st, bkv, sh.Dv, kv_index),
            ],
            scratch_shapes=scratch,
        ),
        compiler_params=cm.compiler_params(3, 2, interpret),
        interpret=interpret,
        name="jaxsparse_block_sparse_dkv",
    )(entries, counts, *operands)


def vmem_bytes(st: cm.Statics, sh: cm.Shapes, dtype) -> int:
    """VMEM of the dK/dV kernel: blocks, scratch, temporaries (an estimate)."""
    bq, bkv = st.block_q, st.block_kv
    blocks = [
        ((bq, sh.D), dtype),
        ((bq, sh.Dv), dtype),
        ((8, bq), jnp.float32),
        ((8, bq), jnp.float32),
        ((bkv, sh.D), dtype),
        ((bkv, sh.Dv), dtype),
        ((bkv, sh.D), dtype),
        ((bkv, sh.Dv), dtype),
    ]
    scratch = [
        ((bkv, sh.D), jnp.float32),
        ((bkv, sh.Dv), jnp.float32),
        ((bkv, cm.LANES), jnp.int32),
    ]
    return cm.vmem_bytes(blocks) + cm.vmem_bytes(scratch, buffers=1) + cm.temporaries_bytes(st)
