"""Fused chunk gate + top-k (MoBA's selection) as one Mosaic GPU kernel.

For query row t of head h the gate scores chunk c by `q[t, h] . k_mean[c, h // G]`
(operands in q's dtype, float32 accumulation by wgmma) over the chunks that
end before the row's own chunk begins (`c < (q_offset + t) // block_size`),
and keeps the `k` best by repeated argmax: ties go to the lower index, and a
pass that finds no finite score gives -1 (as `jaxsparse.selection.topk`).

One CTA owns 64 or 128 query rows of one head (one or two warpgroups of 64):
it loads the rows and the head's chunk means with TMA, scores them with one
wgmma, and selects in registers. q is read once and no score array is
written to memory, which in XLA costs two layout transposes of q, a matmul
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
    B: int
    T: int
    H: int
    K: int
    D: int
    C: int  # chunks, padded to a multiple of 64
    chunks: int  # real chunks
    k: int
    nwg: int
    block_size: int
    q_offset: int
    dtype: Any

    @property
    def rows(self) -> int:
        return self.nwg * cm.WG_ROWS


def _kernel(q_ref, km_ref, out_ref, q_smem, km_smem, idx_smem, q_bar, km_bar, *, sh: GateShapes):
    R = cm.WG_ROWS
    wg = lax.axis_index("wg")
    h, qi, b = lax.axis_index("h"), lax.axis_index("q"), lax.axis_index("b")
    row0 = qi * sh.rows + wg * R

    @pl.when(wg == 0)
    def _():
        kh = lax.div(h, sh.H // sh.K)
        plgpu.copy_gmem_to_smem(km_ref.at[b, pl.ds(0, sh.C), kh], km_smem, km_bar.at[0])

    plgpu.copy_gmem_to_smem(q_ref.at[b, pl.ds(row0, R), h], q_smem.at[wg], q_bar.at[wg])
    plgpu.barrier_wait(q_bar.at[wg])
    plgpu.barrier_wait(km_bar.at[0])
    shape = (R, sh.C)
    s = cm.mma_smem(q_smem.at[wg], km_smem.T, shape)

    rows = plgpu.broadcasted_iota(jnp.int32, (R,), 0, layout=cm.WGMMA_ROW)
    own = lax.div(rows + (row0 + sh.q_offset), sh.block_size)  # the row's own chunk
    own = jnp.minimum(own, sh.chunks)  # padded chunks are out too
    col = cm.iota(shape, 1)
    s = jnp.where(col < cm.bcast_rows(own, shape), s, -jnp.inf)
    colf = col.astype(jnp.float32)  # indices < 256: exact; float reductions only
    for j in range(sh.k):
        best = s.max(axis=1)
        hit = s == cm.bcast_rows(best, shape)
        first = -jnp.where(hit, -colf, -jnp.inf).max(axis=1)  # lowest index of the max
        idx_smem.at[wg, j][...] = jnp.where(best > -jnp.inf, first.astype(jnp.int32), -1)
        if j + 1 < sh.k:
            s = jnp.where(colf == cm.bcast_rows(first, shape), -jnp.inf, s)
    plgpu.commit_smem()
    for j in range(sh.k):
        plgpu.copy_smem_to_gmem(
            idx_smem.at[wg, j], out_ref.at[b, h, j, pl.ds(row0, R)], commit_group=False
        )
    plgpu.commit_smem_to_gmem_group()
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)


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


def gate_topk(q, k_mean, *, k: int, block_size: int, q_offset: int = 0, interpret=None):
    """Indices `[B, H, T, k]` (int32, best first, -1: none) of each row's `k` best past
    chunks by `q . k_mean`; see the module docstring."""
    check(q, k_mean, k=k)
    B, T, H, D = q.shape
    C, K = k_mean.shape[1], k_mean.shape[2]
    cp = -(-C // 64) * 64  # wgmma N and the SMEM tiling want multiples of 64
    if cp != C:
        k_mean = jnp.pad(k_mean, ((0, 0), (0, cp - C), (0, 0), (0, 0)))
    sh = GateShapes(
        B=B,
        T=T,
        H=H,
        K=K,
        D=D,
        C=cp,
        chunks=C,
        k=k,
        nwg=2 if T % 128 == 0 else 1,
        block_size=block_size,
        q_offset=q_offset,
        dtype=jnp.dtype(q.dtype),
    )
    kernel = plgpu.kernel(
        functools.partial(_kernel, sh=sh),
        out_type=jax.ShapeDtypeStruct((B, H, k, T), jnp.int32),
        scratch_types=dict(
            q_smem=cm.tiled_smem((sh.nwg, cm.WG_ROWS, D), sh.dtype),
            km_smem=cm.tiled_smem((cp, D), sh.dtype),
            idx_smem=plgpu.SMEM((sh.nwg, k, cm.WG_ROWS), jnp.int32),
            q_bar=plgpu.Barrier(num_barriers=sh.nwg),
            km_bar=plgpu.Barrier(num_barriers=1),
        ),
        grid=(H, T // sh.rows, B),
        grid_names=("h", "q", "b"),
        num_threads=sh.nwg,
        thread_name="wg",
        compiler_params=cm.compiler_params(),
        interpret=interpret,
    )
    return kernel(q, k_mean).transpose(0, 1, 3, 2)
