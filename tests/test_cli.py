"""The `jaxsparse` command line: bad input gives a one-line error, good input works."""

import json

import pytest

from jaxsparse.cli.main import main

# Small sizes so that a check that fails to fire still runs quickly.
BENCH = ["bench", "--seq", "128", "--heads", "2", "--dim", "64", "--repeats", "1"]
BENCH += ["--pattern", "causal"]


def usage_error(capsys, argv) -> str:
    """argparse rejects `argv`: exit code 2, the message on stderr."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def run_error(capsys, argv) -> str:
    """The command rejects `argv` after parsing: return code 2, one line on stderr."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("jaxsparse: error: ") and err.count("\n") == 1
    return err


@pytest.mark.parametrize(
    "argv, flag, value",
    [
        ([*BENCH, "--seq", "-5"], "--seq", "-5"),
        ([*BENCH, "--seq", "0"], "--seq", "0"),
        ([*BENCH, "--seq", "abc"], "--seq", "'abc'"),
        ([*BENCH, "--batch", "0"], "--batch", "0"),
        ([*BENCH, "--heads", "0"], "--heads", "0"),
        ([*BENCH, "--kv-heads", "0"], "--kv-heads", "0"),
        ([*BENCH, "--kv-heads", "-2"], "--kv-heads", "-2"),
        ([*BENCH, "--dim", "0"], "--dim", "0"),
        ([*BENCH, "--repeats", "0"], "--repeats", "0"),
        (["show", "causal", "--seq", "0"], "--seq", "0"),
        (["show", "causal", "--kv-seq", "0"], "--kv-seq", "0"),
        (["show", "causal", "--kv-seq", "-5"], "--kv-seq", "-5"),
        (["show", "causal", "--block", "0"], "--block", "0"),
        (["show", "causal", "--block", "-4"], "--block", "-4"),
        (["show", "causal", "--heads", "0"], "--heads", "0"),
        (["show", "causal", "--head", "-3"], "--head", "-3"),
        (["patterns", "--seq", "-1"], "--seq", "-1"),
        (["patterns", "--seq", "0"], "--seq", "0"),
    ],
)
def test_bad_number_is_a_usage_error(capsys, argv, flag, value):
    err = usage_error(capsys, argv)
    assert f"argument {flag}: {value} is not " in err


def test_bench_kv_heads_must_divide_heads(capsys):
    err = run_error(capsys, [*BENCH, "--heads", "4", "--kv-heads", "3"])
    assert "--kv-heads 3 does not divide --heads 4" in err


@pytest.mark.parametrize("heads, head", [(1, 99), (4, 4)])
def test_show_head_out_of_range(capsys, heads, head):
    argv = ["show", "causal", "--seq", "64", "--heads", str(heads), "--head", str(head)]
    err = run_error(capsys, argv)
    assert f"--head {head} is out of range for --heads {heads}; use 0 to {heads - 1}" in err


def test_show_png_in_missing_directory(capsys, tmp_path):
    folder = tmp_path / "missing"
    err = run_error(capsys, ["show", "causal", "--seq", "64", "--png", str(folder / "x.png")])
    assert f"directory {folder} does not exist" in err
    assert not folder.exists()


def test_patterns_lists_presets_and_classes(capsys):
    assert main(["patterns", "--seq", "256"]) == 0
    out = capsys.readouterr().out
    for name in ("causal", "sliding_window", "a_shape", "SlidingWindow", "PerHead"):
        assert name in out


def test_show_writes_png(capsys, tmp_path):
    path = tmp_path / "x.png"
    assert main(["show", "causal", "--seq", "256", "--png", str(path)]) == 0
    assert path.read_bytes().startswith(b"\x89PNG")
    assert f"wrote {path}" in capsys.readouterr().out


def test_show_any_head_of_a_shared_pattern(capsys):
    assert main(["show", "causal", "--seq", "64", "--heads", "4", "--head", "3"]) == 0
    assert "head 3:" in capsys.readouterr().out


def test_bench_json(capsys):
    assert main([*BENCH, "--kv-heads", "1", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["pattern"] for r in rows] == ["full", "causal"]
    for r in rows:
        assert r["element_density"] > 0 and r["tile_density"] > 0 and r["ms"] > 0
        assert r["speedup"] > 0 and r["max_error"] < 1e-3
        assert (r["batch"], r["seq"], r["heads"], r["kv_heads"], r["dim"]) == (1, 128, 2, 1, 64)
        assert r["dtype"] == "float32" and r["backward"] is False


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--seq", "1000000000"], "measured on the dense mask"),
        (["bench", "--seq", "64", "--implementation", "pallas_gpu"], "Hopper GPU"),
        (
            ["bench", "--seq", "64", "--pattern", "BlockTopK(block_size=16, top_k=1)"],
            "content-aware",
        ),
        (["show", "causal", "--seq", "64", "--png", "TMP"], "a file name ending in .png"),
        (["show", "causal", "--seq", "64", "--png", "TMP/x.svg"], "a file name ending in .png"),
        (["show", "causal", "--seq", "64", "--png", "/proc/x.png"], "cannot write it"),
        (["show", "causal", "--seq", "200000", "--png", "TMP/big.png"], "at most 67,108,864"),
    ],
)
def test_bad_requests_are_one_line_errors(tmp_path, capsys, argv, message):
    # Checked before any work where possible: no traceback, no file written elsewhere.
    argv = [a.replace("TMP", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())
