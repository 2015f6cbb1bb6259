"""Importing a script of `bench/` (a folder of scripts, not a package) for its tests."""

import importlib.util
from pathlib import Path


def load_bench_script(name: str):
    """The module `bench/<name>.py`, executed once per call."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
