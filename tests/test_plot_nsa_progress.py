"""`bench/plot_nsa_progress.py`: which runs it draws, and that it writes a picture."""

import pytest

from tests import bench_util


@pytest.fixture(scope="module")
def progress():
    return bench_util.load_bench_script("plot_nsa_progress")


_write = bench_util.write_llm_rows


def _nsa(ms, method="NSA", **kw):
    return dict(kind="nsa_train", method=method, seq_len=64, fwd_bwd_ms=ms, fallbacks=[], **kw)


def _cudnn(ms):
    return dict(kind="dense", method="cudnn", seq_len=64, fwd_bwd_ms=ms, fallbacks=[])


def test_runs_on_the_device_with_the_library_row(progress, tmp_path):
    # No device_kind recorded: the folder's name says the card.
    _write(tmp_path / "d_h100_session1" / "call1_a" / "llm", [_nsa(100.0), _cudnn(110.0)])
    _write(tmp_path / "d_h200_session2" / "call1_b" / "llm", [_nsa(1.0), _cudnn(2.0)])
    kind = "NVIDIA H100 80GB HBM3"
    _write(tmp_path / "d_h100_session3" / "call1_c" / "llm", [
        dict(kind="meta", device_kind=kind),
        _nsa(20.0, glue="value sorts"),  # another glue: not the library's row
        _nsa(30.0, method="NSA (items by 1k tokens)"),  # a variant
        _nsa(31.0),
    ])  # fmt: skip
    _write(tmp_path / "d_h100_session3" / "call2_d" / "llm", [
        dict(kind="meta", device_kind="NVIDIA H200"),  # the folder says h100, the run H200
        _nsa(25.0), _cudnn(112.0),
    ])  # fmt: skip
    _write(tmp_path / "d_h100_session4" / "call1_e" / "llm", [
        dict(kind="meta", device_kind=kind, min_iters=1),  # timed blocking on purpose
        _nsa(28.0),
    ])  # fmt: skip
    _write(tmp_path / "d_h100_session4" / "call2_f" / "llm", [
        dict(kind="meta", device_kind=kind), dict(_nsa(29.0), fallbacks=["xla"]), _nsa(29.5),
        _cudnn(118.0),
    ])  # fmt: skip
    assert progress.runs([tmp_path], 64, "H100") == [
        dict(run="s1 call1", nsa_ms=100.0, cudnn_ms=110.0),
        dict(run="s3 call1", nsa_ms=31.0, cudnn_ms=None),
        dict(run="s4 call2", nsa_ms=29.5, cudnn_ms=118.0),
    ]
    out = tmp_path / "p.png"
    assert progress.main([str(out), str(tmp_path), "--seq", "64"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_may_name_the_row_to_take(progress, tmp_path):
    kind = "NVIDIA H100 80GB HBM3"
    _write(tmp_path / "d_h100_session5" / "call1_a" / "llm", [
        dict(kind="meta", device_kind=kind),
        _nsa(30.0),
        _nsa(28.0, method="NSA (items by 4k tokens) [x]", glue="x"),
        _cudnn(112.0),
    ])  # fmt: skip
    got = progress.runs([tmp_path], 64, "H100", {"s5 call1": "NSA (items by 4k tokens) [x]"})
    assert got == [dict(run="s5 call1*", nsa_ms=28.0, cudnn_ms=112.0)]
    out = str(tmp_path / "p.png")
    with pytest.raises(SystemExit, match="no such run or method row"):
        progress.main([out, str(tmp_path), "--seq", "64", "--row", "s5 call1=NSA [y]"])
    with pytest.raises(SystemExit):
        progress.main([out, str(tmp_path), "--seq", "64", "--row", "s5 call1"])


def test_no_runs_is_an_error(progress, tmp_path):
    with pytest.raises(SystemExit, match="no NSA rows at seq_len=64 on H100"):
        progress.main([str(tmp_path / "p.png"), str(tmp_path), "--seq", "64"])
