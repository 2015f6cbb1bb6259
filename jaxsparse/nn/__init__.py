"""Flax NNX attention modules built on `jaxsparse.attention`.

Every module takes keyword-only `rngs`, explicit `dtype` / `param_dtype`, and
calls only the public `jaxsparse.attention` / `jaxsparse.patterns` API.
"""

from jaxsparse.nn.attention import SparseAttention
from jaxsparse.nn.attn_gate import AttnGate
from jaxsparse.nn.biformer import BiLevelRoutingAttention
from jaxsparse.nn.hilo import HiLoAttention
from jaxsparse.nn.neighborhood import NeighborhoodAttention
from jaxsparse.nn.nsa import NativeSparseAttention
from jaxsparse.nn.rope import RoPE, apply_rope

__all__ = [
    "AttnGate",
    "BiLevelRoutingAttention",
    "HiLoAttention",
    "NativeSparseAttention",
    "NeighborhoodAttention",
    "RoPE",
    "SparseAttention",
    "apply_rope",
]
