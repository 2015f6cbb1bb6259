"""`Call`: one validated attention problem, as every backend receives it."""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxsparse.ops import config as config_lib
from jaxsparse.patterns import base as pbase
from jaxsparse.sparsity import block_sparsity


@dataclasses.dataclass(frozen=True, kw_only=True)
class Call:
    """A validated, batched attention call.

    Attributes:
      q, k, v: `[B, T, H, D]`, `[B, S, K, D]`, `[B, S, K, Dv]`, one float dtype.
      pattern: the pattern, already bound to (T, S, q_offset, H).
      sparsity: metadata given by the caller or built by a dynamic pattern;
        None means "build it from the pattern for the backend's tiles".
      q_segment_ids, kv_segment_ids: int32 `[B, T]`, `[B, S]`, or None.
      scale, logits_soft_cap, q_offset: as in `jaxsparse.attention`.
      config: static tuning.
    """

    q: Any
    k: Any
    v: Any
    pattern: pbase.Pattern
    sparsity: block_sparsity.BlockSparsity | None
    q_segment_ids: Any
    kv_segment_ids: Any
    scale: float
    logits_soft_cap: float | None
    q_offset: int
    config: config_lib.Config

    @property
    def batch(self) -> int:
        return self.q.shape[0]

    @property
    def q_len(self) -> int:
        return self.q.shape[1]

    @property
    def kv_len(self) -> int:
        return self.k.shape[1]

    @property
    def num_heads(self) -> int:
        return self.q.shape[2]

    @property
    def num_kv_heads(self) -> int:
        return self.k.shape[2]

    @property
    def head_dim(self) -> int:
        return self.q.shape[3]

    @property
    def head_dim_v(self) -> int:
        return self.v.shape[3]

    @property
    def has_segments(self) -> bool:
        return self.q_segment_ids is not None
