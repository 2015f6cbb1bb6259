"""bench/nsa_glue.py: the candidates it swaps into NSA change no result, and are traced."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse.methods import NSAConfig, nsa_compress
from jaxsparse.ops import gathered
from jaxsparse.selection import topk
from tests.bench_util import load_bench_script
from tests.test_routed import random_bits

GLUE = load_bench_script("nsa_glue")


def test_parse_names_the_parts_and_rejects_bad_glue():
    assert GLUE.parse("library") == ()
    assert GLUE.parse("value sorts+pair words") == ("value sorts", "pair words")
    with pytest.raises(ValueError, match="unknown part.*'value sort'"):
        GLUE.parse("value sort")
    with pytest.raises(ValueError, match="at most one"):
        GLUE.parse("value sorts+mask scatter")
    with pytest.raises(ValueError, match="at most one"):
        GLUE.parse("pair words+pair ranks")
    assert GLUE.parse("items 64+dkv partials") == ("items 64", "dkv partials")
    with pytest.raises(ValueError, match="unknown part.*'items 0'"):
        GLUE.parse("items 0")
    with pytest.raises(ValueError, match="at most one"):
        GLUE.parse("items 64+items 32")


def test_switches_set_and_restore_the_library_constants():
    from pallas_kernels.gpu import backward_dkv
    from pallas_kernels.gpu import backward_dkv_gathered as bdg

    def constants():
        return (
            (gathered.ITEM_TILES, gathered.DQ_ITEM_TILES), bdg.ADD_DKV, backward_dkv.HAND_OVER_DQ,
            backward_dkv.SPLIT_DQ_COLUMNS, backward_dkv.DQ_REGISTERS, bdg.REGISTERS,
        )  # fmt: skip

    before = constants()
    assert before == ((256, 32), True, True, True, None, (240, 24))
    with GLUE.patched("items 64+dkv partials+dq adds apart"):
        assert constants() == ((64, 64), False, False, False, None, (240, 24))
    with GLUE.patched("dq hand-over+dq regs 240"):
        assert constants() == ((256, 32), True, True, False, (240, 24), (240, 24))
    with GLUE.patched("gathered regs 232"):
        assert constants() == ((256, 32), True, True, True, None, (232, 40))
    assert before == constants()


def test_row_sorts_and_first_by_passes_restore_the_library_forms():
    from jaxsparse.ops import routed
    from jaxsparse.selection import sorting

    library = routed.first_selected
    assert sorting.FLATTEN_ROWS
    with GLUE.patched("row sorts+first by passes"):
        assert not sorting.FLATTEN_ROWS
        assert routed.first_selected is GLUE.gathered_tiles_gpu.by_passes
        bits = jnp.asarray(np.random.default_rng(0).random((2, 5, 70)) < 0.2)
        np.testing.assert_array_equal(routed.first_selected(bits, 9), library(bits, 9))
    assert sorting.FLATTEN_ROWS and routed.first_selected is library


def nsa_and_grads(q, k, v, gates):
    cfg = NSAConfig(kernel_size=8, stride=4, block_size=8, top_n=12, window=64)

    def loss(q, k, v, gates):
        k_cmp, v_cmp = (
            nsa_compress.mean_compress(x, kernel_size=cfg.kernel_size, stride=cfg.stride)
            for x in (k, v)
        )
        return (js.nsa(q, k, v, gates, k_cmp=k_cmp, v_cmp=v_cmp, config=cfg) ** 2).sum()

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(q, k, v, gates)


@pytest.mark.parametrize("part", list(GLUE.TOPK_PARTS))
def test_topk_parts_give_nsa_the_same_values_and_gradients(part):
    # 2,048 tokens of 8-token blocks: rows of 256 blocks, top 12, the library's two levels.
    t, h, kh, d = 2048, 2, 1, 16
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (1, t, h, d), jnp.float32)
    k, v = (jax.random.normal(x, (1, t, kh, d), jnp.float32) for x in keys[1:3])
    gates = jax.nn.sigmoid(jax.random.normal(keys[3], (1, t, h, 3)))
    want = nsa_and_grads(q, k, v, gates)
    library = topk.topk_mask
    with GLUE.patched(part) as traced:
        got = nsa_and_grads(q, k, v, gates)
    assert traced[part] > 0  # the candidate ran, not a cached trace
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    assert topk.topk_mask is library  # restored on exit


@pytest.mark.parametrize("part", list(GLUE.PAIR_PARTS))
@pytest.mark.parametrize("seed", [0, 1])
def test_pair_parts_give_the_library_gathered_tiles(part, seed):
    t, s, cap = 77, 150, 3
    bits = jnp.asarray(random_bits(np.random.default_rng(seed), 2, 2, t, s, 64, cap, s - t, True))
    g = gathered.Gathering(
        batch=2, group=8, col_block=64, q_len=t, kv_len=s, q_offset=s - t, causal=True,
        slots=cap + 1,
    )  # fmt: skip
    want = jax.jit(g.tiles)(bits)
    library = gathered.list_pairs
    with GLUE.patched(part) as traced:
        got = jax.jit(g.tiles)(bits)
    assert traced[part] == 1
    assert gathered.list_pairs is library  # restored on exit
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("script", ["llm_sparse_gpu", "profile_llm"])
def test_scripts_reject_unknown_glue_before_any_work(script, tmp_path, capsys):
    bench = load_bench_script(script)
    with pytest.raises(SystemExit):
        bench.main([str(tmp_path), "--tiny", "--nsa-glue", "value sort"])
    assert "unknown part(s) ['value sort']" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing was written
