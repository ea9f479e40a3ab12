r"""The one rule of what a grid runs, reuses or leaves alone (:func:`resume_plan`), for every executor.

- a run whose job is still queued or running (:meth:`~sesamo_bench.harness.executor.Executor.busy`)
  is left alone;
- with ``resume``, a ``finished`` record is reused as it is;
- every other run starts; with ``resume`` it continues from its checkpoint where one loads,
  except a ``diverged`` run, which starts again from step 0 (its checkpoint leads to the
  divergence). A damaged checkpoint restarts the run from step 0 with a note.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .grid import PlannedRun
from .store import Store


@dataclass
class ResumePlan:
    """What :func:`resume_plan` decided for each run of a grid, in grid order."""

    #: ``(run, continue from its checkpoint)`` pairs to train
    start: list[tuple[PlannedRun, bool]] = field(default_factory=list)
    #: finished records reused (run_id -> record)
    reuse: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: runs already in flight elsewhere: ``(run, why)``
    busy: list[tuple[PlannedRun, str]] = field(default_factory=list)
    #: the grid's run ids in grid order
    runs: list[str] = field(default_factory=list)

    def order(self) -> list[str]:
        """Run ids in grid order (records are returned in this order)."""
        return self.runs

    def notes(self) -> list[str]:
        out = [f"reusing finished run {rid} ({r['target']}/{r['method']}/seed{r['seed']})"
               for rid, r in self.reuse.items()]
        out += [f"run {run.run_id} ({run.config.label()}) is {why}; not started again" for run, why in self.busy]
        return out


#: statuses whose checkpoint a resumed run continues from (``None``: no record yet)
CONTINUABLE = (None, "interrupted", "running", "failed")


def resume_plan(runs: list[PlannedRun], store: Store, *, resume: bool,
                busy: dict[str, str] | None = None) -> ResumePlan:
    """The one rule of what to run, reuse or leave alone (module docstring)."""
    plan = ResumePlan()
    busy = busy or {}
    for run in runs:
        plan.runs.append(run.run_id)
        if run.run_id in busy:
            plan.busy.append((run, busy[run.run_id]))
            continue
        old = store.get(run.run_id) if resume else None
        if old is not None and old["status"] == "finished":
            plan.reuse[run.run_id] = old
        else:
            plan.start.append((run, resume and (old["status"] if old is not None else None) in CONTINUABLE))
    return plan
