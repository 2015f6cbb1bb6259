"""bench/kth_value_gpu.py on CPU: every variant's mask is exact on block-causal rows."""

import json

from tests.bench_util import load_bench_script


def test_every_variant_is_exact_at_a_tiny_size(capsys):
    load_bench_script("kth_value_gpu").main(["--tiny", "--cases", "blocktopk,seer", "--reps", "1"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["variant"] for r in rows} == set(load_bench_script("kth_value_gpu").VARIANTS)
    assert all(r["exact"] for r in rows), rows
