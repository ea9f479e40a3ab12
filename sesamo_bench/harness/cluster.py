r"""Running a grid on a Slurm cluster through submitit: submission, job states, collecting results.

``run --executor slurm`` submits one job per run (a Slurm job array per grid, through submitit's
``executor.batch()``); ``--executor submitit-local`` goes through the same code with submitit's
``LocalExecutor`` (separate processes on this machine, for testing). Layout under the store's
folder (the shared filesystem)::

    results.sqlite                  written only by the submitting side and `collect`
    runs/<run_id>/                  written by the job: config.json, checkpoint.pt, history.csv,
                                    samples.npz, result.json
    jobs/<submission>/manifest.json one per submission: run_id, job id, config, log paths
    jobs/<submission>/*             submitit's pickles and the job logs (<job_id>_0_log.out/.err)

Jobs never open the database, so it is never written concurrently over a network filesystem:
``sesamo-bench collect`` (or ``run --wait``) reads each finished run directory whose
``result.json`` carries the job id of the run's latest submission and upserts it into the store.
A job that ended without a result (killed, out of memory, crashed) is recorded as ``failed``.

:mod:`submitit` is imported lazily (:func:`require_submitit`): it is the ``[slurm]`` extra.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import re
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import ConfigError, UserError
from .grid import PlannedRun
from .record import COLUMNS, RunRecord
from .store import Store, read_history_csv, write_json

EXECUTORS = ("local", "slurm", "submitit-local")
INSTALL_HINT = "pip install 'sesamo-bench[slurm]'"
#: time limit (minutes) when neither --slurm-time nor [executor.slurm] time is given
DEFAULT_TIME_MIN = 60
#: how often a job may hit its time limit and be requeued (preemptions are not counted)
MAX_TIMEOUTS = 20
#: job states shown by `status`; a finished job's run may also be `diverged`
STATES = ("queued", "running", "finished", "diverged", "failed", "unknown")
_SLURM_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "RESIZING", "SUSPENDED",
                 "READY", "PREEMPTED"}
_SLURM_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


class SubmitError(UserError):
    """Submitting to the cluster failed (sbatch missing or refusing the job)."""


# ---------------------------------------------------------------------------------------------
# settings: --slurm-* options and the [executor.slurm] table of benchmarks.toml
# ---------------------------------------------------------------------------------------------
@dataclass
class SlurmSettings:
    r"""Resources of each job; ``None`` leaves the cluster's default.

    Attributes:
        partition: Slurm partition (``--slurm-partition``).
        gpus: GPUs per job (``--slurm-gpus``).
        cpus: CPUs per job (``--slurm-cpus``); also the job's torch threads.
        mem: memory per job with a unit, e.g. ``"32G"`` (``--slurm-mem``).
        time: time limit in minutes (``--slurm-time``; default :data:`DEFAULT_TIME_MIN`). A job
            that reaches it is requeued and resumes from its last checkpoint.
        sbatch: extra sbatch options ``{key: value}`` (``--slurm-sbatch KEY=VALUE``), e.g.
            ``{"account": "proj42", "qos": "long"}``.
    """

    partition: str | None = None
    gpus: int | None = None
    cpus: int | None = None
    mem: str | None = None
    time: int | None = None
    sbatch: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: Any, where: str) -> SlurmSettings:
        """Validate a TOML table (``where`` names file and table in errors)."""
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table")
        names = [f.name for f in fields(cls)]
        out = cls()
        for key, value in table.items():
            if key not in names:
                raise ConfigError(f"{where}: unknown key '{key}'. Allowed: {', '.join(sorted(names))}")
            if key == "sbatch":
                if not isinstance(value, dict):
                    raise ConfigError(f"{where}: 'sbatch' must be a table of sbatch options, got {value!r}")
                out.sbatch = sbatch_options(value, f"{where[:-1]}.sbatch]")
            else:
                setattr(out, key, check_setting(key, value, where))
        return out

    def overridden_by(self, other: SlurmSettings) -> SlurmSettings:
        """These settings with every field ``other`` sets replaced (``sbatch`` keys merged)."""
        changes = {f.name: getattr(other, f.name) for f in fields(self)
                   if f.name != "sbatch" and getattr(other, f.name) is not None}
        return replace(self, **changes, sbatch={**self.sbatch, **other.sbatch})

    def is_empty(self) -> bool:
        return self == SlurmSettings()

    def parameters(self) -> dict[str, Any]:
        """Parameters of ``submitit.AutoExecutor.update_parameters`` (``slurm_*`` ones are Slurm-only)."""
        p: dict[str, Any] = {"name": "sesamo-bench", "timeout_min": self.time or DEFAULT_TIME_MIN}
        if self.gpus is not None:
            p["gpus_per_node"] = self.gpus
        if self.cpus is not None:
            p["cpus_per_task"] = self.cpus
        if self.partition is not None:
            p["slurm_partition"] = self.partition
        if self.mem is not None:
            p["slurm_mem"] = self.mem
        extra = dict(self.sbatch)
        if "signal" in extra:  # submitit writes --signal=USR2@<delay> itself; one line, the user's delay
            p["slurm_signal_delay_s"] = int(_SIGNAL_VALUE.fullmatch(extra.pop("signal")).group(1))
        if extra:
            p["slurm_additional_parameters"] = extra
        return p


def check_setting(key: str, value: Any, where: str) -> Any:
    """Validate one setting (from the command line as a string, or from TOML)."""
    if key == "partition":
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: 'partition' must be a non-empty string, got {value!r}")
        return value.strip()
    if key in ("gpus", "cpus", "time"):
        low = 0 if key == "gpus" else 1
        what = {"gpus": "GPUs per job", "cpus": "CPUs per job", "time": "the time limit in minutes"}[key]
        if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{where}: '{key}' ({what}) must be an integer >= {low}, got {value!r}")
        return value
    if key == "mem":
        if not isinstance(value, str) or not re.fullmatch(r"\d+[KMGT]", value.strip().upper()):
            raise ConfigError(f"{where}: 'mem' must be a size with a unit K, M, G or T (e.g. '32G'), got {value!r}")
        return value.strip().upper()
    raise ConfigError(f"{where}: unknown key '{key}'")


#: sbatch options that ``--slurm-sbatch`` and ``[executor.slurm.sbatch]`` may set: where and when a
#: job is scheduled, and who is told. Options that change what the job runs, where it writes or what
#: it inherits (``export``, ``chdir``, ``wrap``, ``output``, ``error``, ``get-user-env``, ``array``, ...)
#: are refused: submitit and the suite set those. ``signal`` is allowed only as ``USR2@SECONDS``: when,
#: before the time limit, a job is told to checkpoint and requeue (submitit's ``slurm_signal_delay_s``,
#: 90 s unless set), the one signal the suite's jobs handle
SBATCH_KEYS = ("account", "begin", "comment", "constraint", "cores-per-socket", "cpus-per-gpu", "deadline",
               "dependency", "exclude", "exclusive", "gpus-per-task", "gres", "gres-flags", "hint", "job-name",
               "licenses", "mail-type", "mail-user", "mem-per-cpu", "mem-per-gpu", "nice", "nodelist", "qos",
               "reservation", "signal", "sockets-per-node", "switches", "threads-per-core", "time-min", "tmp",
               "wckey")
_SIGNAL_VALUE = re.compile(r"USR2@(\d{1,5})")
#: sbatch options with a setting of their own (``--slurm-<name>``, ``[executor.slurm] <name>``)
_SBATCH_SETTINGS = {"partition": "partition", "time": "time", "mem": "mem", "cpus-per-task": "cpus",
                    "gpus-per-node": "gpus", "gpus": "gpus"}
#: the characters of an sbatch value: no spaces, quotes, '=', '$', newlines (which would add options or
#: lines to the job script)
_SBATCH_VALUE = re.compile(r"[A-Za-z0-9_.:@%/+,&|*\[\]][A-Za-z0-9_.:@%/+,&|*\[\]-]*")


def check_sbatch(key: str, value: Any, where: str) -> str:
    """The value of sbatch option ``key`` as a string, if ``key`` is one of :data:`SBATCH_KEYS` and the
    value cannot add options to the job script; else a :class:`ConfigError` naming the key."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
        raise ConfigError(f"{where}: '{key}' is not an sbatch option name (expected e.g. account, qos, constraint)")
    name = key.lower().replace("_", "-")
    if name in _SBATCH_SETTINGS:
        s = _SBATCH_SETTINGS[name]
        raise ConfigError(f"{where}: sbatch option '{key}' is set with --slurm-{s} or [executor.slurm] {s}")
    if name not in SBATCH_KEYS:
        raise ConfigError(f"{where}: sbatch option '{key}' is not allowed (only options that choose where and when "
                          f"a job runs are). Allowed: {', '.join(SBATCH_KEYS)}")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}: sbatch option '{key}' must be a string or a number, got {value!r}")
    text = str(value)
    if name == "signal" and not _SIGNAL_VALUE.fullmatch(text):
        raise ConfigError(f"{where}: sbatch option 'signal' must be USR2@SECONDS (how long before the time limit "
                          f"a job checkpoints and is requeued), got {text!r}")
    if len(text) > 256 or not _SBATCH_VALUE.fullmatch(text):
        raise ConfigError(f"{where}: sbatch option '{key}': value {text!r} is refused; a value is letters, digits "
                          f"and _ . : @ % / + , & | * [ ] - (no spaces, quotes, '=' or newlines; not starting "
                          f"with '-'; at most 256 characters)")
    return text


