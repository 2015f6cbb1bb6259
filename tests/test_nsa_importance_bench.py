"""bench/nsa_importance_gpu.py on CPU (kernels in GPU interpret mode): both kernels agree
with the attention calls."""

import json

import pytest

from tests.bench_util import load_bench_script


@pytest.mark.slow  # about 30 s: two kernels in interpret mode
def test_both_kernels_match_the_attention_calls_at_a_tiny_size(capsys):
    load_bench_script("nsa_importance_gpu").main(["--tiny"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["variant"] for r in rows] == [
        "attention calls",
        "kernel, 1 warpgroup(s)",
        "kernel, 2 warpgroup(s)",
    ]
    assert all(r["max_error_rel"] < 1e-2 for r in rows[1:]), rows
