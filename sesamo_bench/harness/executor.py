r"""Executors: where the runs of a planned grid are trained, behind one interface and one resume rule.

Two executors implement :class:`Executor`:

- :class:`LocalPool`: this machine, ``workers`` processes (:func:`sesamo_bench.harness.runner.run_grid`);
  the records are in the store when :meth:`~Executor.start` returns;
- :class:`ClusterExecutor`: one Slurm job per run through submitit
  (:mod:`sesamo_bench.harness.cluster`; ``submitit-local`` for the same code path with local
  processes); :meth:`~Executor.start` returns after submitting, :meth:`ClusterExecutor.wait`
  waits and collects.

What to do with each run is decided once, by :func:`resume_plan`, for both:

- a run whose job is still queued or running (:meth:`Executor.busy`) is left alone;
- with ``resume``, a ``finished`` record is reused as it is;
- every other run starts; with ``resume`` it continues from its checkpoint where one loads,
  except a ``diverged`` run, which starts again from step 0 (its checkpoint leads to the
  divergence). A damaged checkpoint restarts the run from step 0 with a note.
"""

from __future__ import annotations

from typing import Any, Callable

from .grid import PlannedRun
# the resume rule lives below the runner (which plans a grid's resumption itself when handed runs)
from .resume import CONTINUABLE as CONTINUABLE, ResumePlan as ResumePlan, resume_plan as resume_plan
from .store import Store


class Executor:
    """Where runs are trained. Subclasses implement :meth:`start`."""

    name: str = ""

    def busy(self, store: Store) -> dict[str, str]:
        """Runs of this store in flight on this executor (run_id -> why), left alone by :func:`resume_plan`."""
        return {}

    def prepare(self, runs: list[PlannedRun], store: Store, *, resume: bool) -> None:
        """Bring the store up to date before :func:`resume_plan` reads it (nothing by default)."""

    def start(self, plan: ResumePlan, store: Store, *, reporter: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


class LocalPool(Executor):
    """This machine: ``workers`` processes (one torch thread each), or this process for ``workers=1``."""

    name = "local"

    def __init__(self, workers: int):
        self.workers = workers

    def start(self, plan: ResumePlan, store: Store, *, reporter: Any, flag: Any = None) -> Any:
        """Train ``plan.start`` and return the :class:`~sesamo_bench.harness.runner.GridOutcome`
        (records of the runs reused and run, in grid order)."""
        from .runner import run_grid

        return run_grid(plan, store, workers=self.workers, reporter=reporter, flag=flag)


class ClusterExecutor(Executor):
    """One job per run through submitit (``kind``: ``slurm`` or ``submitit-local``)."""

    def __init__(self, kind: str, settings: Any):
        self.name, self.settings = kind, settings
        self._statuses: dict[str, Any] = {}

    def busy(self, store: Store) -> dict[str, str]:
        from . import cluster

        self._statuses = {s.entry["run_id"]: s for s in cluster.job_statuses(store.path.resolve().parent)}
        return {rid: f"already {s.state} as job {s.entry['job_id']} (submission {s.submission})"
                for rid, s in self._statuses.items() if s.state in ("queued", "running")}

    def prepare(self, runs: list[PlannedRun], store: Store, *, resume: bool) -> None:
        """With ``resume``, record the runs whose jobs ended since the last ``collect``, so that
        finished ones are reused."""
        from . import cluster

        if resume:
            statuses = cluster.job_statuses(store.path.resolve().parent)
            cluster.collect(store, run_ids={r.run_id for r in runs}, statuses=statuses)

    def start(self, plan: ResumePlan, store: Store, *, reporter: Any = None) -> Any:
        """Submit ``plan.start``; the :class:`~sesamo_bench.harness.cluster.Submission`, or ``None``
        when there is nothing to submit."""
        from . import cluster

        return cluster.submit(plan.start, store, kind=self.name, settings=self.settings) if plan.start else None

    @staticmethod
    def wait(submission: Any, store: Store, *, on_done: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
        """Wait for a submission's jobs, then record them; the collected records."""
        from . import cluster

        cluster.wait(submission, on_done=on_done)
        return cluster.collect(store, run_ids={e["run_id"] for e in submission.manifest["jobs"]}).records