def sbatch_options(table: dict[str, Any], where: str) -> dict[str, str]:
    """Checked sbatch options (:func:`check_sbatch`), keys spelled as sbatch does (``mail_type`` ->
    ``mail-type``); the same option given in two spellings is an error."""
    out: dict[str, str] = {}
    for key, value in table.items():
        text = check_sbatch(key, value, where)
        name = key.lower().replace("_", "-")
        if name in out:
            raise ConfigError(f"{where}: sbatch option '{name}' given twice; give it once")
        out[name] = text
    return out


def cli_settings(*, partition: str | None, gpus: int | None, cpus: int | None, mem: str | None,
                 time_min: int | None, sbatch: list[str]) -> SlurmSettings:
    """Settings from the ``--slurm-*`` options."""
    from .grid import parse_assignments

    s = SlurmSettings()
    for key, value, opt in (("partition", partition, "--slurm-partition"), ("gpus", gpus, "--slurm-gpus"),
                            ("cpus", cpus, "--slurm-cpus"), ("mem", mem, "--slurm-mem"),
                            ("time", time_min, "--slurm-time")):
        if value is not None:
            setattr(s, key, check_setting(key, value, opt))
    s.sbatch = sbatch_options(parse_assignments(sbatch, "--slurm-sbatch"), "--slurm-sbatch")
    return s


