"""Notebooks execute end to end at tiny sizes (JAXSPARSE_NOTEBOOK_SMALL=1), so they cannot rot."""

from __future__ import annotations

import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_are_generated_from_make_notebooks():
    """The .ipynb files match `notebooks/make_notebooks.py` (edit the script, then rerun it)."""
    import importlib.util

    path = NOTEBOOKS[0].parent / "make_notebooks.py"
    spec = importlib.util.spec_from_file_location("make_notebooks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, cells in (
        ("01_pattern_gallery.ipynb", module.GALLERY),
        ("02_speed_vs_density.ipynb", module.SPEED),
        ("03_train_sparse_vs_dense.ipynb", module.TRAIN),
    ):
        nb = nbformat.read(NOTEBOOKS[0].parent / name, as_version=4)
        assert [c.source for c in nb.cells] == [src for _, src in cells], name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_at_tiny_size(path, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSPARSE_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # The kernel must import this checkout's jaxsparse and models.
    root = str(path.parents[1])
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    )
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors
