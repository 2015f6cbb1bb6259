"""`PerHead`: a different pattern for each query head (MoA, heterogeneous heads)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxsparse.patterns import base


@base.pattern_dataclass
class PerHead(base.Pattern):
    """Pattern `patterns[h]` for query head `h` (MoA-style elastic spans).

    ```
    PerHead([Causal() & SlidingWindow(1), Causal()])
    head 0       head 1
    ■ · · ·      ■ · · ·
    ■ ■ · ·      ■ ■ · ·
    · ■ ■ ·      ■ ■ ■ ·
    · · ■ ■      ■ ■ ■ ■
    ```
    """

    patterns: tuple = base.data_field()
    head_dependent = True

    def __post_init__(self):
        pats = self.patterns
        if isinstance(pats, base.Pattern) or not isinstance(pats, Sequence) or not pats:
            raise TypeError(
                f"PerHead takes a non-empty list of patterns, one per query head; got {pats!r}."
            )
        for p in pats:
            if not isinstance(p, base.Pattern):
                raise TypeError(f"PerHead: {p!r} is not a jaxsparse pattern.")
        object.__setattr__(self, "patterns", tuple(pats))

    def mask_fn(self, q_pos, kv_pos, head):
        out = None
        for i, p in enumerate(self.patterns):
            term = (head == i) & p.mask_fn(q_pos, kv_pos, head)
            out = term if out is None else out | term
        return out

    def _select(self, head, values):
        head = np.asarray(head)
        return np.select([head == i for i in range(len(values))], values)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        codes = [p.classify(q_lo, q_hi, k_lo, k_hi, head) for p in self.patterns]
        return self._select(head, codes).astype(np.int8)

    def kv_range(self, q_lo, q_hi, head):
        ranges = [p.kv_range(q_lo, q_hi, head) for p in self.patterns]
        return self._select(head, [r[0] for r in ranges]), self._select(
            head, [r[1] for r in ranges]
        )

    def bind(self, *, q_len, kv_len, q_offset, num_heads):
        if num_heads != len(self.patterns):
            raise ValueError(
                f"PerHead has {len(self.patterns)} patterns but the call has {num_heads} query "
                "heads; give exactly one pattern per query head."
            )
        kw = dict(q_len=q_len, kv_len=kv_len, q_offset=q_offset, num_heads=num_heads)
        return PerHead(tuple(p.bind(**kw) for p in self.patterns))

    def needs_tile_mask(self, block_q, block_kv):
        return any(p.needs_tile_mask(block_q, block_kv) for p in self.patterns)

    @classmethod
    def examples(cls):
        from jaxsparse.patterns.causal import Causal
        from jaxsparse.patterns.sliding_window import SlidingWindow

        return [PerHead((Causal() & SlidingWindow(left=2), Causal()))]

    def __repr__(self):
        return f"PerHead({list(self.patterns)!r})"