def require_submitit() -> Any:
    """The :mod:`submitit` module, or a :class:`UserError` saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise UserError(f"the cluster executors need submitit, which is not installed; install it with "
                        f"{INSTALL_HINT} (or pip install submitit)") from None
    return submitit


# ---------------------------------------------------------------------------------------------
# submission
# ---------------------------------------------------------------------------------------------
def make_executor(kind: str, folder: Path, settings: SlurmSettings) -> Any:
    """A submitit executor: ``slurm`` (sbatch) or ``submitit-local`` (processes on this machine)."""
    submitit = require_submitit()
    cluster = {"slurm": "slurm", "submitit-local": "local"}.get(kind)
    if cluster is None:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=MAX_TIMEOUTS,
                               local_max_num_timeout=MAX_TIMEOUTS)
    ex.update_parameters(**settings.parameters())
    return ex


@dataclass
class Submission:
    """What :func:`submit` did: the manifest written and the submitit jobs (for waiting)."""

    manifest: dict[str, Any]
    path: Path
    jobs: list[Any]


def submit(runs: list[tuple[PlannedRun, bool]], store: Store, *, kind: str, settings: SlurmSettings) -> Submission:
    r"""Submit one job per run (one job array on Slurm) and write the submission's manifest.

    Arguments:
        runs: ``(run, resume)`` pairs; ``resume`` continues from the run's checkpoint when present.
        store: the results store; run directories go to ``<store_dir>/runs``, job files to
            ``<store_dir>/jobs/<submission>``. The database is not written.
        kind: ``slurm`` or ``submitit-local``.
        settings: resources of every job.
    """
    from .cluster_job import RunJob

    store_dir = store.path.resolve().parent
    sub_id = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
    folder = store_dir / "jobs" / sub_id
    try:
        ex = make_executor(kind, folder, settings)
        with ex.batch():
            jobs = [ex.submit(RunJob(run, store.runs_dir / run.run_id, resume=res, submission=sub_id))
                    for run, res in runs]
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - not on a Slurm cluster, sbatch refusing the job, ...
        msg = f"{type(exc).__name__}: {exc}".strip().splitlines()
        raise SubmitError(f"submitting {len(runs)} job(s) with --executor {kind} failed: {' '.join(msg[:3])}") \
            from None
    entries = []
    for (run, res), job in zip(runs, jobs):
        cfg = run.config
        entries.append({"run_id": run.run_id, "job_id": str(job.job_id), "label": cfg.label(),
                        "benchmark": run.benchmark, "target": cfg.target, "method": cfg.method, "seed": cfg.seed,
                        "params": run.params, "config": cfg.to_dict(), "resume": res,
                        "run_dir": str(store.runs_dir / run.run_id), "stdout": str(job.paths.stdout),
                        "stderr": str(job.paths.stderr)})
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")
    manifest = {"submission": sub_id, "executor": kind, "created": created, "store": str(store.path.resolve()),
                "folder": str(folder),
        "parameters": settings.parameters(), "jobs": entries}
    path = folder / "manifest.json"
    write_json(path, manifest)
    return Submission(manifest, path, jobs)


def wait(sub: Submission, *, on_done: Callable[[dict[str, Any]], None], poll_s: float | None = None) -> None:
    """Block until every job of ``sub`` has ended; ``on_done(entry)`` is called as each one ends."""
    poll = poll_s if poll_s is not None else (0.5 if sub.manifest["executor"] == "submitit-local" else 10.0)
    pending = list(zip(sub.manifest["jobs"], sub.jobs))
    while pending:
        still = []
        for entry, job in pending:
            with quiet_submitit():
                ended = job.done()
            if ended:
                on_done(entry)
            else:
                still.append((entry, job))
        pending = still
        if pending:
            time.sleep(poll)


@contextlib.contextmanager
def quiet_submitit() -> Iterator[None]:
    """Silence submitit's warnings (it logs them to stdout too) while polling job states here."""
    log = logging.getLogger("submitit")
    old = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(old)


