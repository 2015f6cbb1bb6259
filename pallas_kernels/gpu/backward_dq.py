"""Block-sparse attention backward, dQ kernel (Mosaic GPU).

One CTA owns one q block of one query head (64 rows per consumer
warpgroup) and walks the same q-major kv lists as the forward kernel; a
producer warpgroup TMA-loads K/V tiles. Per step, for the warpgroup's rows:
  S = Q K^T, dP = dO V^T          (both wgmmas issued back to back)
  P = exp2(S log2e - lse log2e)   (lse from the forward; +inf for dead rows)
  dS = P * (dP - delta)           (delta = rowsum(dO * O) - dlse)
  dQ += dS K                      (register-LHS wgmma)
and finally dQ *= scale (with a soft cap, dS is also multiplied by 1 - t^2,
t = tanh(q.k * scale / cap)). No atomics: each dQ tile has one writer.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.gpu import common as cm


@dataclasses.dataclass(frozen=True, kw_only=True)
class DqShapes:
    B: int
    Tp: int
    Sp: int
    H: int
    K: int
    D: int
    Dv: int
    Bx: int
    Hx: int
    block_q: int
    block_kv: int
    block_kv_compute: int
    num_stages: int
    dtype: jnp.dtype

    @property
    def nwg(self) -> int:
        return self.block_q // cm.WG_ROWS

    @property
    def subs(self) -> int:
        return self.block_kv // self.block_kv_compute


def smem_bytes(sh: DqShapes, st: cm.AttentionStatics) -> int:
    dt, r, bkc = sh.dtype, cm.WG_ROWS, sh.block_kv_compute
    total = cm.nbytes((sh.nwg, r, sh.D + sh.Dv), dt)
    total += cm.nbytes((sh.num_stages, bkc, sh.D + sh.Dv), dt)
    if st.has_segments:
        total += cm.nbytes((sh.num_stages, bkc), jnp.int32)
    if not st.regs_lhs:
        total += cm.nbytes((sh.nwg, r, bkc), dt)
    return total + 1024


def _kernel(
    order_ref,
    code_ref,
    count_ref,
    q_ref,
    k_ref,
    v_ref,
    do_ref,
    lse_ref,
    delta_ref,
    qseg_ref,
    kvseg_ref,
    word_ref,
    diag_ref,
    keys_ref,
    dq_ref,
    *,
    sh: DqShapes,
    st: cm.AttentionStatics,
    **scratch,
):
    nwg, R, bkc, stages, subs = (sh.nwg, cm.WG_ROWS, sh.block_kv_compute, sh.num_stages, sh.subs)
    q_smem, do_smem = scratch["q_smem"], scratch["do_smem"]
    k_smem, v_smem = scratch["k_smem"], scratch["v_smem"]
    kvseg_smem = scratch.get("kvseg_smem")
    ds_smem = scratch.get("ds_smem")
    q_bar, k_bar, v_bar = scratch["q_bar"], scratch["k_bar"], scratch["v_bar"]
    k_free, v_free = scratch["k_free"], scratch["v_free"]

    wg = lax.axis_index("wg")
    h = lax.axis_index("h")
    b = lax.axis_index("b")
    qi = order_ref[lax.axis_index("q")]
    bx = b if sh.Bx > 1 else 0
    hx = h if sh.Hx > 1 else 0
    n_steps = count_ref[bx, hx, qi] * subs

    def entry_of(s):
        return cm.list_entry(code_ref, (bx, hx, qi), s, subs=subs, block=sh.block_kv, sub_block=bkc)

    def word_of(s):
        if word_ref is None:
            return None
        return cm.entry_word(word_ref, (bx, hx, qi), s, subs=subs)

    @pl.when(wg < nwg)
    def _consumer():
        plgpu.set_max_registers(232 if nwg == 2 else 240, action="increase")
        q_base = qi * sh.block_q + wg * R
        rows = pl.ds(q_base, R)
        plgpu.copy_gmem_to_smem(q_ref.at[b, rows, h], q_smem.at[wg], q_bar.at[wg])
        plgpu.copy_gmem_to_smem(do_ref.at[b, rows, h], do_smem.at[wg], q_bar.at[wg])
        lse = plgpu.load(lse_ref.at[b, h, rows], layout=cm.WGMMA_ROW, optimized=False)
        delta = plgpu.load(delta_ref.at[b, h, rows], layout=cm.WGMMA_ROW, optimized=False)
        qseg = None
        if st.has_segments:
            qseg = plgpu.load(qseg_ref.at[b, rows], layout=cm.WGMMA_ROW, optimized=False)
        dq = plgpu.layout_cast(jnp.zeros((R, sh.D), jnp.float32), cm.WGMMA)
        plgpu.barrier_wait(q_bar.at[wg])
        shape = (R, bkc)
        mult = st.logit_mult

        holds_rows = cm.warpgroup_entry_test(st, wg, nwg)

        def step(s, dq):
            slot = lax.rem(s, stages)
            kv_start, partial = entry_of(s)
            plgpu.barrier_wait(k_bar.at[slot])
            plgpu.barrier_wait(v_bar.at[slot])
            if holds_rows is None:
                dq = compute(s, slot, kv_start, partial, dq)
            else:  # a partial entry none of whose tokens in this warpgroup's rows chose
                live = holds_rows(partial, word_of(s))

                def skip(dq):
                    plgpu.barrier_arrive(v_free.at[slot])
                    return dq

                dq = lax.cond(live, lambda dq: compute(s, slot, kv_start, partial, dq), skip, dq)
            plgpu.barrier_arrive(k_free.at[slot])
            return dq

        def compute(s, slot, kv_start, partial, dq):
            def s_dp(s_ref, dp_ref):
                plgpu.wgmma(s_ref, q_smem.at[wg], k_smem.at[slot].T)
                plgpu.wgmma(dp_ref, do_smem.at[wg], v_smem.at[slot].T)
                return s_ref[...], dp_ref[...]

            acc = plgpu.ACC(shape, jnp.float32)
            s_tile, dp = pl.run_scoped(s_dp, acc, acc)
            kvseg = None
            if st.has_segments:
                kvseg = plgpu.load(kvseg_smem.at[slot], layout=cm.WGMMA_COL)
                plgpu.commit_smem()  # order the generic read before the next TMA
            plgpu.barrier_arrive(v_free.at[slot])

            t = cm.raw_logits(st, s_tile)

            def masked(with_mask_fn):
                def f():
                    valid = cm.tile_valid(
                        st,
                        shape,
                        q_start=q_base + st.q_offset,
                        kv_start=kv_start,
                        head=h,
                        q_dim=0,
                        with_mask_fn=with_mask_fn,
                        q_seg=qseg,
                        kv_seg=kvseg,
                        word=word_of(s) if with_mask_fn else None,
                        bitmaps=cm.bitmaps_or_none(diag_ref, keys_ref, b, h)
                        if with_mask_fn
                        else None,
                    )
                    return jnp.where(valid, t, -jnp.inf)

                return f

            if st.has_segments and st.segments_on_full_tiles:
                raw = lax.cond(partial, masked(True), masked(False))
            else:
                raw = lax.cond(partial, masked(True), lambda: t)
            p = jnp.exp2(raw * mult - cm.bcast_rows(lse, shape))
            ds = p * (dp - cm.bcast_rows(delta, shape))
            if st.logits_soft_cap is not None:
                ds = ds * (1.0 - t * t)
            return cm.mma_regs_lhs(
                dq,
                ds.astype(sh.dtype),
                k_smem.at[slot],
                None if ds_smem is None else ds_smem.at[wg],
            )

        dq = lax.fori_loop(0, n_steps, step, dq)
        out = q_smem.at[wg]  # Q is no longer needed: stage dQ through it.
        out[...] = (dq * st.scale).astype(sh.dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(out, dq_ref.at[b, rows, h])
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == nwg)
    def _producer():
        plgpu.set_max_registers(40, action="decrease")
        kvh = lax.div(h, sh.H // sh.K)

        @pl.loop(0, n_steps)
        def _(s):
            slot = lax.rem(s, stages)
            kv_start, _ = entry_of(s)
            keys = pl.ds(kv_start, bkc)

            @pl.when(s >= stages)
            def _():
                plgpu.barrier_wait(k_free.at[slot])

            plgpu.copy_gmem_to_smem(k_ref.at[b, keys, kvh], k_smem.at[slot], k_bar.at[slot])

            @pl.when(s >= stages)
            def _():
                plgpu.barrier_wait(v_free.at[slot])

            plgpu.copy_gmem_to_smem(v_ref.at[b, keys, kvh], v_smem.at[slot], v_bar.at[slot])
            if kvseg_smem is not None:
                plgpu.copy_gmem_to_smem(kvseg_ref.at[b, keys], kvseg_smem.at[slot], v_bar.at[slot])

        @pl.loop(jnp.maximum(n_steps - stages, 0), n_steps)
        def _(s):
            slot = lax.rem(s, stages)
            plgpu.barrier_wait(k_free.at[slot])
            plgpu.barrier_wait(v_free.at[slot])


def dq_call(
    q,
    k,
    v,
    do,
    lse2,
    delta,
    codes,
    counts,
    order,
    q_seg,
    kv_seg,
    words=None,
    diag=None,
    keys=None,
    *,
    sh: DqShapes,
    st: cm.AttentionStatics,
):
    """Returns dq [B, Tp, H, D] in q.dtype."""
    nwg, R, bkc, stages = sh.nwg, cm.WG_ROWS, sh.block_kv_compute, sh.num_stages
    dt = sh.dtype
    scratch = dict(
        q_smem=cm.tiled_smem((nwg, R, sh.D), dt),
        do_smem=cm.tiled_smem((nwg, R, sh.Dv), dt),
        k_smem=cm.tiled_smem((stages, bkc, sh.D), dt),
        v_smem=cm.tiled_smem((stages, bkc, sh.Dv), dt),
        q_bar=plgpu.Barrier(num_arrivals=2, num_barriers=nwg),
        k_bar=plgpu.Barrier(num_barriers=stages),
        v_bar=plgpu.Barrier(num_arrivals=2 if st.has_segments else 1, num_barriers=stages),
        k_free=plgpu.Barrier(num_arrivals=nwg, num_barriers=stages),
        v_free=plgpu.Barrier(num_arrivals=nwg, num_barriers=stages),
    )
    if st.has_segments:
        scratch["kvseg_smem"] = plgpu.SMEM((stages, bkc), jnp.int32)
    if not st.regs_lhs:
        scratch["ds_smem"] = cm.tiled_smem((nwg, R, bkc), dt)
    kernel = plgpu.kernel(
        functools.partial(_kernel, sh=sh, st=st),
        out_type=jax.ShapeDtypeStruct((sh.B, sh.Tp, sh.H, sh.D), dt),
        scratch_types=scratch,
        grid=(sh.H, sh.Tp // sh.block_q, sh.B),
        grid_names=("h", "q", "b"),
        num_threads=nwg + 1,
        thread_name="wg",
        kernel_name=f"jaxsparse_attention_dq_{sh.block_q}x{sh.block_kv}",  # name in profiles
        compiler_params=cm.compiler_params(),
        interpret=st.interpret,
    )
    return kernel(order, codes, counts, q, k, v, do, lse2, delta, q_seg, kv_seg, words, diag, keys)
