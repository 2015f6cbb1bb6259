"""NSA's top-n block selection of each query row in one pass (a Pallas Triton kernel).

`jaxsparse.methods.nsa_selection.select_blocks` in XLA forces the initial
and local blocks (+inf), drops the future ones (-inf) and keeps the `top_n`
best of each row's `nb` block scores: at 64k tokens (131k rows of 1,024
blocks) a group-maximum pass and two sorts of `[131072, 128]` rows, about
1.05 ms of NSA's step on an H100 (session 22's profile). Here a program
holds `ROWS` rows in registers and takes `top_n` argmax passes over them
(the lowest index among equal maxima, as `lax.top_k`), reading the scores
once and writing the int8 mask.

Written on the Triton backend of Pallas, deprecated since jax 0.11 but
present in 0.11.2 and 0.12: a row reduction with an index payload is a few
lines there, where Mosaic GPU keeps its arrays in the wgmma layout (64-row
tiles, at most 256 columns in registers, `gate_topk.py`).

Shapes: importance `[R, nb]` float32 (row r is query position `pos[r]`),
pos `[R]` int32 -> int8 `[R, nb]`. Limits (NotImplementedError otherwise,
so that callers fall back to XLA): nb a power of two from 16 to `MAX_BLOCKS`,
top_n <= `MAX_TOP_N`.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

MAX_BLOCKS = 4096  # 256k tokens of 64-token blocks
MAX_TOP_N = 32  # argmax passes, unrolled
ROWS = 2  # rows a program holds (one warp each)


def check(nb: int, top_n: int) -> None:
    """Raises NotImplementedError where the kernel does not take these sizes."""
    if nb < 16 or nb > MAX_BLOCKS or nb & (nb - 1):
        raise NotImplementedError(
            f"NSA top-n kernel needs a power-of-two block count in [16, {MAX_BLOCKS}] (got {nb})"
        )
    if not 1 <= top_n <= MAX_TOP_N:
        raise NotImplementedError(f"NSA top-n kernel needs 1 <= top_n <= {MAX_TOP_N} (got {top_n})")


def _kernel(imp_ref, pos_ref, out_ref, *, nb, top_n, block_size, init_blocks, local_blocks):
    x = imp_ref[...]
    own = (pos_ref[...] // block_size)[:, None]
    j = lax.broadcasted_iota(jnp.int32, x.shape, 1)
    forced = (j < init_blocks) | ((own - j >= 0) & (own - j < local_blocks))
    x = jnp.where(forced, jnp.inf, x)
    x = jnp.where(j > own, -jnp.inf, x)
    keep = jnp.zeros(x.shape, jnp.int32)
    for _ in range(top_n):
        best = jnp.max(x, axis=1, keepdims=True)
        first = jnp.min(jnp.where(x == best, j, nb), axis=1, keepdims=True)
        hit = (j == first) & (best > -jnp.inf)
        keep = jnp.where(hit, 1, keep)
        x = jnp.where(hit, -jnp.inf, x)
    out_ref[...] = keep.astype(jnp.int8)


def select(
    importance,
    pos,
    *,
    top_n: int,
    block_size: int,
    init_blocks: int,
    local_blocks: int,
    rows: int | None = None,
    num_warps: int | None = None,
    interpret: bool = False,
):
    """int8 `[R, nb]`: 1 at the `top_n` best blocks of each row of `importance [R, nb]`,
    the initial blocks and the `local_blocks` up to the row's own (`pos // block_size`)
    forced, the blocks past its own never kept (as `select_blocks`)."""
    r, nb = importance.shape
    check(nb, top_n)
    rows = rows or ROWS
    kernel = functools.partial(
        _kernel, nb=nb, top_n=top_n, block_size=block_size, init_blocks=init_blocks,
        local_blocks=local_blocks,
    )  # fmt: skip
    call = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((r, nb), jnp.int8),
        grid=(pl.cdiv(r, rows),),
        in_specs=[
            pl.BlockSpec((rows, nb), lambda i: (i, 0)),
            pl.BlockSpec((rows,), lambda i: (i,)),
        ],
        out_specs=pl.BlockSpec((rows, nb), lambda i: (i, 0)),
        compiler_params=pltriton.CompilerParams(num_warps=num_warps or rows, num_stages=1),
        interpret=interpret,
        name="jaxsparse_nsa_topk",
    )
    with warnings.catch_warnings():  # the Triton backend's deprecation, once per lowering
        warnings.simplefilter("ignore", DeprecationWarning)
        return call(importance.astype(jnp.float32), pos.astype(jnp.int32))
