"""Attention methods built from several calls: NSA, PSA's pyramid, branch merges (P5)."""

from jaxsparse.methods import merge, nsa_attention, nsa_compress, nsa_selection, seer
from jaxsparse.methods.nsa_attention import NSABranches, NSAConfig, nsa
from jaxsparse.methods.pyramid import pyramid_attention, pyramid_kv

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
]
