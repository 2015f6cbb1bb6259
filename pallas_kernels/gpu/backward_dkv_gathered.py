"""Block-sparse attention backward, dK/dV over gathered query tiles (Mosaic GPU).

For per-token key-block selections that a GQA group shares (NSA), laid out as
in `jaxsparse.ops.packed`: q, dO `[B, T*G, Hx, D]`, row `tok * G + j` of bit
head x holding query head `x * G + j` of token tok. The packed dK/dV kernel
(`backward_dkv`) walks, for a key tile, the packed tiles of consecutive tokens
whose union holds it: on NSA's needle inputs at 64k, 4.3x the tokens that
selected it. Here a query tile holds `64 // G` tokens that *did* select the
key tile's block, taken in order from the (block, token) pairs sorted by
block: the producer copies each token's G rows with one `[G, D]` TMA box per
operand (measured on the H200 at 64k, session 14: 16 such copies cost 14 %
more than one box of 16 consecutive tokens, and the gathered tiles' loads take
2.1 ms against 8.1 ms for the packed ones).

Work item (one CTA): bit head f = b * Hx + x, key tile kj (64 keys), gathered
tiles lo..hi. Two consumer warpgroups share the key tile and take alternate
tiles (the FA3 ping-pong on the q axis, as `backward_dkv`'s `q_split`), the
second adding its dK/dV to the first's through SMEM at the end. With dQ a
warpgroup has one or two Q/dO slots (`DQ_STAGES`), and a slot's float32 dQ
staging tile is the slot's own bytes. Per tile, in
the transposed orientation (rows = keys):
  S^T = K Q^T, dP^T = V dO^T
  P^T = exp2(S^T log2e - lse log2e), keys past the row's limit masked
  dV += P^T dO,  dS^T = P^T * (dP^T - delta),  dK += dS^T Q
Row r of a tile may see the keys at positions <= limits[r] (its token's
position for causal selections, kv_len - 1 otherwise, -1 for the rows past a
block's last token); lse (log2 units) and delta come gathered per tile row.
A work item writes its own partial dK/dV; the caller sums the items of one
key tile and kv head in float32, so dK/dV are deterministic (no atomics).
With `with_dq` (and `ADD_DKV`), each item instead adds its dK/dV into
float32 sums by two TMA reduce-adds: the dQ is not deterministic either way,
and the partials' segment sum reads every item slot of the static bound,
which items in token chunks (`jaxsparse.ops.gathered`) make large.

With `with_dq` the kernel also gives dQ, in place of the dQ kernel's walk of
the packed tiles (the union of 8 tokens' blocks, about 3x the selected pairs
on NSA's needle inputs at 64k): per tile, dS (dS^T in SMEM, read transposed)
times the key tile, `[64, D]` in float32, added into a float32 dQ in GMEM by
one TMA reduce-add per token (the tile's `[G, D]` boxes). The adds of one row
come from different CTAs in no fixed order, so this dQ is not bitwise
deterministic. The GPU interpreter cannot run a TMA reduction; in interpret
mode each box is read, added to and written back instead, exact there because
the interpreter runs the CTAs one after another (and a CTA's two warpgroups
never hold the same token: a block's tiles are disjoint).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.gpu import backward_dkv_step as step_lib
from pallas_kernels.gpu import common as cm

NWG = 2  # consumer warpgroups, alternating tiles of one key tile
# With dQ (itself added by TMA reduce-adds, so not bitwise deterministic), dK/dV are added
# the same way into float32 sums instead of written as per-item partials that XLA sums:
# a segment sum over every item slot, live or not, which chunked items make large.
ADD_DKV = True
# Registers a thread of the two consumer warpgroups and of the producer (`set_max_registers`).
# With dQ, ptxas spilled about 200 bytes a thread at 232/40 and 164 at 240/24 (H100, session
# 23). Once each warpgroup had two Q/dO slots, 240/24 was faster on the H100 (session 25,
# call 2: the kernel alone 7.75 against 7.94 ms, NSA's step at 64k 28.55 against 28.93 ms).
REGISTERS = (240, 24)
RMW_ROWS = 8  # rows per read-add-write of the interpret-mode twin of the dK/dV adds
# With dQ, the Q/dO slots (at least `num_stages`): `NWG` gives each warpgroup one (the
# warpgroups take alternate tiles), and it gives its slot back as soon as the tile's
# reduce-adds have read it; `2 * NWG` gives each two, so that a warpgroup's next tile loads
# while it works on this one, and a slot goes back during the warpgroup's next tile. A slot's
# dQ staging tile is its own Q/dO bytes, free once the tile's wgmmas are done. On the H100
# (session 25) two slots were faster in 1k-token item chunks (the kernel alone at 64k 7.92
# against 8.21 ms) and a little slower in 4k ones, the default (8.29 against 8.06 ms; NSA's
# step 27.97/27.97 against 27.77/27.91 ms at 64k, 81.71 against 81.29 at 128k). Two stay
# the default: the GPU tests against the dense oracle ran with two (one, with the staging in
# the slot's bytes, ran on the GPU in benchmarks only).
DQ_STAGES = 2 * NWG


class GatheredTiles(NamedTuple):
    """Gathered query tiles and the work items over them (int32 arrays).

    tokens `[N, n]`: the n = 64 // G tokens of each tile (any token for the
      rows past a block's last one: they are masked by `limits`).
    limits `[N, n]`: the last key position each token's rows may see (-1:
      nothing, a padding row).
    heads `[N]`: the bit head f = b * Hx + x of each tile.
    items `[I, 4]`: (bit head f = b * Hx + x, key tile kj of 64 keys, first
      tile, end tile) of each CTA, tiles of one (f, kj) contiguous; an item
      with end <= first does nothing and its output slot is not read. The
      items run in their order here: block order, or token chunks.
    """

    tokens: jax.Array
    limits: jax.Array
    heads: jax.Array
    items: jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class GatheredShapes:
    B: int
    Tp: int  # packed rows: tokens * G
    Sp: int
    Hx: int  # bit heads (q's head axis in the packed layout)
    K: int
    D: int
    Dv: int
    group: int  # G, query heads per bit head: rows per token
    num_stages: int
    dtype: jnp.dtype
    with_dq: bool = False
    add_dkv: bool = False  # dK/dV by TMA reduce-adds into float32 GMEM, no per-item partials

    @property
    def tokens(self) -> int:
        return cm.WG_ROWS // self.group


def check_support(group: int, D: int, Dv: int, num_stages: int, with_dq: bool = False) -> None:
    """Raises NotImplementedError for shapes the gathered kernel cannot run."""
    if group % 8 or group > cm.WG_ROWS:
        raise NotImplementedError(
            f"gathered dK/dV needs a group of 8 to 64 rows per token in multiples of 8 (got "
            f"{group}): a token's rows fill whole 8-row tiles of the SMEM layout"
        )
    if D + Dv > 256:
        raise NotImplementedError(f"gathered dK/dV needs D + Dv <= 256 (got D={D}, Dv={Dv})")
    if num_stages < 2 or num_stages % 2:
        raise NotImplementedError(f"gathered dK/dV needs an even num_stages >= 2 ({num_stages=})")
    if with_dq and Dv != D:
        raise NotImplementedError(
            f"gathered dQ needs D == Dv (got D={D}, Dv={Dv}): a Q/dO slot's bytes hold the "
            "float32 dQ staging tile"
        )


def smem_bytes(sh: GatheredShapes, st: cm.AttentionStatics) -> int:
    dt, r = sh.dtype, cm.WG_ROWS
    total = cm.nbytes((NWG, r, sh.D + sh.Dv), dt)  # K, V per warpgroup
    qdo = cm.nbytes((sh.num_stages, r, sh.D + sh.Dv), dt)  # Q, dO
    total += cm.nbytes((sh.num_stages, 3, r), jnp.float32)  # lse, delta, limits
    sums = cm.nbytes((r, sh.D + sh.Dv), jnp.float32)  # the second warpgroup's sums
    if sh.with_dq:  # dS^T tiles; Q/dO slots, their dQ staging tiles and the sums (a RefUnion)
        total += cm.nbytes((NWG, r, r), dt)
        total += max(qdo, sums, cm.nbytes((sh.num_stages, r, sh.D), jnp.float32))
    else:
        total += qdo + sums
    if not st.regs_lhs:
        total += cm.nbytes((NWG, r, r), dt)
    return total + 1024


def _kernel(
    item_ref,
    tok_ref,
    q_ref,
    k_ref,
    v_ref,
    do_ref,
    stats_ref,
    limit_ref,
    *refs,
    sh: GatheredShapes,
    st: cm.AttentionStatics,
    **scratch,
):
    R, stages, g = cm.WG_ROWS, sh.num_stages, sh.group
    dq_ref, refs = (refs[0], refs[1:]) if sh.with_dq else (None, refs)
    dk_ref, dv_ref = refs  # the f32 sums (add_dkv, inputs) or this item's partials (outputs)
    if sh.with_dq:  # Q/dO slots, their dQ staging tiles and the end's sums share bytes
        qdo_smem, *dq_smem, (dk_acc, dv_acc) = scratch["union"]
        dq_smem = dq_smem[0] if dq_smem else scratch["dq_smem"]
        scratch = {**scratch, "dk_acc": dk_acc, "dv_acc": dv_acc}

        def q_slot(slot, *rows):  # one dynamic index: the wgmma's operand takes no more
            return qdo_smem.at[(2 * slot, *rows)]

        def do_slot(slot, *rows):
            return qdo_smem.at[(2 * slot + 1, *rows)]
    else:

        def q_slot(slot, *rows):
            return scratch["q_smem"].at[(slot, *rows)]

        def do_slot(slot, *rows):
            return scratch["do_smem"].at[(slot, *rows)]

    k_smem, v_smem = scratch["k_smem"], scratch["v_smem"]
    stats_smem, limit_smem = scratch["stats_smem"], scratch["limit_smem"]
    st_smem = scratch.get("st_smem")
    kv_bar, in_bar, free = scratch["kv_bar"], scratch["in_bar"], scratch["free"]

    wg = lax.axis_index("wg")
    c = lax.axis_index("c")
    f, kj, lo = item_ref[c, 0], item_ref[c, 1], item_ref[c, 2]
    n = jnp.maximum(item_ref[c, 3] - lo, 0)  # tiles of this item
    b, x = lax.div(f, sh.Hx), lax.rem(f, sh.Hx)
    kvh = lax.div(x, sh.Hx // sh.K)
    keys = pl.ds(kj * R, R)

    def token_rows(ref, tok):
        """Token tok's `[G, D]` rows of bit head x in q, dO or dQ (packed rows)."""
        return ref.at[b, pl.ds(tok * g, g), x]

    @pl.when((wg < NWG) & (n > 0))
    def _consumer():
        plgpu.set_max_registers(REGISTERS[0], action="increase")
        plgpu.copy_gmem_to_smem(k_ref.at[b, keys, kvh], k_smem.at[wg], kv_bar.at[wg])
        plgpu.copy_gmem_to_smem(v_ref.at[b, keys, kvh], v_smem.at[wg], kv_bar.at[wg])
        dk = plgpu.layout_cast(jnp.zeros((R, sh.D), jnp.float32), cm.WGMMA)
        dv = plgpu.layout_cast(jnp.zeros((R, sh.Dv), jnp.float32), cm.WGMMA)
        plgpu.barrier_wait(kv_bar.at[wg])
        shape = (R, R)
        key_pos = cm.iota(shape, 0) + kj * R

        def step(s, carry):
            slot = lax.rem(s, stages)
            plgpu.barrier_wait(in_bar.at[slot])

            def rows():
                if sh.with_dq and stages > NWG:  # this warpgroup's last tile's adds are out
                    pl.when(s >= NWG)(lambda: release(lax.rem(s - NWG, stages)))
                lse = plgpu.load(stats_smem.at[slot, 0], layout=cm.WGMMA_COL)
                delta = plgpu.load(stats_smem.at[slot, 1], layout=cm.WGMMA_COL)
                return lse, delta, plgpu.load(limit_smem.at[slot], layout=cm.WGMMA_COL)

            def mask(t, limit):
                return jnp.where(key_pos <= cm.bcast_cols(limit, shape), t, -jnp.inf)

            dk, dv, dq = step_lib.tile_grads(
                st, sh.dtype, *carry, k=k_smem.at[wg], v=v_smem.at[wg], q=q_slot(slot),
                do=do_slot(slot), rows=rows, mask=mask,
                stage=None if st_smem is None else st_smem.at[wg],
                ds_smem=scratch["ds_smem"].at[wg] if sh.with_dq else None,
            )  # fmt: skip
            if sh.with_dq:  # the slot goes back once the adds have read its staging tile
                add_dq(slot, lo + s, dq)
                if stages == NWG:  # a slot a warpgroup: its next tile waits for it
                    release(slot)
            else:
                # Generic-proxy reads of this slot (lse, delta, limits) must be ordered
                # before the producer's next TMA into it.
                plgpu.commit_smem()
                plgpu.barrier_arrive(free.at[slot])
            return dk, dv

        def release(slot):
            """The slot back to the producer, once this warpgroup's adds have read it."""
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)
            plgpu.barrier_arrive(free.at[slot])

        def add_dq(slot, tile, dq):
            """dQ rows of the tile += dq, one reduce-add per token's [G, D] box, staged in
            the slot's own bytes (its wgmmas are done with Q and dO)."""
            stage = dq_smem.at[slot]
            stage[...] = dq
            plgpu.commit_smem()  # orders the slot's generic reads and writes before the TMAs
            for j in range(sh.tokens):
                src = stage.at[pl.ds(j * g, g)]
                dst = token_rows(dq_ref, tok_ref[tile, j])
                if st.interpret is None:
                    plgpu.copy_smem_to_gmem(src, dst, reduction_op="add", commit_group=False)
                else:  # read, add, write back (see the module docstring)
                    box, bar = scratch["rmw_smem"].at[wg], scratch["rmw_bar"].at[wg]
                    step_lib.read_add_write(dst, src, box, bar)
            plgpu.commit_smem_to_gmem_group()

        mine = lax.div(jnp.maximum(n - wg + 1, 0), 2)  # tiles wg, wg + 2, ...
        dk, dv = lax.fori_loop(0, mine, lambda i, carry: step(wg + 2 * i, carry), (dk, dv))
        if sh.with_dq:  # the slots become the sums' tiles: both warpgroups done
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)
            if stages > NWG:
                pl.when(mine > 0)(lambda: release(lax.rem(wg + 2 * (mine - 1), stages)))
            plgpu.barrier_arrive(scratch["dq_done"].at[wg])
            plgpu.barrier_wait(scratch["dq_done"].at[1 - wg])

        def store(dk, dv):  # through the first warpgroup's K/V tiles, no longer read
            step_lib.stage_store(
                st, sh.dtype, dk, dv, k_smem.at[0], v_smem.at[0], dk_ref.at[c], dv_ref.at[c]
            )

        def add_sums(dk, dv):
            """dK (times the scale) and dV += the sums, by TMA reduce-adds of the f32 tiles
            the second warpgroup handed them over in (each thread rewrites its own elements)."""
            pairs = ((scratch["dk_acc"], dk * st.scale, dk_ref), (scratch["dv_acc"], dv, dv_ref))
            for tile, value, _ in pairs:
                tile[...] = value
            plgpu.commit_smem()
            for i, (tile, _, ref) in enumerate(pairs):
                if st.interpret is None:
                    plgpu.copy_smem_to_gmem(
                        tile, ref.at[b, keys, kvh], reduction_op="add", commit_group=False
                    )
                else:  # read, add, write back, 8 rows at a time (see the module docstring)
                    box, bar = scratch[("rmw_k", "rmw_v")[i]], scratch["rmw_kv_bar"]
                    for r in range(0, R, RMW_ROWS):
                        dst = ref.at[b, pl.ds(kj * R + r, RMW_ROWS), kvh]
                        step_lib.read_add_write(dst, tile.at[pl.ds(r, RMW_ROWS)], box, bar)
            plgpu.commit_smem_to_gmem_group()
            plgpu.wait_smem_to_gmem(0)

        step_lib.sum_pair(wg, dk, dv, scratch, add_sums if sh.add_dkv else store)

    @pl.when((wg == NWG) & (n > 0))
    def _producer():
        plgpu.set_max_registers(REGISTERS[1], action="decrease")

        @pl.loop(0, n)
        def _(s):
            slot = lax.rem(s, stages)
            tile = lo + s

            @pl.when(s >= stages)
            def _():
                plgpu.barrier_wait(free.at[slot])

            bar = in_bar.at[slot]
            for j in range(sh.tokens):  # one [G, D] box per token and operand
                tok, dst = tok_ref[tile, j], pl.ds(j * g, g)
                plgpu.copy_gmem_to_smem(token_rows(q_ref, tok), q_slot(slot, dst), bar)
                plgpu.copy_gmem_to_smem(token_rows(do_ref, tok), do_slot(slot, dst), bar)
            plgpu.copy_gmem_to_smem(stats_ref.at[tile], stats_smem.at[slot], bar)
            plgpu.copy_gmem_to_smem(limit_ref.at[tile], limit_smem.at[slot], bar)

        @pl.loop(jnp.maximum(n - stages, 0), n)
        def _(s):
            plgpu.barrier_wait(free.at[lax.rem(s, stages)])