# ---------------------------------------------------------------------------------------------
# job states
# ---------------------------------------------------------------------------------------------
@dataclass
class JobStatus:
    """The state of one submitted run: ``state`` is one of :data:`STATES`."""

    submission: str
    executor: str
    entry: dict[str, Any]
    state: str
    detail: str = ""
    log: str | None = None  # the log file shown for a failed job
    log_tail: str = ""
    result: dict[str, Any] | None = None  # result.json written by this job

    def summary(self) -> dict[str, Any]:
        """The ``status --json`` object of this job."""
        return {"submission": self.submission, "executor": self.executor, "job_id": self.entry["job_id"],
                "run_id": self.entry["run_id"], "label": self.entry["label"], "state": self.state,
                "detail": self.detail, "log": self.log, "log_tail": self.log_tail,
                "stdout": self.entry["stdout"], "stderr": self.entry["stderr"]}


#: keys of a manifest and of each of its job entries, with their types
_MANIFEST_KEYS = {"submission": str, "executor": str, "folder": str, "jobs": list}
_ENTRY_KEYS = {"run_id": str, "job_id": str, "label": str, "target": str, "method": str, "seed": int,
               "params": dict, "config": dict, "run_dir": str, "stdout": str, "stderr": str}


def check_manifest(m: Any, path: Path) -> dict[str, Any]:
    """``m`` if it has the shape :func:`submit` writes, else a :class:`UserError` naming what is wrong."""
    def bad(what: str) -> UserError:
        return UserError(f"job manifest {path} is not a sesamo-bench manifest: {what}")

    if not isinstance(m, dict):
        raise bad(f"expected a JSON object, got {type(m).__name__}")
    for key, kind in _MANIFEST_KEYS.items():
        if not isinstance(m.get(key), kind):
            raise bad(f"'{key}' must be a {kind.__name__}")
    if m["executor"] not in ("slurm", "submitit-local"):
        raise bad(f"'executor' must be slurm or submitit-local, got {m['executor']!r}")
    for i, e in enumerate(m["jobs"]):
        if not isinstance(e, dict):
            raise bad(f"jobs[{i}] must be an object")
        for key, kind in _ENTRY_KEYS.items():
            if not isinstance(e.get(key), kind) or (kind is int and isinstance(e.get(key), bool)):
                raise bad(f"jobs[{i}].{key} must be a {kind.__name__}")
        if not re.fullmatch(r"[0-9a-f]{12}", e["run_id"]) or not re.fullmatch(r"[0-9_.\[\]-]+", e["job_id"]):
            raise bad(f"jobs[{i}] has a malformed run_id or job_id")
    return m


