"""Patterns: *what* may attend, one `mask_fn` per pattern.

Static patterns: `Full`, `Causal`, `SlidingWindow`, `ChunkedCausal`, `PrefixLM`,
`Sink`, `Strided` (S2-Attention), `Dilated`, `PowerOfTwo` (PowerAttention),
`BlockMask`, `Mask`, `PerHead` (MoA). Token grids (images, video):
`Neighborhood` (NATTEN's neighborhood attention), `Window` (Swin windows,
shifted or not). Compose with `&` and `|`:

    A-shape / StreamingLLM:  Causal() & (Sink(4) | SlidingWindow(left=1024))

`dense_mask(pattern, ...)` materialises the element mask (tests, oracle, plots);
`parse("Causal() & SlidingWindow(128)")` builds a pattern from text (CLI).
"""

from jaxsparse.patterns.a_shape import AShape
from jaxsparse.patterns.base import (
    EMPTY,
    FULL,
    PARTIAL,
    REGISTRY,
    UNSURE,
    And,
    Or,
    Pattern,
    TracedPatternError,
)
from jaxsparse.patterns.causal import Causal
from jaxsparse.patterns.chunked_causal import ChunkedCausal
from jaxsparse.patterns.compressed_causal import CompressedCausal
from jaxsparse.patterns.dilated import Dilated
from jaxsparse.patterns.dynamic import (
    BlockTopK,
    FlexPrefill,
    MoBA,
    Pyramid,
    TokenBlockMask,
    VerticalSlash,
    VerticalSlashMask,
)
from jaxsparse.patterns.explicit import BlockMask, Mask
from jaxsparse.patterns.full import Full
from jaxsparse.patterns.materialize import dense_mask
from jaxsparse.patterns.neighborhood import Neighborhood
from jaxsparse.patterns.parse import parse
from jaxsparse.patterns.per_head import PerHead
from jaxsparse.patterns.power_of_two import PowerOfTwo
from jaxsparse.patterns.prefix_lm import PrefixLM
from jaxsparse.patterns.sink import Sink
from jaxsparse.patterns.sliding_window import SlidingWindow
from jaxsparse.patterns.strided import Strided
from jaxsparse.patterns.window import Window

__all__ = [
    "EMPTY",
    "FULL",
    "PARTIAL",
    "UNSURE",
    "REGISTRY",
    "And",
    "BlockMask",
    "Causal",
    "ChunkedCausal",
    "Dilated",
    "Full",
    "Mask",
    "Or",
    "Pattern",
    "PerHead",
    "PowerOfTwo",
    "PrefixLM",
    "Sink",
    "SlidingWindow",
    "Strided",
    "TracedPatternError",
    "dense_mask",
    "parse",
    "Neighborhood",
    "Window",  # token grids (images, video)
    "AShape",
    "BlockTopK",
    "CompressedCausal",
    "FlexPrefill",
    "MoBA",
    "Pyramid",
    "TokenBlockMask",
    "VerticalSlash",
    "VerticalSlashMask",  # content-aware LLM patterns
]
