"""`implementation="pallas_gpu"`: the Mosaic GPU kernels on Hopper, wired to the API.

Validation happens here, at trace time: anything the kernels cannot run
raises NotImplementedError (the dispatcher then falls back to the XLA path).
When the forward kernel supports a call but the backward kernels do not
(e.g. head dim 256), the gradient runs on the XLA path from the kernel's
saved output and lse: same metadata, same numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxsparse.ops import bitmaps, kernel_common, layout, metadata, packed, routed
from jaxsparse.ops import call as call_lib
from jaxsparse.ops.xla import impl as xla_impl
from jaxsparse.ops.xla import pairs as xla_pairs
from jaxsparse.ops.xla import tiles as xla_tiles

_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def check_device(interpret: bool) -> None:
    if interpret:
        return
    dev = jax.devices()[0]
    cc = str(getattr(dev, "compute_capability", ""))
    if dev.platform != "gpu" or not cc.startswith("9"):
        raise NotImplementedError(
            f"the Mosaic GPU kernels need a Hopper GPU (sm_90); the default device is "
            f"{dev.device_kind} ({dev.platform})"
        )


def _check_call(call: call_lib.Call) -> None:
    if jnp.dtype(call.q.dtype) not in _DTYPES:
        raise NotImplementedError(
            f"the Mosaic GPU kernels take bfloat16 or float16, got {call.q.dtype}; cast q, k, v "
            "to bfloat16 for the fast path"
        )
    kernel_common.check_head_dims(call, "Mosaic GPU")
    kernel_common.check_both_directions(call, "Mosaic GPU")
    if call.scale <= 0:
        raise NotImplementedError(f"scale={call.scale} must be positive for the GPU kernels")


def _blocks(call: call_lib.Call) -> tuple[int, int]:
    bq, bk = metadata.blocks_for(call, preferred=128, minimum=64)
    if bq not in (64, 128) or bk % 64:
        raise NotImplementedError(
            f"tiles {bq}x{bk}: the GPU kernels need block_q in (64, 128) and block_kv a "
            "multiple of 64"
        )
    return bq, bk


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Static:
    kernel: tuple  # sorted (name, value) pairs of kernel keywords
    xla: xla_tiles.Static | None  # set when the backward runs on the XLA path
    bwd: tuple = ()  # (name, value) pairs only the backward kernels take
    gathering: Any = None  # gathered.Gathering: dK/dV over tiles built from the bits
    token_group: int = 0  # q is packed rows, G per token; out comes back [B, T, H, Dv]

    def kwargs(self) -> dict[str, Any]:
        return dict(self.kernel)

    def bwd_kwargs(self) -> dict[str, Any]:
        return {**dict(self.kernel), **dict(self.bwd)}


def run(call: call_lib.Call):
    interpret = call.config.interpret
    check_device(interpret)
    _check_call(call)
    if bitmaps.applies(call):  # MInference's vertical-slash: diagonals, gathered columns
        return bitmaps.run(call)
    if packed.applies(call):  # per-token selections shared by a GQA group (NSA)
        return packed.run(call)
    if routed.applies(call):  # other per-token selections (MoBA): key-block-major
        return routed.run(call, "pallas_gpu")
    bq, bk = _blocks(call)
    sp = metadata.sparsity_for(call, bq, bk, refine_segments=call.has_segments)
    bq, bk = sp.block_q, sp.block_kv
    # Tables built here were refined with the segment ids (tiles mixing documents are
    # partial), so full tiles may skip the segment test; caller-given tables were not.
    tile_mask = kernel_common.tile_mask(call, bq, bk, "Mosaic GPU")
    mask_fn = None if tile_mask is None else tile_mask.mask_fn
    q, k, v, segs = layout.pad_inputs(call, bq, bk)
    xla_work = None
    if not _backward_supported(call, bq, bk):
        xla_work = _xla_backward(call, sp, bq, bk, use_mask_fn=mask_fn is not None)
    out, lse = run_tables(
        call,
        q,
        k,
        v,
        kernel_common.tables(sp),
        segs=segs,
        mask_fn=mask_fn,
        mask_factors=None if tile_mask is None else tile_mask.mask_factors(),
        q_offset=call.q_offset,
        kv_len=call.kv_len,
        block_q=bq,
        block_kv=bk,
        segments_on_full_tiles=call.sparsity is not None and not call.sparsity.segment_exact,
        xla_work=xla_work,
    )
    return out[:, : call.q_len], lse[..., : call.q_len]


def run_tables(
    call: call_lib.Call,
    q,
    k,
    v,
    tables,
    *,
    mask_fn,
    mask_factors,
    q_offset: int,
    kv_len: int,
    block_q: int,
    block_kv: int,
    segs=(None, None),
    segments_on_full_tiles: bool = False,
    word_rows: int = 0,
    heavy_first: bool = True,
    dkv_list_splits: int | None = None,
    xla_work=None,
    arrays=None,
    statics=(),
    gathering=None,
    token_group: int = 0,
):
    """The kernels (forward, and their backward under `jax.grad`) on padded inputs and tables.

    `tables`: the six lists of `kernel_common.tables`. `arrays`: other array
    keywords of the kernels (`kv_words` and `q_words` with `word_rows`,
    `diagonals`, `key_columns`; `q_words` goes to the backward only);
    `statics`: other static keywords (`(name, value)` pairs). `xla_work`:
    `(Static, work)` to run the backward on the XLA path (shapes the backward
    kernels do not take).
    `heavy_first`, `dkv_list_splits`: the launch order and the dK/dV list
    splits unless `Config.gpu_heavy_first` / `gpu_dkv_list_splits` say
    (`dkv_list_splits` None: the kernels' own choice).
    `gathering`: a `gathered.Gathering` (per-token selections packed as rows):
    the backward builds its tiles from the pattern's bits and runs dK/dV over
    them. `token_group`: q holds packed rows (`jaxsparse.ops.packed`), G per
    token; out is then returned in the natural layout `[B, Tp // G, H * G, Dv]`,
    so that the backward receives dO in it too.
    Scale, soft cap and tuning come from `call`.
    """
    kw = dict(
        mask_fn=mask_fn,
        mask_factors=mask_factors,
        q_offset=q_offset,
        kv_len=kv_len,
        scale=call.scale,
        logits_soft_cap=call.logits_soft_cap,
        block_q=block_q,
        block_kv=block_kv,
        segments_on_full_tiles=segments_on_full_tiles,
        heavy_first=heavy_first
        if call.config.gpu_heavy_first is None
        else call.config.gpu_heavy_first,
    )
    if word_rows:
        kw["word_rows"] = word_rows
    kw.update(statics)
    if call.config.gpu_num_stages:
        kw["num_stages"] = call.config.gpu_num_stages
    if call.config.gpu_persistent is not None:
        kw["persistent"] = call.config.gpu_persistent
    interpret = call.config.interpret
    if interpret:
        from jax.experimental.pallas import mosaic_gpu as plgpu

        kw["interpret"] = plgpu.InterpretGPUParams(detect_races=True)
    bwd = tuple(
        (name, value)
        for name, value in (
            ("dkv_split_heads", call.config.gpu_dkv_split_heads),
            ("dkv_q_split", call.config.gpu_dkv_q_split),
            ("dkv_list_splits", call.config.gpu_dkv_list_splits or dkv_list_splits),
            # Not with gathered tiles: their kernel gives dQ itself, or the dQ kernel does.
            ("dq_in_dkv", True if call.config.gpu_dq_in_dkv and gathering is None else None),
        )
        if value is not None
    )
    xla_st, work = xla_work or (None, None)
    kernel = tuple(sorted(kw.items(), key=lambda x: x[0]))
    st = _Static(kernel=kernel, xla=xla_st, bwd=bwd, gathering=gathering, token_group=token_group)
    with interpret_context(interpret):
        return _attention(st, q, k, v, tables, arrays or {}, segs, work, call.pattern)


def _xla_backward(call, sp, bq, bk, *, use_mask_fn: bool):
    """`(Static, work)` of the XLA backward for the kernel's forward (same metadata)."""
    chunk = xla_pairs.chunk_size(
        sp,
        batch=call.batch,
        heads=call.num_heads,
        chunk_elements=call.config.xla_chunk_elements,
    )
    st = xla_tiles.Static(
        block_q=bq,
        block_kv=bk,
        q_len=call.q_len,
        kv_len=call.kv_len,
        q_offset=call.q_offset,
        scale=call.scale,
        logits_soft_cap=call.logits_soft_cap,
        use_mask_fn=use_mask_fn,
        chunk=chunk,
    )
    return st, xla_pairs.tile_pairs(sp, chunk)


def _backward_supported(call, block_q, block_kv) -> bool:
    from pallas_kernels.gpu import api as kernels  # Mosaic GPU imports only when used

    try:
        kernels.check_backward_support(call.head_dim, call.head_dim_v, block_q, block_kv)
    except NotImplementedError:
        return False
    return True


@contextlib.contextmanager
def interpret_context(interpret: bool):
    """An abstract H100 for the kernels' architecture queries in CPU interpret mode."""
    if not interpret:
        yield
        return
    dev = jax.sharding.AbstractDevice(
        device_kind="NVIDIA H100 80GB HBM3", platform="gpu", num_cores=8
    )
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=dev)):
        yield


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(st, q, k, v, tables, arrays, segs, work, pattern):
    out, lse = _forward(st, q, k, v, tables, arrays, segs)
    return _by_token(st, out), lse


