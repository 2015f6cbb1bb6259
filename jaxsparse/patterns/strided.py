"""`Strided`: S2-Attention's per-head vertical stripes plus a local band."""

from __future__ import annotations

import dataclasses

from jaxsparse.patterns import base


@base.pattern_dataclass
class Strided(base.Pattern):
    """Heterogeneous context sharding across heads (S2-Attention).

    Keys are grouped in blocks of `block_size`. Head `h` keeps every key block
    `kb` with `(kb + h * head_step + phase) % stride == 0` (vertical stripes),
    plus the `local_blocks` key blocks nearest each query block
    (`|q // block_size - kb| < local_blocks`). `head_step=None` (the default)
    is dkernel's `max(1, stride // num_heads)`, taken from the call's heads
    when the pattern is bound: the heads' stripes then spread over the stride,
    and together they cover every key block when `num_heads >= stride`.
    Compose with `Causal()` for decoder models: `Causal() & Strided(stride=4)`.

    Defaults follow dkernel's `get_sparse_attn_mask` (`block_size=64`,
    `local_blocks=4`). Without `Causal()` the stripes stay at absolute key
    blocks (dkernel's bidirectional variant counts them from the local band
    instead), and the stripes follow query heads: for GQA sharing, give the
    heads of one group the same offset with `PerHead`.

    ```
    Causal() & Strided(stride=3, block_size=1, local_blocks=1), head 0
    ■ · · · · · ·
    ■ ■ · · · · ·
    ■ · ■ · · · ·
    ■ · · ■ · · ·
    ■ · · ■ ■ · ·
    ■ · · ■ · ■ ·
    ■ · · ■ · · ■
    ```
    """

    stride: int
    block_size: int = 64
    local_blocks: int = 4
    head_step: int | None = None
    phase: int = 0

    def __post_init__(self):
        base.check_size("stride", self.stride, minimum=1, owner="Strided")
        base.check_size("block_size", self.block_size, minimum=1, owner="Strided")
        base.check_size("local_blocks", self.local_blocks, minimum=0, owner="Strided")
        if self.head_step is not None:
            base.check_size("head_step", self.head_step, minimum=0, owner="Strided")
        base.check_size("phase", self.phase, minimum=0, owner="Strided")

    @property
    def head_dependent(self) -> bool:  # type: ignore[override]
        if self.head_step is None:  # resolved by bind; unbound, assume heads differ
            return self.stride > 1
        return self.head_step % self.stride != 0

    def bind(self, *, q_len, kv_len, q_offset, num_heads):
        if self.head_step is None:
            step = max(1, self.stride // max(num_heads, 1))
            return dataclasses.replace(self, head_step=step).bind(
                q_len=q_len, kv_len=kv_len, q_offset=q_offset, num_heads=num_heads
            )
        # The masks add `kb + h * (head_step % stride) + phase % stride` in int32.
        kb = -(-max(q_len, kv_len, 1) // self.block_size)
        top = kb + (num_heads - 1) * (self.head_step % self.stride) + self.phase % self.stride
        if top > base.MAX_SIZE:
            raise ValueError(
                f"Strided: stride={self.stride} with head_step={self.head_step} over "
                f"{num_heads} heads gives key-block offsets beyond the int32 range masks "
                f"compute in ({top} >= 2**30); only head_step % stride matters, so use a "
                "smaller stride (at most the number of key blocks is enough)."
            )
        return self

    def _offset(self, head):
        """Head h's stripe offset `h * head_step + phase`, reduced modulo the stride."""
        if self.head_step is None:
            raise ValueError(
                f"{self!r} takes its head_step from the number of heads: bind it first "
                "(jaxsparse.attention, dense_mask and the sparsity builders do), or pass "
                "head_step explicitly."
            )
        return head * (self.head_step % self.stride) + self.phase % self.stride

    def mask_fn(self, q_pos, kv_pos, head):
        bs, n = self.block_size, self.local_blocks
        kb, qb = kv_pos // bs, q_pos // bs
        vertical = (kb + self._offset(head)) % self.stride == 0
        local = (qb - kb < n) & (kb - qb < n)
        return vertical | local

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        bs, s, n = self.block_size, self.stride, self.local_blocks
        kb_lo, kb_hi = k_lo // bs, k_hi // bs
        qb_lo, qb_hi = q_lo // bs, q_hi // bs
        c = self._offset(head) % s
        first = kb_lo + (-(kb_lo + c)) % s  # first kept key block >= kb_lo
        # FULL: every key block of the tile kept (one kept block, or stride 1: all of them).
        every = ((kb_lo == kb_hi) | (s == 1)) & ((kb_lo + c) % s == 0)
        vertical = base.codes_from(every, first > kb_hi, q_lo, head)
        if n == 0:
            return vertical
        r = n - 1
        local = base.codes_from(
            (kb_lo >= qb_hi - r) & (kb_hi <= qb_lo + r),
            (kb_hi < qb_lo - r) | (kb_lo > qb_hi + r),
            head,
        )
        return base._OR[vertical, local]

    @classmethod
    def examples(cls):
        return [
            Strided(stride=3, block_size=4, local_blocks=1),
            Strided(stride=4, block_size=8, local_blocks=2, head_step=1, phase=1),
            Strided(stride=2, block_size=5, local_blocks=0, head_step=0),
        ]

    def __repr__(self):
        return (
            f"Strided(stride={self.stride}, block_size={self.block_size}, "
            f"local_blocks={self.local_blocks}, head_step={self.head_step}, phase={self.phase})"
        )
