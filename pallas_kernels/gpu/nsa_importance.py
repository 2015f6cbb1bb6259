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
    accumulator, so the group sum happens in the MMA; with two consumer
    warpgroups (`warpgroups=2`) each takes half of the heads, and after every
    key block warpgroup 1 hands its sum to warpgroup 0 through SMEM;
  * within a warpgroup, the next head's `QK^T` wgmma is in flight while this
    head's exponentials run (1.72 against 1.79 ms at 64k on the H200,
    session 15);
  * after each key block the `[64 tokens, 16 blocks]` tile is stored.
    Blocks past the tile's causal reach are stored as zeros.

Kernel shapes (`block_importance` pads to them): q [B, T, H, D] with T a
multiple of 64, k_cmp [B, Nc, K, D] with Nc a multiple of 64, lse2 [B, H, T]
float32 = branch 1's lse * log2(e), +inf where a row sees no compressed key;
output float32 [B, T, K, 16 * (Nc / 64 + 1)].
Tested in GPU interpret mode, lowered for CUDA on CPU, and run on the H200
(`tests/test_nsa_importance.py -m gpu`, sessions 13 to 15).
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
    G: int  # query heads per key/value head
    Nc: int  # compressed keys, a multiple of KEYS
    num_keys: int  # real compressed keys
    kernel_size: int
    stride: int
    q_offset: int
    logit_mult: float  # scale * log2(e)
    dtype: Any
    nwg: int = 1  # consumer warpgroups; each takes G / nwg of the query heads

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


