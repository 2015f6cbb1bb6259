"""`BlockSparsity`: backend-neutral block metadata, a pytree.

For every (batch, head, query block) an ascending list of key blocks to visit,
its length, and whether each listed tile is FULL (no mask math needed) or
PARTIAL (evaluate the element mask in the tile). The transposed, key-major
lists (for each key block the query blocks that use it) drive the dK/dV pass.

Layout (`Bx` is 1 or the batch, `Hx` is 1 or the number of query heads):

  kv_indices  int32 [Bx, Hx, Tb, Kmax]  key blocks of query block i, ascending;
                                        entries past the count repeat the last
                                        valid index (0 for an empty row), so a
                                        prefetching kernel never loads new data
  kv_counts   int32 [Bx, Hx, Tb]
  kv_full     bool  [Bx, Hx, Tb, Kmax]
  q_indices   int32 [Bx, Hx, Sb, Qmax]  transposed lists, same rules
  q_counts    int32 [Bx, Hx, Sb]
  q_full      bool  [Bx, Hx, Sb, Qmax]

Static fields: `block_q`, `block_kv`, `q_len` (T), `kv_len` (S), `q_offset`, and
`segment_exact` (FULL tiles were checked against the segment ids).
`Tb = ceil(T / block_q)`, `Sb = ceil(S / block_kv)`; a key block that holds
padding (positions >= S) is never FULL. Arrays are numpy when built on the host
(`from_pattern`) and jax arrays when built on device (`from_block_mask`,
`from_topk`, dynamic patterns). `attention` checks host tables' indices
against their tiles and their counts against the lists' width (a named
ValueError); device tables are not checked,
since that would copy them back and cannot be done under jit: build those with
the library's builders, which drop out-of-range entries, not by hand.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.patterns import base as pbase


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class BlockSparsity:
    """Which key blocks each query block visits; see the module docstring."""

    kv_indices: Any
    kv_counts: Any
    kv_full: Any
    q_indices: Any
    q_counts: Any
    q_full: Any
    block_q: int = dataclasses.field(metadata={"static": True})
    block_kv: int = dataclasses.field(metadata={"static": True})
    q_len: int = dataclasses.field(metadata={"static": True})
    kv_len: int = dataclasses.field(metadata={"static": True})
    q_offset: int = dataclasses.field(metadata={"static": True})
    # True when the builder knew the segment ids and every FULL tile lies inside one
    # segment, so kernels may skip the segment test there (caller tables: unknown).
    segment_exact: bool = dataclasses.field(default=False, metadata={"static": True})

    # --- shapes ---------------------------------------------------------------
    @property
    def num_q_blocks(self) -> int:
        return math.ceil(self.q_len / self.block_q)

    @property
    def num_kv_blocks(self) -> int:
        return math.ceil(self.kv_len / self.block_kv)

    @property
    def batch_size(self) -> int:
        """1 when the metadata is shared across the batch."""
        return self.kv_counts.shape[0]

    @property
    def num_heads(self) -> int:
        """1 when the metadata is shared across heads."""
        return self.kv_counts.shape[1]

    @property
    def is_host(self) -> bool:
        """True when the tables are numpy arrays (built on the host)."""
        return isinstance(self.kv_indices, np.ndarray)

    # --- views ------------------------------------------------------------------
    def to_dense(self) -> Any:
        """Block codes `[Bx, Hx, Tb, Sb]`: 0 empty, 1 partial, 2 full (for tests)."""
        xp = np if self.is_host else jnp
        return _lists_to_dense(
            xp, self.kv_indices, self.kv_counts, self.kv_full, self.num_kv_blocks
        )

    def to_dense_transposed(self) -> Any:
        """The key-major lists as block codes `[Bx, Hx, Sb, Tb]` (for tests)."""
        xp = np if self.is_host else jnp
        return _lists_to_dense(xp, self.q_indices, self.q_counts, self.q_full, self.num_q_blocks)

    def num_visited(self) -> Any:
        """Number of listed tiles (per batch and head summed)."""
        return self.kv_counts.sum()

    def density(self) -> float:
        """Fraction of tiles visited, averaged over batch and heads (host only)."""
        counts = np.asarray(self.kv_counts)
        return float(
            counts.sum()
            / (counts.shape[0] * counts.shape[1] * self.num_q_blocks * self.num_kv_blocks)
        )

    def replace(self, **changes: Any) -> BlockSparsity:
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        where = "host" if self.is_host else "device"
        return (
            f"BlockSparsity(T={self.q_len}, S={self.kv_len}, q_offset={self.q_offset}, "
            f"block_q={self.block_q}, block_kv={self.block_kv}, "
            f"B={self.batch_size}, H={self.num_heads}, Kmax={self.kv_indices.shape[-1]}, "
            f"Qmax={self.q_indices.shape[-1]}, {where})"
        )


def check_geometry(
    owner: str, *, q_len: Any, kv_len: Any, block_q: Any, block_kv: Any, q_offset: Any
) -> int:
    """Raise unless these static fields of a `BlockSparsity` are valid; return `q_offset`.

    Lengths and tiles are ints >= 1; positions are int32, so `q_offset`
    (default `kv_len - q_len`) and the lengths must keep them below 2**31.
    """
    for name, value in dict(q_len=q_len, kv_len=kv_len, block_q=block_q, block_kv=block_kv).items():
        pbase.check_int(name, value, minimum=1, owner=owner)
    if q_offset is None:
        q_offset = kv_len - q_len
    pbase.check_positions(owner, q_offset=q_offset, q_len=q_len, kv_len=kv_len)
    return q_offset


def _lists_to_dense(xp, indices, counts, full, num_cols):
    kmax = indices.shape[-1]
    valid = xp.arange(kmax).reshape((1,) * counts.ndim + (kmax,)) < counts[..., None]
    code = xp.where(full, pbase.FULL, pbase.PARTIAL)
    code = xp.where(valid, code, pbase.EMPTY).astype(np.int8)
    out_shape = indices.shape[:-1] + (num_cols,)
    if xp is np:
        out = np.zeros(out_shape, np.int8)
        lead = np.indices(indices.shape[:-1])
        idx = tuple(x[..., None] for x in lead) + (indices,)
        np.maximum.at(out, idx, code)
        return out
    onehot = jax.nn.one_hot(indices, num_cols, dtype=jnp.int8)  # [..., K, C]
    return (onehot * code[..., None]).max(axis=-2)
