r"""The callable that one cluster job runs: train one run into its run directory.

This module is imported on the cluster path (``run --executor slurm`` / ``submitit-local``), where
:func:`sesamo_bench.harness.cluster.require_submitit` has already checked for :mod:`submitit` (the
``[slurm]`` extra). It imports without submitit too (for its doctests, documentation and
``pytest`` on an install without the extras): submitit treats any callable with a ``checkpoint``
method as checkpointable, so :class:`RunJob` needs no submitit base class, and submitit itself is
only used inside a running job.

A :class:`RunJob` never opens the SQLite store: it writes ``config.json``, ``checkpoint.pt``,
``history.csv``, ``samples.npz`` and ``result.json`` under ``<store_dir>/runs/<run_id>/`` on the
shared filesystem, and ``sesamo-bench collect`` (or ``run --wait``) ingests them afterwards.

When the cluster is about to kill the job at its time limit (or preempts it), submitit sends the
preemption signal (``SIGUSR2``), calls :meth:`RunJob.checkpoint` and requeues the job; the
requeued job resumes from the last ``checkpoint.pt`` that :func:`sesamo_bench.harness.train.train` wrote
(every ``checkpoint_every`` steps), so at most ``checkpoint_every`` steps are trained twice and the
result equals an uninterrupted run's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

try:  # the [slurm] extra
    import submitit
except ImportError:  # pragma: no cover - an install without the extra never submits a job
    submitit = None

from .claim import STALE_S, ClaimLost
from .grid import PlannedRun
from .record import summary_line


class RunFailed(RuntimeError):
    """Raised at the end of a job whose run failed, so that the scheduler marks the job failed."""


class RunJob:
    r"""One run as a submitit job.

    Arguments:
        run: the planned (validated) run.
        run_dir: its directory on the shared filesystem, ``<store_dir>/runs/<run_id>``.
        resume: continue from ``run_dir/checkpoint.pt`` when it exists (set on requeue).
        submission: id of the submission (recorded in the result's provenance with the job id).
    """

    def __init__(self, run: PlannedRun, run_dir: Path | str, *, resume: bool = False, submission: str = ""):
        self.run = run
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.submission = submission

    def __call__(self) -> dict[str, Any]:
        import torch

        from .runner import execute_in_dir

        cfg = self.run.config
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if not cfg.threads and cpus and cpus.isdigit():
            torch.set_num_threads(int(cpus))  # torch's default counts the node's cores, not the allocation
        env = _submitit().JobEnvironment()
        # a requeued job may start while its predecessor (on another node) still holds the claim:
        # wait until that claim ends or goes stale
        try:
            record = execute_in_dir(self.run, self.run_dir, resume=self.resume, should_stop=lambda: False,
                                    emit=_log_event, extra_provenance={"job_id": env.job_id,
                                                                       "submission": self.submission,
                                                                       "cluster": env.cluster},
                                    claim_wait_s=STALE_S + 30)
        except ClaimLost as exc:  # stopped past the stale time: the job that took the run over finishes it
            print(f"note: {exc}", file=sys.stderr, flush=True)
            return {"run_id": self.run.run_id, "status": "taken-over", "steps": None, "ess": None, "log_z": None}
        if record["status"] == "failed":
            raise RunFailed(f"run {self.run.run_id} failed: {record['error']}")
        return {k: record[k] for k in ("run_id", "status", "steps", "ess", "log_z")}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on timeout/preemption: requeue this run, resuming from its checkpoint
        (a ``submitit.helpers.DelayedSubmission``)."""
        again = RunJob(self.run, self.run_dir, resume=True, submission=self.submission)
        return _submitit().helpers.DelayedSubmission(again)

    def __repr__(self) -> str:
        return f"RunJob({self.run.run_id} {self.run.config.label()}, resume={self.resume})"


def _submitit() -> Any:
    """The :mod:`submitit` module (a job runs only where it is installed)."""
    if submitit is None:  # pragma: no cover
        raise ModuleNotFoundError("a cluster job needs submitit: pip install 'sesamo-bench[slurm]'")
    return submitit


def _log_event(kind: str, run_id: str, data: dict[str, Any]) -> None:
    """Progress lines in the job's stdout log."""
    if kind == "start":
        print(f"start {data['label']} [{run_id}] at step {data['step']} of {data['steps']}", flush=True)
    elif kind == "eval":
        parts = " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in data.items())
        print(f"eval {parts}", flush=True)
    elif kind == "note":
        print(f"note: {data['message']}", file=sys.stderr, flush=True)
    elif kind == "end":
        print(summary_line(data), flush=True)
        if data.get("error"):
            print(f"run {run_id} {data['status']}: {data['error']}", file=sys.stderr, flush=True)
