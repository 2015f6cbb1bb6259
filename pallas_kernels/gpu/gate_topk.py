"""Fused chunk gate + top-k (MoBA's selection) as one Mosaic GPU kernel.

For query row t of head h the gate scores chunk c by `q[t, h] . k_mean[c, h // G]`
(operands in q's dtype, float32 accumulation by wgmma) over the chunks that
end before the row's own chunk begins (`c < (q_offset + t) // block_size`),
and keeps the `k` best by repeated argmax: ties go to the lower index, and a
pass that finds no finite score gives -1 (as `jaxsparse.selection.topk`).

A CTA serves one head and walks up to 16 blocks of 64 or 128 query rows (one
or two warpgroups of 64): it loads the head's chunk means once and each
block's rows with TMA (the next block's load overlapping this block's work),
scores a block with one wgmma, and selects in registers. q is read once and
no score array is written to memory, which in XLA costs two layout transposes of q, a matmul
writing `[B, H, T, C]` float32 scores and one pass over them per pick.

Shapes: q [B, T, H, D], k_mean [B, C, K, D] -> int32 [B, H, T, k]. Limits
(NotImplementedError otherwise, so that callers fall back to XLA):
bfloat16/float16, D a multiple of 64 up to 256, T a multiple of 64, C <= 256.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.gpu import common as cm

MAX_CHUNKS = 256  # wgmma's widest N; the scores of a row stay in registers


@dataclasses.dataclass(frozen=True, kw_only=True)
class GateShapes:
    H: int
    K: int
    C: int  # chunks, padded to a multiple of 64
    chunks: int  # real chunks
    k: int
    nwg: int
    block_size: int
    q_offset: int
    per_cta: int  # row blocks per CTA
    dtype: Any

    @property
    def rows(self) -> int:
        return self.nwg * cm.WG_ROWS


def _kernel(q_ref, km_ref, out_ref, q_smem, km_smem, idx_smem, q_bar, km_bar, *, sh: GateShapes):
    R = cm.WG_ROWS
    wg = lax.axis_index("wg")
    h, group, b = lax.axis_index("h"), lax.axis_index("q"), lax.axis_index("b")
    shape = (R, sh.C)

    def row0(i):  # first row of this warpgroup in the CTA's i-th block
        return (group * sh.per_cta + i) * sh.rows + wg * R

    def load_q(i, slot):
        plgpu.copy_gmem_to_smem(
            q_ref.at[b, pl.ds(row0(i), R), h], q_smem.at[wg, slot], q_bar.at[wg * 2 + slot]
        )

    @pl.when(wg == 0)
    def _():
        kh = lax.div(h, sh.H // sh.K)
        plgpu.copy_gmem_to_smem(km_ref.at[b, pl.ds(0, sh.C), kh], km_smem, km_bar.at[0])

    load_q(0, 0)
    plgpu.barrier_wait(km_bar.at[0])

    @pl.loop(0, sh.per_cta)
    def _(i):
        slot = lax.rem(i, 2)

        # The other buffer's wgmma (block i - 1) has completed: prefetch block i + 1.
        @pl.when(i + 1 < sh.per_cta)
        def _():
            load_q(i + 1, 1 - slot)

        plgpu.barrier_wait(q_bar.at[wg * 2 + slot])
        s = cm.mma_smem(q_smem.at[wg, slot], km_smem.T, shape)
        rows = plgpu.broadcasted_iota(jnp.int32, (R,), 0, layout=cm.WGMMA_ROW)
        own = lax.div(rows + (row0(i) + sh.q_offset), sh.block_size)  # the row's own chunk
        own = jnp.minimum(own, sh.chunks)  # padded chunks are out too
        col = cm.iota(shape, 1)
        s = jnp.where(col < cm.bcast_rows(own, shape), s, -jnp.inf)
        colf = col.astype(jnp.float32)  # indices < 256: exact; float reductions only
        picks = []
        for j in range(sh.k):
            best = s.max(axis=1)
            hit = s == cm.bcast_rows(best, shape)
            first = -jnp.where(hit, -colf, -jnp.inf).max(axis=1)  # lowest index of the max
            picks.append(jnp.where(best > -jnp.inf, first.astype(jnp.int32), -1))
            if j + 1 < sh.k:
                s = jnp.where(colf == cm.bcast_rows(first, shape), -jnp.inf, s)
        # This buffer's previous store (block i - 2) must have been read.
        plgpu.wait_smem_to_gmem(1, wait_read_only=True)
        for j, pick in enumerate(picks):
            idx_smem.at[wg, slot, j][...] = pick
        plgpu.commit_smem()
        for j in range(sh.k):
            plgpu.copy_smem_to_gmem(
                idx_smem.at[wg, slot, j],
                out_ref.at[b, h, j, pl.ds(row0(i), R)],
                commit_group=False,
            )
        plgpu.commit_smem_to_gmem_group()

    plgpu.wait_smem_to_gmem(0, wait_read_only=True)


def _blocks_per_cta(blocks: int, ctas_per_block: int) -> int:
    """Row blocks each CTA walks: up to 16 (the chunk means load once per CTA and the
    next block's q load overlaps this block's work) while at least 512 CTAs remain
    (about four per SM)."""
    per = 1
    while per < 16 and blocks % (2 * per) == 0 and ctas_per_block * blocks // (2 * per) >= 512:
        per *= 2
    return per


def check(q, k_mean, *, k: int) -> None:
    """Raises NotImplementedError unless the kernel can run these shapes."""
    if q.ndim != 4 or k_mean.ndim != 4:
        raise ValueError(
            f"gate_topk: q [B, T, H, D], k_mean [B, C, K, D]; got {q.shape}, {k_mean.shape}"
        )
    B, T, H, D = q.shape
    Bk, C, K, Dk = k_mean.shape
    if (Bk, Dk) != (B, D) or H % K:
        raise ValueError(f"gate_topk: inconsistent shapes {q.shape=} {k_mean.shape=}")
    dt = jnp.dtype(q.dtype)
    if dt not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) or k_mean.dtype != dt:
        raise NotImplementedError(
            f"gate_topk: bfloat16/float16 only, got {q.dtype}, {k_mean.dtype}"
        )
    if D % 64 or D > 256:
        raise NotImplementedError(f"gate_topk: head dim {D} must be a multiple of 64, <= 256")
    if T % cm.WG_ROWS:
        raise NotImplementedError(f"gate_topk: {T} query rows, not a multiple of 64")
    if C > MAX_CHUNKS:
        raise NotImplementedError(f"gate_topk: {C} chunks > {MAX_CHUNKS}")
    if not 1 <= k <= C:
        raise ValueError(f"gate_topk: k={k} must be in [1, {C}]")


def gate_topk(
    q,
    k_mean,
    *,
    k: int,
    block_size: int,
    q_offset: int = 0,
    blocks_per_cta: int | None = None,
    interpret=None,
):
    """Indices `[B, H, T, k]` (int32, best first, -1: none) of each row's `k` best past
    chunks by `q . k_mean`; see the module docstring. `blocks_per_cta` (default: by
    size) sets how many blocks of 64 or 128 rows one CTA walks; it must divide them."""
    check(q, k_mean, k=k)
    B, T, H, D = q.shape
    C, K = k_mean.shape[1], k_mean.shape[2]
    cp = -(-C // 64) * 64  # wgmma N and the SMEM tiling want multiples of 64
    if cp != C:
        k_mean = jnp.pad(k_mean, ((0, 0), (0, cp - C), (0, 0), (0, 0)))
    nwg = 2 if T % 128 == 0 else 1
    blocks = T // (nwg * cm.WG_ROWS)
    if blocks_per_cta is not None and (blocks_per_cta < 1 or blocks % blocks_per_cta):
        raise ValueError(f"gate_topk: blocks_per_cta={blocks_per_cta} must divide {blocks}")
    sh = GateShapes(
        H=H,
        K=K,
        C=cp,
        chunks=C,
        k=k,
        nwg=nwg,
        block_size=block_size,
        q_offset=q_offset,
        per_cta=blocks_per_cta or _blocks_per_cta(blocks, H * B),
        dtype=jnp.dtype(q.dtype),
    )
    kernel = plgpu.kernel(
        functools.partial(_kernel, sh=sh),
        out_type=jax.ShapeDtypeStruct((B, H, k, T), jnp.int32),
        scratch_types=dict(
            q_smem=cm.tiled_smem((sh.nwg, 2, cm.WG_ROWS, D), sh.dtype),
            km_smem=cm.tiled_smem((cp, D), sh.dtype),
            idx_smem=plgpu.SMEM((sh.nwg, 2, k, cm.WG_ROWS), jnp.int32),
            q_bar=plgpu.Barrier(num_barriers=2 * sh.nwg),
            km_bar=plgpu.Barrier(num_barriers=1),
        ),
        grid=(H, blocks // sh.per_cta, B),
        grid_names=("h", "q", "b"),
        num_threads=sh.nwg,
        thread_name="wg",
        kernel_name="jaxsparse_gate_topk",  # its name in profiles
        compiler_params=cm.compiler_params(),
        interpret=interpret,
    )
    return kernel(q, k_mean).transpose(0, 1, 3, 2)
