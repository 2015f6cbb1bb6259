"""bench/quality.py on CPU: its rows for the block-mask methods at a tiny size."""

import json

from tests.bench_util import load_bench_script


def test_tiny_quality_rows(tmp_path):
    out = tmp_path / "q.json"
    quality = load_bench_script("quality")
    quality.main(["--sizes", "1024", "--tasks", "needle", "--methods", "BlockTopK,Seer",
                  "--out", str(out)])  # fmt: skip
    rows = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"dense-causal", "MInference-BlockTopK", "Seer-oracle(th=0.002)"}
    # 1,024 tokens are 16 blocks of 64, fewer than BlockTopK's top-100: every visible block.
    assert rows["MInference-BlockTopK"]["mass_kept"] > 1 - 1e-6
    assert rows["MInference-BlockTopK"]["out_rel_err"] < 1e-5
    seer = rows["Seer-oracle(th=0.002)"]
    assert 0.5 < seer["mass_kept"] <= 1 + 1e-6 and 0 < seer["tile_density"] <= 1.1
