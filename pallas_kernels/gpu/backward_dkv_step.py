"""One pipeline step of the Mosaic GPU dK/dV kernels and the ends they share.

Used by the kernel over kv-major q lists (`backward_dkv`) and the one over
gathered tiles (`backward_dkv_gathered`): `tile_grads` (a step's dK, dV and,
with dS^T in SMEM, dQ), `sum_pair` and `stage_store` (the two warpgroups' sums
and their store), `read_add_write` (the interpret-mode twin of a TMA
reduce-add) and the float32 staging tiles' transforms.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.gpu import common as cm

# dQ staging tiles (float32): 8 rows x 128 bytes, swizzled, so that stores from the WGMMA
# layout are free of bank conflicts.
DQ_STAGING_TRANSFORMS = (plgpu.TilingTransform((8, 32)), plgpu.SwizzleTransform(128))


def read_add_write(dst, src, box, bar):
    """dst (GMEM) += src (SMEM) through the SMEM tile box: the interpret-mode twin of a
    TMA reduce-add, exact only where nothing else adds to dst meanwhile."""
    plgpu.copy_gmem_to_smem(dst, box, bar)
    plgpu.barrier_wait(bar)
    box[...] = box[...] + src[...]
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(box, dst)
    plgpu.wait_smem_to_gmem(0)


def tile_grads(
    st: cm.AttentionStatics,
    dtype,
    dk,
    dv,
    *,
    k,
    v,
    q,
    do,
    rows,
    mask,
    stage,
    ds_smem=None,
    dq_terms=None,
    dq_cols=None,
):
    """One step of dK/dV in the transposed orientation (rows = keys, columns = query rows).

    S^T = K Q^T and dP^T = V dO^T (issued back to back), then `rows()` reads the
    columns' `(lse, delta, extra)` (lse in log2 units, after the wgmmas, as the
    kernels always have) and `mask(t, extra)` sets the entries no query may
    see to -inf in the raw logits t; P^T = exp2(t * mult - lse), dV += P^T dO,
    dS^T = P^T * (dP^T - delta) (times 1 - t^2 with a soft cap), dK += dS^T Q.
    k, v, q, do: SMEM tiles; stage: None on the GPU, else the interpret-mode
    LHS staging tile (`cm.mma_regs_lhs`).

    With `ds_smem` (a `[keys, rows]` tile) dS^T goes through SMEM and the
    step also gives dQ rows (float32, unscaled, `dq_cols` columns): the sum of
    `lhs @ rhs` over the SMEM pairs `dq_terms()` returns once the tile is
    written (by default this tile's own dS K). The dK and dQ wgmmas are issued
    back to back and waited for once. Returns `(dk, dv, dq)`, dq None without
    `ds_smem`.
    """
    shape = (k.shape[0], q.shape[0])

    def s_dp(s_ref, dp_ref):
        plgpu.wgmma(s_ref, k, q.T)
        plgpu.wgmma(dp_ref, v, do.T)
        return s_ref[...], dp_ref[...]

    acc = plgpu.ACC(shape, jnp.float32)
    s_tile, dp = pl.run_scoped(s_dp, acc, acc)
    lse, delta, extra = rows()
    t = cm.raw_logits(st, s_tile)
    raw = mask(t, extra)
    p = jnp.exp2(raw * st.logit_mult - cm.bcast_cols(lse, shape))
    dv = cm.mma_regs_lhs(dv, p.astype(dtype), do, stage)
    ds = p * (dp - cm.bcast_cols(delta, shape))
    if st.logits_soft_cap is not None:
        ds = ds * (1.0 - t * t)
    if ds_smem is None:
        return cm.mma_regs_lhs(dk, ds.astype(dtype), q, stage), dv, None
    ds_smem[...] = ds.astype(dtype)
    plgpu.commit_smem()
    if dq_terms is None:
        dq_terms, dq_cols = (lambda: [(ds_smem.T, k)]), k.shape[1]
    dq_shape = (q.shape[0], dq_cols)
    if stage is not None:  # interpret mode: no pl.run_state
        dk = dk + cm.mma_smem(ds_smem, q, dk.shape)
        return dk, dv, sum(cm.mma_smem(a, b, dq_shape) for a, b in dq_terms())

    def both(dq_ref):
        def dk_step(dk_ref):
            plgpu.wgmma(dk_ref, ds_smem, q)
            for lhs, rhs in dq_terms():  # may wait for another warpgroup's tile
                plgpu.wgmma(dq_ref, lhs, rhs)

        return pl.run_state(dk_step)(plgpu.ACC.init(dk)), dq_ref[...]

    dk, dq = pl.run_scoped(both, plgpu.ACC(dq_shape, jnp.float32))
    return dk, dv, dq


def sum_pair(wg, dk, dv, scratch, store):
    """Two warpgroups that shared one key tile: the second hands its dK/dV to the first
    through SMEM (`scratch` "dk_acc", "dv_acc", "sum_bar"), which stores the sums."""
    dk_acc, dv_acc, sum_bar = scratch["dk_acc"], scratch["dv_acc"], scratch["sum_bar"]

    @pl.when(wg == 1)
    def _():
        dk_acc[...] = dk
        dv_acc[...] = dv
        plgpu.barrier_arrive(sum_bar)

    @pl.when(wg == 0)
    def _():
        plgpu.barrier_wait(sum_bar)
        other_dk = plgpu.load(dk_acc, layout=cm.WGMMA, optimized=False)
        other_dv = plgpu.load(dv_acc, layout=cm.WGMMA, optimized=False)
        store(dk + other_dk, dv + other_dv)


def stage_store(st: cm.AttentionStatics, dtype, dk, dv, k_stage, v_stage, dk_dst, dv_dst):
    """dK (times the scale) and dV to GMEM through two SMEM tiles (the K/V tiles, free by
    now), one TMA group."""
    k_stage[...] = (dk * st.scale).astype(dtype)
    v_stage[...] = dv.astype(dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(k_stage, dk_dst, commit_group=False)
    plgpu.copy_smem_to_gmem(v_stage, dv_dst, commit_group=False)
    plgpu.commit_smem_to_gmem_group()
    plgpu.wait_smem_to_gmem(0)
