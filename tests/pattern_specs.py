"""Independent, plain-Python statements of each pattern's rule (from DESIGN.md).

The tests compare every pattern's `mask_fn` against these, element by element.
"""

from __future__ import annotations

from jaxsparse import patterns as P


def allowed(p, q: int, k: int, h: int, num_heads: int = 1) -> bool:
    """Whether query position q may attend key position k in head h (of num_heads) under p."""
    match p:
        case P.Full():
            return True
        case P.Causal():
            return k <= q
        case P.SlidingWindow(left=left, right=right):
            return q - left <= k <= q + right
        case P.ChunkedCausal(chunk_size=c):
            return k <= q and k // c == q // c
        case P.PrefixLM(prefix_length=n):
            return k < n or k <= q
        case P.Sink(num_tokens=n):
            return k < n
        case P.Strided(stride=s, block_size=bs, local_blocks=n, head_step=step, phase=ph):
            step = max(1, s // num_heads) if step is None else step  # dkernel's default
            return (k // bs + h * step + ph) % s == 0 or abs(q // bs - k // bs) < n
        case P.Dilated(left=left, dilation=d, right=right):
            return q - left <= k <= q + right and (q - k) % d == 0
        case P.PowerOfTwo(block_size=bs, window_blocks=w, sink_blocks=n):
            d = q // bs - k // bs
            kept = d >= 0 and (d == 0 or (d & (d - 1)) == 0 or d < w) or k // bs < n
            return k <= q and kept
        case P.PerHead(patterns=pats):
            return allowed(pats[h], q, k, h, num_heads)
        case P.And(a=a, b=b):
            return allowed(a, q, k, h, num_heads) and allowed(b, q, k, h, num_heads)
        case P.Or(a=a, b=b):
            return allowed(a, q, k, h, num_heads) or allowed(b, q, k, h, num_heads)
    raise NotImplementedError(type(p).__name__)
