"""`AShape`: MInference's A-shape (StreamingLLM) prefill pattern, a static pattern."""

from __future__ import annotations

from jaxsparse.patterns import base
from jaxsparse.patterns.causal import Causal
from jaxsparse.patterns.sink import Sink
from jaxsparse.patterns.sliding_window import SlidingWindow


@base.pattern_dataclass
class AShape(base.Pattern):
    """A-shape: `k <= q and (k < n_init or q - k < n_local)` (MInference `stream_llm`).

    The first `n_init` keys (attention sinks) plus a causal band of `n_local`
    keys, the last one being the query itself. Same mask as
    `Causal() & (Sink(n_init) | SlidingWindow(left=n_local - 1))`; MInference's
    defaults are `n_init=128, n_local=3968` (a 4096-key budget per query).
    Sequences shorter than `n_init + n_local` are dense causal.

    ```
    AShape(n_init=1, n_local=2)
    ■ · · · · ·
    ■ ■ · · · ·
    ■ ■ ■ · · ·
    ■ · ■ ■ · ·
    ■ · · ■ ■ ·
    ■ · · · ■ ■
    ```
    """

    n_init: int = 128
    n_local: int = 3968

    def __post_init__(self):
        base.check_size(
            "n_init",
            self.n_init,
            minimum=0,
            owner="AShape",
            fix="It counts the initial (sink) keys every query sees.",
        )
        base.check_size(
            "n_local",
            self.n_local,
            minimum=1,
            owner="AShape",
            fix="It counts the most recent keys, the query's own included.",
        )

    @property
    def _pattern(self) -> base.Pattern:
        return Causal() & (Sink(self.n_init) | SlidingWindow(left=self.n_local - 1))

    def mask_fn(self, q_pos, kv_pos, head):
        return (kv_pos <= q_pos) & ((kv_pos < self.n_init) | (q_pos - kv_pos < self.n_local))

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        return self._pattern.classify(q_lo, q_hi, k_lo, k_hi, head)

    def kv_range(self, q_lo, q_hi, head):
        return self._pattern.kv_range(q_lo, q_hi, head)

    @classmethod
    def examples(cls):
        return [AShape(n_init=2, n_local=4), AShape(n_init=0, n_local=3), AShape()]

    def __repr__(self):
        return f"AShape(n_init={self.n_init}, n_local={self.n_local})"
