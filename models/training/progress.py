"""A rich progress bar showing the step, loss and throughput."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Bar:
    """`with Bar(total, start, unit, enabled) as bar: bar.update(step, loss, rate)`.

    Disabled (silent) when not attached to a terminal or when `enabled` is False,
    so logs of batch jobs stay clean; metrics.jsonl has the same numbers.
    """

    def __init__(
        self, total: int, start: int, unit: str, *, enabled: bool = True, description: str = "train"
    ):
        self.unit = unit
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),  # stdout stays free for the CLI's JSON result
            disable=not (enabled and sys.stderr.isatty()),
            transient=False,
        )
        self._task = self._progress.add_task(
            description, total=total, completed=start, loss="-", rate="-"
        )

    def __enter__(self) -> Bar:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def update(self, step: int, loss: float | None = None, rate: float | None = None) -> None:
        fields = {}
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        if rate is not None:
            fields["rate"] = f"{rate:,.0f} {self.unit}/s"
        self._progress.update(self._task, completed=step, **fields)

    def print(self, message: str) -> None:
        self._progress.console.print(message)