class _Outside(Exception):
    """A path of a manifest that leads out of the store's folder (the reason)."""


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def confine_manifest(m: dict[str, Any], path: Path, store_dir: Path) -> str | None:
    r"""Check that every path of manifest ``m`` (at ``path``) stays in the store's folder, and replace
    each by its resolved form; the reason it does not, else ``None``.

    ``folder`` must be the manifest's own folder ``<store_dir>/jobs/<x>``, each ``run_dir`` the
    run's directory ``<store_dir>/runs/<run_id>``, each ``stdout`` / ``stderr`` a file in
    ``folder``: after following symlinks and ``..``. A relative path is taken from the store's
    folder; an absolute one under the folder the manifest was written in (its ``store``) is moved
    into this one, so that a copied or moved store keeps its manifests.
    """
    store_dir = store_dir.resolve()
    jobs, runs = store_dir / "jobs", store_dir / "runs"
    origin = Path(m["store"]).parent if isinstance(m.get("store"), str) and Path(m["store"]).is_absolute() else None

    def place(value: str, what: str, root: Path) -> Path:
        p = Path(value)
        if not p.is_absolute():
            p = store_dir / p
        elif origin is not None and not _inside(p, store_dir) and _inside(p, origin):
            p = store_dir / p.relative_to(origin)
        try:
            real = p.resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte
            raise _Outside(f"{what} {value!r} cannot be resolved ({exc})") from None
        if not _inside(real, root) or real == root:
            raise _Outside(f"{what} {value!r} leads outside {root}")
        return real

    try:
        own = path.parent.resolve()
        if not _inside(own, jobs) or own == jobs:
            raise _Outside(f"its folder {path.parent} leads outside {jobs}")
        folder = place(m["folder"], "'folder'", jobs)
        if folder != own:
            raise _Outside(f"'folder' {m['folder']!r} is not the manifest's own folder {path.parent}")
        fixed = []
        for i, e in enumerate(m["jobs"]):
            run_dir = place(e["run_dir"], f"jobs[{i}].run_dir", runs)
            if run_dir != (runs / e["run_id"]).resolve():
                raise _Outside(f"jobs[{i}].run_dir {e['run_dir']!r} is not the directory of run {e['run_id']}")
            logs = {k: str(place(e[k], f"jobs[{i}].{k}", folder)) for k in ("stdout", "stderr")}
            fixed.append({**e, "run_dir": str(run_dir), **logs})
    except _Outside as exc:
        return str(exc)
    m["folder"], m["jobs"] = str(folder), fixed
    return None


def manifests(store_dir: Path) -> list[dict[str, Any]]:
    """Every submission's manifest under ``<store_dir>/jobs``, oldest first (each checked). A
    manifest with a path outside the store's folder (:func:`confine_manifest`) is left out with one
    ``warning:`` line naming it: its logs are not read and its results not collected."""
    out = []
    store_dir = store_dir.resolve()
    jobs = store_dir / "jobs"
    if not jobs.is_dir():
        return []
    for path in sorted(jobs.glob("*/manifest.json")):
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read job manifest {path}: {exc}") from None
        why = confine_manifest(check_manifest(m, path), path, store_dir)
        if why is not None:
            print(f"warning: job manifest {path} refused: {why}; its jobs are left out", file=sys.stderr, flush=True)
            continue
        out.append(m)
    return sorted(out, key=lambda m: (str(m.get("created", "")), m["submission"]))


