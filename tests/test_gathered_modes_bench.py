"""bench/gathered_modes_gpu.py: its modes and a tiny run of two (GPU interpret mode)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import gathered_modes_gpu as gm  # noqa: E402


def test_mode_names_survive_the_comma_separated_flag():
    assert all("," not in name for name in gm.MODES)
    assert {m.chunk for m in gm.MODES.values()} >= {0, 1024, 4096}
    with pytest.raises(SystemExit):
        gm.main(["unused", "--modes", "dq 3k chunks"])


@pytest.mark.slow
def test_tiny_run_agrees_across_modes(tmp_path):
    from pallas_kernels.gpu import backward_dkv_gathered as bdg

    library = bdg.ADD_DKV
    modes = "dq 4k chunks (library),dq 4k chunks dK/dV partials"
    assert gm.main([str(tmp_path), "--tiny", "--modes", modes]) == 0
    assert bdg.ADD_DKV is library  # the mode's setting is put back
    rows = [json.loads(x) for x in (tmp_path / "gathered_modes_gpu.jsonl").read_text().splitlines()]
    assert [r["mode"] for r in rows] == modes.split(",")
    for key in ("dq_max_diff_vs_first", "dk_max_diff_vs_first", "dv_max_diff_vs_first"):
        assert rows[1][key] < 0.05  # bf16 outputs: the same sums in another order


def test_without_dq_adds_drops_only_the_dq_boxes():
    """The timing-only mode leaves out the `[G, D]` dQ reduce-adds, keeps the `[64, D]` dK/dV
    ones and plain copies, and puts the kernel module's `plgpu` back."""
    from types import SimpleNamespace

    calls = []
    real = SimpleNamespace(
        copy_smem_to_gmem=lambda src, dst, **kw: calls.append((src.shape, kw)),
        commit_smem=lambda: None,
    )
    module = SimpleNamespace(plgpu=real)
    box = SimpleNamespace(shape=(8, 128))
    sums = SimpleNamespace(shape=(64, 128))
    with gm._without_dq_adds(module, 8):
        module.plgpu.copy_smem_to_gmem(box, None, reduction_op="add")  # a dQ box: dropped
        module.plgpu.copy_smem_to_gmem(sums, None, reduction_op="add")  # dK/dV sums: kept
        module.plgpu.copy_smem_to_gmem(box, None)  # a plain store: kept
        assert module.plgpu.commit_smem is real.commit_smem
    assert module.plgpu is real
    assert calls == [((64, 128), {"reduction_op": "add"}), ((8, 128), {"reduction_op": None})]
