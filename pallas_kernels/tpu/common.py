"""Static configuration of the Pallas TPU kernels, input checks and resource estimates.

Valid input these kernels cannot run raises NotImplementedError so that
callers can fall back; malformed input raises ValueError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu

LANES = 128
MaskFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
# Rough VMEM budget for one kernel's blocks and scratch (the scoped default is
# 16 MiB on v5e and 32 MiB on v4/v5p/v6e; leave room for Mosaic's own scratch).
MAX_VMEM_BYTES = 12 * 1024 * 1024
MAX_HEAD_DIM = 256
# f32 [block_q, block_kv] temporaries a kernel body keeps live (s, p, dp, ds, mask).
TILE_TEMPORARIES = 4
_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Statics:
    """Everything about one call that is static under jit (hashable).

    Attributes:
      mask_fn: None or mask_fn(q_pos, kv_pos, head) -> bool; partial tiles only.
      q_offset: position of query row 0 (q_pos = q_offset + row).
      kv_len: keys at positions >= kv_len are padding (masked in partial tiles).
      scale: logit scale.
      logits_soft_cap: None or cap (s = cap * tanh(s / cap)).
      has_segments: segment ids are given.
      segments_on_full_tiles: also apply the segment test on full tiles.
      block_q, block_kv: tile sizes (rows of q, rows of k per table entry).
      heads_minor: operands keep the caller's [B, L, N * D] layout (no
        transpose; needs D and Dv multiples of 128); else they are
        transposed to [B, N, L, D].
    """

    mask_fn: MaskFn | None
    q_offset: int
    kv_len: int
    scale: float
    logits_soft_cap: float | None
    has_segments: bool
    segments_on_full_tiles: bool
    block_q: int
    block_kv: int
    heads_minor: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class Shapes:
    """Problem sizes (static). `Hx` is the head extent of the tables."""

    B: int
    Tp: int
    Sp: int
    H: int
    K: int
    D: int
    Dv: int
    Bx: int
    Hx: int

    @property
    def G(self) -> int:  # noqa: N802 - dimension letter
        return self.H // self.K

    def table_row(self, b, h):
        """Row of the flattened `[Bx, Hx]` table axes used by (batch b, query head h)."""
        bx = b if self.Bx > 1 else 0
        if self.Hx == self.H:
            hx = h
        elif self.Hx == self.K:
            hx = h // self.G
        else:
            hx = 0
        return bx * self.Hx + hx


# --- checks ------------------------------------------------------------------------------


def check_qkv(q, k, v, *, what: str) -> None:
    """Shapes must be consistent (ValueError); dtypes and sizes supported (NotImplementedError)."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"{what}: expected q [B, T, H, D], k [B, S, K, D], v [B, S, K, Dv]; got "
            f"{q.shape=}, {k.shape=}, {v.shape=}"
        )
    B, _, H, D = q.shape
    _, S, K, _ = k.shape
    if k.shape[0] != B or k.shape[3] != D or v.shape[:3] != (B, S, K):
        raise ValueError(f"{what}: inconsistent shapes {q.shape=}, {k.shape=}, {v.shape=}")
    if H % K:
        raise ValueError(f"{what}: query heads H={H} must be a multiple of kv heads K={K}")
    dt = jnp.dtype(q.dtype)
    if dt not in _DTYPES:
        raise NotImplementedError(f"{what}: dtype {dt} (supported: bfloat16, float16, float32)")
    if jnp.dtype(k.dtype) != dt or jnp.dtype(v.dtype) != dt:
        raise NotImplementedError(
            f"{what}: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    for name, d in (("D", D), ("Dv", v.shape[3])):
        if d % 64 or d > MAX_HEAD_DIM:
            raise NotImplementedError(
                f"{what}: head dim {name}={d} must be a multiple of 64 up to {MAX_HEAD_DIM}"
            )


def check_blocks(block_q: int, block_kv: int, Tp: int, Sp: int) -> None:
    """Tiles must be lane multiples: keys are lanes of the forward/dQ logits, queries
    are lanes of the dK/dV logits and of the lse/delta rows."""
    for name, size in (("block_q", block_q), ("block_kv", block_kv)):
        if size <= 0 or size % LANES:
            raise NotImplementedError(f"{name}={size} must be a positive multiple of {LANES}")
    if Tp % block_q or Sp % block_kv:
        raise ValueError(
            f"padded lengths must be tile multiples: Tp={Tp} % {block_q=}, Sp={Sp} % {block_kv=}"
        )


def check_tables(indices, counts, full, *, B: int, H: int, K: int, nb: int, name: str):
    """`[Bx, Hx, nb, Kmax]`, `[Bx, Hx, nb]`, `[Bx, Hx, nb, Kmax]` with Bx in {1, B},
    Hx in {1, K, H}."""
    if indices.ndim != 4 or counts.ndim != 3 or full.ndim != 4:
        raise ValueError(
            f"{name} tables must be [Bx, Hx, nb, Kmax], [Bx, Hx, nb], [Bx, Hx, nb, Kmax]; "
            f"got {indices.shape}, {counts.shape}, {full.shape}"
        )
    Bx, Hx, n, _ = indices.shape
    if Bx not in (1, B) or Hx not in (1, K, H):
        raise ValueError(f"{name} tables: Bx={Bx} must be 1 or {B}; Hx={Hx} 1, {K} or {H}")
    if n != nb:
        raise ValueError(f"{name} tables cover {n} blocks, expected {nb}")
    if counts.shape != (Bx, Hx, n) or full.shape != indices.shape:
        raise ValueError(
            f"{name} tables disagree: {indices.shape=}, {counts.shape=}, {full.shape=}"
        )


def check_segments(q_segment_ids, kv_segment_ids, B: int, Tp: int, Sp: int):
    """int32 `[B, 1, Tp]`, `[B, 1, Sp]` rows (lane-dense), or (None, None)."""
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("give both q_segment_ids and kv_segment_ids, or neither")
    if q_segment_ids is None:
        return None, None
    if q_segment_ids.shape != (B, Tp) or kv_segment_ids.shape != (B, Sp):
        raise ValueError(
            f"segment ids must be [B, Tp] = {(B, Tp)} and [B, Sp] = {(B, Sp)}; got "
            f"{q_segment_ids.shape}, {kv_segment_ids.shape}"
        )
    return (
        q_segment_ids.astype(jnp.int32)[:, None, :],
        kv_segment_ids.astype(jnp.int32)[:, None, :],
    )


def make_statics(
    q,
    v,
    k_len: int,
    *,
    mask_fn,
    q_offset,
    kv_len,
    scale,
    logits_soft_cap,
    has_segments,
    segments_on_full_tiles,
    block_q,
    block_kv,
) -> Statics:
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if logits_soft_cap is not None and not logits_soft_cap > 0:
        raise ValueError(f"{logits_soft_cap=} must be positive or None")
    return Statics(
        mask_fn=mask_fn,
        q_offset=int(q_offset),
        kv_len=int(k_len if kv_len is None else kv_len),
        scale=float(scale),
        logits_soft_cap=None if logits_soft_cap is None else float(logits_soft_cap),
        has_segments=has_segments,
        segments_on_full_tiles=bool(segments_on_full_tiles),
        block_q=block_q,
        block_kv=block_kv,
        heads_minor=q.shape[-1] % LANES == 0 and v.shape[-1] % LANES == 0,
    )


def compiler_params(num_parallel: int, num_arbitrary: int, interpret: Any):
    """Mosaic parameters: the leading grid axes are independent, the list axes sequential.

    In interpret mode the semantics are left out: the jax 0.11.2 TPU
    interpreter does not extend them over the grid axes that `vmap` adds
    (`_get_parallel_dim_semantics` then fails), and with one simulated core
    they change nothing it checks.
    """
    if interpret:
        return pltpu.CompilerParams()
    semantics = ("parallel",) * num_parallel + ("arbitrary",) * num_arbitrary
    return pltpu.CompilerParams(dimension_semantics=semantics)


def vmem_bytes(tiles: list[tuple[tuple[int, ...], Any]], *, buffers: int = 2) -> int:
    """VMEM of pipelined blocks (double-buffered) or scratch (buffers=1), in bytes."""
    total = 0
    for shape, dtype in tiles:
        n = jnp.dtype(dtype).itemsize
        for d in shape:
            n *= d
        total += n
    return total * buffers


def temporaries_bytes(st: Statics) -> int:
    """VMEM Mosaic needs for a body's f32 logits-sized temporaries (an estimate)."""
    return TILE_TEMPORARIES * st.block_q * st.block_kv * 4
