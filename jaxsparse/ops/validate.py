"""Input checks for `jaxsparse.attention`: every mistake gets a message with the fix."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.ops import config as config_lib
from jaxsparse.patterns import base as pbase
from jaxsparse.patterns import explicit
from jaxsparse.sparsity import block_sparsity

IMPLEMENTATIONS = ("pallas_gpu", "pallas_tpu", "xla", "reference")
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(np.shape(x))


def check_qkv(q: Any, k: Any, v: Any) -> bool:
    """Checks q/k/v; returns True when they carry a leading batch axis."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"{name} must be an array, got {type(x).__name__}.")
        if x.ndim not in (3, 4):
            raise ValueError(
                f"{name} has shape {_shape(x)}; expected [B, T, H, D] (or [T, H, D] without "
                "batch). jaxsparse uses the jax.nn layout: sequence before heads."
            )
    if not q.ndim == k.ndim == v.ndim:
        raise ValueError(
            f"q, k, v must all have a batch axis or none: got shapes {_shape(q)}, {_shape(k)}, "
            f"{_shape(v)}."
        )
    batched = q.ndim == 4
    qs, ks, vs = (_shape(x) if batched else (1, *_shape(x)) for x in (q, k, v))
    (b, t, h, d), (bk, s, kh, dk), (bv, sv, kv, dv) = qs, ks, vs
    if not b == bk == bv:
        raise ValueError(f"Batch sizes differ: q {b}, k {bk}, v {bv}.")
    if s != sv:
        raise ValueError(f"k and v must have the same sequence length: k {s}, v {sv}.")
    if kh != kv:
        raise ValueError(f"k and v must have the same number of heads: k {kh}, v {kv}.")
    if d != dk:
        raise ValueError(
            f"q and k must have the same head dim: q {d}, k {dk} (v's head dim may differ)."
        )
    if min(t, s, h, kh, d, dv) == 0:
        raise ValueError(
            f"Empty dimension in q {_shape(q)}, k {_shape(k)}, v {_shape(v)}: lengths, heads "
            "and head dims must be at least 1."
        )
    if h % kh:
        raise ValueError(
            f"q has {h} heads and k/v have {kh}: the number of query heads must be a multiple "
            "of the number of key/value heads (GQA/MQA)."
        )
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}.")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(
            f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}; cast them, "
            f"e.g. k.astype(q.dtype)."
        )
    return batched


def check_batched_qkv(owner: str, q: Any, k: Any, v: Any) -> None:
    """`check_qkv`, for entry points that need the batch axis."""
    if not check_qkv(q, k, v):
        raise ValueError(
            f"{owner}: q, k, v need a batch axis: [B, T, H, D], [B, S, K, D], [B, S, K, Dv]; "
            f"got {_shape(q)}, {_shape(k)}, {_shape(v)} (add one with x[None])."
        )


def check_segment_ids(segment_ids: Any, batch: int, t: int, s: int, batched: bool):
    """Normalise `segment_ids` to int32 `([B, T], [B, S])` or `(None, None)`."""
    if segment_ids is None:
        return None, None
    if isinstance(segment_ids, (tuple, list)):
        if len(segment_ids) != 2:
            raise ValueError(
                f"segment_ids must be one array (when T == S) or a pair (q_ids, kv_ids); "
                f"got a sequence of length {len(segment_ids)}."
            )
        q_ids, kv_ids = segment_ids
    else:
        if t != s:
            raise ValueError(
                f"A single segment_ids array needs T == S, but T={t} and S={s}; pass "
                "segment_ids=(q_segment_ids, kv_segment_ids)."
            )
        q_ids = kv_ids = segment_ids
    want_q, want_kv = ((batch, t), (batch, s)) if batched else ((t,), (s,))
    for name, ids, want in (("query", q_ids, want_q), ("key", kv_ids, want_kv)):
        if not hasattr(ids, "dtype") or not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(
                f"{name} segment ids must be an integer array, got "
                f"{getattr(ids, 'dtype', type(ids).__name__)}."
            )
        if _shape(ids) != want:
            raise ValueError(
                f"{name} segment ids have shape {_shape(ids)}; expected {list(want)} "
                "(batch, length) matching q/k."
            )
    if any(_wide(ids) for ids in (q_ids, kv_ids)):
        q_ids, kv_ids = _joint_ranks(q_ids, kv_ids)
    q_ids, kv_ids = jnp.asarray(q_ids, jnp.int32), jnp.asarray(kv_ids, jnp.int32)
    if not batched:
        q_ids, kv_ids = q_ids[None], kv_ids[None]
    return q_ids, kv_ids


