"""`Sink`: the first keys (attention sinks / global tokens)."""

from __future__ import annotations

import numpy as np

from jaxsparse.patterns import base


@base.pattern_dataclass
class Sink(base.Pattern):
    """The first `num_tokens` keys: `k < num_tokens`.

    Alone it is rarely useful; StreamingLLM / A-shape attention is
    `Causal() & (Sink(n) | SlidingWindow(w))`.

    ```
    Sink(2)
    ■ ■ · · · ·
    ■ ■ · · · ·
    ■ ■ · · · ·
    ```
    """

    num_tokens: int

    def __post_init__(self):
        base.check_size("num_tokens", self.num_tokens, minimum=0, owner="Sink")

    def mask_fn(self, q_pos, kv_pos, head):
        return (kv_pos < self.num_tokens) & (q_pos == q_pos)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        return base.codes_from(k_hi < self.num_tokens, k_lo >= self.num_tokens, q_lo)

    def kv_range(self, q_lo, q_hi, head):
        return np.zeros_like(q_lo), np.full_like(q_hi, self.num_tokens - 1)

    @classmethod
    def examples(cls):
        return [Sink(num_tokens=3)]

    def __repr__(self):
        return f"Sink({self.num_tokens})"
