"""`Causal`: a query attends keys at or before its position."""

from __future__ import annotations

import numpy as np

from jaxsparse.patterns import base


@base.pattern_dataclass
class Causal(base.Pattern):
    """Causal attention: `k <= q`.

    With the default bottom-right alignment (`q_offset = S - T`) this is also
    correct for decoding and chunked prefill.

    ```
          keys ->
    q   ■ · · ·
    |   ■ ■ · ·
    v   ■ ■ ■ ·
        ■ ■ ■ ■
    ```
    """

    def mask_fn(self, q_pos, kv_pos, head):
        return kv_pos <= q_pos

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        return base.codes_from(k_hi <= q_lo, k_lo > q_hi)

    def kv_range(self, q_lo, q_hi, head):
        return np.zeros_like(q_lo), q_hi

    @classmethod
    def examples(cls):
        return [Causal()]

    def __repr__(self):
        return "Causal()"
