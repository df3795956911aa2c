"""Run logging: console (rich), ``log.txt``, a JSONL metrics file and TensorBoard scalars.

Only the main rank writes. Every record goes to ``<run>/metrics.jsonl`` (one JSON object per line, easy to
load with pandas) and to TensorBoard under ``<run>/tb``; the console shows a progress bar with ETA and
images/s plus a line per evaluation.

``<run>/log.txt`` keeps, as plain text, everything the run prints (header, evaluations, resume notes),
the records of vireid's library loggers (``logging.getLogger("vireid...")``, e.g. the pretrained-weights load
report) and Python warnings (e.g. dataset count checks), plus one line per logged iteration (every
``train.log_every``) with the losses. When the console is not a terminal (a batch scheduler's output file),
those iteration lines are printed there too, since no progress bar is drawn. The pretrained-weights load
report is also saved as ``<run>/pretrained_load.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import warnings
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

LOG_FILE = "log.txt"
LOAD_REPORT_FILE = "pretrained_load.json"
LIBRARY_LOGGER = "vireid"


class _RunLogHandler(logging.Handler):
    """Forwards records of vireid's library loggers to the run's console and ``log.txt``."""

    def __init__(self, run_logger: RunLogger):
        super().__init__(level=logging.INFO)
        self.run_logger = run_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.run_logger.print(f"{record.levelname.lower()}: {record.name}: {record.getMessage()}", markup=False)
        except Exception:  # pragma: no cover - logging must never stop training
            self.handleError(record)


class RunLogger:
    """Writes the main rank's console output (and, once :meth:`attach_library_logging` is called, library
    log records and warnings) to ``log.txt``, and its metrics to JSONL and TensorBoard; silent on other
    ranks. :meth:`close` detaches everything."""

    def __init__(self, run_dir: Path | None, *, enabled: bool = True, tensorboard: bool = True, console=None):
        self.enabled = enabled and run_dir is not None
        self.console: Console = console or Console(stderr=False)
        self._jsonl = None
        self._tb = None
        self._text = None
        self._file_console: Console | None = None
        self._handler: _RunLogHandler | None = None
        self._library_level: int | None = None
        self._showwarning = None
        if not self.enabled:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = run_dir
        self._text = open(run_dir / LOG_FILE, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._file_console = Console(
            file=self._text,
            width=160,
            no_color=True,
            force_terminal=False,
            highlight=False,
            emoji=False,
            soft_wrap=True,  # one line per message, whatever its length (grep-able)
        )
        self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115 - closed in close()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(run_dir / "tb"))
            except ImportError:  # pragma: no cover - tensorboard is a core dependency
                self.console.print("[yellow]tensorboard is not installed; TensorBoard logging is off.[/]")

    # ------------------------------------------------------------------------------- library logs, warnings

    def attach_library_logging(self) -> None:
        """Route vireid's logger records (INFO and up) and Python warnings to the console and ``log.txt``
        until :meth:`close` (the trainer calls this when ``fit`` starts). No-op when disabled or attached."""
        if not self.enabled or self._handler is not None or self._text is None:
            return
        library = logging.getLogger(LIBRARY_LOGGER)
        self._handler = _RunLogHandler(self)
        library.addHandler(self._handler)
        if library.level == logging.NOTSET or library.level > logging.INFO:
            self._library_level = library.level
            library.setLevel(logging.INFO)
        previous = warnings.showwarning
        self._showwarning = previous

        def showwarning(message, category, filename, lineno, file=None, line=None):
            previous(message, category, filename, lineno, file, line)  # the console, as without a run
            if self._file_console is not None:
                self._file_console.print(f"warning: {category.__name__}: {message}", markup=False)

        warnings.showwarning = showwarning

    def _detach_library_logging(self) -> None:
        if self._handler is not None:
            library = logging.getLogger(LIBRARY_LOGGER)
            library.removeHandler(self._handler)
            if self._library_level is not None:
                library.setLevel(self._library_level)
            self._handler = None
        if self._showwarning is not None:
            warnings.showwarning = self._showwarning
            self._showwarning = None

    # ------------------------------------------------------------------------------------------- records

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """Record ``values`` under ``kind`` (``train``, ``val``, ``test``) at global ``step``.

        ``train`` records are also written to ``log.txt`` as one line each (and printed when the console is
        not a terminal, where no progress bar shows them).
        """
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self._jsonl.write(json.dumps(record, default=float) + "\n")
        if kind == "train" and self._file_console is not None:
            line = iteration_line(step, values)
            self._file_console.print(line, markup=False)
            if not self.console.is_terminal:
                self.console.print(line, markup=False)
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def print(self, *args, **kwargs) -> None:
        """Print on the console and append the same text (without colours) to ``log.txt``."""
        if self.enabled:
            self.console.print(*args, **kwargs)
            if self._file_console is not None:
                self._file_console.print(*args, **kwargs)

    def save_load_report(self, model: Any) -> Path | None:
        """Write ``pretrained_load.json`` when ``model`` loaded pretrained weights (``model.load_report``)."""
        report = getattr(model, "load_report", None)
        if not self.enabled or report is None:
            return None
        data = dataclasses.asdict(report) if dataclasses.is_dataclass(report) else {"report": str(report)}
        if hasattr(report, "summary"):
            data["summary"] = report.summary()
        path = self.run_dir / LOAD_REPORT_FILE
        path.write_text(json.dumps(data, indent=2, default=str))
        return path

    def close(self) -> None:
        self._detach_library_logging()
        if self._text is not None:
            self._text.close()
            self._text = None
            self._file_console = None
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


def iteration_line(step: int, values: dict[str, Any]) -> str:
    """``step 12  epoch 1 iter 11  loss 1.2345 (id 1.1000, wrt 0.1345)  lr 3.50e-04  120.3 img/s``."""
    parts = [f"{k} {float(v):.4f}" for k, v in values.items() if k not in _ITERATION_FIELDS and _is_number(v)]
    loss = values.get("loss")
    text = f"step {step}  epoch {int(values.get('epoch', 0)) + 1} iter {values.get('iteration', '?')}"
    if loss is not None:
        text += f"  loss {float(loss):.4f}" + (f" ({', '.join(parts)})" if parts else "")
    if "lr" in values:
        text += f"  lr {float(values['lr']):.2e}"
    if "img_per_s" in values:
        text += f"  {float(values['img_per_s']):.1f} img/s"
    return text


_ITERATION_FIELDS = {"epoch", "iteration", "lr", "img_per_s", "loss"}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
