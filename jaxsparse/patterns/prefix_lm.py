"""`PrefixLM`: bidirectional prefix, causal after it."""

from __future__ import annotations

import numpy as np

from jaxsparse.patterns import base


@base.pattern_dataclass
class PrefixLM(base.Pattern):
    """Prefix-LM attention: `k < prefix_length` or `k <= q`.

    ```
    PrefixLM(3)
    ■ ■ ■ · · ·
    ■ ■ ■ · · ·
    ■ ■ ■ · · ·
    ■ ■ ■ ■ · ·
    ■ ■ ■ ■ ■ ·
    ■ ■ ■ ■ ■ ■
    ```
    """

    prefix_length: int

    def __post_init__(self):
        base.check_size("prefix_length", self.prefix_length, minimum=0, owner="PrefixLM")

    def mask_fn(self, q_pos, kv_pos, head):
        return (kv_pos < self.prefix_length) | (kv_pos <= q_pos)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        p = self.prefix_length
        full = (k_hi < p) | (k_hi <= q_lo)
        empty = (k_lo >= p) & (k_lo > q_hi)
        return base.codes_from(full, empty)

    def kv_range(self, q_lo, q_hi, head):
        return np.zeros_like(q_lo), np.maximum(q_hi, self.prefix_length - 1)

    @classmethod
    def examples(cls):
        return [PrefixLM(prefix_length=5), PrefixLM(prefix_length=0)]

    def __repr__(self):
        return f"PrefixLM({self.prefix_length})"
