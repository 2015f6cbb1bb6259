"""Attention methods built from several calls: NSA, PSA's pyramid, branch merges (P5)."""

from jaxsparse.methods import merge, nsa_compress, nsa_selection
from jaxsparse.methods.nsa import NSABranches, NSAConfig, nsa
from jaxsparse.methods.pyramid import pyramid_attention, pyramid_kv

__all__ = [
    "NSABranches",
    "NSAConfig",
    "merge",
    "nsa",
    "nsa_compress",
    "nsa_selection",
    "pyramid_attention",
    "pyramid_kv",
]
