r"""Progress reporting for a grid: Rich progress bars, or plain log lines (``--quiet``).

Both reporters write to stderr, so ``run --json`` keeps stdout for the JSON array. The runner
calls them with events: ``start`` (a run begins), ``step`` (every few tenths of a second),
``eval`` (a history row: step, loss, ESS, lr), ``end`` (the run's record) and ``note``.
"""

from __future__ import annotations

import io

import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..harness.record import summary_line  # noqa: F401 - one line per finished run (also re-exported)


class LogReporter:
    """Plain lines on stderr: one per finished run, plus notes."""

    def __init__(self, stream: Any = None):
        self.stream = stream or sys.stderr

    def __enter__(self) -> LogReporter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stream.flush()

    def grid(self, total: int) -> None:
        pass

    def event(self, kind: str, run_id: str, data: dict[str, Any]) -> None:
        if kind == "end":
            print(summary_line(data), file=self.stream, flush=True)
        elif kind == "note":
            self.note(data["message"])

    def note(self, message: str) -> None:
        print(message, file=self.stream, flush=True)


class RichReporter:
    """A Rich progress bar per running run (step, loss, ESS, lr, ETA) and one for the grid."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False, refresh_per_second=4,
        )
        self.tasks: dict[str, TaskID] = {}
        self.grid_task: TaskID | None = None

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc and exc[0] is not None and not self.console.is_terminal:
            # leaving with an error: on a log or a pipe, the error's one line is all that is written
            # (otherwise the bars' last frame came first whenever the work outlived one refresh)
            out, self.console.file = self.console.file, io.StringIO()
            try:
                self.progress.stop()
            finally:
                self.console.file = out
            return
        self.progress.stop()

    def grid(self, total: int) -> None:
        self.grid_task = self.progress.add_task("[bold]grid", total=total, info="")

    def event(self, kind: str, run_id: str, data: dict[str, Any]) -> None:
        p = self.progress
        if kind == "note":
            self.note(data["message"])
        elif kind == "start":
            self.tasks[run_id] = p.add_task(data["label"], total=data["steps"], completed=data.get("step", 0),
                                            info="")
        elif kind == "step" and run_id in self.tasks:
            p.update(self.tasks[run_id], completed=data["step"])
        elif kind == "eval" and run_id in self.tasks:
            info = f"loss {data['loss']:.4g} ESS {data['ess']:.3f} lr {data['lr']:.2g}"
            p.update(self.tasks[run_id], completed=data["step"], info=info)
        elif kind == "end":
            task = self.tasks.pop(run_id, None)
            if task is not None:
                p.remove_task(task)
            p.console.print(summary_line(data), markup=False, highlight=False, soft_wrap=True)
            if self.grid_task is not None:
                p.advance(self.grid_task)

    def note(self, message: str) -> None:
        self.progress.console.print(message, markup=False, highlight=False, soft_wrap=True)
