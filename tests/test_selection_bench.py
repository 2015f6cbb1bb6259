"""bench/topk_gpu.py and bench/gathered_tiles_gpu.py on CPU: every variant they time is exact."""

import json

from tests.bench_util import load_bench_script


def test_topk_variants_and_masks_equal_lax_top_k(capsys):
    load_bench_script("topk_gpu").main(["--tiny"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert any(r["variant"] == "mask: two levels of value sorts" for r in rows)
    assert all(r["exact"] for r in rows), rows


def test_pair_listings_agree_on_nsa_bits(capsys):
    load_bench_script("gathered_tiles_gpu").main(["--tiny", "--reps", "1"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows and all(r["agree"] and r["pairs_agree"] for r in rows), rows
