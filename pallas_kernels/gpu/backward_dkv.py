"""Block-sparse attention backward, dK/dV kernel (Mosaic GPU).

One CTA owns one kv block of one kv head (64 keys per consumer warpgroup,
K/V tiles resident in SMEM) and walks, for each query head of its GQA group,
that head's kv-major q list; a producer warpgroup TMA-loads Q, dO, lse and
delta tiles. Per step, in the transposed orientation (rows = keys):
  S^T = K Q^T, dP^T = V dO^T
  P^T = exp2(S^T log2e - lse log2e)
  dV += P^T dO                         (register-LHS wgmma)
  dS^T = P^T * (dP^T - delta)          (delta = rowsum(dO * O) - dlse)
  dK += dS^T Q                         (register-LHS wgmma)
finally dK *= scale. dK/dV of a kv head sum over its query heads inside the
CTA, so there are no atomics and the result is deterministic.

With `split_heads` (the default for GQA) there is one CTA per query head
instead: it writes that head's share of dK/dV and the caller sums each
group's shares in float32 (as jax's attention_mgpu does; still
deterministic). That gives `group` times more CTAs and cuts the longest CTA's
walk by `group`, which matters for short key sequences and for key blocks
that nearly every query attends (NSA's compressed keys and forced initial
block).

With `q_split` (the default for 64-key blocks) two consumer warpgroups share
one 64-key block and take alternate pipeline steps of its q list; the second
adds its dK/dV accumulators to the first's through SMEM at the end. A lone
warpgroup leaves the tensor cores idle while it does its elementwise work;
two alternate (the FA3 ping-pong, on the q axis).

With `list_splits` = P > 1, P CTAs share each kv block's q list (CTA p takes
steps p, p + P, ...) and write their partial dK/dV separately; the caller
sums them in float32. A key block that nearly every query tile attends (NSA's
forced initial block) otherwise keeps one SM busy long after the others: its
CTA streams every Q and dO tile through one SM.

With `with_dq` the kernel also gives dQ, as FA3's backward does, so that the
dQ kernel (`backward_dq`), which recomputes S and dP for every tile pair
again, need not run: per step dS^T goes through SMEM, the dQ wgmma reads it
transposed against the key tile (`tile_grads(ds_smem=...)`), and the `[64,
D]` float32 result is added into a float32 `[B, Tp, H, D]` dQ in GMEM by one
TMA reduce-add. Two warpgroups that share every step (block_kv 128) hold the
same rows: with D a multiple of 128 each gives half of dQ's columns over both
key tiles (`DkvShapes.splits_dq_columns`, FA3's split); else the second hands
its tile to the first through SMEM, which adds the sum (`HAND_OVER_DQ`). Slower
than the dQ kernel on Hopper so far (session 21: the dQ accumulator makes the
kernel spill registers), so off by default. The step's math, shared with the
gathered kernel, is in `backward_dkv_step`. Adds to one row come from different CTAs in no
fixed order: this dQ is not bitwise deterministic. In interpret mode (where
the GPU interpreter refuses TMA reductions) each add reads, adds and writes
back instead.
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
from pallas_kernels.gpu.backward_dkv_step import (
    DQ_STAGING_TRANSFORMS,
    read_add_write,
    stage_store,
    sum_pair,
    tile_grads,
)

# With dQ and two warpgroups on every step (128-key blocks), the second hands its [64, D]
# dQ tile to the first, which adds the sum: one TMA reduce-add a step, as FA3's traffic.
# False: each adds its own (twice the adds, no wait). Used where the columns are not split
# (`SPLIT_DQ_COLUMNS`, below); interpret mode always hands over (its read-add-write is not
# atomic). Session 21 timed the hand-over on an H100: slower than the dQ kernel.
HAND_OVER_DQ = True
# With dQ on 128-key blocks and D a multiple of 128, each warpgroup gives half of dQ's
# columns (`DkvShapes.splits_dq_columns`) instead of the hand-over above. A module switch
# so that bench/nsa_glue.py's `dq hand-over` can time the hand-over beside it.
SPLIT_DQ_COLUMNS = True
# Registers a thread of the two consumer warpgroups and of the producer with dQ, or None
# for the kernel's usual 232/40. ptxas (session 21) found the dQ forms spilling at 232;
# (240, 24) is FA3's split, not yet run: bench/nsa_glue.py's `dq regs 240` sets it.
DQ_REGISTERS = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class DkvShapes:
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
    block_q_compute: int
    num_stages: int
    dtype: jnp.dtype
    split_heads: bool = False  # one CTA per query head (outputs per query head)
    q_split: bool = False  # two warpgroups, one 64-key block, alternate q steps
    list_splits: int = 1  # CTAs sharing one kv block's q list (partial outputs)
    with_dq: bool = False  # also dQ, by TMA reduce-adds into float32 (block_q_compute 64)

    def __post_init__(self):
        if self.with_dq and self.block_q_compute != cm.WG_ROWS:
            raise ValueError(
                f"with_dq needs block_q_compute={cm.WG_ROWS} (a warpgroup's [64, D] dQ "
                f"accumulator), got {self.block_q_compute}"
            )

    @property
    def nwg(self) -> int:
        return 2 if self.q_split else self.block_kv // cm.WG_ROWS

    @property
    def shared_steps(self) -> bool:
        """Two warpgroups take every step together (64 keys each of a 128-key block)."""
        return self.nwg == 2 and not self.q_split

    @property
    def splits_dq_columns(self) -> bool:
        """With dQ and shared steps, each warpgroup gives half of dQ's columns over both
        key tiles (FA3's split): both dS^T tiles go through SMEM, double-buffered by step
        parity; a `[64, D/2]` accumulator and one add each a step. Halves of 64 bf16
        columns (one 128-byte swizzle atom) need D a multiple of 128."""
        return SPLIT_DQ_COLUMNS and self.with_dq and self.shared_steps and self.D % 128 == 0

    @property
    def heads_per_cta(self) -> int:
        return 1 if self.split_heads else self.H // self.K

    @property
    def out_heads(self) -> int:
        return self.H if self.split_heads else self.K

    @property
    def out_slots(self) -> int:
        """Head slots of the outputs: out_heads per list split."""
        return self.out_heads * self.list_splits

    @property
    def subs(self) -> int:
        return self.block_q // self.block_q_compute


def smem_bytes(sh: DkvShapes, st: cm.AttentionStatics) -> int:
    dt, r, bqc = sh.dtype, cm.WG_ROWS, sh.block_q_compute
    total = cm.nbytes((sh.nwg, r, sh.D + sh.Dv), dt)
    total += cm.nbytes((sh.num_stages, bqc, sh.D + sh.Dv), dt)
    total += cm.nbytes((sh.num_stages, 2 + st.has_segments, bqc), jnp.float32)
    if not st.regs_lhs:
        total += cm.nbytes((sh.nwg, r, bqc), dt)
    sums = cm.nbytes((r, sh.D + sh.Dv), jnp.float32) if sh.q_split else 0
    if sh.with_dq:  # dS^T tiles; dQ staging (with q_split, sharing its bytes with the sums)
        total += cm.nbytes((_ds_buffers(sh), sh.nwg, r, bqc), dt)
        staging = cm.nbytes((sh.nwg, bqc, _dq_cols(sh)), jnp.float32)
        sums = max(sums, staging) if sh.q_split else staging
    return total + sums + 1024


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
    dk_ref,
    dv_ref,
    *,
    sh: DkvShapes,
    st: cm.AttentionStatics,
    **scratch,
):
    nwg, R, bqc, stages, subs = (sh.nwg, cm.WG_ROWS, sh.block_q_compute, sh.num_stages, sh.subs)
    if sh.with_dq and sh.q_split:  # the dQ staging tiles share their bytes with the end's sums
        dq_smem, (dk_acc, dv_acc) = scratch["union"]
        scratch = {**scratch, "dq_smem": dq_smem, "dk_acc": dk_acc, "dv_acc": dv_acc}
    k_smem, v_smem = scratch["k_smem"], scratch["v_smem"]
    q_smem, do_smem = scratch["q_smem"], scratch["do_smem"]
    lse_smem, delta_smem = scratch["lse_smem"], scratch["delta_smem"]
    qseg_smem = scratch.get("qseg_smem")
    st_smem = scratch.get("st_smem")
    kv_bar, in_bar, free = scratch["kv_bar"], scratch["in_bar"], scratch["free"]

    wg = lax.axis_index("wg")
    b = lax.axis_index("b")
    splits = sh.list_splits
    kv_axis = lax.axis_index("kv")
    kj = order_ref[kv_axis if splits == 1 else lax.div(kv_axis, splits)]
    part = 0 if splits == 1 else lax.rem(kv_axis, splits)  # this CTA's share of the list
    bx = b if sh.Bx > 1 else 0
    group = sh.H // sh.K
    out_h = lax.axis_index("h")  # kv head, or query head with split_heads
    kvh = lax.div(out_h, group) if sh.split_heads else out_h
    first_head = out_h if sh.split_heads else kvh * group
    out_slot = out_h + part * sh.out_heads

    def head_of(g):
        """Query head g of the CTA, its table row and this CTA's step count."""
        hq = first_head + g
        hx = hq if sh.Hx > 1 else 0
        n = count_ref[bx, hx, kj] * subs
        if splits > 1:  # steps part, part + P, ... of the list
            n = lax.div(jnp.maximum(n - part + splits - 1, 0), splits)
        return hq, hx, n

    def list_step(i):
        return i if splits == 1 else part + splits * i

    def entry_of(hx, i):
        """Start row and partial flag of this CTA's step i."""
        return cm.list_entry(
            code_ref, (bx, hx, kj), list_step(i), subs=subs, block=sh.block_q, sub_block=bqc
        )

    def word_of(hx, s):
        if word_ref is None:
            return None
        return cm.entry_word(word_ref, (bx, hx, kj), list_step(s), subs=subs)

    @pl.when(wg < nwg)
    def _consumer():
        plgpu.set_max_registers(_registers(sh)[0], action="increase")
        kv_base = kj * sh.block_kv + (0 if sh.q_split else wg * R)
        keys = pl.ds(kv_base, R)
        plgpu.copy_gmem_to_smem(k_ref.at[b, keys, kvh], k_smem.at[wg], kv_bar.at[wg])
        plgpu.copy_gmem_to_smem(v_ref.at[b, keys, kvh], v_smem.at[wg], kv_bar.at[wg])
        kvseg = None
        if st.has_segments:
            kvseg = plgpu.load(kvseg_ref.at[b, keys], layout=cm.WGMMA_ROW, optimized=False)
        dk = plgpu.layout_cast(jnp.zeros((R, sh.D), jnp.float32), cm.WGMMA)
        dv = plgpu.layout_cast(jnp.zeros((R, sh.Dv), jnp.float32), cm.WGMMA)
        plgpu.barrier_wait(kv_bar.at[wg])
        shape = (R, bqc)

        half = sh.D // 2
        own_cols = pl.ds(pl.multiple_of(wg * half, half), half)  # with splits_dq_columns

        def split_dq_terms(par):
            """With split columns, the `(lhs, rhs)` SMEM pairs whose products sum to this
            warpgroup's dQ half, once its dS^T tile is in SMEM: both warpgroups' tiles of
            step parity `par` (waiting for the other's) against the K tiles' `own_cols`."""
            tiles = scratch["ds_smem"].at[par]

            def terms():
                plgpu.barrier_arrive(scratch["ds_ready"].at[par])
                plgpu.barrier_wait(scratch["ds_ready"].at[par])
                return [(tiles.at[w].T, k_smem.at[w, :, own_cols]) for w in range(nwg)]

            return terms

        def add_dq(dst, dq):
            """dst (a step's `[bqc, D]` rows of the float32 dQ) += dq, by a TMA reduce-add.

            Split columns: dq is this warpgroup's half of the columns, added alone.
            Else two warpgroups that take every step together (`shared_steps`) hold
            the same rows: with `HAND_OVER_DQ` (always in interpret mode) the second
            hands its tile to the first through SMEM, and the first adds the sum (one
            add a step, FA3's traffic); else each adds its own (twice the traffic).
            """
            stage = scratch["dq_smem"].at[wg]
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the last step's add is out
            if sh.splits_dq_columns:
                dst = dst.at[:, own_cols]
            if not _hands_over(sh, st):
                stage[...] = dq
                plgpu.commit_smem()
                _reduce_add(stage, dst, scratch, wg, st)
                return
            ready, taken = scratch["hand_ready"], scratch["hand_taken"]

            @pl.when(wg == 1)
            def _():
                stage[...] = dq
                plgpu.commit_smem()
                plgpu.barrier_arrive(ready)
                plgpu.barrier_wait(taken)  # read: the next step may overwrite it

            @pl.when(wg == 0)
            def _():
                plgpu.barrier_wait(ready)
                other = plgpu.load(scratch["dq_smem"].at[1], layout=cm.WGMMA, optimized=False)
                plgpu.barrier_arrive(taken)
                stage[...] = dq + other
                plgpu.commit_smem()
                _reduce_add(stage, dst, scratch, wg, st)

        def head_loop(g, carry):
            dk, dv, t0 = carry
            hq, hx, n = head_of(g)

            def step(s, carry):
                dk, dv = carry
                slot = lax.rem(t0 + s, stages)
                q_start, partial = entry_of(hx, s)
                plgpu.barrier_wait(in_bar.at[slot])

                def rows():
                    lse = plgpu.load(lse_smem.at[slot], layout=cm.WGMMA_COL)
                    delta = plgpu.load(delta_smem.at[slot], layout=cm.WGMMA_COL)
                    qseg = None
                    if st.has_segments:
                        qseg = plgpu.load(qseg_smem.at[slot], layout=cm.WGMMA_COL)
                    return lse, delta, qseg

                def mask(t, qseg):
                    def masked(with_mask_fn):
                        def f():
                            valid = cm.tile_valid(
                                st,
                                shape,
                                q_start=q_start + st.q_offset,
                                kv_start=kv_base,
                                head=hq,
                                q_dim=1,
                                with_mask_fn=with_mask_fn,
                                q_seg=qseg,
                                kv_seg=kvseg,
                                word=word_of(hx, s) if with_mask_fn else None,
                                bitmaps=cm.bitmaps_or_none(diag_ref, keys_ref, b, hq)
                                if with_mask_fn
                                else None,
                            )
                            return jnp.where(valid, t, -jnp.inf)

                        return f

                    if st.has_segments and st.segments_on_full_tiles:
                        return lax.cond(partial, masked(True), masked(False))
                    return lax.cond(partial, masked(True), lambda: t)

                par = lax.rem(t0 + s, _ds_buffers(sh))
                dk, dv, dq = tile_grads(
                    st, sh.dtype, dk, dv, k=k_smem.at[wg], v=v_smem.at[wg],
                    q=q_smem.at[slot], do=do_smem.at[slot], rows=rows, mask=mask,
                    stage=None if st_smem is None else st_smem.at[wg],
                    ds_smem=scratch["ds_smem"].at[par, wg] if sh.with_dq else None,
                    dq_terms=split_dq_terms(par) if sh.splits_dq_columns else None,
                    dq_cols=_dq_cols(sh),
                )  # fmt: skip
                # Generic-proxy reads of this slot (lse, delta, segment ids) must be
                # ordered before the producer's next TMA into it.
                plgpu.commit_smem()
                plgpu.barrier_arrive(free.at[slot])
                if sh.with_dq:
                    add_dq(dq_ref.at[b, pl.ds(q_start, bqc), hq], dq)
                return dk, dv

            if sh.q_split:  # this warpgroup's steps: global step t0 + s of parity wg
                first = lax.rem(wg - lax.rem(t0, 2) + 2, 2)
                mine = lax.div(jnp.maximum(n - first + 1, 0), 2)
                dk, dv = lax.fori_loop(0, mine, lambda i, c: step(first + 2 * i, c), (dk, dv))
            else:
                dk, dv = lax.fori_loop(0, n, step, (dk, dv))
            return dk, dv, t0 + n

        dk, dv, _ = lax.fori_loop(0, sh.heads_per_cta, head_loop, (dk, dv, jnp.int32(0)))
        if sh.with_dq:  # every add is done (with q_split: before the sums reuse the staging)
            plgpu.wait_smem_to_gmem(0)
            if sh.q_split:
                plgpu.barrier_arrive(scratch["dq_done"].at[wg])
                plgpu.barrier_wait(scratch["dq_done"].at[1 - wg])

        def store(dk, dv):  # through this warpgroup's K/V tiles, no longer read
            stage_store(
                st, sh.dtype, dk, dv, k_smem.at[wg], v_smem.at[wg],
                dk_ref.at[b, keys, out_slot], dv_ref.at[b, keys, out_slot],
            )  # fmt: skip

        if not sh.q_split:
            store(dk, dv)
            return
        sum_pair(wg, dk, dv, scratch, store)

    @pl.when(wg == nwg)
    def _producer():
        plgpu.set_max_registers(_registers(sh)[1], action="decrease")

        def head_loop(g, t0):
            hq, hx, n = head_of(g)

            @pl.loop(0, n)
            def _(s):
                t = t0 + s
                slot = lax.rem(t, stages)
                q_start, _ = entry_of(hx, s)
                rows = pl.ds(q_start, bqc)

                @pl.when(t >= stages)
                def _():
                    plgpu.barrier_wait(free.at[slot])

                bar = in_bar.at[slot]
                plgpu.copy_gmem_to_smem(q_ref.at[b, rows, hq], q_smem.at[slot], bar)
                plgpu.copy_gmem_to_smem(do_ref.at[b, rows, hq], do_smem.at[slot], bar)
                plgpu.copy_gmem_to_smem(lse_ref.at[b, hq, rows], lse_smem.at[slot], bar)
                plgpu.copy_gmem_to_smem(delta_ref.at[b, hq, rows], delta_smem.at[slot], bar)
                if qseg_smem is not None:
                    plgpu.copy_gmem_to_smem(qseg_ref.at[b, rows], qseg_smem.at[slot], bar)

            return t0 + n

        total = lax.fori_loop(0, sh.heads_per_cta, head_loop, jnp.int32(0))

        @pl.loop(jnp.maximum(total - stages, 0), total)
        def _(t):
            plgpu.barrier_wait(free.at[lax.rem(t, stages)])


def _hands_over(sh: DkvShapes, st: cm.AttentionStatics) -> bool:
    """Whether the second warpgroup hands its dQ tile to the first each step (see
    `HAND_OVER_DQ`; in interpret mode always, as its adds are not atomic)."""
    return (
        sh.with_dq
        and sh.shared_steps
        and not sh.splits_dq_columns
        and (HAND_OVER_DQ or st.interpret is not None)
    )


def _registers(sh: DkvShapes) -> tuple[int, int]:
    """Registers a thread of a consumer and of the producer warpgroup."""
    if sh.with_dq and sh.nwg == 2 and DQ_REGISTERS is not None:
        return DQ_REGISTERS
    return (232 if sh.nwg == 2 else 240), 40


def _ds_buffers(sh: DkvShapes) -> int:
    """dS^T tiles per warpgroup: two (by step parity) where the other warpgroup reads
    them (`splits_dq_columns`), so that a step's write waits for no reader."""
    return 2 if sh.splits_dq_columns else 1


def _dq_cols(sh: DkvShapes) -> int:
    """Columns of a warpgroup's dQ tile."""
    return sh.D // 2 if sh.splits_dq_columns else sh.D


def _reduce_add(stage, dst, scratch, wg, st):
    """dst (GMEM, float32) += the staging tile, by a TMA reduce-add; in interpret mode
    (the GPU interpreter refuses TMA reductions) by a read, an add and a write back,
    exact there because the interpreter runs CTAs one after another and the warpgroups
    of one CTA never add the same rows there (`_hands_over`)."""
    if st.interpret is None:
        plgpu.copy_smem_to_gmem(stage, dst, reduction_op="add")
    else:
        read_add_write(dst, stage, scratch["rmw_smem"].at[wg], scratch["rmw_bar"].at[wg])


def dkv_call(
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
    sh: DkvShapes,
    st: cm.AttentionStatics,
    dq_acc=None,
):
    """Returns dk [B, Sp, K, D], dv [B, Sp, K, Dv] in k.dtype ([B, Sp, H, .], one share
    per query head, with `sh.split_heads`; [B, Sp, P * heads, .] with P list splits, slot
    p * heads + h holding split p's share). With `sh.with_dq`, dq_acc is a float32
    `[B, Tp, H, D]` ref the kernel adds dS K into (unscaled)."""
    nwg, R, bqc, stages = sh.nwg, cm.WG_ROWS, sh.block_q_compute, sh.num_stages
    dt = sh.dtype
    n_in = 4 + st.has_segments
    scratch = dict(
        k_smem=cm.tiled_smem((nwg, R, sh.D), dt),
        v_smem=cm.tiled_smem((nwg, R, sh.Dv), dt),
        q_smem=cm.tiled_smem((stages, bqc, sh.D), dt),
        do_smem=cm.tiled_smem((stages, bqc, sh.Dv), dt),
        lse_smem=plgpu.SMEM((stages, bqc), jnp.float32),
        delta_smem=plgpu.SMEM((stages, bqc), jnp.float32),
        kv_bar=plgpu.Barrier(num_arrivals=2, num_barriers=nwg),
        in_bar=plgpu.Barrier(num_arrivals=n_in, num_barriers=stages),
        # A step's slot is released by every warpgroup, or by its one taker (q_split).
        free=plgpu.Barrier(num_arrivals=1 if sh.q_split else nwg, num_barriers=stages),
    )
    if sh.q_split:
        scratch["dk_acc"] = plgpu.SMEM((R, sh.D), jnp.float32)
        scratch["dv_acc"] = plgpu.SMEM((R, sh.Dv), jnp.float32)
        scratch["sum_bar"] = plgpu.Barrier(num_arrivals=1)
    if sh.with_dq:
        scratch["ds_smem"] = cm.tiled_smem((_ds_buffers(sh), nwg, R, bqc), dt)
        cols = _dq_cols(sh)
        staging = plgpu.SMEM((nwg, bqc, cols), jnp.float32, transforms=DQ_STAGING_TRANSFORMS)
        if sh.q_split:  # the end's sums take the staging tiles' bytes
            sums = (scratch.pop("dk_acc"), scratch.pop("dv_acc"))
            scratch["union"] = plgpu.RefUnion(staging, sums)
            scratch["dq_done"] = plgpu.Barrier(num_arrivals=1, num_barriers=nwg)
        else:
            scratch["dq_smem"] = staging
        if _hands_over(sh, st):
            scratch["hand_ready"] = plgpu.Barrier(num_arrivals=1)
            scratch["hand_taken"] = plgpu.Barrier(num_arrivals=1)
        if sh.splits_dq_columns:  # both warpgroups' dS^T tiles of a step are written
            scratch["ds_ready"] = plgpu.Barrier(num_arrivals=nwg, num_barriers=2)
        if st.interpret is not None:
            scratch["rmw_smem"] = plgpu.SMEM((nwg, bqc, cols), jnp.float32)
            scratch["rmw_bar"] = plgpu.Barrier(num_arrivals=1, num_barriers=nwg)
    if st.has_segments:
        scratch["qseg_smem"] = plgpu.SMEM((stages, bqc), jnp.int32)
    if not st.regs_lhs:
        scratch["st_smem"] = cm.tiled_smem((nwg, R, bqc), dt)
    out_type = (
        jax.ShapeDtypeStruct((sh.B, sh.Sp, sh.out_slots, sh.D), dt),
        jax.ShapeDtypeStruct((sh.B, sh.Sp, sh.out_slots, sh.Dv), dt),
    )
    kernel = plgpu.kernel(
        functools.partial(_kernel, sh=sh, st=st),
        out_type=out_type,
        scratch_types=scratch,
        grid=(sh.out_heads, sh.Sp // sh.block_kv * sh.list_splits, sh.B),
        grid_names=("h", "kv", "b"),
        num_threads=nwg + 1,
        thread_name="wg",
        kernel_name=f"jaxsparse_attention_dkv_{sh.block_q}x{sh.block_kv}",  # name in profiles
        compiler_params=cm.compiler_params(),
        interpret=st.interpret,
    )
    operands = (order, codes, counts, q, k, v, do, lse2, delta, q_seg, kv_seg, words, diag, keys)
    return kernel(*operands, dq_acc if sh.with_dq else None)
