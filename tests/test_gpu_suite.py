"""The shared oracle suite through the public API on an H100 (`-m gpu`).

Real sizes, bfloat16/float16, default dispatch (so the Mosaic GPU kernels run),
forward and every gradient against the dense f32 oracle (whose T x S logits must
fit in GPU memory: 16k tokens and one head at most).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsparse import patterns as P
from tests import oracle

pytestmark = pytest.mark.gpu

bf16, f16 = jnp.bfloat16, jnp.float16
rng = np.random.default_rng(0)


def C(pattern, **kw):  # noqa: N802
    base = dict(b=1, t=2048, h=4, k=2, d=128, dtype=bf16, block=None)
    return oracle.Case(pattern, **{**base, **kw})


CASES = [
    C(P.Causal(), t=16384, h=1, k=1),  # 32k is checked against cuDNN in test_pallas_gpu_device
    C(P.Neighborhood((64, 64), (13, 13)), t=4096, h=2, k=1),
    C(
        P.Neighborhood((8, 32, 32), (3, 7, 7), dilation=(1, 2, 1), causal=(True, False, False)),
        t=8192,
        h=2,
        k=1,
        d=64,
    ),
    C(P.Full(), t=4096),
    C(P.Causal() & P.SlidingWindow(left=1023), t=8192),
    C(P.Causal() & (P.Sink(64) | P.SlidingWindow(left=511)), t=4096, d=64),
    C(P.Causal(), segments=True, t=4096),
    C(P.Causal(), soft_cap=30.0, dtype=f16),
    C(P.Causal(), h=8, k=1, t=3000),  # MQA, ragged length
    C(P.ChunkedCausal(1000), t=4000, s=4000, d=64),
    C(P.Causal(), t=1000, s=5000),  # cross attention, bottom-right
    C(P.PerHead([P.Causal(), P.SlidingWindow(left=300), P.Full(), P.PrefixLM(700)]), t=2048),
    C(P.BlockMask(rng.random((32, 32)) < 0.1, block_q=128, block_kv=128), t=4096),
    # On the kernels since session 26 (the BlockMask drops out inside its tiles): not run yet.
    C(P.BlockMask(rng.random((32, 32)) < 0.3, block_q=128, block_kv=128) & P.Causal(), t=4096),
    C(P.Causal(), d=256, t=2048),  # forward kernel, XLA-path backward
    C(P.Causal(), d=64, dv=128),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_oracle(case):
    assert jax.default_backend() == "gpu"
    oracle.assert_matches_oracle(case, None)
