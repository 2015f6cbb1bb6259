"""`PowerOfTwo`: PowerAttention's exponentially spaced key blocks."""

from __future__ import annotations

import numpy as np

from jaxsparse.patterns import base


@base.pattern_dataclass
class PowerOfTwo(base.Pattern):
    """PowerAttention (arXiv 2503.03588): causal, key blocks at power-of-two distances.

    With `d = q // block_size - k // block_size >= 0`, a key block is kept if
    `d` is 0 or a power of two, or `d < window_blocks`, or it is one of the
    first `sink_blocks`; token-level causal inside. Every distance is reachable
    in `popcount(d)` layers with O(log T) blocks per query block.

    The defaults keep only the powers and one sink block (`window_blocks=1`
    adds nothing: distance 0 is kept anyway). An example configuration at 32k
    (from a secondary summary of the paper) keeps 5 window blocks and 1 sink
    block of 256 tokens: `PowerOfTwo(block_size=256, window_blocks=5)`.

    ```
    PowerOfTwo(block_size=1, window_blocks=1, sink_blocks=0)
    ■ · · · · · · · ·
    ■ ■ · · · · · · ·
    ■ ■ ■ · · · · · ·
    · ■ ■ ■ · · · · ·
    ■ · ■ ■ ■ · · · ·
    · ■ · ■ ■ ■ · · ·
    · · ■ · ■ ■ ■ · ·
    · · · ■ · ■ ■ ■ ·
    ■ · · · ■ · ■ ■ ■
    ```
    """

    block_size: int = 64
    window_blocks: int = 1
    sink_blocks: int = 1

    def __post_init__(self):
        base.check_size("block_size", self.block_size, minimum=1, owner="PowerOfTwo")
        base.check_size("window_blocks", self.window_blocks, minimum=0, owner="PowerOfTwo")
        base.check_size("sink_blocks", self.sink_blocks, minimum=0, owner="PowerOfTwo")
        for name in ("block_size", "window_blocks", "sink_blocks"):  # numpy ints, unsigned too
            object.__setattr__(self, name, int(getattr(self, name)))

    def _keep_blocks(self, qb, kb):
        d = qb - kb
        power = (d >= 0) & ((d & (d - 1)) == 0)
        return power | ((d >= 0) & (d < self.window_blocks)) | (kb < self.sink_blocks)

    def mask_fn(self, q_pos, kv_pos, head):
        bs = self.block_size
        return (kv_pos <= q_pos) & self._keep_blocks(q_pos // bs, kv_pos // bs)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        bs = self.block_size
        causal = base.codes_from(k_hi <= q_lo, k_lo > q_hi)
        qb_lo, qb_hi, kb_lo, kb_hi = q_lo // bs, q_hi // bs, k_lo // bs, k_hi // bs
        single = (qb_lo == qb_hi) & (kb_lo == kb_hi)
        keep = self._keep_blocks(qb_lo, kb_lo)
        out = np.where(single & ~keep, np.int8(base.EMPTY), causal)
        return np.where(~single & (out != base.EMPTY), np.int8(base.UNSURE), out).astype(np.int8)

    def kv_range(self, q_lo, q_hi, head):
        return np.zeros_like(q_lo), q_hi

    @classmethod
    def examples(cls):
        return [
            PowerOfTwo(block_size=4, window_blocks=1, sink_blocks=1),
            PowerOfTwo(block_size=3, window_blocks=4, sink_blocks=0),
        ]

    def __repr__(self):
        return (
            f"PowerOfTwo(block_size={self.block_size}, window_blocks={self.window_blocks}, "
            f"sink_blocks={self.sink_blocks})"
        )
