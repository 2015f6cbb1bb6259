"""bench/topk_gpu.py and bench/gathered_tiles_gpu.py: the candidates they time are exact.

Both scripts time sort-free candidates against the library's forms on the
GPU. Here, on CPU, each candidate must give the library's result element for
element, on the scripts' own tiny inputs and on random ones with ties,
infinities and odd lengths.
"""

import json

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

from jaxsparse.selection import topk
from tests.bench_util import load_bench_script
from tests.test_routed import random_bits

TOPK = load_bench_script("topk_gpu")
TILES = load_bench_script("gathered_tiles_gpu")


def test_topk_variants_and_masks_equal_lax_top_k(capsys):
    TOPK.main(["--tiny"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert any(r["variant"] == "mask: two levels of value sorts" for r in rows)
    assert all(r["exact"] for r in rows), rows


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16),
    n=st.sampled_from([256, 300, 1024, 1100]),
    k=st.integers(topk.ITERATIVE_MAX_K + 1, topk.ONEHOT_MAX_K),
    special=st.floats(0.0, 1.0),
)
def test_grouped_mask_equals_topk_mask(seed, n, k, special):
    # Ties to the lower index, -inf never, +inf first, rows with fewer finite than k.
    rng = np.random.default_rng(seed)
    vals = np.array([-np.inf, -1.0, 0.0, 0.5, np.inf], np.float32)
    s = np.where(
        rng.random((4, n)) < special, rng.choice(vals, (4, n)), rng.standard_normal((4, n))
    )
    s = jnp.asarray(s.astype(np.float32))
    want = topk.topk_mask(s, k)
    got = jax.jit(lambda s: TOPK.grouped_mask(s, k))(s)
    np.testing.assert_array_equal(got, want)
    assert "top_k" not in str(jax.make_jaxpr(lambda s: TOPK.grouped_mask(s, k))(s))


@hypothesis.settings(max_examples=20, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**16), n=st.integers(1, 40), k=st.integers(1, 12))
def test_scattered_mask_equals_the_one_hot(seed, n, k):
    rng = np.random.default_rng(seed)
    idx = jnp.asarray(rng.integers(-1, n, (3, 2, k)), jnp.int32)  # -1: no entry
    np.testing.assert_array_equal(TOPK.scattered_mask(idx, n), topk.indices_to_mask(idx, n))


def test_pair_listings_agree_on_nsa_bits(capsys):
    TILES.main(["--tiny", "--reps", "1"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows and all(r["agree"] and r["pairs_agree"] for r in rows), rows


@hypothesis.settings(max_examples=8, deadline=None)
@hypothesis.given(
    t=st.integers(1, 100),
    extra=st.integers(0, 70),
    cap=st.integers(0, 3),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_pair_listings_agree_on_random_bits(t, extra, cap, causal, seed):
    s = t + extra
    bits = random_bits(np.random.default_rng(seed), 2, 2, t, s, 64, cap, s - t, causal)
    flat = jnp.asarray(bits).reshape(4, t, -1)
    pairs = t * min(cap + causal, flat.shape[-1])
    if not pairs:
        return
    got = [[np.asarray(x) for x in fn(flat, pairs)] for fn in TILES.LISTINGS.values()]
    assert TILES.listings_agree(got)
