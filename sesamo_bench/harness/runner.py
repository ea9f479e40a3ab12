r"""Running a planned grid and recording every run in the store.

:func:`run_grid` executes :class:`~sesamo_bench.harness.grid.PlannedRun` s one after the other in this
process, or in a pool of ``workers`` spawned processes; every run uses one torch thread (see
:func:`one_thread`), so the numbers do not depend on ``workers``. Each run:

1. is written to the store as ``running`` (with configuration and provenance) and gets a run
   directory with ``config.json``;
2. trains with :func:`sesamo_bench.harness.train.train`, checkpointing to ``checkpoint.pt``;
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
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .checkpoint import is_temporary
from .claim import Busy, Claim, ClaimLost, acquire
from ..errors import DivergedError, StoreError
from .grid import PlannedRun
from .record import RunRecord
from .resume import ResumePlan, resume_plan
from .store import Store, write_history_csv, write_json, write_samples

EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass
class GridOutcome:
    """What :func:`run_grid` did: one record per run it ran or reused, and the signal that stopped it."""

    records: list[RunRecord] = field(default_factory=list)
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


def _kernel_provenance(prov: dict[str, Any], choices: list[Any]) -> None:
    """With ``kernels=auto``: the paths the run's float32 MLPs took (``mlp_kernels``) and each
    measured decision with its times (``mlp_kernels_choice``)."""
    if prov.get("mlp_kernels") != "auto":
        return
    from ..core import kernels

    prov["mlp_kernels"] = kernels.summary(choices) if choices else "aten"
    prov["mlp_kernels_choice"] = [c.to_dict() for c in choices]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def provenance(run: PlannedRun) -> dict[str, Any]:
    import torch

    from ..core import kernels
    from .. import plugins
    from .train import resolve_device

    cfg = run.config
    tdtype = plugins.targets.get(cfg.target).dtype
    dtype = cfg.dtype if cfg.dtype != "auto" else str(tdtype or torch.float32).replace("torch.", "")
    mlp_dtype = dtype if cfg.mlp_dtype == "auto" else cfg.mlp_dtype
    device = resolve_device(cfg.device)
    # the fused kernels are float32 only: other MLPs run the plain PyTorch module; with
    # kernels=auto the path is measured when the MLPs first run (_kernel_provenance, after training)
    mlp_kernels = kernels.resolve(cfg.kernels, device) if mlp_dtype == "float32" else "aten"
    return {**_static_provenance(), "device": str(device), "dtype": dtype, "seed": cfg.seed,
            # the threads the run trains with (train_run sets cfg.threads after this is recorded)
            "pid": os.getpid(), "threads": cfg.threads or torch.get_num_threads(), "mlp_kernels": mlp_kernels,
            "architecture": {"name": cfg.flow, "params": cfg.flow_spec().params}}


# ---------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------
Emit = Callable[[str, str, dict[str, Any]], None]


def execute(run: PlannedRun, store_path: Path, *, resume: bool, should_stop: Callable[[], bool],
            emit: Emit) -> RunRecord | None:
    """Train one run and record it in the store; ``None`` when a stop was requested before it began.

    A run that another live process is training (its claim, :mod:`sesamo_bench.harness.claim`) is not
    touched: a note is emitted and its current row returned."""
    if should_stop():
        return None
    store = Store(store_path)
    try:
        try:
            return execute_in_dir(run, store.runs_dir / run.run_id, resume=resume, should_stop=should_stop,
                                  emit=emit, put=store.put)
        except (Busy, ClaimLost) as exc:
            then = "rerun with --resume once it has ended" if isinstance(exc, Busy) else "the other process finishes it"
            emit("note", run.run_id, {"message": f"skipping {run.config.label()} [{run.run_id}]: {exc}; {then}"})
            row = store.get(run.run_id)
            return row if row is not None else new_record(run, str(store.runs_dir / run.run_id), status="running",
                                                          error=str(exc))
    finally:
        store.close()


def new_record(run: PlannedRun, run_dir: str, **columns: Any) -> RunRecord:
    """The record of a planned run, before it has results (its identity and these ``columns``)."""
    cfg = run.config
    return RunRecord(run_id=run.run_id, benchmark=run.benchmark, target=cfg.target, method=cfg.method, seed=cfg.seed,
                     params=dict(run.params), config=cfg.to_dict(), run_dir=run_dir, **columns)


def execute_in_dir(run: PlannedRun, run_dir: Path, *, resume: bool, should_stop: Callable[[], bool], emit: Emit,
                   put: Callable[[RunRecord], None] | None = None,
                   extra_provenance: dict[str, Any] | None = None, claim_wait_s: float = 0.0) -> RunRecord:
    r"""Train one run into its run directory and return its record.

    Arguments:
        run: the run.
        run_dir: its directory (``config.json``, ``checkpoint.pt``, ``history.csv``, ``samples.npz``,
            ``result.json`` are written there atomically).
        resume: continue from ``run_dir/checkpoint.pt`` when it exists. A checkpoint that does not
            load (empty, truncated, damaged, holding objects, of another model) is reported in one
            note and the run restarts from step 0.
        should_stop: polled every step (see :func:`sesamo_bench.harness.train.train`).
        emit: receives progress events ``(kind, run_id, data)``.
        put: receives the record when the run starts and when it ends (the store's ``put``);
            ``None`` for cluster jobs, which never open the database.
        extra_provenance: added to the record's provenance (e.g. the cluster job id).
        claim_wait_s: how long to wait for another process's live claim on the run.

    Returns:
        The record (the columns of the store's ``runs`` table).

    Raises:
        Busy: another live process holds the run's claim.
        ClaimLost: the claim was taken over while this process was stopped (SIGSTOP past the
            claim's stale time); the other process trains the run, this one wrote nothing since.
    """
    with acquire(run_dir, wait_s=claim_wait_s) as claim:
        return _execute_claimed(run, run_dir, resume=resume, should_stop=should_stop, emit=emit, put=put,
                                extra_provenance=extra_provenance, claim=claim)


def _discard(run_dir: Path) -> None:
    """Remove a run directory's training files; whatever is in their place (a directory, a
    symbolic link) is removed too, never followed."""
    import shutil

    names = ["checkpoint.pt", "samples.npz", "result.json", "history.csv"]
    with contextlib.suppress(OSError):
        names += [p.name for p in run_dir.iterdir() if is_temporary(p.name)]
    for name in names:
        path = run_dir / name
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def _last_checkpoint_step(ckpt: Path, default: int) -> int:
    from .checkpoint import CheckpointError, load_checkpoint

    try:
        return int(load_checkpoint(ckpt)["step"])
    except (CheckpointError, OSError):
        return default


def _execute_claimed(run: PlannedRun, run_dir: Path, *, resume: bool, should_stop: Callable[[], bool], emit: Emit,
                     put: Callable[[RunRecord], None] | None,
                     extra_provenance: dict[str, Any] | None, claim: Claim) -> RunRecord:
    import torch

    from .train import CheckpointError, Interrupted, load_checkpoint, train

    cfg = run.config
    ckpt = run_dir / "checkpoint.pt"
    prior: list[dict[str, Any]] = []
    prior_wall, start_step = 0.0, 0
    discarded = None
    if resume and ckpt.exists():
        try:
            state = load_checkpoint(ckpt)
            prior, prior_wall, start_step = list(state["history"]), float(state["wall_s"]), int(state["step"])
        except CheckpointError as exc:
            discarded = str(exc)
            emit("note", run.run_id, {"message": f"{cfg.label()} [{run.run_id}]: {exc}; restarting from step 0"})
            resume = False
    if not (resume and ckpt.exists()):
        resume = False
        _discard(run_dir)
    prov = provenance(run)
    prov["start"] = _now()
    prov["resumed_from_step"] = start_step if resume else None
    if discarded is not None:
        prov["checkpoint_discarded"] = discarded
    prov.update(extra_provenance or {})
    record = new_record(run, str(run_dir), provenance=prov, status="running", steps=start_step, wall_s=prior_wall,
                        history=prior, started=prov["start"])
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

    def stop() -> bool:  # a lost claim raises ClaimLost: nothing more is written
        return claim.check() or should_stop()

    t0 = time.perf_counter()
    result = None
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # a run's numbers must not depend on the caller's default dtype
    from ..core import kernels

    kernels.track()
    try:
        try:
            result = train(cfg, checkpoint=ckpt, resume=resume, callback=on_eval, should_stop=stop,
                           progress=on_step)
        except CheckpointError as exc:  # loaded, but does not fit the model: start again from step 0
            emit("note", run.run_id, {"message": f"{cfg.label()} [{run.run_id}]: {exc}; restarting from step 0"})
            prov.update(checkpoint_discarded=str(exc), resumed_from_step=None)
            _discard(run_dir)
            prior, prior_wall, start_step, rows[:] = [], 0.0, 0, []
            result = train(cfg, checkpoint=ckpt, resume=False, callback=on_eval, should_stop=stop,
                           progress=on_step)
    except DivergedError as exc:
        record.update(status="diverged", steps=exc.step, error=str(exc),
                      metrics={"diverged_step": exc.step, "diverged_what": exc.what})
    except Interrupted as exc:
        record.update(status="interrupted", steps=exc.step, metrics={"interrupted_step": exc.step})
    except (StoreError, ClaimLost):
        raise
    except KeyboardInterrupt:  # a second SIGINT/SIGTERM (ForcedStop), or Ctrl-C in a library call:
        # record where the run stands (its last checkpoint), then leave at once
        torch.set_default_dtype(default_dtype)
        claim.check(now=True)
        step = _last_checkpoint_step(ckpt, start_step)
        record.update(status="interrupted", steps=step, metrics={"interrupted_step": step},
                      wall_s=prior_wall + time.perf_counter() - t0, history=prior + rows, finished=_now())
        write_json(run_dir / "result.json", {k: v for k, v in record.items() if k != "history"})
        if put is not None:
            put(record)
        raise
    except Exception as exc:  # noqa: BLE001 - a failing run is recorded, the grid goes on
        msg = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        record.update(status="failed", steps=rows[-1]["step"] if rows else start_step, error=msg,
                      metrics={"error": msg})
    finally:
        torch.set_default_dtype(default_dtype)
    claim.check(now=True)  # a process that lost its claim while stopped writes no result
    _kernel_provenance(prov, kernels.tracked())
    history = prior + rows
    if result is not None:
        history = result.history
        record.update(**result.record())
        prov.update(device=result.device, dtype=result.dtype)
        if result.samples is not None:
            write_samples(run_dir / "samples.npz", result.samples.float().numpy(),
                          result.sample_log_w.double().numpy())
    else:
        record.wall_s = prior_wall + time.perf_counter() - t0
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
class ForcedStop(KeyboardInterrupt):
    """A second SIGINT/SIGTERM while the grid was already stopping: leave now."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"second {signal.Signals(signum).name}")


class StopFlag:
    """Set by SIGINT/SIGTERM (or by hand); remembers which signal came first."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.event: Any = None  # a multiprocessing Event shared with workers
        self.received = 0  # signals delivered to this process

    def set(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum
        if self.event is not None:
            self.event.set()

    def signalled(self, signum: int) -> None:
        """A signal arrived: the first asks the grid to stop, a second one forces the exit."""
        self.received += 1
        if self.received > 1:
            raise ForcedStop(signum)
        self.set(signum)

    def __call__(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def catch_signals(flag: StopFlag) -> Iterator[None]:
    """Route SIGINT and SIGTERM to ``flag`` while inside (main thread only; elsewhere a no-op)."""
    old = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda s, _f: flag.signalled(s))
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


def _worker_main(stop_event: Any, inbox: Any, out: Any, store_path: str) -> None:
    """A worker process: runs the ``(run, resume)`` tasks of ``inbox`` until it gets ``None``.

    Results go to ``out`` as ``("done", run_id, record)``, ``("store", run_id, message)`` (the store
    cannot be written: the grid stops) or ``("error", run_id, message)``; progress events as
    ``("event", kind, run_id, data)``."""
    import torch

    torch.set_num_threads(1)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, _f: stop_event.set())

    def emit(kind: str, rid: str, data: dict[str, Any]) -> None:
        out.put(("event", kind, rid, data))

    while True:
        task = inbox.get()
        if task is None:
            return
        run, resume = task
        try:
            rec = execute(run, Path(store_path), resume=resume, should_stop=stop_event.is_set, emit=emit)
            out.put(("done", run.run_id, rec))
        except StoreError as exc:
            out.put(("store", run.run_id, str(exc)))
        except Exception as exc:  # noqa: BLE001 - reported to the grid, which records the run as failed
            out.put(("error", run.run_id, f"{type(exc).__name__}: {exc}".strip().splitlines()[0]))


# ---------------------------------------------------------------------------------------------
# the grid
# ---------------------------------------------------------------------------------------------
def run_grid(plan: Any, store: Store, *, workers: int = 1, resume: bool = False,
             reporter: Any, flag: StopFlag | None = None) -> GridOutcome:
    r"""Train the runs of a :class:`~sesamo_bench.harness.resume.ResumePlan` (or of a validated
    grid, planned here with :func:`~sesamo_bench.harness.resume.resume_plan` and ``resume``):
    in this process for ``workers=1``, else in a pool of worker processes."""
    if not isinstance(plan, ResumePlan):
        plan = resume_plan(list(plan), store, resume=resume)
    flag = flag or StopFlag()
    out = GridOutcome()
    todo, reused = plan.start, plan.reuse
    total = len(plan.start) + len(plan.reuse)
    reporter.grid(total)
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
    out.records = [done[rid] for rid in plan.order() if rid in done]
    out.signal = flag.signum
    out.not_started = total - len(out.records)
    return out


def _death(exitcode: int | None) -> str:
    """Why a worker process ended, from its exit code."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory, or kill -9)" if -exitcode == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with code {exitcode}"


class _Worker:
    """One worker process of the grid, with its own task and result queues and the task it runs
    (its own result queue: a worker killed while writing to it can corrupt or lock only that one)."""

    def __init__(self, ctx: Any, stop_event: Any, store_path: str):
        self.inbox = ctx.SimpleQueue()
        self.out = ctx.Queue()
        self.proc = ctx.Process(target=_worker_main, args=(stop_event, self.inbox, self.out, store_path),
                                daemon=True)
        self.proc.start()
        self.task: tuple[PlannedRun, bool] | None = None

    def give(self, task: tuple[PlannedRun, bool]) -> None:
        self.task = task
        self.inbox.put(task)


def _pool(todo: list[tuple[PlannedRun, bool]], store: Store, workers: int, flag: StopFlag, reporter: Any,
          done: dict[str, dict[str, Any]]) -> None:
    r"""Run ``todo`` on ``workers`` processes of our own (spawned), so that one dying worker (OOM
    killer, ``kill -9``) costs only its own run: that run is recorded ``failed`` with the cause,
    a new worker takes its place, the runs of the other workers go on undisturbed."""
    ctx = mp.get_context("spawn")
    stop_event = ctx.Event()
    flag.event = stop_event
    if flag():
        stop_event.set()
    waiting = deque(todo)
    error: BaseException | None = None
    pool: list[_Worker] = []
    by_id: dict[str, _Worker] = {}

    def handle(msg: tuple) -> None:
        nonlocal error
        if msg[0] == "event":
            reporter.event(msg[1], msg[2], msg[3])
            return
        kind, rid, value = msg
        w = by_id.pop(rid, None)
        if w is not None:
            w.task = None
        if kind == "done":
            if value is not None:
                done[rid] = value
        elif kind == "store":
            error = error or StoreError(value)
            stop_event.set()
        elif w is not None and w.task is None:
            run = next(r for r, _ in todo if r.run_id == rid)
            done[rid] = _crashed(run, store, f"worker error: {value}")

    def drain(timeout: float) -> None:
        """Handle what the live workers sent; wait up to ``timeout`` when nothing came."""
        got = False
        for w in list(pool):
            with contextlib.suppress(queue.Empty):
                while True:
                    handle(w.out.get_nowait())
                    got = True
        if not got and timeout > 0:
            time.sleep(timeout)

    try:
        while waiting or by_id:
            if stop_event.is_set() and flag.signum is None and error is None:
                flag.set(signal.SIGINT)  # a worker saw the signal (Ctrl-C reaches the whole group)
            while waiting and not stop_event.is_set():
                idle = [w for w in pool if w.task is None and w.proc.is_alive()]
                if not idle and len(pool) < workers:
                    pool.append(_Worker(ctx, stop_event, str(store.path)))
                    continue
                if not idle:
                    break
                task = waiting.popleft()
                idle[0].give(task)
                by_id[task[0].run_id] = idle[0]
            if not by_id:
                break
            drain(0.05)
            for w in list(pool):
                if w.proc.is_alive():
                    continue
                pool.remove(w)  # its queue is not read again: a message cut off by the kill would block
                if w.task is not None:
                    run = w.task[0]
                    by_id.pop(run.run_id, None)
                    done[run.run_id] = _crashed(run, store, f"worker process {w.proc.pid} died: "
                                                            f"{_death(w.proc.exitcode)}", pid=w.proc.pid)
                    reporter.event("end", run.run_id, done[run.run_id])
    finally:
        forced = sys.exc_info()[0] is not None
        for w in pool:
            with contextlib.suppress(Exception):
                if forced:
                    w.proc.kill()
                else:
                    w.inbox.put(None)
        # read what the workers still send while they end (a full queue would block their exit)
        while any(w.proc.is_alive() for w in pool):
            with contextlib.suppress(Exception):
                drain(0.05)
        for w in pool:
            w.proc.join()
        with contextlib.suppress(Exception):
            drain(0.0)
    if error is not None:
        raise error


def _crashed(run: PlannedRun, store: Store, msg: str, *, pid: int | None = None) -> RunRecord:
    """Record ``run`` as failed with ``msg`` (unless the dead worker had recorded its end already)."""
    old = store.get(run.run_id)
    if (old is not None and pid is not None and old["status"] in ("finished", "diverged", "failed")
            and (old.get("provenance") or {}).get("pid") == pid):
        return old
    first = msg.splitlines()[0]
    if old is None:
        rec = new_record(run, str(store.runs_dir / run.run_id))
    else:  # what the run had recorded (its provenance, history, steps) stays
        rec = old.replace()
    rec.update(status="failed", error=first, finished=_now(), metrics={"error": first})
    store.put(rec)
    return store.get(run.run_id) or rec