def job_statuses(store_dir: Path, *, tail: int = 10) -> list[JobStatus]:
    """The state of the latest submission of every submitted run (in submission order)."""
    latest: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for m in manifests(store_dir):
        for e in m["jobs"]:
            latest.pop(e["run_id"], None)
            latest[e["run_id"]] = (m, e)
    try:
        submitit = require_submitit()
    except UserError:
        submitit = None
    jobs = {}
    if submitit is not None:
        for rid, (m, e) in latest.items():
            cls = submitit.SlurmJob if m["executor"] == "slurm" else submitit.LocalJob
            jobs[rid] = cls(folder=m["folder"], job_id=e["job_id"])
        if any(m["executor"] == "slurm" for m, _ in latest.values()) and shutil.which("sacct") and _accounting():
            with quiet_submitit():
                submitit.SlurmJob.watcher.update()  # one sacct call for every job
    queue = _squeue_states() if any(m["executor"] == "slurm" for m, _ in latest.values()) else {}
    out = []
    for rid, (m, e) in latest.items():
        st = JobStatus(m["submission"], m["executor"], e, "unknown")
        _fill(st, jobs.get(rid), tail, queue)
        out.append(st)
    return out


def _squeue_states() -> dict[str, str]:
    """Job id -> state from ``squeue`` (pending, running and recently ended jobs): what `status`
    uses where ``sacct`` knows nothing (a cluster without accounting storage)."""
    import subprocess

    if not shutil.which("squeue"):
        return {}
    try:
        out = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i|%T"], capture_output=True,
                             text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return {}
    states = {}
    for line in out.stdout.splitlines():
        jid, _, state = line.strip().partition("|")
        if not (jid and state):
            continue
        m = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", jid)  # pending array tasks: 12_[0-3,5%2]
        if m:
            for part in m.group(2).split(","):
                lo, _, hi = part.partition("-")
                if lo.isdigit() and (hi.isdigit() or not hi) and int(hi or lo) - int(lo) < 100000:
                    for i in range(int(lo), int(hi or lo) + 1):
                        states[f"{m.group(1)}_{i}"] = state.upper()
        else:
            states[jid] = state.upper()
    return states


def _accounting() -> bool:
    """Whether this cluster keeps accounting (else ``sacct`` knows no job, and `status` uses squeue)."""
    import subprocess

    if not shutil.which("scontrol"):
        return True
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return True
    return not re.search(r"AccountingStorageType\s*=\s*accounting_storage/none", out.stdout)


def _fill(st: JobStatus, job: Any, tail: int, queue: dict[str, str] | None = None) -> None:
    e = st.entry
    st.result = _own_result(e, st.submission)
    if st.result is not None:
        st.state = "finished" if st.result["status"] == "finished" else st.result["status"]
        st.detail = st.result.get("error") or ""
    elif job is None:
        st.detail = f"install submitit to see job states ({INSTALL_HINT})"
    elif job.paths.result_pickle.exists():
        # the job has ended but its run directory holds no result.json of this job. submitit's
        # result pickle is never unpickled here (a planted one would run code): the cause is in
        # the job's log, shown below
        st.state = "failed"
        st.detail = "the job ended without writing a result"
    elif st.executor == "slurm":
        raw = str(job.watcher.get_state(e["job_id"], mode="cache") or "UNKNOWN").upper()
        if raw == "UNKNOWN" and (queue or {}).get(e["job_id"]):
            raw = queue[e["job_id"]]  # no accounting storage: squeue still knows the job
        st.state = slurm_category(raw)
        st.detail = (f"slurm: {raw}" if shutil.which("sacct") or shutil.which("squeue")
                     else "sacct not found: run status on the cluster")
        if st.state == "failed" and raw.startswith("COMPLETED"):
            st.detail = "the job ended without writing a result"
    else:
        st.state = "running" if _controller_alive(e["job_id"]) else "failed"
        if st.state == "failed":
            st.detail = "the job ended without writing a result"
    if st.state == "failed":
        for log in (Path(e["stderr"]), Path(e["stdout"])):
            text = _tail(log, tail)
            if text:
                st.log, st.log_tail = str(log), text
                break


