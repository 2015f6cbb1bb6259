"""Hypothesis strategies for patterns and problem geometry."""

from __future__ import annotations

from hypothesis import strategies as st

from jaxsparse import patterns as P

small = st.integers(min_value=1, max_value=9)

primitive = st.one_of(
    st.just(P.Full()),
    st.just(P.Causal()),
    st.builds(P.SlidingWindow, left=st.integers(0, 12), right=st.integers(0, 6)),
    st.builds(P.ChunkedCausal, chunk_size=st.integers(1, 11)),
    st.builds(P.PrefixLM, prefix_length=st.integers(0, 15)),
    st.builds(P.Sink, num_tokens=st.integers(0, 6)),
    st.builds(
        P.Strided,
        stride=st.integers(1, 4),
        block_size=st.integers(1, 6),
        local_blocks=st.integers(0, 2),
        head_step=st.one_of(st.none(), st.integers(0, 2)),  # None: max(1, stride // heads)
        phase=st.integers(0, 3),
    ),
    st.builds(
        P.Dilated, left=st.integers(0, 12), dilation=st.integers(1, 4), right=st.integers(0, 4)
    ),
    st.builds(
        P.PowerOfTwo,
        block_size=st.integers(1, 6),
        window_blocks=st.integers(0, 6),  # from 4 the window keeps distances (3) a power does not
        sink_blocks=st.integers(0, 2),
    ),
)

patterns = st.recursive(
    primitive,
    lambda children: st.one_of(
        st.builds(lambda a, b: a & b, children, children),
        st.builds(lambda a, b: a | b, children, children),
    ),
    max_leaves=3,
)


@st.composite
def geometry(draw):
    """(q_len, kv_len, q_offset, block_q, block_kv, num_heads)."""
    t = draw(st.integers(1, 40))
    s = draw(st.integers(1, 40))
    q_offset = draw(st.one_of(st.none(), st.integers(-8, 40)))
    bq = draw(st.integers(1, 12))
    bk = draw(st.integers(1, 12))
    h = draw(st.integers(1, 3))
    return t, s, q_offset, bq, bk, h
