"""Run logging: console (rich), a JSONL metrics file and TensorBoard scalars.

Only the main rank writes. Every record goes to ``<run>/metrics.jsonl`` (one JSON object per line, easy to
load with pandas) and to TensorBoard under ``<run>/tb``; the console shows a progress bar with ETA and
images/s plus a line per evaluation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RunLogger:
    """Writes metrics of the main rank to JSONL and TensorBoard; silent on other ranks."""

    def __init__(self, run_dir: Path | None, *, enabled: bool = True, tensorboard: bool = True, console=None):
        self.enabled = enabled and run_dir is not None
        self.console: Console = console or Console(stderr=False)
        self._jsonl = None
        self._tb = None
        if not self.enabled:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115 - closed in close()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(run_dir / "tb"))
            except ImportError:  # pragma: no cover - tensorboard is a core dependency
                self.console.print("[yellow]tensorboard is not installed; TensorBoard logging is off.[/]")

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """Record ``values`` under ``kind`` (``train``, ``val``, ``test``) at global ``step``."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self._jsonl.write(json.dumps(record, default=float) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def print(self, *args, **kwargs) -> None:
        if self.enabled:
            self.console.print(*args, **kwargs)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def training_progress(console: Console, enabled: bool = True) -> Progress:
    """A rich progress bar showing iterations, ETA, images/s and the running loss."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7.1f} img/s"),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )
