"""Public entry points of the Pallas TPU block-sparse attention kernels.

Conventions (jax.nn order, as in `pallas_kernels.gpu.api`):
  q [B, Tp, H, D], k [B, Sp, K, D], v [B, Sp, K, Dv].
  Tp % block_q == 0 and Sp % block_kv == 0 (the caller pads).
  Query head h uses kv head h // (H // K) (GQA / MQA).
  Logits: s = (q . k) * scale; with a soft cap s = cap * tanh(s / cap); then
  the mask; then softmax over keys. lse is the natural-log logsumexp.
  A fully masked row gives out = 0 and lse = -inf (no NaN).

Block tables (Bx in {1, B}, Hx in {1, K, H}; Hx = K means one list per kv
head, shared by the query heads of its group):
  kv_indices int32 [Bx, Hx, Tb, Kmax]: for q block i the kv blocks
    kv_indices[..., i, :kv_counts[..., i]], ascending; later entries repeat
    the last valid index (0 when the count is 0), so the pipeline issues no
    DMA for them.
  kv_counts int32 [Bx, Hx, Tb].
  kv_full bool/int [Bx, Hx, Tb, Kmax]: True means every (q, kv) pair in the
    tile is allowed by mask_fn and no key in it is padding, so the kernel
    skips all mask math for it; False (partial) evaluates mask_fn, the
    padding test kv_pos < kv_len and the segment test in the tile.
  q_indices / q_counts / q_full: the transposed (kv-major) lists,
    [Bx, Hx, Sb, Qmax], used by the dK/dV kernel.

Segment ids: pairs with different ids are masked. By default
(segments_on_full_tiles=True) the segment test runs on every visited tile;
pass False when the tables already mark every tile that mixes segments
partial.

Supported (anything else raises NotImplementedError so callers can fall
back): dtype bfloat16, float16 or float32 (one dtype for q, k, v); D and Dv
multiples of 64 up to 256; block_q and block_kv positive multiples of 128
(keys are the lane axis of the forward and dQ logits tiles, queries the lane
axis of the dK/dV tiles and of the lse / delta rows); the blocks and scratch
of each kernel must fit the VMEM budget (`common.MAX_VMEM_BYTES`); any scale;
positive soft cap. The backward supports everything the forward does.

When D and Dv are multiples of 128 the operands keep the caller's layout
(viewed as [B, L, N * D], a free reshape) and each head's tile is a
lane-aligned column block; otherwise they are transposed to [B, N, L, D]
around the kernels.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from pallas_kernels.tpu import backward_dkv, backward_dq, layout, tables
from pallas_kernels.tpu import common as cm
from pallas_kernels.tpu import forward as fwd_lib


def _shapes(q, k, v, indices) -> cm.Shapes:
    B, Tp, H, D = q.shape
    return cm.Shapes(
        B=B,
        Tp=Tp,
        Sp=k.shape[1],
        H=H,
        K=k.shape[2],
        D=D,
        Dv=v.shape[3],
        Bx=indices.shape[0],
        Hx=indices.shape[1],
    )


def _check_vmem(name: str, nbytes: int) -> None:
    if nbytes > cm.MAX_VMEM_BYTES:
        raise NotImplementedError(
            f"{name} tiles need about {nbytes} bytes of VMEM (> {cm.MAX_VMEM_BYTES}); use "
            "smaller block_q / block_kv"
        )


def check_support(D: int, Dv: int, block_q: int, block_kv: int, dtype: Any = jnp.bfloat16):
    """Raises NotImplementedError unless both passes support these sizes.

    There are no forward-only shapes: the backward supports everything the
    forward does. (Mirrors `check_backward_support` of the GPU kernels.)
    """
    if jnp.dtype(dtype) not in cm._DTYPES:
        raise NotImplementedError(f"dtype {jnp.dtype(dtype)} (supported: bf16, f16, f32)")
    for name, d in (("D", D), ("Dv", Dv)):
        if d % 64 or d > cm.MAX_HEAD_DIM:
            raise NotImplementedError(
                f"head dim {name}={d} must be a multiple of 64 up to {cm.MAX_HEAD_DIM}"
            )
    cm.check_blocks(block_q, block_kv, block_q, block_kv)
    st = _vmem_statics(block_q, block_kv)
    sh = cm.Shapes(B=1, Tp=block_q, Sp=block_kv, H=1, K=1, D=D, Dv=Dv, Bx=1, Hx=1)
    _check_vmem("forward", fwd_lib.vmem_bytes(st, sh, dtype))
    _check_vmem("dQ", backward_dq.vmem_bytes(st, sh, dtype))
    _check_vmem("dK/dV", backward_dkv.vmem_bytes(st, sh, dtype))


check_backward_support = check_support


def _vmem_statics(block_q: int, block_kv: int) -> cm.Statics:
    return cm.Statics(
        mask_fn=None,
        q_offset=0,
        kv_len=0,
        scale=1.0,
        logits_soft_cap=None,
        has_segments=True,
        segments_on_full_tiles=True,
        block_q=block_q,
        block_kv=block_kv,
        heads_minor=False,
    )


def block_sparse_attention_fwd(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kv_indices: jax.Array,
    kv_counts: jax.Array,
    kv_full: jax.Array,
    *,
    mask_fn=None,
    q_offset: int = 0,
    kv_len: int | None = None,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    scale: float | None = None,
    logits_soft_cap: float | None = None,
    block_q: int = 128,
    block_kv: int = 128,
    segments_on_full_tiles: bool = True,
    interpret: Any = None,
) -> tuple[jax.Array, jax.Array]:
    """Block-sparse flash attention forward (Pallas TPU, scalar-prefetched tables).

    Args:
      q, k, v: [B, Tp, H, D], [B, Sp, K, D], [B, Sp, K, Dv]; see module doc.
      kv_indices, kv_counts, kv_full: q-major block lists (module doc).
      mask_fn: None or a static mask_fn(q_pos, kv_pos, head) -> bool built from
        & | ~ < <= == // % on int32 arrays; evaluated on partial tiles only.
      q_offset: absolute position of query row 0.
      kv_len: keys at positions >= kv_len are padding (default Sp); they must
        only occur in partial tiles.
      q_segment_ids, kv_segment_ids: int [B, Tp], [B, Sp] or None.
      scale: logit scale (default D ** -0.5).
      logits_soft_cap: None or cap.
      block_q, block_kv: tile sizes of the tables (multiples of 128).
      segments_on_full_tiles: see module doc.
      interpret: None on TPU; `pltpu.InterpretParams()` or True on CPU.

    Returns:
      out [B, Tp, H, Dv] in q.dtype and lse [B, H, Tp] float32 (natural log).
    """
    cm.check_qkv(q, k, v, what="block_sparse_attention_fwd")
    sh = _shapes(q, k, v, kv_indices)
    cm.check_blocks(block_q, block_kv, sh.Tp, sh.Sp)
    cm.check_tables(
        kv_indices, kv_counts, kv_full, B=sh.B, H=sh.H, K=sh.K, nb=sh.Tp // block_q, name="kv"
    )
    q_seg, kv_seg = cm.check_segments(q_segment_ids, kv_segment_ids, sh.B, sh.Tp, sh.Sp)
    st = cm.make_statics(
        q,
        v,
        sh.Sp,
        mask_fn=mask_fn,
        q_offset=q_offset,
        kv_len=kv_len,
        scale=scale,
        logits_soft_cap=logits_soft_cap,
        has_segments=q_seg is not None,
        segments_on_full_tiles=segments_on_full_tiles,
        block_q=block_q,
        block_kv=block_kv,
    )
    _check_vmem("forward", fwd_lib.vmem_bytes(st, sh, q.dtype))
    out, lse = fwd_lib.forward_call(
        layout.to_kernel_layout(q, st),
        layout.to_kernel_layout(k, st),
        layout.to_kernel_layout(v, st),
        tables.pack_entries(kv_indices, kv_full),
        tables.flat_counts(kv_counts),
        q_seg,
        kv_seg,
        st=st,
        sh=sh,
        kmax=kv_indices.shape[-1],
        interpret=interpret,
    )
    return layout.from_kernel_layout(out, st, sh.H), lse.reshape(sh.B, sh.H, sh.Tp)


def block_sparse_attention_bwd(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    out: jax.Array,
    lse: jax.Array,
    dout: jax.Array,
    dlse: jax.Array | None,
    kv_indices: jax.Array,
    kv_counts: jax.Array,
    kv_full: jax.Array,
    q_indices: jax.Array,
    q_counts: jax.Array,
    q_full: jax.Array,
    *,
    mask_fn=None,
    q_offset: int = 0,
    kv_len: int | None = None,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    scale: float | None = None,
    logits_soft_cap: float | None = None,
    block_q: int = 128,
    block_kv: int = 128,
    segments_on_full_tiles: bool = True,
    interpret: Any = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Gradients of block_sparse_attention_fwd: a dQ kernel and a dK/dV kernel.

    Args:
      q, k, v, out, lse: the forward's inputs and outputs.
      dout: [B, Tp, H, Dv] cotangent of out. Padded query rows must carry
        dout = 0 (and dlse = 0) so that they contribute nothing to dK/dV.
      dlse: None or [B, H, Tp] cotangent of lse.
      kv_indices, kv_counts, kv_full: q-major lists (as in the forward).
      q_indices, q_counts, q_full: kv-major lists [Bx, Hx, Sb, Qmax]: for kv
        block j the q blocks whose lists contain j, ascending, same padding
        rule, same full/partial flags.
      mask_fn ... interpret: as in the forward.

    Returns:
      dq [B, Tp, H, D], dk [B, Sp, K, D], dv [B, Sp, K, Dv] in q.dtype; dk/dv
      are summed over the query heads of each GQA group, in a fixed order
      (deterministic).
    """
    cm.check_qkv(q, k, v, what="block_sparse_attention_bwd")
    sh = _shapes(q, k, v, kv_indices)
    cm.check_blocks(block_q, block_kv, sh.Tp, sh.Sp)
    cm.check_tables(
        kv_indices, kv_counts, kv_full, B=sh.B, H=sh.H, K=sh.K, nb=sh.Tp // block_q, name="kv"
    )
    cm.check_tables(
        q_indices, q_counts, q_full, B=sh.B, H=sh.H, K=sh.K, nb=sh.Sp // block_kv, name="q"
    )
    if out.shape != (sh.B, sh.Tp, sh.H, sh.Dv) or dout.shape != out.shape:
        raise ValueError(f"{out.shape=} and {dout.shape=} must be {(sh.B, sh.Tp, sh.H, sh.Dv)}")
    if lse.shape != (sh.B, sh.H, sh.Tp) or (dlse is not None and dlse.shape != lse.shape):
        raise ValueError(f"lse and dlse must be {(sh.B, sh.H, sh.Tp)}")
    q_seg, kv_seg = cm.check_segments(q_segment_ids, kv_segment_ids, sh.B, sh.Tp, sh.Sp)
    st = cm.make_statics(
        q,
        v,
        sh.Sp,
        mask_fn=mask_fn,
        q_offset=q_offset,
        kv_len=kv_len,
        scale=scale,
        logits_soft_cap=logits_soft_cap,
        has_segments=q_seg is not None,
        segments_on_full_tiles=segments_on_full_tiles,
        block_q=block_q,
        block_kv=block_kv,
    )
    _check_vmem("dQ", backward_dq.vmem_bytes(st, sh, q.dtype))
    q_sh = _shapes(q, k, v, q_indices)
    _check_vmem("dK/dV", backward_dkv.vmem_bytes(st, q_sh, q.dtype))

    # delta = rowsum(dO * O) - dlse, so that dS = P * (dP - delta) also carries
    # the lse cotangent (d lse / d s = P).
    delta = jnp.einsum("bthd,bthd->bht", out.astype(jnp.float32), dout.astype(jnp.float32))
    if dlse is not None:
        delta = delta - dlse.astype(jnp.float32)
    rows = (sh.B, sh.H, 1, sh.Tp)
    lse_rows = lse.astype(jnp.float32).reshape(rows)
    delta_rows = delta.reshape(rows)
    qk, kk, vk, dok = (layout.to_kernel_layout(x, st) for x in (q, k, v, dout.astype(q.dtype)))
    dq = backward_dq.dq_call(
        qk,
        kk,
        vk,
        dok,
        lse_rows,
        delta_rows,
        tables.pack_entries(kv_indices, kv_full),
        tables.flat_counts(kv_counts),
        q_seg,
        kv_seg,
        st=st,
        sh=sh,
        kmax=kv_indices.shape[-1],
        interpret=interpret,
    )
    dk, dv = backward_dkv.dkv_call(
        qk,
        kk,
        vk,
        dok,
        lse_rows,
        delta_rows,
        tables.pack_entries(q_indices, q_full),
        tables.flat_counts(q_counts),
        q_seg,
        kv_seg,
        st=st,
        sh=q_sh,
        qmax=q_indices.shape[-1],
        interpret=interpret,
    )
    return (
        layout.from_kernel_layout(dq, st, sh.H),
        layout.from_kernel_layout(dk, st, sh.K),
        layout.from_kernel_layout(dv, st, sh.K),
    )