def slurm_category(raw: str) -> str:
    """Map a Slurm job state (``sacct``'s State) onto ``queued`` / ``running`` / ``failed`` / ``unknown``."""
    word = raw.split()[0].upper() if raw.strip() else "UNKNOWN"
    if word in _SLURM_QUEUED:
        return "queued"
    if word in _SLURM_RUNNING:
        return "running"
    if word == "UNKNOWN":
        return "unknown"
    return "failed"  # FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, ... or COMPLETED without a result


def _own_result(entry: dict[str, Any], submission: str) -> dict[str, Any] | None:
    """``result.json`` of the run if this job (not an earlier or a local run) wrote it."""
    path = Path(entry["run_dir"]) / "result.json"
    try:
        if not path.is_file():  # a FIFO would block
            return None
        res = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    prov = res.get("provenance") if isinstance(res, dict) else None
    if not isinstance(prov, dict) or res.get("run_id") != entry["run_id"]:
        return None
    if (str(prov.get("job_id")), prov.get("submission")) != (entry["job_id"], submission):
        return None
    return res if res.get("status") in ("finished", "diverged", "failed", "interrupted") else None


def _controller_alive(job_id: str) -> bool:
    """Whether the process of a submitit-local job (its id is the controller's pid) still runs."""
    try:
        pid = int(job_id)
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (ValueError, OSError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and b"submitit" in cmdline


def _tail(path: Path, n: int, max_bytes: int = 1 << 16) -> str:
    """The last ``n`` lines of a log (of its last ``max_bytes``); "" unless it is a regular file."""
    try:
        if not path.is_file():  # a FIFO or a device would block or never end
            return ""
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - max_bytes))
            lines = fh.read(max_bytes).decode("utf-8", errors="replace").rstrip().splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


# ---------------------------------------------------------------------------------------------
# collecting
# ---------------------------------------------------------------------------------------------
@dataclass
class Collected:
    """What :func:`collect` did."""

    records: list[RunRecord] = field(default_factory=list)
    pending: list[JobStatus] = field(default_factory=list)


def collect(store: Store, *, run_ids: set[str] | None = None, statuses: list[JobStatus] | None = None) -> Collected:
    r"""Ingest every ended job's run directory into the store (idempotent).

    A job with a ``result.json`` is recorded as that file says (history from ``history.csv``); a
    job that ended without one is recorded as ``failed`` with the last line of its log. Jobs still
    queued or running are returned in ``pending``. ``run_ids`` restricts it to those runs;
    ``statuses`` reuses states just read by :func:`job_statuses`.
    """
    out = Collected()
    for st in statuses if statuses is not None else job_statuses(store.path.resolve().parent):
        if run_ids is not None and st.entry["run_id"] not in run_ids:
            continue
        e = st.entry
        if st.result is not None:
            rec = RunRecord.from_row({k: v for k, v in st.result.items() if k in COLUMNS})
            rec.run_dir = e["run_dir"]  # the checked directory, not what the run's file says
            rec.history = read_history_csv(Path(e["run_dir"]) / "history.csv")
        elif st.state == "failed":
            reason = st.detail or "the job failed"
            if st.log_tail:
                reason += f" ({st.log_tail.strip().splitlines()[-1]})"
            rec = RunRecord(run_id=e["run_id"], benchmark=e["benchmark"], target=e["target"], method=e["method"],
                            seed=e["seed"], params=e["params"], config=e["config"], status="failed",
                            error=f"job {e['job_id']}: {reason}", run_dir=e["run_dir"],
                            provenance={"job_id": e["job_id"], "submission": st.submission},
                            finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        else:
            out.pending.append(st)
            continue
        store.put(rec)
        out.records.append(store.get(e["run_id"]) or rec)
    return out
