"""Block-sparse flash-attention forward kernel (Mosaic GPU, FA3 structure).

One CTA computes one q block (block_q = 64 * num consumer warpgroups rows) of
one query head. Warpgroups:
  * wg < nwg (consumers): each owns 64 query rows; QK^T and PV with wgmma,
    online softmax in f32 with exp2 (log2(e) folded into the logit
    multiplier); two consumers ping-pong on a schedule barrier so one does
    softmax while the other uses the tensor cores (FA3 section 3.1).
  * wg == nwg (producer): walks the q block's kv list and TMA-loads K/V tiles
    into `num_stages` SMEM slots (produced/consumed barriers).
The kv list is data-dependent: the trip count is kv_counts[b, h, q block] and
each tile's address comes from the list. Each list entry (block_kv keys) is
processed as block_kv // block_kv_compute pipeline steps. A per-entry flag
says whether the tile is full (no mask math) or partial (mask_fn, key padding
and segment ids evaluated in the tile).
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
class FwdShapes:
    B: int
    Tp: int
    Sp: int
    H: int
    K: int
    D: int
    Dv: int
    Bx: int
    Hx: int
    kmax: int
    block_q: int
    block_kv: int
    block_kv_compute: int
    num_stages: int
    dtype: jnp.dtype
    persistent: bool = False
    num_ctas: int = 0  # persistent: CTAs in the grid

    @property
    def nwg(self) -> int:
        return self.block_q // cm.WG_ROWS

    @property
    def num_tiles(self) -> int:
        return (self.Tp // self.block_q) * self.H * self.B

    @property
    def subs(self) -> int:
        return self.block_kv // self.block_kv_compute


def smem_bytes(sh: FwdShapes, st: cm.AttentionStatics) -> int:
    dt = sh.dtype
    bkc, r = sh.block_kv_compute, cm.WG_ROWS
    total = cm.nbytes((sh.nwg, r, sh.D), dt)
    total += cm.nbytes((sh.num_stages, bkc, sh.D), dt)
    total += cm.nbytes((sh.num_stages, bkc, sh.Dv), dt)
    if sh.Dv != sh.D or sh.persistent:
        total += cm.nbytes((sh.nwg, r, sh.Dv), dt)
    total += cm.nbytes((sh.nwg, r), jnp.float32)
    if st.has_segments:
        total += cm.nbytes((sh.num_stages, bkc), jnp.int32)
    if not st.regs_lhs:
        total += cm.nbytes((sh.nwg, r, bkc), dt)
    return total + 1024  # barriers and alignment


def _kernel(
    order_ref,
    code_ref,
    count_ref,
    q_ref,
    k_ref,
    v_ref,
    qseg_ref,
    kvseg_ref,
    word_ref,
    diag_ref,
    keys_ref,
    out_ref,
    lse_ref,
    *,
    sh: FwdShapes,
    st: cm.AttentionStatics,
    **scratch,
):
    nwg, R, bkc, stages, subs = (sh.nwg, cm.WG_ROWS, sh.block_kv_compute, sh.num_stages, sh.subs)
    q_smem, k_smem, v_smem = scratch["q_smem"], scratch["k_smem"], scratch["v_smem"]
    o_smem = scratch.get("o_smem", q_smem)
    lse_smem = scratch["lse_smem"]
    kvseg_smem = scratch.get("kvseg_smem")
    p_smem = scratch.get("p_smem")
    q_bar, k_bar, v_bar = scratch["q_bar"], scratch["k_bar"], scratch["v_bar"]
    k_free, v_free = scratch["k_free"], scratch["v_free"]
    sched_bar = scratch.get("sched_bar")

    wg = lax.axis_index("wg")
    group = sh.H // sh.K
    HB = sh.H * sh.B
    if sh.persistent:
        # Static round robin over tiles ordered (q block in heavy-first order,
        # batch, head): CTA c takes tiles c, c + G, c + 2G, ...
        cta = lax.axis_index("c")
        n_tiles = lax.div(sh.num_tiles - cta + sh.num_ctas - 1, sh.num_ctas)

        def coords(i):
            t = cta + i * sh.num_ctas
            pos = lax.div(t, HB)
            r = lax.rem(t, HB)
            return order_ref[pos], lax.rem(r, sh.H), lax.div(r, sh.H)
    else:
        n_tiles = 1

        def coords(i):
            del i
            return (order_ref[lax.axis_index("q")], lax.axis_index("h"), lax.axis_index("b"))

    def tile_info(i):
        qi, h, b = coords(i)
        bx = b if sh.Bx > 1 else 0
        hx = h if sh.Hx > 1 else 0
        n_steps = count_ref[bx, hx, qi] * subs

        def entry_of(s):
            return cm.list_entry(
                code_ref, (bx, hx, qi), s, subs=subs, block=sh.block_kv, sub_block=bkc
            )

        def word_of(s):
            if word_ref is None:
                return None
            return cm.entry_word(word_ref, (bx, hx, qi), s, subs=subs)

        return qi, h, b, n_steps, entry_of, word_of

    def sched():
        # FA3 ping-pong: arrive + wait on a 2-arrival barrier hands the tensor
        # cores to the other consumer.
        if sched_bar is not None:
            plgpu.barrier_arrive(sched_bar)
            plgpu.barrier_wait(sched_bar)

    def load_q(i):
        qi, h, b = coords(i)
        q_base = qi * sh.block_q + wg * R
        plgpu.copy_gmem_to_smem(q_ref.at[b, pl.ds(q_base, R), h], q_smem.at[wg], q_bar.at[wg])

    @pl.when(wg < nwg)
    def _consumer():
        plgpu.set_max_registers(232 if nwg == 2 else 240, action="increase")
        load_q(0)

        holds_rows = cm.warpgroup_entry_test(st, wg, nwg)

        def tile(i, base):
            qi, h, b, n_steps, entry_of, word_of = tile_info(i)
            q_base = qi * sh.block_q + wg * R
            qseg = None
            if st.has_segments:
                qseg = plgpu.load(
                    qseg_ref.at[b, pl.ds(q_base, R)], layout=cm.WGMMA_ROW, optimized=False
                )
            m = plgpu.layout_cast(jnp.full((R,), -jnp.inf, jnp.float32), cm.WGMMA_ROW)
            l = plgpu.layout_cast(jnp.zeros((R,), jnp.float32), cm.WGMMA_ROW)
            acc = plgpu.layout_cast(jnp.zeros((R, sh.Dv), jnp.float32), cm.WGMMA)
            plgpu.barrier_wait(q_bar.at[wg])

            @pl.when(n_steps > 0)
            def _():
                plgpu.barrier_wait(k_bar.at[lax.rem(base, stages)])

            if nwg == 2:
                pl.when(wg == 1)(sched)

            shape = (R, bkc)
            mult = st.logit_mult

            def wait_next_k(s):
                @pl.when(s + 1 < n_steps)
                def _():
                    plgpu.barrier_wait(k_bar.at[lax.rem(base + s + 1, stages)])

            def end_softmax(slot):
                if sched_bar is not None:
                    plgpu.barrier_arrive(sched_bar)
                plgpu.barrier_wait(v_bar.at[slot])
                if sched_bar is not None:
                    plgpu.barrier_wait(sched_bar)

            def step(s, carry):
                slot = lax.rem(base + s, stages)
                kv_start, partial = entry_of(s)
                if holds_rows is None:
                    return compute(s, slot, kv_start, partial, carry)
                # A partial entry none of whose tokens in this warpgroup's rows chose: only
                # the barriers (the same schedule as a computed step, so the other
                # warpgroup's ping-pong and the producer's slots advance as before).
                live = holds_rows(partial, word_of(s))

                def skip(carry):
                    sched()
                    plgpu.barrier_arrive(k_free.at[slot])
                    end_softmax(slot)
                    wait_next_k(s)
                    plgpu.barrier_arrive(v_free.at[slot])
                    return carry

                return lax.cond(
                    live, lambda carry: compute(s, slot, kv_start, partial, carry), skip, carry
                )

            def compute(s, slot, kv_start, partial, carry):
                acc, m, l = carry

                def qk(acc_ref):
                    plgpu.wgmma(acc_ref, q_smem.at[wg], k_smem.at[slot].T)
                    sched()
                    return acc_ref[...]

                s_tile = pl.run_scoped(qk, plgpu.ACC(shape, jnp.float32))
                kvseg = None
                if st.has_segments:
                    kvseg = plgpu.load(kvseg_smem.at[slot], layout=cm.WGMMA_COL)
                    # The next TMA into this slot writes through the async proxy:
                    # fence our generic-proxy read before releasing the slot.
                    plgpu.commit_smem()
                plgpu.barrier_arrive(k_free.at[slot])

                raw = cm.raw_logits(st, s_tile)

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
                        return jnp.where(valid, raw, -jnp.inf)

                    return f

                if st.has_segments and st.segments_on_full_tiles:
                    raw = lax.cond(partial, masked(True), masked(False))
                else:
                    raw = lax.cond(partial, masked(True), lambda: raw)

                # Online softmax in the log2 domain. m_use guards rows with no valid
                # key so far (m = -inf): exp2(-inf - (-inf)) would be NaN.
                m_new = jnp.maximum(m, raw.max(axis=1) * mult)
                m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new)
                alpha = jnp.exp2(m - m_use)
                p = jnp.exp2(raw * mult - cm.bcast_rows(m_use, shape))
                acc = acc * cm.bcast_rows(alpha, acc.shape)
                l = l * alpha
                p16 = p.astype(sh.dtype)

                # The order of these (taken from jax's attention_mgpu) changes speed.
                if sh.Dv <= 128:
                    l = l + p.sum(axis=1)
                    acc, l, m_new, p16 = lax.optimization_barrier((acc, l, m_new, p16))
                    end_softmax(slot)
                else:
                    end_softmax(slot)
                    l = l + p.sum(axis=1)

                acc = cm.mma_regs_lhs(
                    acc,
                    p16,
                    v_smem.at[slot],
                    None if p_smem is None else p_smem.at[wg],
                    during=lambda: wait_next_k(s),
                )
                plgpu.barrier_arrive(v_free.at[slot])
                return acc, m_new, l

            acc, m, l = lax.fori_loop(0, n_steps, step, (acc, m, l))
            if nwg == 2:
                pl.when(wg == 0)(sched)

            if sh.persistent:
                # Q of this tile is dead (its last wgmma has been waited on): start
                # loading the next tile's Q so that it overlaps this epilogue.
                @pl.when(i + 1 < n_tiles)
                def _():
                    load_q(i + 1)

            empty = l == 0.0
            l_safe = jnp.where(empty, 1.0, l)
            out = acc * cm.bcast_rows(1.0 / l_safe, acc.shape)
            lse = jnp.where(empty, -jnp.inf, m * cm.LN2 + jnp.log(l_safe))
            o_dst = o_smem.at[wg]
            if sh.persistent:
                # The previous tile's output stores must have read o_smem/lse_smem.
                plgpu.wait_smem_to_gmem(0, wait_read_only=True)
            o_dst[...] = out.astype(sh.dtype)
            lse_smem.at[wg][...] = lse
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(o_dst, out_ref.at[b, pl.ds(q_base, R), h], commit_group=False)
            plgpu.copy_smem_to_gmem(
                lse_smem.at[wg], lse_ref.at[b, h, pl.ds(q_base, R)], commit_group=False
            )
            plgpu.commit_smem_to_gmem_group()
            return base + n_steps

        lax.fori_loop(0, n_tiles, tile, jnp.int32(0))
        # Only SMEM reads must finish before the CTA may exit.
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    @pl.when(wg == nwg)
    def _producer():
        plgpu.set_max_registers(40, action="decrease")

        def tile(i, base):
            _, h, b, n_steps, entry_of, _ = tile_info(i)
            kvh = lax.div(h, group)

            @pl.loop(0, n_steps)
            def _(s):
                gs = base + s
                slot = lax.rem(gs, stages)
                kv_start, _ = entry_of(s)
                rows = pl.ds(kv_start, bkc)

                @pl.when(gs >= stages)
                def _():
                    plgpu.barrier_wait(k_free.at[slot])

                plgpu.copy_gmem_to_smem(k_ref.at[b, rows, kvh], k_smem.at[slot], k_bar.at[slot])
                if kvseg_smem is not None:
                    plgpu.copy_gmem_to_smem(
                        kvseg_ref.at[b, rows], kvseg_smem.at[slot], k_bar.at[slot]
                    )

                @pl.when(gs >= stages)
                def _():
                    plgpu.barrier_wait(v_free.at[slot])

                plgpu.copy_gmem_to_smem(v_ref.at[b, rows, kvh], v_smem.at[slot], v_bar.at[slot])

            return base + n_steps

        total = lax.fori_loop(0, n_tiles, tile, jnp.int32(0))

        # Observe the last consumer releases. Free on the GPU (the producer is
        # done), and it keeps every barrier phase observed by every thread that
        # waits on it, which GPU interpret mode checks.
        @pl.loop(jnp.maximum(total - stages, 0), total)
        def _(s):
            slot = lax.rem(s, stages)
            plgpu.barrier_wait(k_free.at[slot])
            plgpu.barrier_wait(v_free.at[slot])


def forward_call(
    q,
    k,
    v,
    codes,
    counts,
    order,
    q_seg,
    kv_seg,
    words=None,
    diag=None,
    keys=None,
    *,
    sh: FwdShapes,
    st: cm.AttentionStatics,
):
    """Launches the kernel. Returns out [B, Tp, H, Dv], lse [B, H, Tp] f32."""
    nwg, R, bkc, stages = sh.nwg, cm.WG_ROWS, sh.block_kv_compute, sh.num_stages
    dt = sh.dtype
    scratch = dict(
        q_smem=cm.tiled_smem((nwg, R, sh.D), dt),
        k_smem=cm.tiled_smem((stages, bkc, sh.D), dt),
        v_smem=cm.tiled_smem((stages, bkc, sh.Dv), dt),
        lse_smem=plgpu.SMEM((nwg, R), jnp.float32),
        q_bar=plgpu.Barrier(num_barriers=nwg),
        k_bar=plgpu.Barrier(num_arrivals=2 if st.has_segments else 1, num_barriers=stages),
        v_bar=plgpu.Barrier(num_barriers=stages),
        k_free=plgpu.Barrier(num_arrivals=nwg, num_barriers=stages),
        v_free=plgpu.Barrier(num_arrivals=nwg, num_barriers=stages),
    )
    if sh.Dv != sh.D or sh.persistent:
        # Persistent CTAs load the next Q while storing this output: no aliasing.
        scratch["o_smem"] = cm.tiled_smem((nwg, R, sh.Dv), dt)
    if st.has_segments:
        scratch["kvseg_smem"] = plgpu.SMEM((stages, bkc), jnp.int32)
    if not st.regs_lhs:
        scratch["p_smem"] = cm.tiled_smem((nwg, R, bkc), dt)
    if nwg == 2:
        scratch["sched_bar"] = plgpu.Barrier(num_arrivals=2)

    out_type = (
        jax.ShapeDtypeStruct((sh.B, sh.Tp, sh.H, sh.Dv), dt),
        jax.ShapeDtypeStruct((sh.B, sh.H, sh.Tp), jnp.float32),
    )
    kernel = plgpu.kernel(
        functools.partial(_kernel, sh=sh, st=st),
        out_type=out_type,
        scratch_types=scratch,
        grid=(sh.num_ctas,) if sh.persistent else (sh.H, sh.Tp // sh.block_q, sh.B),
        grid_names=("c",) if sh.persistent else ("h", "q", "b"),
        num_threads=nwg + 1,
        thread_name="wg",
        kernel_name=f"jaxsparse_attention_fwd_{sh.block_q}x{sh.block_kv}",  # name in profiles
        compiler_params=cm.compiler_params(),
        interpret=st.interpret,
    )
    return kernel(order, codes, counts, q, k, v, q_seg, kv_seg, words, diag, keys)
