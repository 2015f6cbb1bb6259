"""`SlidingWindow`: a band of keys around each query."""

from __future__ import annotations

from jaxsparse.patterns import base


@base.pattern_dataclass
class SlidingWindow(base.Pattern):
    """Local attention: `q - left <= k <= q + right` (both ends inclusive).

    `right=0` (the default) is a causal window of `left + 1` keys, the same
    convention as splash attention's LocalMask and tokamax's
    `local_window_size=(left, right)`.

    ```
    SlidingWindow(left=2)        SlidingWindow(left=1, right=1)
    ■ · · · · ·                  ■ ■ · · · ·
    ■ ■ · · · ·                  ■ ■ ■ · · ·
    ■ ■ ■ · · ·                  · ■ ■ ■ · ·
    · ■ ■ ■ · ·                  · · ■ ■ ■ ·
    · · ■ ■ ■ ·                  · · · ■ ■ ■
    · · · ■ ■ ■                  · · · · ■ ■
    ```
    """

    left: int
    right: int = 0

    def __post_init__(self):
        fix = "A window side counts keys, so it must be 0 or more."
        base.check_size("left", self.left, minimum=0, owner="SlidingWindow", fix=fix)
        base.check_size("right", self.right, minimum=0, owner="SlidingWindow", fix=fix)

    def mask_fn(self, q_pos, kv_pos, head):
        return (q_pos - self.left <= kv_pos) & (kv_pos <= q_pos + self.right)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        full = (k_lo >= q_hi - self.left) & (k_hi <= q_lo + self.right)
        empty = (k_hi < q_lo - self.left) | (k_lo > q_hi + self.right)
        return base.codes_from(full, empty)

    def kv_range(self, q_lo, q_hi, head):
        return q_lo - self.left, q_hi + self.right

    @classmethod
    def examples(cls):
        return [SlidingWindow(left=3), SlidingWindow(left=5, right=2), SlidingWindow(left=0)]

    def __repr__(self):
        return f"SlidingWindow(left={self.left}" + (f", right={self.right})" if self.right else ")")
