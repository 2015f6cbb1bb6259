"""Named patterns for the command line, scaled to the sequence length."""

from __future__ import annotations

from jaxsparse import patterns as P


def presets(seq: int) -> dict[str, P.Pattern]:
    """Patterns `jaxsparse bench` runs by default (windows scale with `seq`)."""
    w = max(1, seq // 8)
    return {
        "full": P.Full(),
        "causal": P.Causal(),
        "sliding_window": P.Causal() & P.SlidingWindow(left=w),
        "a_shape": P.Causal() & (P.Sink(64) | P.SlidingWindow(left=w)),
        "chunked_causal": P.ChunkedCausal(max(1, seq // 4)),
        "strided": P.Causal() & P.Strided(stride=4, block_size=64, local_blocks=2, head_step=1),
        "power_of_two": P.PowerOfTwo(block_size=128, window_blocks=1, sink_blocks=1),
    }


def resolve(text: str, seq: int) -> tuple[str, P.Pattern]:
    """A preset name or a pattern expression (see `jaxsparse.patterns.parse`)."""
    table = presets(seq)
    key = text.strip().lower().replace("-", "_")
    if key in table:
        return key, table[key]
    pattern = P.parse(text)
    if pattern.is_dynamic:
        raise ValueError(
            f"{text!r} is content-aware (it selects tiles from q and k): the command line "
            "builds and draws static patterns only; time it with bench/llm_sparse_gpu.py, "
            "or call jaxsparse.attention(q, k, v, pattern=...) yourself"
        )
    return text, pattern
