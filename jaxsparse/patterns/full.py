"""`Full`: every query attends every key."""

from __future__ import annotations

import numpy as np

from jaxsparse.patterns import base


@base.pattern_dataclass
class Full(base.Pattern):
    """Dense attention: every query attends every key.

    ```
          keys ->
    q   ■ ■ ■ ■ ■
    |   ■ ■ ■ ■ ■
    v   ■ ■ ■ ■ ■
    ```
    """

    def mask_fn(self, q_pos, kv_pos, head):
        return (q_pos >= kv_pos) | (q_pos < kv_pos)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        shape = np.broadcast_shapes(np.shape(q_lo), np.shape(k_lo))
        return np.full(shape, base.FULL, np.int8)

    def needs_tile_mask(self, block_q, block_kv):
        return False

    @classmethod
    def examples(cls):
        return [Full()]

    def __repr__(self):
        return "Full()"
