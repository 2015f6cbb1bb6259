"""Attention methods built from several calls: NSA, PSA's pyramid, SeerAttention, vertical-slash
with gathered columns, branch merges (P5)."""

from jaxsparse.methods import merge, nsa_attention, nsa_compress, nsa_selection, seer
from jaxsparse.methods.nsa_attention import NSABranches, NSAConfig, nsa
from jaxsparse.methods.pyramid import pyramid_attention, pyramid_kv
from jaxsparse.methods.vertical_slash import vertical_slash_attention

__all__ = [
    "NSABranches",
    "NSAConfig",
    "merge",
    "nsa",
    "nsa_attention",
    "nsa_compress",
    "nsa_selection",
    "pyramid_attention",
    "pyramid_kv",
    "seer",
    "vertical_slash_attention",
]
