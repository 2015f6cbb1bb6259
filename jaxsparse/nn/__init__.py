"""Flax NNX attention modules built on `jaxsparse.attention`.

Every module takes keyword-only `rngs` and explicit `dtype` / `param_dtype`;
attention goes through `jaxsparse.attention` (NSA's and SeerAttention's modules
through the method functions of `jaxsparse.methods`, which call it).
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
