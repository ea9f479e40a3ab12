r"""Running a planned grid and recording every run in the store.

:func:`run_grid` executes :class:`~sesamo_bench.grid.PlannedRun` s one after the other in this
process, or in a pool of ``workers`` spawned processes; every run uses one torch thread (see
:func:`one_thread`), so the numbers do not depend on ``workers``. Each run:

1. is written to the store as ``running`` (with configuration and provenance) and gets a run
   directory with ``config.json``;
2. trains with :func:`sesamo_bench.train.train`, checkpointing to ``checkpoint.pt``;
3. ends as ``finished`` (``history.csv``, ``samples.npz``, ``result.json`` written), ``diverged``
   (NaN/Inf; the step is recorded), ``failed`` (any other exception; the message is recorded) or
   ``interrupted`` (SIGINT/SIGTERM; the checkpoint is kept). The grid goes on after a diverged
   or failed run; after a signal it launches nothing new.

A :class:`~sesamo_bench.errors.StoreError` (read-only or full disk) stops the grid and is raised;
rows already recorded stay intact.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import multiprocessing as mp
import os
import platform
import queue
import signal
import socket
import subprocess
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import DivergedError, StoreError
from .grid import PlannedRun
from .store import Store, write_history_csv, write_json, write_samples

EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass
class GridOutcome:
    """What :func:`run_grid` did: one record per run it ran or reused, and the signal that stopped it."""

    records: list[dict[str, Any]] = field(default_factory=list)
    signal: int | None = None
    not_started: int = 0


# ---------------------------------------------------------------------------------------------
# provenance
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _static_provenance() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    try:
        pkg = version("sesamo-bench")
    except PackageNotFoundError:
        pkg = None
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
        commit = out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"package_version": pkg, "git_commit": commit, "torch": torch.__version__,
            "python": platform.python_version(), "host": socket.gethostname()}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def provenance(run: PlannedRun) -> dict[str, Any]:
    import torch

    from . import kernels, plugins
    from .train import resolve_device

    cfg = run.config
    tdtype = plugins.targets.get(cfg.target).dtype
    dtype = cfg.dtype if cfg.dtype != "auto" else str(tdtype or torch.float32).replace("torch.", "")
    mlp_dtype = dtype if cfg.mlp_dtype == "auto" else cfg.mlp_dtype
    device = resolve_device(cfg.device)
    # the fused kernels are float32 only: other MLPs run the plain PyTorch module
    mlp_kernels = kernels.resolve(cfg.kernels, device) if mlp_dtype == "float32" else "aten"
    return {**_static_provenance(), "device": str(device), "dtype": dtype, "seed": cfg.seed,
            "pid": os.getpid(), "threads": torch.get_num_threads(), "mlp_kernels": mlp_kernels,
            "architecture": {"name": cfg.flow, "params": cfg.flow_spec().params}}


# ---------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------
Emit = Callable[[str, str, dict[str, Any]], None]


def execute(run: PlannedRun, store_path: Path, *, resume: bool, should_stop: Callable[[], bool],
            emit: Emit) -> dict[str, Any] | None:
    """Train one run and record it in the store; ``None`` when a stop was requested before it began."""
    if should_stop():
        return None
    store = Store(store_path)
    try:
        return execute_in_dir(run, store.runs_dir / run.run_id, resume=resume, should_stop=should_stop, emit=emit,
                              put=store.put)
    finally:
        store.close()


def execute_in_dir(run: PlannedRun, run_dir: Path, *, resume: bool, should_stop: Callable[[], bool], emit: Emit,
                   put: Callable[[dict[str, Any]], None] | None = None,
                   extra_provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    r"""Train one run into its run directory and return its record.

    Arguments:
        run: the run.
        run_dir: its directory (``config.json``, ``checkpoint.pt``, ``history.csv``, ``samples.npz``,
            ``result.json`` are written there atomically).
        resume: continue from ``run_dir/checkpoint.pt`` when it exists.
        should_stop: polled every step (see :func:`sesamo_bench.train.train`).
        emit: receives progress events ``(kind, run_id, data)``.
        put: receives the record when the run starts and when it ends (the store's ``put``);
            ``None`` for cluster jobs, which never open the database.
        extra_provenance: added to the record's provenance (e.g. the cluster job id).

    Returns:
        The record (the columns of the store's ``runs`` table).
    """
    import torch

    from .train import Interrupted, train

    cfg = run.config
    ckpt = run_dir / "checkpoint.pt"
    prior: list[dict[str, Any]] = []
    prior_wall, start_step = 0.0, 0
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        prior, prior_wall, start_step = list(state["history"]), float(state["wall_s"]), int(state["step"])
    else:
        resume = False
        for name in ("checkpoint.pt", "samples.npz", "result.json", "history.csv"):
            with contextlib.suppress(OSError):
                (run_dir / name).unlink()
    prov = provenance(run)
    prov["start"] = _now()
    prov["resumed_from_step"] = start_step if resume else None
    prov.update(extra_provenance or {})
    record: dict[str, Any] = {
        "run_id": run.run_id, "benchmark": run.benchmark, "target": cfg.target, "method": cfg.method,
        "seed": cfg.seed, "params": run.params, "config": cfg.to_dict(), "provenance": prov, "status": "running",
        "steps": start_step, "wall_s": prior_wall, "ess": None, "log_z": None, "log_z_err": None,
        "breaking_ratio": None, "breaking_ratio_exact": None, "metrics": {}, "history": prior,
        "run_dir": str(run_dir), "started": prov["start"], "finished": None, "error": None,
    }
    write_json(run_dir / "config.json", {"run_id": run.run_id, "benchmark": run.benchmark, "params": run.params,
                                         "config": cfg.to_dict()})
    if put is not None:
        put(record)
    emit("start", run.run_id, {"label": cfg.label(), "steps": cfg.steps, "step": start_step})

    rows: list[dict[str, Any]] = []
    last = [0.0]

    def on_eval(row: dict[str, float]) -> None:
        rows.append(dict(row))
        emit("eval", run.run_id, dict(row))

    def on_step(step: int, loss: float) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.2:
            last[0] = now
            emit("step", run.run_id, {"step": step, "loss": loss})

    t0 = time.perf_counter()
    result = None
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # a run's numbers must not depend on the caller's default dtype
    try:
        result = train(cfg, checkpoint=ckpt, resume=resume, callback=on_eval, should_stop=should_stop,
                       progress=on_step)
    except DivergedError as exc:
        record.update(status="diverged", steps=exc.step, error=str(exc),
                      metrics={"diverged_step": exc.step, "diverged_what": exc.what})
    except Interrupted as exc:
        record.update(status="interrupted", steps=exc.step, metrics={"interrupted_step": exc.step})
    except StoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failing run is recorded, the grid goes on
        msg = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        record.update(status="failed", steps=rows[-1]["step"] if rows else start_step, error=msg,
                      metrics={"error": msg})
    finally:
        torch.set_default_dtype(default_dtype)
    history = prior + rows
    if result is not None:
        history = result.history
        record.update(status="finished", steps=result.steps, wall_s=result.wall_s, ess=result.ess,
                      log_z=result.log_z, log_z_err=result.log_z_err, breaking_ratio=result.breaking_ratio,
                      breaking_ratio_exact=result.breaking_ratio_exact, metrics=result.metrics())
        prov.update(device=result.device, dtype=result.dtype)
        if result.samples is not None:
            write_samples(run_dir / "samples.npz", result.samples.float().numpy(),
                          result.sample_log_w.double().numpy())
    else:
        record["wall_s"] = prior_wall + time.perf_counter() - t0
    prov["end"] = _now()
    record.update(history=history, finished=prov["end"], provenance=prov)
    write_history_csv(run_dir / "history.csv", history)
    write_json(run_dir / "result.json", {k: v for k, v in record.items() if k != "history"})
    if put is not None:
        put(record)
    emit("end", run.run_id, record)
    return record


# ---------------------------------------------------------------------------------------------
# signals
# ---------------------------------------------------------------------------------------------
class StopFlag:
    """Set by SIGINT/SIGTERM (or by hand); remembers which signal came first."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.event: Any = None  # a multiprocessing Event shared with workers

    def set(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum
        if self.event is not None:
            self.event.set()

    def __call__(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def catch_signals(flag: StopFlag) -> Iterator[None]:
    """Route SIGINT and SIGTERM to ``flag`` while inside (main thread only; elsewhere a no-op)."""
    old = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda s, _f: flag.set(s))
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------
# worker processes
# ---------------------------------------------------------------------------------------------
_W: dict[str, Any] = {}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One torch intra-op thread per run, in this process as in every worker: float summation
    order (and so every number) then does not depend on how many runs share the machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def default_workers(runs: list[PlannedRun]) -> int:
    """``--workers`` when not given: one process per CPU core (at most one per run) for CPU runs,
    one for CUDA runs."""
    import torch

    devices = {r.config.device for r in runs}
    if "cuda" in devices or ("auto" in devices and torch.cuda.is_available()):
        return 1
    return max(1, min(len(runs), os.cpu_count() or 1))


def _worker_init(stop_event: Any, events: Any) -> None:
    import torch

    torch.set_num_threads(1)
    _W["stop"], _W["events"] = stop_event, events
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, _f: stop_event.set())


def _worker_run(run: PlannedRun, store_path: str, resume: bool) -> dict[str, Any] | None:
    events = _W["events"]
    stop = _W["stop"]
    return execute(run, Path(store_path), resume=resume, should_stop=stop.is_set,
                   emit=lambda kind, rid, data: events.put((kind, rid, data)))


# ---------------------------------------------------------------------------------------------
# the grid
# ---------------------------------------------------------------------------------------------
def run_grid(runs: list[PlannedRun], store: Store, *, workers: int = 1, resume: bool = False,
             reporter: Any, flag: StopFlag | None = None) -> GridOutcome:
    """Run (or, with ``resume``, reuse and continue) every run of a validated grid."""
    flag = flag or StopFlag()
    out = GridOutcome()
    todo: list[tuple[PlannedRun, bool]] = []
    reused: dict[str, dict[str, Any]] = {}
    for run in runs:
        old = store.get(run.run_id) if resume else None
        if old is not None and old["status"] == "finished":
            reused[run.run_id] = old
        else:
            todo.append((run, resume and old is not None and old["status"] in ("interrupted", "running")))
    reporter.grid(len(runs))
    for rid, rec in reused.items():
        reporter.note(f"reusing finished run {rid} ({rec['target']}/{rec['method']}/seed{rec['seed']})")
        reporter.event("end", rid, rec)
    done: dict[str, dict[str, Any]] = dict(reused)
    with catch_signals(flag):
        if workers <= 1:
            for run, res in todo:
                if flag():
                    break
                with one_thread():  # as in a worker: the numbers do not depend on --workers
                    rec = execute(run, store.path, resume=res, should_stop=flag, emit=reporter.event)
                if rec is not None:
                    done[run.run_id] = rec
        else:
            _pool(todo, store, workers, flag, reporter, done)
    out.records = [done[r.run_id] for r in runs if r.run_id in done]
    out.signal = flag.signum
    out.not_started = len(runs) - len(out.records)
    return out


def _pool(todo: list[tuple[PlannedRun, bool]], store: Store, workers: int, flag: StopFlag, reporter: Any,
          done: dict[str, dict[str, Any]]) -> None:
    ctx = mp.get_context("spawn")
    stop_event, events = ctx.Event(), ctx.Queue()
    flag.event = stop_event
    if flag():
        stop_event.set()
    pending: dict[Future, PlannedRun] = {}
    waiting = deque(todo)
    error: BaseException | None = None

    def drain(timeout: float) -> None:
        try:
            kind, rid, data = events.get(timeout=timeout)
            reporter.event(kind, rid, data)
            while True:
                kind, rid, data = events.get_nowait()
                reporter.event(kind, rid, data)
        except queue.Empty:
            pass

    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                             initargs=(stop_event, events)) as ex:
        try:
            while waiting or pending:
                if stop_event.is_set() and flag.signum is None and error is None:
                    flag.set(signal.SIGINT)  # a worker saw the signal (Ctrl-C reaches the whole group)
                while waiting and len(pending) < workers and not stop_event.is_set():
                    run, res = waiting.popleft()
                    try:
                        pending[ex.submit(_worker_run, run, str(store.path), res)] = run
                    except BrokenProcessPool as exc:  # a worker died hard: the rest cannot run
                        done[run.run_id] = _crashed(run, store, exc)
                if not pending:
                    break
                drain(0.05)
                finished, _ = wait(pending, timeout=0, return_when=FIRST_COMPLETED)
                for fut in finished:
                    run = pending.pop(fut)
                    try:
                        rec = fut.result()
                    except StoreError as exc:
                        error = error or exc
                        stop_event.set()
                        continue
                    except Exception as exc:  # noqa: BLE001 - a crashed worker: record the run as failed
                        rec = _crashed(run, store, exc)
                    if rec is not None:
                        done[run.run_id] = rec
        finally:
            if error is not None:
                stop_event.set()
            drain(0.0)
    drain(0.0)
    if error is not None:
        raise error


def _crashed(run: PlannedRun, store: Store, exc: BaseException) -> dict[str, Any]:
    msg = f"worker process died: {type(exc).__name__}: {exc}".splitlines()[0]
    rec = {"run_id": run.run_id, "benchmark": run.benchmark, "target": run.config.target,
           "method": run.config.method, "seed": run.config.seed, "params": run.params,
           "config": run.config.to_dict(), "status": "failed", "error": msg, "finished": _now(),
           "run_dir": str(store.runs_dir / run.run_id)}
    store.put(rec)
    return store.get(run.run_id) or rec
