"""Importing a script of `bench/` (a folder of scripts, not a package) for its tests."""

import importlib.util
import json
from pathlib import Path


def load_bench_script(name: str):
    """The module `bench/<name>.py`, executed once per call."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_llm_rows(folder: Path, rows) -> None:
    """`folder/llm_sparse_gpu.jsonl` holding `rows`, as `bench/llm_sparse_gpu.py` writes it."""
    folder.mkdir(parents=True)
    (folder / "llm_sparse_gpu.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