def _forward(st, q, k, v, tables, arrays, segs):
    from pallas_kernels.gpu import api as kernels

    return kernels.block_sparse_attention_fwd(
        q,
        k,
        v,
        *tables[:3],
        q_segment_ids=segs[0],
        kv_segment_ids=segs[1],
        **{name: x for name, x in arrays.items() if name != "q_words"},
        **st.kwargs(),
    )


def _by_token(st, x):
    """Packed rows `[B, Tp, Hx, D]` in the natural layout `[B, Tp // G, Hx * G, D]`."""
    if not st.token_group:
        return x
    from pallas_kernels.gpu.backward_dkv_gathered import by_token

    b, tp, hx, d = x.shape
    return by_token(x, st.token_group).reshape(b, tp // st.token_group, hx * st.token_group, d)


def _by_row(st, x):
    """`_by_token`'s inverse."""
    if not st.token_group:
        return x
    from pallas_kernels.gpu.backward_dkv_gathered import by_row, token_view

    return by_row(token_view(x, st.token_group))


def _attention_fwd(st, q, k, v, tables, arrays, segs, work, pattern):
    out, lse = _forward(st, q, k, v, tables, arrays, segs)
    # The backward reads O as the kernels wrote it (packed rows with token_group).
    return (_by_token(st, out), lse), (q, k, v, out, lse, tables, arrays, segs, work, pattern)


def _attention_bwd(st, residuals, cotangents):
    q, k, v, out, lse, tables, arrays, segs, work, pattern = residuals
    dout_t, dlse = cotangents
    dout = _by_row(st, dout_t)  # as the kernels wrote O
    if st.gathering is not None and st.gathering.dq:
        dq, dk, dv = _gathered_backward(st, q, k, v, out, lse, dout, dlse, pattern)
        return dq, dk, dv, None, None, None, None, None
    if st.xla is not None:
        dq, dk, dv = xla_impl._backward(st.xla, q, k, v, out, lse, dout, dlse, work, segs, pattern)
    else:
        from pallas_kernels.gpu import api as kernels

        if st.gathering is not None:  # built here: a forward-only call never needs them
            arrays = {**arrays, "dkv_tiles": st.gathering.tiles(pattern.bits)}
        dq, dk, dv = kernels.block_sparse_attention_bwd(
            q,
            k,
            v,
            out,
            lse,
            dout,
            dlse,
            *tables[:6],
            q_segment_ids=segs[0],
            kv_segment_ids=segs[1],
            **arrays,
            **st.bwd_kwargs(),
        )
    return dq, dk, dv, None, None, None, None, None


def _gathered_backward(st, q, k, v, out, lse, dout, dlse, pattern):
    """dQ, dK, dV all from the gathered kernel (`Gathering.dq`), on packed rows."""
    from pallas_kernels.gpu import api as kernels

    kw = st.bwd_kwargs()
    return kernels.gathered_attention_bwd(
        q, k, v, out, lse, dout, dlse, st.gathering.tiles(pattern.bits), group=st.token_group,
        scale=kw["scale"], logits_soft_cap=kw["logits_soft_cap"], kv_len=kw["kv_len"],
        interpret=kw.get("interpret"),
    )  # fmt: skip


_attention.defvjp(_attention_fwd, _attention_bwd)
