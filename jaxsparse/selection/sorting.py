"""Row sorts of small non-negative int keys as one flat int32 sort.

XLA:GPU sends a sort to cub's radix sort only for some shapes: on Hopper a
single row of 32-bit keys from about 22,000 entries, but a batch of rows only
from 27 rows of 128k entries and up. Below that it runs its own bitonic
sort, one kernel per merge stride: NSA's (block, token) pairs, two rows of
1M int32 keys at 64k tokens, took 45 kernels and 0.28 ms of the step on the
H100 (session 25's profile), where one row of 2M keys is a handful of cub
passes. So rows of keys in `[0, bound)` are sorted as one row: row r's keys
are offset by `r * bound`, which keeps each row's entries in its own span of
the sorted result. Where `rows * bound` does not fit in int32, each row is
sorted on its own.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

INT32_MAX = 2**31 - 1
# One flat sort where the offset keys fit in int32 (False: every row its own, as before
# session 26; `bench/nsa_glue.py`'s `row sorts` times that form).
FLATTEN_ROWS = True


def sort_rows(keys, bound: int):
    """Each row of int keys `[..., n]` in `[0, bound)` sorted ascending, as int32.

    Equal keys are equal values, so no stable order (and no index payload) is needed.
    """
    keys = keys.astype(jnp.int32)
    *lead, n = keys.shape
    rows = math.prod(lead)
    if not FLATTEN_ROWS or rows <= 1 or rows * bound > INT32_MAX:
        return lax.sort(keys, dimension=keys.ndim - 1, is_stable=False)
    offset = (jnp.arange(rows, dtype=jnp.int32) * bound).reshape(*lead, 1)
    flat = lax.sort((keys + offset).reshape(rows * n), is_stable=False)
    return flat.reshape(keys.shape) - offset


def argsort_rows(keys, bound: int):
    """`jnp.argsort(keys, axis=-1, stable=True)` for int keys in `[0, bound)`, as int32.

    One value sort of `key * n + position` (`sort_rows`) where `bound * n` fits in
    int32: distinct values whose order is the stable argsort's, no index payload.
    """
    n = keys.shape[-1]
    if bound * n > INT32_MAX:
        return jnp.argsort(keys, axis=-1, stable=True).astype(jnp.int32)
    pos = lax.broadcasted_iota(jnp.int32, keys.shape, keys.ndim - 1)
    return sort_rows(keys.astype(jnp.int32) * n + pos, bound * n) % n