def _wide(ids) -> bool:
    """Ids that int32 may not hold: 64-bit or uint32 ids, unless known to fit."""
    if np.dtype(ids.dtype).itemsize <= 4 and np.dtype(ids.dtype) != np.uint32:
        return False
    values = explicit.concrete(ids)
    if values is None:  # traced: the values are unknown
        return True
    return bool(values.size) and (values.min() < INT32_MIN or values.max() > INT32_MAX)


def _joint_ranks(q_ids, kv_ids):
    """Query and key ids renumbered together, order and equality kept, as int32.

    Each id becomes the position of its first occurrence among the row's query
    and key ids sorted together, so ids the kernels compare as int32 keep every
    equality and order the wide ids had. Concrete ids are renumbered in numpy
    (jax without x64 would wrap them), traced ones in jnp where their common
    type exists there (else a ValueError).
    """
    q_np, kv_np = explicit.concrete(q_ids), explicit.concrete(kv_ids)
    xp = np if q_np is not None and kv_np is not None else jnp
    common = np.result_type(q_ids.dtype, kv_ids.dtype)
    if not np.issubdtype(common, np.integer):
        raise TypeError(
            f"query and key segment ids are {q_ids.dtype} and {kv_ids.dtype}, which have no "
            "common integer type; give both the same dtype."
        )
    if xp is np:
        q_ids, kv_ids = q_np, kv_np
    elif jax.dtypes.canonicalize_dtype(common) != common:  # jax would wrap them to 32 bits
        raise ValueError(
            f"query and key segment ids ({q_ids.dtype} and {kv_ids.dtype}, some traced) can "
            f"only be compared as {common}, which jax has only with jax_enable_x64: pass both "
            "as numpy arrays (they are then renumbered on the host), enable x64, or renumber "
            "them together into int32 first (np.unique over both, return_inverse=True)."
        )
    q_ids, kv_ids = q_ids.astype(common), kv_ids.astype(common)
    both = xp.sort(xp.concatenate([q_ids, kv_ids], axis=-1), axis=-1)
    rank = xp.vectorize(lambda row, x: xp.searchsorted(row, x), signature="(n),(m)->(m)")
    return rank(both, q_ids).astype(np.int32), rank(both, kv_ids).astype(np.int32)


def check_scalar(name: str, value: Any, *, positive: bool) -> float | None:
    if value is None:
        return None
    if isinstance(value, (jax.Array, bool, np.bool_)) or not isinstance(
        value, (int, float, np.floating, np.integer)
    ):
        raise TypeError(
            f"{name} must be a Python number (it is static), got {type(value).__name__}."
        )
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{name}={value} must be a finite number" + (" > 0." if positive else "."))
    with np.errstate(over="ignore"):
        as_f32 = np.float32(value)  # the kernels compute logits in float32
    if not np.isfinite(as_f32) or (positive and as_f32 == 0):
        raise ValueError(
            f"{name}={value} is {as_f32} in float32, where the logits are computed; use a "
            f"value whose magnitude lies in [{np.finfo(np.float32).tiny:.3g}, "
            f"{np.finfo(np.float32).max:.3g}]."
        )
    return value


def check_q_offset(q_offset: Any, t: int, s: int) -> int:
    if q_offset is None:
        q_offset = s - t
    if isinstance(q_offset, bool) or not isinstance(q_offset, (int, np.integer)):
        raise TypeError(
            f"q_offset must be a Python int (it is static), got {type(q_offset).__name__}."
        )
    pbase.check_positions("attention", q_offset=int(q_offset), q_len=t, kv_len=s)
    return int(q_offset)


