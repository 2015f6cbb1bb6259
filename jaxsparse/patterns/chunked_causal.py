"""`ChunkedCausal`: causal attention inside fixed-size chunks."""

from __future__ import annotations

import numpy as np

from jaxsparse.patterns import base


@base.pattern_dataclass
class ChunkedCausal(base.Pattern):
    """Causal attention within chunks: `k <= q` and `k // c == q // c`.

    Llama-4-style chunked attention (`c = chunk_size`).

    ```
    ChunkedCausal(3)
    ■ · · · · ·
    ■ ■ · · · ·
    ■ ■ ■ · · ·
    · · · ■ · ·
    · · · ■ ■ ·
    · · · ■ ■ ■
    ```
    """

    chunk_size: int

    def __post_init__(self):
        base.check_size("chunk_size", self.chunk_size, minimum=1, owner="ChunkedCausal")

    def mask_fn(self, q_pos, kv_pos, head):
        c = self.chunk_size
        return (kv_pos <= q_pos) & (kv_pos // c == q_pos // c)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        c = self.chunk_size
        j_lo = np.maximum(q_lo // c, k_lo // c)
        j_hi = np.minimum(q_hi // c, k_hi // c)

        def has_pair(j):
            # Within chunk j, the latest query and the earliest key decide.
            return np.maximum(k_lo, j * c) <= np.minimum(q_hi, (j + 1) * c - 1)

        empty = (j_lo > j_hi) | ~(has_pair(j_lo) | has_pair(j_hi))
        one_chunk = (q_lo // c == q_hi // c) & (k_lo // c == k_hi // c) & (q_lo // c == k_lo // c)
        full = one_chunk & (k_hi <= q_lo)
        return base.codes_from(full, empty)

    def kv_range(self, q_lo, q_hi, head):
        return q_lo // self.chunk_size * self.chunk_size, q_hi

    @classmethod
    def examples(cls):
        return [ChunkedCausal(chunk_size=4), ChunkedCausal(chunk_size=7)]

    def __repr__(self):
        return f"ChunkedCausal({self.chunk_size})"