def dkv_call(q, k, v, do, stats, limits, tiles: GatheredTiles, *, sh, st, dq_acc=None, dkv_acc=()):
    """Partial dK `[I, 64, D]` and dV `[I, 64, Dv]` of each work item, in q.dtype; with
    `sh.add_dkv`, nothing: the items add dK and dV into `dkv_acc`, two float32 refs
    `[B, Sp, K, D or Dv]`.

    stats `[N, 2, 64]` f32: lse (log2 units, +inf for dead rows) and delta of
    each tile row; limits `[N, 64]` int32: the last key each tile row may see.
    q, do: packed rows `[B, Tp, Hx, .]`. dq_acc (with `sh.with_dq`): a float32
    ref of q's shape the kernel adds dS K into (unscaled).
    """
    R, stages, dt = cm.WG_ROWS, sh.num_stages, sh.dtype
    scratch = dict(
        k_smem=cm.tiled_smem((NWG, R, sh.D), dt),
        v_smem=cm.tiled_smem((NWG, R, sh.Dv), dt),
        stats_smem=plgpu.SMEM((stages, 2, R), jnp.float32),
        limit_smem=plgpu.SMEM((stages, R), jnp.int32),
        kv_bar=plgpu.Barrier(num_arrivals=2, num_barriers=NWG),
        in_bar=plgpu.Barrier(num_arrivals=2 * sh.tokens + 2, num_barriers=stages),
        free=plgpu.Barrier(num_arrivals=1, num_barriers=stages),  # a tile's one taker
        sum_bar=plgpu.Barrier(num_arrivals=1),
    )
    sums = (plgpu.SMEM((R, sh.D), jnp.float32), plgpu.SMEM((R, sh.Dv), jnp.float32))
    if sh.with_dq:
        # Slot i's Q and dO (bf16) and its float32 staging tile are the same 2 * R * D * 2
        # bytes at the same offset: each is the union's whole first member. A token's G rows
        # are whole 8-row tiles of the staging layout: one TMA box each.
        qdo = cm.tiled_smem((2 * stages, R, sh.D), dt)  # Q, dO, Q, dO, ...
        tf = step_lib.DQ_STAGING_TRANSFORMS
        staging = plgpu.SMEM((stages, R, sh.D), jnp.float32, transforms=tf)
        if st.interpret is None:
            scratch["union"] = plgpu.RefUnion(qdo, staging, sums)
        else:  # its race detector tracks a union's groups by buffer, not by byte: no aliases
            scratch["union"] = plgpu.RefUnion(qdo, sums)
            scratch["dq_smem"] = staging
        scratch["ds_smem"] = cm.tiled_smem((NWG, R, R), dt)
        scratch["dq_done"] = plgpu.Barrier(num_arrivals=1, num_barriers=NWG)
        if st.interpret is not None:
            scratch["rmw_smem"] = plgpu.SMEM((NWG, sh.group, sh.D), jnp.float32)
            scratch["rmw_bar"] = plgpu.Barrier(num_arrivals=1, num_barriers=NWG)
    else:
        scratch["q_smem"] = cm.tiled_smem((stages, R, sh.D), dt)
        scratch["do_smem"] = cm.tiled_smem((stages, R, sh.Dv), dt)
        scratch["dk_acc"], scratch["dv_acc"] = sums
    if sh.add_dkv and st.interpret is not None:
        scratch["rmw_k"] = plgpu.SMEM((RMW_ROWS, sh.D), jnp.float32)
        scratch["rmw_v"] = plgpu.SMEM((RMW_ROWS, sh.Dv), jnp.float32)
        scratch["rmw_kv_bar"] = plgpu.Barrier(num_arrivals=1)
    if not st.regs_lhs:
        scratch["st_smem"] = cm.tiled_smem((NWG, R, R), dt)
    items = tiles.items.shape[0]
    partials = (
        jax.ShapeDtypeStruct((items, R, sh.D), dt),
        jax.ShapeDtypeStruct((items, R, sh.Dv), dt),
    )
    kernel = plgpu.kernel(
        functools.partial(_kernel, sh=sh, st=st),
        out_type=() if sh.add_dkv else partials,
        scratch_types=scratch,
        grid=(items,),
        grid_names=("c",),
        num_threads=NWG + 1,
        thread_name="wg",
        kernel_name="jaxsparse_attention_dkv_gathered",  # name in profiles
        compiler_params=cm.compiler_params(),
        interpret=st.interpret,
    )
    operands = (tiles.items, tiles.tokens, q, k, v, do, stats, limits)
    return kernel(*operands, *((dq_acc,) if sh.with_dq else ()), *dkv_acc)


