"""`CompressedCausal`: causality for attention to compressed (pooled) keys, e.g. NSA's branch 1."""

from __future__ import annotations

from jaxsparse.patterns import base


@base.pattern_dataclass
class CompressedCausal(base.Pattern):
    """Key j pools positions `[j*stride, j*stride + kernel_size)`; visible once all are past.

    `j * stride + kernel_size - 1 <= q` (NSA, arXiv 2502.11089, eq. 7: a
    compressed token never leaks a future key). Keys of the call are
    compressed-token indices; queries keep their absolute positions, so call
    `attention(q, k_cmp, v_cmp, pattern=..., q_offset=S - T)` with the
    original lengths.

    ```
    CompressedCausal(kernel_size=4, stride=2), 8 queries x 3 compressed keys
    · · ·
    · · ·
    · · ·
    ■ · ·
    ■ · ·
    ■ ■ ·
    ■ ■ ·
    ■ ■ ■
    ```
    """

    kernel_size: int
    stride: int

    def __post_init__(self):
        base.check_size("kernel_size", self.kernel_size, minimum=1, owner="CompressedCausal")
        base.check_size("stride", self.stride, minimum=1, owner="CompressedCausal")

    def mask_fn(self, q_pos, kv_pos, head):
        return kv_pos * self.stride + (self.kernel_size - 1) <= q_pos

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        last = self.kernel_size - 1
        return base.codes_from(k_hi * self.stride + last <= q_lo, k_lo * self.stride + last > q_hi)

    def kv_range(self, q_lo, q_hi, head):
        return q_lo * 0, (q_hi - (self.kernel_size - 1)) // self.stride

    @classmethod
    def examples(cls):
        return [
            CompressedCausal(kernel_size=4, stride=2),
            CompressedCausal(kernel_size=3, stride=3),
        ]

    def __repr__(self):
        return f"CompressedCausal(kernel_size={self.kernel_size}, stride={self.stride})"
