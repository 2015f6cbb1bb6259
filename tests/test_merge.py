"""`methods.merge`: merged attention over disjoint key sets equals attention over the union."""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np

from jaxsparse.methods import merge
from tests import dynamic_refs as R


@hypothesis.settings(max_examples=20, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**16), n_sets=st.integers(1, 4), empty=st.booleans())
def test_lse_merge_of_disjoint_sets_is_attention_over_their_union(seed, n_sets, empty):
    rng = np.random.default_rng(seed)
    b, t, h, kh, d = 2, 9, 4, 2, 8
    q, k, v, _ = R.random_qkv(b, t, h, kh, d, seed=seed % 97)
    owner = rng.integers(0, n_sets, size=(b, h, t, t))  # key set of each (row, key)
    kept = rng.random((b, h, t, t)) < 0.8  # some keys in no set; some rows empty
    if empty:
        kept[:, :, 0] = False  # a row empty in every set: 0 and -inf
    parts = [R.dense_ref(q, k, v, jnp.asarray(kept & (owner == i))) for i in range(n_sets)]
    got_out, got_lse = merge.lse_merge([p[0] for p in parts], [p[1] for p in parts])
    want_out, want_lse = R.dense_ref(q, k, v, jnp.asarray(kept))
    np.testing.assert_allclose(got_out, want_out, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(np.isinf(got_lse), np.isinf(want_lse))
    finite = np.isfinite(want_lse)
    np.testing.assert_allclose(np.asarray(got_lse)[finite], np.asarray(want_lse)[finite], rtol=1e-5)

    # The same sets laid along an axis, in two groups (as the routed path merges its slots).
    outs = jnp.stack([p[0] for p in parts], axis=3)  # [B, T, H, n, Dv]
    lses = jnp.stack([jnp.moveaxis(p[1], 1, 2) for p in parts], axis=3)  # [B, T, H, n]
    cut = n_sets // 2
    out2, lse2 = merge.lse_merge_sets(
        [outs[:, :, :, :cut], outs[:, :, :, cut:]], [lses[:, :, :, :cut], lses[:, :, :, cut:]], 3
    )
    np.testing.assert_allclose(out2, got_out, atol=1e-6, rtol=1e-6)
    np.testing.assert_array_equal(jnp.moveaxis(lse2, 1, 2), got_lse)
