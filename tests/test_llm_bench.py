"""bench/llm_sparse_gpu.py on CPU: the forward selection it times, and the rows it writes."""

import json

import jax.numpy as jnp

import jaxsparse as js
from tests.bench_util import load_bench_script


def test_forward_state_drops_only_the_backward_lists():
    bench = load_bench_script("llm_sparse_gpu")
    sp = js.sparsity.from_pattern(
        js.patterns.Causal(), q_len=256, kv_len=256, block_q=64, block_kv=64, num_heads=1
    )
    pattern, fwd = bench.forward_state((js.patterns.Causal(), sp))
    assert isinstance(pattern, js.patterns.Causal)
    assert fwd.q_indices is None and fwd.q_counts is None and fwd.q_full is None
    for name in ("kv_indices", "kv_counts", "kv_full"):
        assert jnp.array_equal(getattr(fwd, name), getattr(sp, name))
    mask = jnp.ones((1, 1, 4, 4), bool)
    assert bench.forward_state(mask) is mask  # states without lists pass through


def test_tiny_run_writes_forward_selection_rows_and_judges_on_them(tmp_path):
    bench = load_bench_script("llm_sparse_gpu")
    bench.main([str(tmp_path), "--tiny", "--methods", "BlockTopK,Seer-gate"])
    rows = [json.loads(x) for x in (tmp_path / "llm_sparse_gpu.jsonl").read_text().splitlines()]
    assert rows[0]["kind"] == "meta" and rows[0]["timing"].startswith("back to back")
    methods = [r for r in rows if r["kind"] == "method"]
    assert {r["method"] for r in methods} == {"MInference-BlockTopK", "Seer-gate(nz=0.1)"}
    for r in methods:
        assert r["select_fwd_ms"] > 0 and r["select_ms"] > 0
        assert r["overhead_fwd"] == r["select_fwd_ms"] / r["attend_ms"]
    targets = [r for r in rows if r["kind"] == "target"]
    assert len(targets) == 2  # the overhead targets at the largest tiny length
    for t in targets:
        row = next(r for r in methods if t["target"].startswith(r["method"]) and
                   r["seq_len"] == t["seq_len"])  # fmt: skip
        assert t["value"] == row["overhead_fwd"] and t["with_backward_lists"] == row["overhead"]


def test_nsa_variant_names_survive_the_comma_separated_flag():
    # --nsa-variants is split on commas: a name holding one cannot be asked for.
    bench = load_bench_script("llm_sparse_gpu")
    assert all("," not in name for name in bench.NSA_TRAIN_VARIANTS)
