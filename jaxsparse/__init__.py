"""jaxsparse: sparse and efficient attention for JAX.

    import jaxsparse as js
    from jaxsparse import patterns as P

    out = js.attention(q, k, v, pattern=P.Causal() & P.SlidingWindow(left=1024))

See `jaxsparse.attention`, `jaxsparse.patterns`, `jaxsparse.sparsity`.
Flax NNX modules live in `jaxsparse.nn` (imported on demand).
"""

from jaxsparse import patterns, reference, sparsity
from jaxsparse.methods import NSAConfig, nsa, pyramid_attention, vertical_slash_attention
from jaxsparse.ops.api import attention
from jaxsparse.ops.config import Config
from jaxsparse.sparsity.block_sparsity import BlockSparsity

__version__ = "0.1.0"

__all__ = [
    "BlockSparsity",
    "Config",
    "NSAConfig",
    "attention",
    "nsa",
    "patterns",
    "pyramid_attention",
    "reference",
    "sparsity",
    "vertical_slash_attention",
]
