"""`implementation="pallas_tpu"`: the Pallas TPU kernels, wired to the API.

Validation happens here, at trace time: anything the kernels cannot run
raises NotImplementedError (the dispatcher then falls back to the XLA path).
The kernels read the same `BlockSparsity` tables as every other backend;
only their packing for scalar prefetch is private to `pallas_kernels.tpu`.
On CPU, `Config(interpret=True)` runs them in Pallas TPU interpret mode.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxsparse.ops import call as call_lib
from jaxsparse.ops import kernel_common, layout, metadata, routed

_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))
_LANES = 128
# Tiles of at least 512 keep a TPU grid step's fixed cost (~0.35 us) small
# next to its matmuls; short sequences get smaller tiles, never below 128.
_PREFERRED_BLOCK = 512


def _check_device(interpret: bool) -> None:
    if interpret:
        return
    backend = jax.default_backend()
    if backend != "tpu":
        raise NotImplementedError(
            f"the Pallas TPU kernels need a TPU; the default backend is {backend} (on CPU, "
            "Config(interpret=True) runs them in interpret mode, slowly)"
        )


def _check_call(call: call_lib.Call) -> None:
    if jnp.dtype(call.q.dtype) not in _DTYPES:
        raise NotImplementedError(
            f"the Pallas TPU kernels take bfloat16, float16 or float32, got {call.q.dtype}"
        )
    kernel_common.check_head_dims(call, "Pallas TPU")
    kernel_common.check_both_directions(call, "Pallas TPU")


def _blocks(call: call_lib.Call) -> tuple[int, int]:
    bq, bk = metadata.blocks_for(call, preferred=_PREFERRED_BLOCK, minimum=_LANES)
    if bq % _LANES or bk % _LANES:
        raise NotImplementedError(
            f"tiles {bq}x{bk}: the TPU kernels need block_q and block_kv multiples of {_LANES}"
        )
    return bq, bk


def run(call: call_lib.Call):
    """Block-sparse attention with the Pallas TPU kernels; returns (out, lse)."""
    interpret = call.config.interpret
    _check_device(interpret)
    _check_call(call)
    if routed.applies(call):  # per-token selections (MoBA, NSA): key-block-major
        return routed.run(call, "pallas_tpu")
    bq, bk = _blocks(call)
    sp = metadata.sparsity_for(call, bq, bk, refine_segments=call.has_segments)
    bq, bk = sp.block_q, sp.block_kv
    from pallas_kernels.tpu import api as kernels  # Pallas TPU imports only when used

    try:
        kernels.check_support(call.head_dim, call.head_dim_v, bq, bk, call.q.dtype)
    except NotImplementedError as e:
        raise NotImplementedError(f"the Pallas TPU kernels cannot run this call: {e}") from e
    tile_mask = kernel_common.tile_mask(call, bq, bk, "Pallas TPU")
    kw: dict[str, Any] = dict(
        mask_fn=None if tile_mask is None else tile_mask.mask_fn,
        q_offset=call.q_offset,
        kv_len=call.kv_len,
        scale=call.scale,
        logits_soft_cap=call.logits_soft_cap,
        block_q=bq,
        block_kv=bk,
        # Metadata built here marks every tile that mixes segments partial; tables the
        # caller built may not know the segments, so then test them in every tile.
        segments_on_full_tiles=call.sparsity is not None and not call.sparsity.segment_exact,
    )
    if interpret:
        from jax.experimental.pallas import tpu as pltpu

        kw["interpret"] = pltpu.InterpretParams()
    q, k, v, segs = layout.pad_inputs(call, bq, bk)
    tables = kernel_common.tables(sp)
    static = tuple(sorted(kw.items(), key=lambda x: x[0]))
    out, lse = _attention(static, q, k, v, tables, segs)
    return out[:, : call.q_len], lse[..., : call.q_len]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(static, q, k, v, tables, segs):
    return _forward(static, q, k, v, tables, segs)


def _forward(static, q, k, v, tables, segs):
    from pallas_kernels.tpu import api as kernels

    return kernels.block_sparse_attention_fwd(
        q, k, v, *tables[:3], q_segment_ids=segs[0], kv_segment_ids=segs[1], **dict(static)
    )


def _attention_fwd(static, q, k, v, tables, segs):
    out, lse = _forward(static, q, k, v, tables, segs)
    return (out, lse), (q, k, v, out, lse, tables, segs)


def _attention_bwd(static, residuals, cotangents):
    from pallas_kernels.tpu import api as kernels

    q, k, v, out, lse, tables, segs = residuals
    dout, dlse = cotangents
    dq, dk, dv = kernels.block_sparse_attention_bwd(
        q,
        k,
        v,
        out,
        lse,
        dout,
        dlse,
        *tables,
        q_segment_ids=segs[0],
        kv_segment_ids=segs[1],
        **dict(static),
    )
    return dq, dk, dv, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)