def _kernel(q_ref, k_ref, lse_ref, w_ref, out_ref, scratch, *, sh: ImportanceShapes, stage: bool):
    q_smem, k_smem, o_smem, z_smem = (scratch[n] for n in ("q", "k", "o", "z"))
    w_main, w_spill = scratch["w_main"], scratch["w_spill"]
    q_bar, k_bar, w_bar = scratch["q_bar"], scratch["k_bar"], scratch["w_bar"]
    p_smem = scratch.get("p")
    R, nwg, per = cm.WG_ROWS, sh.nwg, sh.G // sh.nwg
    ti, g, b = lax.axis_index("t"), lax.axis_index("k"), lax.axis_index("b")
    wg = lax.axis_index("wg") if nwg > 1 else 0
    t0 = ti * R
    shape = (R, KEYS)

    # The tile's last token sees keys c with c * stride + kernel_size - 1 <= its position.
    last = t0 + (R - 1) + sh.q_offset
    seen = jnp.maximum(last - (sh.kernel_size - 1), -1)
    n_seen = jnp.where(seen >= 0, lax.div(seen, sh.stride) + 1, 0)
    n_keys = jnp.minimum(n_seen, sh.num_keys)
    n_blocks = jnp.minimum(lax.div(n_keys + KEYS - 1, KEYS), sh.key_blocks)

    # Each warpgroup takes `per` of the group's query heads.
    heads = [wg * per + j for j in range(per)]
    for head in heads:
        plgpu.copy_gmem_to_smem(
            q_ref.at[b, pl.ds(t0, R), g * sh.G + head], q_smem.at[head], q_bar.at[wg]
        )

    def load_k(i, slot):
        src = k_ref.at[b, pl.ds(i * KEYS, KEYS), g]
        plgpu.copy_gmem_to_smem(src, k_smem.at[slot], k_bar.at[slot])

    @pl.when(wg == 0)
    def _():
        # Two buffers, not one indexed by a constant: a register-LHS wgmma's RHS index
        # must be a traced value in the Mosaic GPU lowering.
        plgpu.copy_gmem_to_smem(w_ref.at[0], w_main, w_bar.at[0])
        plgpu.copy_gmem_to_smem(w_ref.at[1], w_spill, w_bar.at[0])
        z_smem[...] = plgpu.layout_cast(jnp.zeros((R, COLS), jnp.float32), cm.WGMMA)

        @pl.when(n_blocks > 0)
        def _():
            load_k(0, 0)

    lse = [
        plgpu.load(
            lse_ref.at[b, g * sh.G + head, pl.ds(t0, R)], layout=cm.WGMMA_ROW, optimized=False
        )
        for head in heads
    ]
    rows = plgpu.broadcasted_iota(jnp.int32, (R,), 0, layout=cm.WGMMA_ROW)
    pos = rows + (t0 + sh.q_offset)
    # The last key each row sees (-1: none), capped by the real keys.
    past = pos - (sh.kernel_size - 1)
    reach = jnp.where(past >= 0, lax.div(jnp.maximum(past, 0), sh.stride), -1)
    reach = jnp.minimum(reach, sh.num_keys - 1)
    plgpu.barrier_wait(q_bar.at[wg])
    plgpu.barrier_wait(w_bar.at[0])
    zeros = plgpu.layout_cast(jnp.zeros((R, COLS), jnp.float32), cm.WGMMA)

    def store(acc, i):
        # The previous key block's store must have read o_smem.
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)
        o_smem[...] = acc
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(o_smem, out_ref.at[b, pl.ds(t0, R), g, pl.ds(i * COLS, COLS)])

    def combine_and_store(acc, i):
        """Warpgroup 1 hands its heads' sum to warpgroup 0 through SMEM; 0 stores the total."""
        if nwg == 1:
            store(acc, i)
            return
        x_smem, x_full, x_empty = scratch["x"], scratch["x_full"], scratch["x_empty"]

        @pl.when(wg == 1)
        def _():
            @pl.when(i >= 1)  # warpgroup 0 has read block i - 1's sum
            def _():
                plgpu.barrier_wait(x_empty.at[0])

            x_smem[...] = acc
            plgpu.barrier_arrive(x_full.at[0])

        @pl.when(wg == 0)
        def _():
            plgpu.barrier_wait(x_full.at[0])
            other = plgpu.load(x_smem, layout=cm.WGMMA, optimized=False)
            plgpu.barrier_arrive(x_empty.at[0])
            store(acc + other, i)

    def step(i, carry):
        acc, spill = carry
        slot = lax.rem(i, 2)

        @pl.when((wg == 0) & (i + 1 < n_blocks))
        def _():
            if nwg > 1:  # both warpgroups have released block i - 1's slot

                @pl.when(i >= 1)
                def _():
                    plgpu.barrier_wait(scratch["k_free"].at[1 - slot])

            load_k(i + 1, 1 - slot)

        plgpu.barrier_wait(k_bar.at[slot])
        key = cm.iota(shape, 1) + i * KEYS
        valid = key <= cm.bcast_rows(reach, shape)
        keys_t = k_smem.at[slot].T

        def probs(s, lse_h):
            p = jnp.exp2(s * sh.logit_mult - cm.bcast_rows(lse_h, shape))
            return jnp.where(valid, p, 0.0).astype(sh.dtype)

        # The next head's scores are in flight while this head's exponentials run
        # (the tensor cores and the exponent units overlap within a warpgroup).
        stage_smem = None if p_smem is None else p_smem.at[wg]
        s = cm.mma_smem(q_smem.at[heads[0]], keys_t, shape)
        for j, lse_h in enumerate(lse):
            if j + 1 < len(heads):
                s, p16 = cm.mma_smem(
                    q_smem.at[heads[j + 1]],
                    keys_t,
                    shape,
                    during=functools.partial(probs, s, lse_h),
                )
            else:
                p16 = probs(s, lse_h)
            acc = cm.mma_regs_lhs(acc, p16, w_main, stage_smem)
            spill = cm.mma_regs_lhs(spill, p16, w_spill, stage_smem)
        if nwg > 1:
            plgpu.barrier_arrive(scratch["k_free"].at[slot])
        combine_and_store(acc, i)
        return spill, zeros

    acc, _ = lax.fori_loop(0, n_blocks, step, (zeros, zeros))
    combine_and_store(acc, n_blocks)  # the last block's spill

    @pl.when(wg == 0)
    def _():
        # Zeros up to the last column block.
        @pl.loop(n_blocks + 1, sh.key_blocks + 1)
        def _(i):
            dst = out_ref.at[b, pl.ds(t0, R), g, pl.ds(i * COLS, COLS)]
            plgpu.copy_smem_to_gmem(z_smem, dst)

        if nwg > 1:
            # Observe the last releases of the K slots (every phase a thread waits on).
            @pl.loop(jnp.maximum(n_blocks - 2, 0), n_blocks)
            def _(i):
                @pl.when(i + 2 >= n_blocks)
                def _():
                    plgpu.barrier_wait(scratch["k_free"].at[lax.rem(i, 2)])

        plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    if nwg > 1:

        @pl.when(wg == 1)
        def _():
            plgpu.barrier_wait(scratch["x_empty"].at[0])  # the last sum was read


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
    warpgroups: int | None = None,
    interpret=None,
):
    """Group-summed importance `[B, T, K, num_blocks]` (float32, token-major), as
    `jaxsparse.methods.nsa_selection.block_importance_by_attention` returns it.

    q `[B, T, H, D]`, k_cmp `[B, Nc, K, D]` (compressed keys), lse `[B, H, T]`
    (branch 1's, natural log; -inf where a row sees no compressed key).
    `warpgroups`: 1, or 2 splitting each group's query heads (their sums meet
    in SMEM after every key block; needs an even group); None: 2 where the
    group is even, else 1.
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
    G = H // K
    if warpgroups is None:
        warpgroups = 2 if G % 2 == 0 else 1
    if warpgroups not in (1, 2) or G % warpgroups:
        raise ValueError(
            f"nsa_importance: warpgroups={warpgroups} must be 1 or 2 and divide the "
            f"{G} query heads of a group"
        )
    sh = ImportanceShapes(
        G=G,
        Nc=ncp,
        num_keys=nc,
        kernel_size=kernel_size,
        stride=stride,
        q_offset=q_offset,
        logit_mult=scale * cm.LOG2E,
        dtype=jnp.dtype(q.dtype),
        nwg=warpgroups,
    )
    w = jnp.asarray(weight_tiles(kernel_size, stride, block_size), sh.dtype)
    stage = interpret is not None  # GPU interpret mode cannot take a register LHS
    w_transforms = (plgpu.TilingTransform((8, COLS)), plgpu.SwizzleTransform(2 * COLS))
    nwg = sh.nwg
    scratch = dict(
        q=cm.tiled_smem((sh.G, cm.WG_ROWS, D), sh.dtype),
        k=cm.tiled_smem((2, KEYS, D), sh.dtype),
        w_main=plgpu.SMEM((KEYS, COLS), sh.dtype, transforms=w_transforms),
        w_spill=plgpu.SMEM((KEYS, COLS), sh.dtype, transforms=w_transforms),
        o=plgpu.SMEM((cm.WG_ROWS, COLS), jnp.float32),
        z=plgpu.SMEM((cm.WG_ROWS, COLS), jnp.float32),
        q_bar=plgpu.Barrier(num_arrivals=sh.G // nwg, num_barriers=nwg),
        k_bar=plgpu.Barrier(num_barriers=2),
        w_bar=plgpu.Barrier(num_arrivals=2, num_barriers=1),
    )
    if nwg > 1:
        scratch.update(
            k_free=plgpu.Barrier(num_arrivals=nwg, num_barriers=2),
            x=plgpu.SMEM((cm.WG_ROWS, COLS), jnp.float32),
            x_full=plgpu.Barrier(num_barriers=1),
            x_empty=plgpu.Barrier(num_barriers=1),
        )
    if stage:
        scratch["p"] = cm.tiled_smem((nwg, cm.WG_ROWS, KEYS), sh.dtype)

    def body(q_ref, k_ref, lse_ref, w_ref, out_ref, **refs):
        _kernel(q_ref, k_ref, lse_ref, w_ref, out_ref, refs, sh=sh, stage=stage)

    kernel = plgpu.kernel(
        body,
        out_type=jax.ShapeDtypeStruct((B, T, K, sh.out_cols), jnp.float32),
        scratch_types=scratch,
        grid=(T // cm.WG_ROWS, K, B),
        grid_names=("t", "k", "b"),
        num_threads=nwg,
        thread_name="wg",
        kernel_name=f"jaxsparse_nsa_importance_{nwg}wg",  # its name in profiles
        compiler_params=cm.compiler_params(),
        interpret=interpret,
    )
    out = kernel(q, k_cmp, lse2, w)
    if out.shape[-1] < num_blocks:
        out = jnp.pad(out, ((0, 0), (0, 0), (0, 0), (0, num_blocks - out.shape[-1])))
    return out[:, :t, :, :num_blocks]