def token_view(x, group: int):
    """The natural layout `[B, T, H, D]` viewed as `[B, T, H // G, G, D]` (a reshape:
    what `by_token` gives of the packed rows)."""
    b, t, h, d = x.shape
    return x.reshape(b, t, h // group, group, d)


def by_token(x, group: int):
    """Packed rows `[B, T*G, Hx, D]` as `[B, T, Hx, G, D]`: the natural `[B, T, H, D]` layout."""
    b, tp, hx, d = x.shape
    return x.reshape(b, tp // group, group, hx, d).transpose(0, 1, 3, 2, 4)


def by_row(x):
    """`by_token`'s inverse: `[B, T, Hx, G, D]` as packed rows `[B, T*G, Hx, D]`."""
    b, t, hx, g, d = x.shape
    return x.transpose(0, 1, 3, 2, 4).reshape(b, t * g, hx, d)


def dkv(q, k, v, do, lse2, delta, tiles: GatheredTiles, *, group, num_stages, st, with_dq=False):
    """dK `[B, Sp, K, D]`, dV `[B, Sp, K, Dv]` (q.dtype) over gathered tiles; with
    `with_dq`, `(dq, dk, dv)`, dq in q's layout and dtype.

    q, do: packed rows `[B, Tp, Hx, .]`; lse2, delta: `[B, Hx, Tp]` f32 by
    packed row (lse in log2 units with dead rows at +inf; delta =
    rowsum(dO * O) - dlse).
    """
    B, Tp, Hx, D = q.shape
    Sp, K, Dv = k.shape[1], k.shape[2], v.shape[-1]
    if with_dq:
        num_stages = max(num_stages, DQ_STAGES)
    check_support(group, D, Dv, num_stages, with_dq)
    sh = GatheredShapes(
        B=B, Tp=Tp, Sp=Sp, Hx=Hx, K=K, D=D, Dv=Dv, group=group, num_stages=num_stages,
        dtype=jnp.dtype(q.dtype), with_dq=with_dq, add_dkv=with_dq and ADD_DKV,
    )  # fmt: skip
    n = sh.tokens
    if tiles.tokens.shape[1:] != (n,) or tiles.limits.shape != tiles.tokens.shape:
        raise ValueError(
            f"gathered tiles hold {n} tokens each (64 rows // group {group}); got tokens "
            f"{tiles.tokens.shape} and limits {tiles.limits.shape}"
        )
    if tiles.items.ndim != 2 or tiles.items.shape[1] != 4:
        raise ValueError(f"items must be [I, 4] (f, kj, first, end), got {tiles.items.shape}")
    nbytes = smem_bytes(sh, st)
    if nbytes > cm.MAX_SMEM_BYTES:
        raise NotImplementedError(f"gathered dK/dV needs {nbytes} bytes of SMEM")
    tokens = tiles.tokens.astype(jnp.int32)
    # Tile row j * G + i is head i of the tile's token j.
    ntiles = tokens.shape[0]
    heads = jnp.arange(group, dtype=jnp.int32)[None, None]
    rows = (tokens[:, :, None] * group + heads).reshape(ntiles, -1)
    flat = tiles.heads.astype(jnp.int32)[:, None] * Tp + rows
    stats = jnp.stack(
        [lse2.reshape(-1)[flat], delta.astype(jnp.float32).reshape(-1)[flat]], axis=1
    )  # [N, 2, 64]
    limits = jnp.repeat(tiles.limits.astype(jnp.int32), group, axis=1)
    dq_acc = jax.new_ref(jnp.zeros(q.shape, jnp.float32)) if with_dq else None
    if sh.add_dkv:
        dkv_acc = tuple(jax.new_ref(jnp.zeros((B, Sp, K, e), jnp.float32)) for e in (D, Dv))
        dkv_call(q, k, v, do, stats, limits, tiles, sh=sh, st=st, dq_acc=dq_acc, dkv_acc=dkv_acc)
        dq = (dq_acc[...] * st.scale).astype(q.dtype)
        return (dq, *(r[...].astype(q.dtype) for r in dkv_acc))
    dk_p, dv_p = dkv_call(q, k, v, do, stats, limits, tiles, sh=sh, st=st, dq_acc=dq_acc)
    # Sum each (b, kv head, key tile)'s items in f32; empty items fall outside.
    nk = Sp // cm.WG_ROWS
    f, kj = tiles.items[:, 0], tiles.items[:, 1]
    b, x = f // Hx, f % Hx
    live = tiles.items[:, 3] > tiles.items[:, 2]
    seg = jnp.where(live, (b * K + x // (Hx // K)) * nk + kj, B * K * nk)

    def total(p):
        s = jax.ops.segment_sum(p.astype(jnp.float32), seg, num_segments=B * K * nk)
        s = s.reshape(B, K, nk * cm.WG_ROWS, -1).transpose(0, 2, 1, 3)
        return s.astype(q.dtype)

    if with_dq:
        return (dq_acc[...] * st.scale).astype(q.dtype), total(dk_p), total(dv_p)
    return total(dk_p), total(dv_p)
