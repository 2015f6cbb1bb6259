"""`Dilated`: a dilated sliding window (Longformer)."""

from __future__ import annotations

from jaxsparse.patterns import base


@base.pattern_dataclass
class Dilated(base.Pattern):
    """Dilated sliding window: `q - left <= k <= q + right` and `(q - k) % dilation == 0`.

    Longformer's dilated window: `left` and `right` are spans in positions and
    every `dilation`-th key inside them is kept. Heads with different
    dilations are built with `PerHead`.

    ```
    Dilated(left=4, dilation=2)
    ■ · · · · ·
    · ■ · · · ·
    ■ · ■ · · ·
    · ■ · ■ · ·
    ■ · ■ · ■ ·
    · ■ · ■ · ■
    ```
    """

    left: int
    dilation: int = 2
    right: int = 0

    def __post_init__(self):
        base.check_size("left", self.left, minimum=0, owner="Dilated")
        base.check_size("right", self.right, minimum=0, owner="Dilated")
        base.check_size("dilation", self.dilation, minimum=1, owner="Dilated")

    def mask_fn(self, q_pos, kv_pos, head):
        window = (q_pos - self.left <= kv_pos) & (kv_pos <= q_pos + self.right)
        return window & ((q_pos - kv_pos) % self.dilation == 0)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        d = self.dilation
        full = (k_lo >= q_hi - self.left) & (k_hi <= q_lo + self.right)
        empty = (k_hi < q_lo - self.left) | (k_lo > q_hi + self.right)
        if d == 1:
            return base.codes_from(full, empty)
        # Inside the band, a tile at least `d` keys wide has a match in every
        # row and (being wider than one key) a miss too: partial. Other tiles
        # are decided element by element.
        out = base.codes_from(False, empty, full, q_lo, k_lo)
        sure_partial = full & (k_hi - k_lo + 1 >= d)
        out = out.copy()
        out[(out == base.PARTIAL) & ~sure_partial] = base.UNSURE
        return out

    def kv_range(self, q_lo, q_hi, head):
        return q_lo - self.left, q_hi + self.right

    @classmethod
    def examples(cls):
        return [Dilated(left=8, dilation=2), Dilated(left=9, dilation=3, right=3)]

    def __repr__(self):
        r = f", right={self.right}" if self.right else ""
        return f"Dilated(left={self.left}, dilation={self.dilation}{r})"
