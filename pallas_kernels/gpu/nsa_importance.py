"""NSA's selection-block importance as one Mosaic GPU kernel (arXiv 2502.11089, eq. 8-10).

For token t and key/value head g the importance of selection block j is

  imp[t, g, j] = sum over the query heads h of group g, and over the compressed
                 keys c visible to t, of  w(c, j) * exp(scale * q[t, h] . k_cmp[c, g] - lse[h, t])

with `lse` branch 1's log-sum-exp and `w(c, j)` the number of stride
segments key c shares with block j (`jaxsparse.selection.remap`). The XLA
formulation runs it as eight attention calls whose values are the overlap
matrix, each recomputing a softmax and writing a `[T, H, 128]` output. Here one
CTA takes 64 tokens and one key/value head and walks the compressed keys in
blocks of 64:

  * the group's query heads stay in SMEM (one TMA each), and the lse rows in
    registers; `exp2(scale * log2(e) * s - lse * log2(e))` needs no online
    softmax, since branch 1's lse is known;
  * 64 compressed keys span exactly 16 selection blocks (with the paper's
    stride 16 and block 64; `check` asks for it) plus one block that the
    last key's second half reaches. So one `[64, 16]` weight tile serves
    every key block, and a second tile carries that spill into the next
    block's accumulator (a register swap, no column shift);
  * the heads' probabilities go through `p @ W` into the same float32
    accumulator, so the group sum happens in the MMA;
  * after each key block the `[64 tokens, 16 blocks]` tile is stored.
    Blocks past the tile's causal reach are stored as zeros.

Kernel shapes (`block_importance` pads to them): q [B, T, H, D] with T a
multiple of 64, k_cmp [B, Nc, K, D] with Nc a multiple of 64, lse2 [B, H, T]
float32 = branch 1's lse * log2(e), +inf where a row sees no compressed key;
output float32 [B, T, K, 16 * (Nc / 64 + 1)].
Status: tested in GPU interpret mode and lowered for CUDA on CPU; not yet run
on a GPU (session 12 had no device time left).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.gpu import common as cm

KEYS = 64  # compressed keys per step (wgmma N of the scores, K of the weights)
COLS = 16  # selection blocks per key block (wgmma N of the weights)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImportanceShapes:
    K: int  # key/value heads
    G: int  # query heads per key/value head
    T: int  # tokens, a multiple of 64
    Nc: int  # compressed keys, a multiple of KEYS
    num_keys: int  # real compressed keys
    D: int
    kernel_size: int
    stride: int
    q_offset: int
    logit_mult: float  # scale * log2(e)
    dtype: Any

    @property
    def key_blocks(self) -> int:
        return self.Nc // KEYS

    @property
    def out_cols(self) -> int:
        return COLS * (self.key_blocks + 1)


def weight_tiles(kernel_size: int, stride: int, block_size: int) -> np.ndarray:
    """float32 `[2, KEYS, COLS]`: `[0][c, j]` the weight of key `KEYS*i + c` in block
    `COLS*i + j`, `[1][c, 0]` its weight in block `COLS*(i + 1)` (the same for every i)."""
    from jaxsparse.selection import remap

    lo, m = remap.overlap_matrix(
        kernel_size, stride, block_size, blocks=range(COLS, 2 * COLS + 1), num_keys=4 * KEYS
    )
    keys = m[KEYS - lo : 2 * KEYS - lo]  # keys KEYS .. 2*KEYS-1 against blocks COLS .. 2*COLS
    out = np.zeros((2, KEYS, COLS), np.float32)
    out[0] = keys[:, :COLS]
    out[1, :, 0] = keys[:, COLS]
    return out


def check(q, k_cmp, *, kernel_size: int, stride: int, block_size: int) -> None:
    """Raises NotImplementedError unless the kernel takes these shapes and NSA settings."""
    B, T, H, D = q.shape
    K = k_cmp.shape[2]
    dt = jnp.dtype(q.dtype)
    if dt not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) or k_cmp.dtype != dt:
        raise NotImplementedError(f"nsa_importance: bfloat16/float16 only, got {q.dtype}")
    if D % 64 or D > 256:
        raise NotImplementedError(f"nsa_importance: head dim {D} must be a multiple of 64 <= 256")
    if H % K:
        raise NotImplementedError(f"nsa_importance: {H} query heads for {K} key heads")
    if KEYS * stride != COLS * block_size or kernel_size - stride > block_size:
        raise NotImplementedError(
            f"nsa_importance: 64 compressed keys must span exactly 16 selection blocks and a "
            f"key at most one more (stride {stride}, block {block_size}, kernel {kernel_size})"
        )
    smem = cm.nbytes((H // K, cm.WG_ROWS, D), dt) + 2 * cm.nbytes((KEYS, D), dt)
    if smem + 16 * 1024 > cm.MAX_SMEM_BYTES:
        raise NotImplementedError(f"nsa_importance: {H // K} heads of {D} do not fit in SMEM")


def _kernel(q_ref, k_ref, lse_ref, w_ref, out_ref, *scratch, sh: ImportanceShapes, stage: bool):
    q_smem, k_smem, w_main, w_spill, o_smem, z_smem, q_bar, k_bar, w_bar = scratch[:9]
    p_smem = scratch[9] if stage else None
    R = cm.WG_ROWS
    ti, g, b = lax.axis_index("t"), lax.axis_index("k"), lax.axis_index("b")
    t0 = ti * R
    shape = (R, KEYS)

    # The tile's last token sees keys c with c * stride + kernel_size - 1 <= its position.
    last = t0 + (R - 1) + sh.q_offset
    seen = jnp.maximum(last - (sh.kernel_size - 1), -1)
    n_seen = jnp.where(seen >= 0, lax.div(seen, sh.stride) + 1, 0)
    n_keys = jnp.minimum(n_seen, sh.num_keys)
    n_blocks = jnp.minimum(lax.div(n_keys + KEYS - 1, KEYS), sh.key_blocks)

    for j in range(sh.G):
        plgpu.copy_gmem_to_smem(q_ref.at[b, pl.ds(t0, R), g * sh.G + j], q_smem.at[j], q_bar.at[0])
    # Two buffers, not one indexed by a constant: a register-LHS wgmma's RHS index
    # must be a traced value in the Mosaic GPU lowering.
    plgpu.copy_gmem_to_smem(w_ref.at[0], w_main, w_bar.at[0])
    plgpu.copy_gmem_to_smem(w_ref.at[1], w_spill, w_bar.at[0])

    def load_k(i, slot):
        src = k_ref.at[b, pl.ds(i * KEYS, KEYS), g]
        plgpu.copy_gmem_to_smem(src, k_smem.at[slot], k_bar.at[slot])

    @pl.when(n_blocks > 0)
    def _():
        load_k(0, 0)

    z_smem[...] = plgpu.layout_cast(jnp.zeros((R, COLS), jnp.float32), cm.WGMMA)
    lse = [
        plgpu.load(lse_ref.at[b, g * sh.G + j, pl.ds(t0, R)], layout=cm.WGMMA_ROW, optimized=False)
        for j in range(sh.G)
    ]
    rows = plgpu.broadcasted_iota(jnp.int32, (R,), 0, layout=cm.WGMMA_ROW)
    pos = rows + (t0 + sh.q_offset)
    # The last key each row sees (-1: none), capped by the real keys.
    past = pos - (sh.kernel_size - 1)
    reach = jnp.where(past >= 0, lax.div(jnp.maximum(past, 0), sh.stride), -1)
    reach = jnp.minimum(reach, sh.num_keys - 1)
    plgpu.barrier_wait(q_bar.at[0])
    plgpu.barrier_wait(w_bar.at[0])
    zeros = plgpu.layout_cast(jnp.zeros((R, COLS), jnp.float32), cm.WGMMA)

    def store(acc, i):
        # The previous key block's store must have read o_smem.
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)
        o_smem[...] = acc
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(o_smem, out_ref.at[b, pl.ds(t0, R), g, pl.ds(i * COLS, COLS)])

    def step(i, carry):
        acc, spill = carry
        slot = lax.rem(i, 2)

        @pl.when(i + 1 < n_blocks)  # the other slot's wgmmas (block i - 1) are done
        def _():
            load_k(i + 1, 1 - slot)

        plgpu.barrier_wait(k_bar.at[slot])
        key = cm.iota(shape, 1) + i * KEYS
        valid = key <= cm.bcast_rows(reach, shape)
        for j in range(sh.G):
            s = cm.mma_smem(q_smem.at[j], k_smem.at[slot].T, shape)
            p = jnp.exp2(s * sh.logit_mult - cm.bcast_rows(lse[j], shape))
            p16 = jnp.where(valid, p, 0.0).astype(sh.dtype)
            acc = cm.mma_regs_lhs(acc, p16, w_main, p_smem)
            spill = cm.mma_regs_lhs(spill, p16, w_spill, p_smem)
        store(acc, i)
        return spill, zeros

    acc, _ = lax.fori_loop(0, n_blocks, step, (zeros, zeros))

    store(acc, n_blocks)  # the last block's spill, then zeros up to the last column block

    @pl.loop(n_blocks + 1, sh.key_blocks + 1)
    def _(i):
        plgpu.copy_smem_to_gmem(z_smem, out_ref.at[b, pl.ds(t0, R), g, pl.ds(i * COLS, COLS)])

    plgpu.wait_smem_to_gmem(0, wait_read_only=True)


def block_importance(
    q,
    k_cmp,
    lse,
    *,
    kernel_size: int,
    stride: int,
    block_size: int,
    num_blocks: int,
    scale: float,
    q_offset: int,
    interpret=None,
):
    """Group-summed importance `[B, T, K, num_blocks]` (float32, token-major), as
    `jaxsparse.methods.nsa_selection.block_importance_by_attention` returns it.

    q `[B, T, H, D]`, k_cmp `[B, Nc, K, D]` (compressed keys), lse `[B, H, T]`
    (branch 1's, natural log; -inf where a row sees no compressed key).
    """
    check(q, k_cmp, kernel_size=kernel_size, stride=stride, block_size=block_size)
    B, t, H, D = q.shape
    T = -(-t // cm.WG_ROWS) * cm.WG_ROWS
    nc, K = k_cmp.shape[1], k_cmp.shape[2]
    ncp = max(KEYS, -(-nc // KEYS) * KEYS)
    if ncp != nc:
        k_cmp = jnp.pad(k_cmp, ((0, 0), (0, ncp - nc), (0, 0), (0, 0)))
    lse2 = jnp.where(jnp.isfinite(lse), lse.astype(jnp.float32) * cm.LOG2E, jnp.inf)
    if t != T:  # padded rows: +inf lse, so every probability is 0
        q = jnp.pad(q, ((0, 0), (0, T - t), (0, 0), (0, 0)))
        lse2 = jnp.pad(lse2, ((0, 0), (0, 0), (0, T - t)), constant_values=jnp.inf)
    sh = ImportanceShapes(
        K=K,
        G=H // K,
        T=T,
        Nc=ncp,
        num_keys=nc,
        D=D,
        kernel_size=kernel_size,
        stride=stride,
        q_offset=q_offset,
        logit_mult=scale * cm.LOG2E,
        dtype=jnp.dtype(q.dtype),
    )
    w = jnp.asarray(weight_tiles(kernel_size, stride, block_size), sh.dtype)
    stage = interpret is not None  # GPU interpret mode cannot take a register LHS
    w_transforms = (plgpu.TilingTransform((8, COLS)), plgpu.SwizzleTransform(2 * COLS))
    scratch = [
        cm.tiled_smem((sh.G, cm.WG_ROWS, D), sh.dtype),
        cm.tiled_smem((2, KEYS, D), sh.dtype),
        plgpu.SMEM((KEYS, COLS), sh.dtype, transforms=w_transforms),
        plgpu.SMEM((KEYS, COLS), sh.dtype, transforms=w_transforms),
        plgpu.SMEM((cm.WG_ROWS, COLS), jnp.float32),
        plgpu.SMEM((cm.WG_ROWS, COLS), jnp.float32),
        plgpu.Barrier(num_arrivals=sh.G, num_barriers=1),
        plgpu.Barrier(num_barriers=2),
        plgpu.Barrier(num_arrivals=2, num_barriers=1),
    ]
    if stage:
        scratch.append(cm.tiled_smem((cm.WG_ROWS, KEYS), sh.dtype))
    kernel = plgpu.kernel(
        functools.partial(_kernel, sh=sh, stage=stage),
        out_type=jax.ShapeDtypeStruct((B, T, K, sh.out_cols), jnp.float32),
        scratch_types=scratch,
        grid=(T // cm.WG_ROWS, K, B),
        grid_names=("t", "k", "b"),
        kernel_name="jaxsparse_nsa_importance",  # its name in profiles
        compiler_params=cm.compiler_params(),
        interpret=interpret,
    )
    out = kernel(q, k_cmp, lse2, w)
    if out.shape[-1] < num_blocks:
        out = jnp.pad(out, ((0, 0), (0, 0), (0, 0), (0, num_blocks - out.shape[-1])))
    return out[:, :t, :, :num_blocks]
