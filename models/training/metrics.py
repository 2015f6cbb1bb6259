"""Metrics as JSON lines: one object per logged step (`"kind": "train"` or `"eval"`)."""

from __future__ import annotations

import json
import pathlib
from typing import Any


class MetricsWriter:
    """Append-only JSON lines; on resume, drops lines past the restored step.

    A run killed after step 130 but checkpointed at 100 repeats steps 101-130
    on resume; dropping their old lines keeps one curve with no duplicates.
    """

    def __init__(self, path: pathlib.Path, *, resume_step: int):
        self.path = path
        if path.exists():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            path.write_text("".join(line + "\n" for line in kept))
        self._file = path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read(path: pathlib.Path) -> list[dict[str, Any]]:
    """All records of a metrics file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
