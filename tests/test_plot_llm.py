"""`bench/plot_llm.py`: which rows it draws, and that it writes a picture."""

import pytest

from tests import bench_util


@pytest.fixture(scope="module")
def plot_llm():
    return bench_util.load_bench_script("plot_llm")


_write = bench_util.write_llm_rows


def _method(name, speedup, overhead, fallbacks=(), seq_len=64):
    return dict(kind="method", method=name, seq_len=seq_len, speedup_fwd_vs_ours=speedup,
                overhead=overhead, fallbacks=list(fallbacks))  # fmt: skip


def test_later_runs_replace_earlier_rows_and_fallbacks_are_left_out(plot_llm, tmp_path):
    _write(tmp_path / "x_session1" / "call1_a" / "r", [
        _method("MoBA(512,3)", 5.0, 0.2), _method("PSA", 0.5, 0.1), _method("A", 2.0, 0.0),
    ])  # fmt: skip
    _write(tmp_path / "x_session2" / "call1_b" / "r", [
        _method("MoBA(512,3)", 6.0, 0.1),
        _method("PSA", 0.01, 0.0, fallbacks=["xla"]),  # fell back: the earlier row stays
        _method("A", 9.0, 0.0, seq_len=128),  # another length
        dict(kind="nsa_train", method="NSA", seq_len=64, speedup_fwd_bwd_vs_ours=2.5,
             speedup_fwd_bwd_vs_cudnn=2.25, fallbacks=[]),  # fmt: skip
    ])  # fmt: skip
    _write(tmp_path / "x_session2" / "call2_blocking" / "r", [
        dict(kind="meta", min_iters=1),  # timed blocking on purpose: left out
        dict(kind="nsa_train", method="NSA", seq_len=64, speedup_fwd_bwd_vs_ours=2.0,
             fallbacks=[]),  # fmt: skip
    ])  # fmt: skip
    _write(tmp_path / "x_session3" / "call1_c" / "r", [
        dict(_method("B", 3.0, 0.3), overhead_fwd=0.2),  # the forward selection is drawn
    ])  # fmt: skip
    rows = plot_llm.latest_rows([tmp_path], 64)
    assert rows.pop("B") == dict(speedup=3.0, overhead=0.2, run="s3 call1")
    assert rows["MoBA(512,3)"] == dict(speedup=6.0, overhead=0.1, run="s2 call1")
    assert rows["PSA"]["speedup"] == 0.5 and rows["PSA"]["run"] == "s1 call1"
    assert rows["A"]["speedup"] == 2.0
    assert rows["NSA train"] == dict(speedup=2.5, overhead=None, run="s2 call1", vs_cudnn=2.25)
    out = tmp_path / "p.png"
    assert plot_llm.main([str(out), str(tmp_path), "--seq", "64"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_rows_is_an_error(plot_llm, tmp_path):
    with pytest.raises(SystemExit, match="no kernel rows at seq_len=64"):
        plot_llm.main([str(tmp_path / "p.png"), str(tmp_path), "--seq", "64"])
