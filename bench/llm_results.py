"""The committed `llm_sparse_gpu.jsonl` files of `bench/llm_sparse_gpu.py`, run by run.

Shared by the pictures drawn from them (`plot_llm.py`, `plot_nsa_progress.py`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def runs(folders) -> Iterator[tuple[str, str, list[dict]]]:
    """`(session folder, run label, rows)` of every `llm_sparse_gpu.jsonl` under `folders`.

    In sorted path order (session by session, call by call); the label is
    "s<session> call<n>", from a file laid out as `<session>/<call>/<dir>/`.
    Runs timed blocking on purpose (session 15's comparison of the timings,
    `min_iters` 1) are left out.
    """
    files = sorted(p for f in folders for p in Path(f).rglob("llm_sparse_gpu.jsonl"))
    for path in files:
        session, call = path.parts[-4:-2]  # e.g. 2026-12-03_h200_session9 / call1_measure
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if any(r["kind"] == "meta" and r.get("min_iters") == 1 for r in rows):
            continue
        label = f"{session.rsplit('_', 1)[-1].replace('session', 's')} {call.split('_')[0]}"
        yield session, label, rows