def check_options(pattern: Any, implementation: Any, config: Any, return_lse: Any) -> None:
    if not isinstance(pattern, pbase.Pattern):
        raise TypeError(
            f"pattern must be a jaxsparse pattern (e.g. jaxsparse.patterns.Causal()), got "
            f"{type(pattern).__name__}."
        )
    if implementation is not None and implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"Unknown implementation {implementation!r}; choose one of {IMPLEMENTATIONS} "
            "or None (best for the device)."
        )
    if config is not None and not isinstance(config, config_lib.Config):
        raise TypeError(f"config must be a jaxsparse.Config, got {type(config).__name__}.")
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {return_lse!r}.")


def check_sparsity(sp: Any, *, batch: int, t: int, s: int, h: int, q_offset: int) -> None:
    if sp is None:
        return
    if not isinstance(sp, block_sparsity.BlockSparsity):
        raise TypeError(f"sparsity must be a jaxsparse BlockSparsity, got {type(sp).__name__}.")
    if (sp.q_len, sp.kv_len, sp.q_offset) != (t, s, q_offset):
        raise ValueError(
            f"sparsity was built for q_len={sp.q_len}, kv_len={sp.kv_len}, "
            f"q_offset={sp.q_offset}, but this call has q_len={t}, kv_len={s}, "
            f"q_offset={q_offset}; rebuild it for these lengths."
        )
    if sp.num_heads not in (1, h):
        raise ValueError(f"sparsity has {sp.num_heads} head lists; this call needs 1 or {h}.")
    if sp.batch_size not in (1, batch):
        raise ValueError(f"sparsity has batch {sp.batch_size}; this call needs 1 or {batch}.")
    for name, value in (("block_q", sp.block_q), ("block_kv", sp.block_kv)):
        pbase.check_int(name, value, minimum=1, owner="sparsity")
    lead = (sp.batch_size, sp.num_heads)
    for side, rows in (("kv", sp.num_q_blocks), ("q", sp.num_kv_blocks)):
        indices, counts, full = (getattr(sp, f"{side}_{x}") for x in ("indices", "counts", "full"))
        if side == "q" and indices is None:  # forward-only metadata: no key-major lists
            continue
        if (
            _shape(counts) != lead + (rows,)
            or _shape(indices)[:3] != lead + (rows,)
            or _shape(full) != _shape(indices)
        ):
            raise ValueError(
                f"sparsity's {side} tables have shapes {_shape(indices)}, {_shape(counts)}, "
                f"{_shape(full)}; block_q={sp.block_q}, block_kv={sp.block_kv} with T={t}, "
                f"S={s} need [{sp.batch_size}, {sp.num_heads}, {rows}, ...]: build it with the "
                "jaxsparse.sparsity builders, not by replacing block sizes."
            )
    for side, cols in (("kv", sp.num_kv_blocks), ("q", sp.num_q_blocks)):
        indices, counts = getattr(sp, f"{side}_indices"), getattr(sp, f"{side}_counts")
        # Host tables only: device ones are not copied back.
        _check_host_range(f"{side}_indices", indices, 0, cols - 1, f"[0, {cols}) tiles")
        width = _shape(indices)[-1] if indices is not None else 0
        # A count past the list's width would read slots that hold no tile.
        _check_host_range(f"{side}_counts", counts, 0, width, f"[0, {width}] (the lists' width)")


def _check_host_range(name: str, x: Any, lo: int, hi: int, where: str) -> None:
    """A host table's values must lie in [lo, hi] (device tables are not checked)."""
    if isinstance(x, np.ndarray) and x.size and (x.min() < lo or x.max() > hi):
        raise ValueError(
            f"sparsity's {name} hold {int(x.min())}..{int(x.max())}, outside {where}; build "
            "it with the jaxsparse.sparsity builders."
        )
