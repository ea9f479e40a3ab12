r"""The ``sesamo-bench`` command line: ``list``, ``run``, ``status``, ``collect``, ``report``, ``plot``, ``show``,
``measure``, ``hmc``, ``perf``.

Each command only parses its arguments and calls plain functions (:mod:`sesamo_bench.grid`,
:mod:`sesamo_bench.runner`, :mod:`sesamo_bench.store`, :mod:`sesamo_bench.benchmarks`). Every
error a user can cause (:class:`~sesamo_bench.errors.UserError`, a bad option, an unreadable
store) becomes one line ``error: <message>`` on stderr and exit code 2, before anything is
written to the store.

Exit codes: 0 success; 1 some run ``failed``; 2 bad input or unusable store; 130 / 143 the grid
was stopped by SIGINT / SIGTERM (checkpoints kept, continue with ``--resume``); with ``run
--executor slurm --wait``, 130 means Ctrl-C stopped the waiting (the jobs go on).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from typer.core import TyperGroup

from .errors import ConfigError, UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: keys of each object of ``run --json`` (a contract) and of the fallback table
JSON_FIELDS = ("run_id", "benchmark", "target", "method", "seed", "params", "status", "steps", "wall_s", "ess",
               "log_z", "log_z_err", "breaking_ratio", "breaking_ratio_exact", "run_dir", "error",
               # added later (from the run's metrics): see docs of sesamo_bench.train.EXTRA_METRICS
               "ess_n", "log_z_err_reliable", "breaking_ratio_is", "breaking_ratio_is_err", "breaking_ratio_exact_err",
               "support_missing", "support_missing_err",
               # particle targets: Wasserstein distances of energy and pair distances to the reference samples
               "energy_w1", "energy_w2", "distance_w1", "distance_w2")
#: most worker processes ``run --workers`` accepts
MAX_WORKERS = 4096
#: largest batch ``perf --batches`` accepts
MAX_PERF_BATCH = 1 << 22
LIST_WHAT = ("targets", "symmetries", "methods", "benchmarks", "presets", "architectures")
FORMATS = ("terminal", "markdown", "csv", "json", "latex")


# usage errors of the option parser (Typer >= 0.24 vendors Click; older Typer uses Click itself)
_USAGE_ERRORS: tuple[type[BaseException], ...] = tuple(
    e for e in (getattr(typer, "TyperException", None),) if e is not None)
try:
    import click as _click

    _USAGE_ERRORS += (_click.exceptions.ClickException,)
except ImportError:  # pragma: no cover
    pass


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


class _Group(TyperGroup):
    """Turns user errors into ``error: <message>`` (one line) and exit code 2."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args=args, prog_name=prog_name or "sesamo-bench", complete_var=complete_var,
                              standalone_mode=False, **extra)
        except typer.Abort:
            rv = 130
        except _USAGE_ERRORS as exc:
            rv = _fail(exc.format_message() if hasattr(exc, "format_message") else str(exc))
        except (UserError, tomllib.TOMLDecodeError) as exc:
            rv = _fail(str(exc))
        except BrokenPipeError:  # `sesamo-bench report | head`
            rv = 1
        except OSError as exc:
            where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
            rv = _fail(f"{exc.strerror or exc}{where}")
        code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _fail(message: str) -> int:
    typer.echo(f"error: {_one_line(message)}", err=True)
    return 2


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmarks of symmetry-aware normalizing flows (SESaMo, canonicalization, RealNVP).")


# ---------------------------------------------------------------------------------------------
# list
# ---------------------------------------------------------------------------------------------
@app.command("list")
def list_cmd(
    what: Optional[str] = typer.Argument(
        None, help="targets | symmetries | methods | benchmarks | presets | architectures"),
    benchmarks_file: Optional[Path] = typer.Option(None, "--benchmarks-file", help="benchmarks.toml to list"),
) -> None:
    """List plugins, methods, benchmarks and presets with their parameters and defaults."""
    if what is not None and what not in LIST_WHAT:
        raise ConfigError(f"cannot list '{what}'. Choose one of: {', '.join(LIST_WHAT)}")
    typer.echo(listing(what, benchmarks_file))


def listing(what: str | None, benchmarks_file: Path | None = None) -> str:
    """The text of ``sesamo-bench list [what]``."""
    from . import benchmarks, plugins
    from .config import HYPER, PRESETS
    from .methods import METHODS
    from .registry import parameters

    out: list[str] = []

    def fmt_params(cls: type) -> str:
        ps = parameters(cls)
        return ", ".join(f"{k}={v!r}" for k, v in ps.items()) or "(no parameters)"

    def doc(cls: type) -> str:
        return ((cls.__doc__ or "").strip().splitlines() or [""])[0]

    def section(title: str, registry: Any) -> None:
        out.append(f"{title}:")
        for name in registry.names():
            cls = registry.get(name)
            out.append(f"  {name:<18} {doc(cls)}")
            out.append(f"  {'':<18} parameters: {fmt_params(cls)}")
        for err in registry.errors.values():
            out.append(f"  ! plugin failed to load: {err}")

    sections = [what] if what else list(LIST_WHAT)
    for sec in sections:
        if sec == "targets":
            section("targets", plugins.targets)
        elif sec == "symmetries":
            section("symmetries", plugins.symmetries)
        elif sec == "architectures":
            from .architecture import schema

            out.append("architectures (--set flow=NAME flow.<param>=value):")
            for name in plugins.architectures.names():
                cls = plugins.architectures.get(name)
                eq = ", ".join(cls.equivariance) or "none"
                out.append(f"  {name:<18} {cls.description or doc(cls)}")
                out.append(f"  {'':<18} domains: {', '.join(cls.domains)}; equivariant under: {eq}")
                out.append(f"  {'':<18} parameters: "
                           + (", ".join(f"{k}={v!r}" for k, v in schema(cls).items()) or "(no parameters)"))
            for err in plugins.architectures.errors.values():
                out.append(f"  ! plugin failed to load: {err}")
        elif sec == "methods":
            out.append("methods:")
            for name, cls in METHODS.items():
                sym = "needs a symmetry" if cls.needs_symmetry else "no symmetry"
                out.append(f"  {name:<18} {cls.description} ({sym})")
        elif sec == "presets":
            out.append(f"presets: {', '.join(PRESETS)} (per target; `--set key=value` overrides)")
            for name in plugins.targets.names():
                cls = plugins.targets.get(name)
                for p in PRESETS:
                    table = {k: v for k, v in cls.presets.get(p, {}).items() if k != "methods"}
                    per = cls.presets.get(p, {}).get("methods", {})
                    extra = "".join(f"; {m}: " + ", ".join(f"{k}={v}" for k, v in mv.items()) for m, mv in per.items())
                    out.append(f"  {name}/{p}: " + (", ".join(f"{k}={v}" for k, v in table.items()) or "(defaults)")
                               + extra)
            out.append("  defaults: " + ", ".join(f"{k}={v!r}" for k, v in HYPER.items()))
        elif sec == "benchmarks":
            path = benchmarks_file or benchmarks.default_file()
            out.append(f"benchmarks ({path}):")
            for b in benchmarks.load(path).values():
                r = b.request
                methods = ",".join(r.methods) if r.methods else "all"
                sweep = " ".join(f"{k}={','.join(map(str, v))}" for k, v in r.sweeps.items())
                out.append(f"  {b.name:<22} {b.description}")
                out.append(f"  {'':<22} target={r.target} methods={methods} seeds={','.join(map(str, r.seeds))} "
                           f"preset={r.preset}" + (f" sweep {sweep}" if sweep else ""))
            slurm = benchmarks.executor_settings(path)
            if not slurm.is_empty():
                out.append("  [executor.slurm] (defaults of run --executor slurm): "
                           + " ".join(f"{k}={v}" for k, v in vars(slurm).items() if v not in (None, {})))
        out.append("")
    return "\n".join(out).rstrip()


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------
@app.command("run")
def run_cmd(
    target: Optional[str] = typer.Option(None, "--target", help="target plugin (see `list targets`)"),
    methods: Optional[str] = typer.Option(None, "--methods", help="'all' or a comma list (default: all)"),
    preset: Optional[str] = typer.Option(None, "--preset", help="smoke | quick | paper (default: quick)"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="comma list of seeds (default: 0,1,2)"),
    set_: List[str] = typer.Option([], "--set", help="key=value: target parameter, hyperparameter or "
                                                     "symmetry.<param> (repeatable)"),
    sweep: List[str] = typer.Option([], "--sweep", help="key=v1,v2,...: one run per value (repeatable)"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda (default: auto)"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto | float32 | float64 (default: auto)"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, max=MAX_WORKERS,
                                          help="parallel worker processes (default: one per CPU core)"),
    store: Optional[Path] = typer.Option(None, "--store",
                                         help="results database (default: ./sesamo-runs/results.sqlite)"),
    json_out: bool = typer.Option(False, "--json", help="print only a JSON array of the runs on stdout"),
    quiet: bool = typer.Option(False, "--quiet", help="plain log lines instead of progress bars"),
    resume: bool = typer.Option(False, "--resume", help="skip finished runs, continue interrupted ones"),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", help="run a benchmark of benchmarks.toml"),
    benchmarks_file: Optional[Path] = typer.Option(None, "--benchmarks-file", help="benchmarks.toml to use"),
    executor: str = typer.Option("local", "--executor",
                                 help="local: this machine (--workers processes); slurm: one Slurm job per run "
                                      "through submitit (pip install 'sesamo-bench\\[slurm]'); submitit-local: "
                                      "the slurm code path with local processes, for testing. The --slurm-* "
                                      "options default to the executor.slurm table of benchmarks.toml"),
    wait: bool = typer.Option(False, "--wait", help="cluster: wait for the jobs, then collect their results"),
    slurm_partition: Optional[str] = typer.Option(None, "--slurm-partition", help="cluster: Slurm partition"),
    slurm_gpus: Optional[int] = typer.Option(None, "--slurm-gpus", help="cluster: GPUs per job"),
    slurm_cpus: Optional[int] = typer.Option(None, "--slurm-cpus", help="cluster: CPUs per job (torch threads)"),
    slurm_mem: Optional[str] = typer.Option(None, "--slurm-mem", help="cluster: memory per job, e.g. 16G"),
    slurm_time: Optional[int] = typer.Option(None, "--slurm-time",
                                             help="cluster: time limit per job in minutes (default 60); a job "
                                                  "that reaches it is requeued and resumes from its checkpoint"),
    slurm_sbatch: List[str] = typer.Option([], "--slurm-sbatch", help="cluster: extra sbatch option KEY=VALUE, "
                                                                      "e.g. account=proj42 (repeatable)"),
) -> None:
    """Train a grid of runs (methods x seeds x sweep values) and record them in the store.

    With --executor slurm every run is a Slurm job; follow them with `status`, record them with `collect` (or --wait).
    """
    from . import grid

    cluster_opts = {"--wait": wait, "--slurm-partition": slurm_partition, "--slurm-gpus": slurm_gpus,
                    "--slurm-cpus": slurm_cpus, "--slurm-mem": slurm_mem, "--slurm-time": slurm_time,
                    "--slurm-sbatch": slurm_sbatch}
    settings = None
    if executor == "local":
        given = [k for k, v in cluster_opts.items() if v not in (None, False, [])]
        if given:
            raise ConfigError(f"{given[0]} applies to --executor slurm (or submitit-local), not to local runs")
    else:
        from . import benchmarks, cluster

        if executor not in cluster.EXECUTORS:
            raise ConfigError(f"--executor must be one of {', '.join(cluster.EXECUTORS)}, got {executor!r}")
        if workers is not None:
            raise ConfigError(f"--workers applies to --executor local; with --executor {executor} every run is a job")
        cluster.require_submitit()
        cli = cluster.cli_settings(partition=slurm_partition, gpus=slurm_gpus, cpus=slurm_cpus, mem=slurm_mem,
                                   time_min=slurm_time, sbatch=slurm_sbatch)
        settings = benchmarks.executor_settings(benchmarks_file).overridden_by(cli)
    req = grid_request(target=target, methods=methods, preset=preset, seeds=seeds, sets=set_, sweeps=sweep,
                       device=device, dtype=dtype, benchmark=benchmark, benchmarks_file=benchmarks_file)
    runs, notes = grid.plan(req)
    if settings is None:
        code = run_and_report(runs, notes, store_path=store, workers=workers, resume=resume, json_out=json_out,
                              quiet=quiet)
    else:
        code = submit_and_report(runs, notes, store_path=store, executor=executor, settings=settings, resume=resume,
                                 wait=wait, json_out=json_out)
    if code:
        raise typer.Exit(code)


def grid_request(*, target: str | None, methods: str | None, preset: str | None, seeds: str | None,
                 sets: list[str], sweeps: list[str], device: str | None, dtype: str | None,
                 benchmark: str | None, benchmarks_file: Path | None):
    """Combine command-line options (and a benchmark) into a :class:`~sesamo_bench.grid.GridRequest`."""
    from . import benchmarks, grid
    from .config import check_hyper

    overrides: dict[str, Any] = dict(grid.parse_assignments(sets, "--set"))
    if device is not None:
        overrides["device"] = check_hyper("device", device, "--device")
    if dtype is not None:
        overrides["dtype"] = check_hyper("dtype", dtype, "--dtype")
    sweep_values = grid.parse_sweeps(sweeps)
    method_list = None if methods is None or methods.strip() == "all" else grid.parse_list(methods, "--methods")
    seed_list = grid.parse_seeds(seeds) if seeds is not None else None
    if benchmark is not None:
        if target is not None:
            raise ConfigError("--target cannot be combined with --benchmark (the benchmark names its target)")
        req = benchmarks.get(benchmark, benchmarks_file).request
        req.overrides.update(overrides)
        req.sweeps.update(sweep_values)
        if methods is not None:
            req.methods = method_list
        if seed_list is not None:
            req.seeds = seed_list
        if preset is not None:
            req.preset = preset
        return req
    if benchmarks_file is not None:
        raise ConfigError("--benchmarks-file needs --benchmark NAME")
    if target is None:
        raise ConfigError("give --target NAME (see `sesamo-bench list targets`) or --benchmark NAME")
    return grid.GridRequest(target=target, methods=method_list, seeds=seed_list or [0, 1, 2],
                            preset=preset or "quick", overrides=overrides, sweeps=sweep_values)


def run_and_report(runs: list, notes: list[str], *, store_path: Path | None, workers: int | None, resume: bool,
                   json_out: bool, quiet: bool) -> int:
    """Run a planned grid, print the table (or JSON) and return the exit code."""
    from .progress import LogReporter, RichReporter
    from .runner import EXIT_SIGNAL, ForcedStop, default_workers, run_grid
    from .store import DEFAULT_STORE, Store

    if workers is None:
        workers = default_workers(runs)
    st = Store(store_path or DEFAULT_STORE)
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    reporter = LogReporter() if quiet else RichReporter()
    try:
        with reporter:
            outcome = run_grid(runs, st, workers=workers, resume=resume, reporter=reporter)
    except ForcedStop as exc:
        typer.echo(f"stopped at once by a second {signal_name(exc.signum)}: the runs in progress keep their last "
                   f"checkpoint; rerun the same command with --resume to finish", err=True)
        return EXIT_SIGNAL.get(exc.signum, 130)
    records = outcome.records
    if json_out:
        typer.echo(json.dumps([run_summary(r) for r in records], indent=2))
    elif records:
        typer.echo(render(records, "terminal"))
    if outcome.signal is not None:
        kept = [r for r in records if r["status"] == "interrupted"]
        name = signal_name(outcome.signal)
        typer.echo(f"stopped by {name}: {len(kept)} interrupted run(s) kept with their checkpoints"
                   + "".join(f"\n  {r['run_id']} {r['target']}/{r['method']}/seed{r['seed']} at step {r['steps']}: "
                             f"{r['run_dir']}" for r in kept)
                   + f"\n{outcome.not_started} run(s) not started; rerun the same command with --resume to finish",
                   err=True)
        return EXIT_SIGNAL.get(outcome.signal, 130)
    return 1 if any(r["status"] == "failed" for r in records) else 0


def signal_name(signum: int) -> str:
    return {2: "SIGINT", 15: "SIGTERM"}.get(signum, f"signal {signum}")


def submit_and_report(runs: list, notes: list[str], *, store_path: Path | None, executor: str, settings: Any,
                      resume: bool, wait: bool, json_out: bool) -> int:
    """Submit a planned grid as cluster jobs; with ``wait``, wait for them and collect the results."""
    from . import cluster
    from .progress import summary_line
    from .store import DEFAULT_STORE, Store

    st = Store(store_path or DEFAULT_STORE)
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    statuses = {s.entry["run_id"]: s for s in cluster.job_statuses(st.path.resolve().parent)}
    if resume:  # record runs whose jobs ended since the last collect, so finished ones are reused
        cluster.collect(st, run_ids={r.run_id for r in runs}, statuses=list(statuses.values()))
    todo = []
    for run in runs:
        job = statuses.get(run.run_id)
        if job is not None and job.state in ("queued", "running"):
            typer.echo(f"note: run {run.run_id} ({run.config.label()}) is already {job.state} as job "
                       f"{job.entry['job_id']} (submission {job.submission}); not submitted again", err=True)
            continue
        old = st.get(run.run_id) if resume else None
        if old is not None and old["status"] == "finished":
            typer.echo(f"reusing finished run {run.run_id} ({old['target']}/{old['method']}/seed{old['seed']})",
                       err=True)
        else:
            todo.append((run, resume))
    sub = cluster.submit(todo, st, kind=executor, settings=settings) if todo else None
    if sub is not None:
        m = sub.manifest
        typer.echo(f"submitted {len(m['jobs'])} job(s) with --executor {executor}: submission {m['submission']}, "
                   f"manifest {sub.path}", err=True)
    flag = f" --store {store_path}" if store_path else ""
    if not wait:
        entries = sub.manifest["jobs"] if sub else []
        if json_out:
            keys = ("run_id", "job_id", "benchmark", "target", "method", "seed", "params", "run_dir", "stdout",
                    "stderr")
            typer.echo(json.dumps([{**{k: e[k] for k in keys}, "status": "submitted"} for e in entries], indent=2))
        else:
            for e in entries:
                typer.echo(f"{e['job_id']:<14} {e['run_id']}  {e['label']}")
            if entries:
                typer.echo(f"follow the jobs with `sesamo-bench status{flag}`; record finished runs with "
                           f"`sesamo-bench collect{flag}`")
        return 0
    if sub is not None:
        def done(entry: dict[str, Any]) -> None:
            typer.echo(f"job {entry['job_id']} ended: {entry['label']} [{entry['run_id']}]", err=True)

        try:
            cluster.wait(sub, on_done=done)
        except KeyboardInterrupt:
            typer.echo(f"stopped waiting; the jobs go on: follow them with `sesamo-bench status{flag}` and record "
                       f"them with `sesamo-bench collect{flag}`", err=True)
            return 130
        got = cluster.collect(st, run_ids={e["run_id"] for e in sub.manifest["jobs"]})
        for rec in got.records:
            typer.echo(summary_line(rec), err=True)
    by_id = {r["run_id"]: r for r in st.runs()}
    records = [by_id[r.run_id] for r in runs if r.run_id in by_id]
    if json_out:
        typer.echo(json.dumps([run_summary(r) for r in records], indent=2))
    elif records:
        typer.echo(render(records, "terminal"))
    return 1 if any(r["status"] == "failed" for r in records) else 0


def run_summary(rec: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` object of one run (NaN/Inf as null)."""
    from .store import clean

    metrics = rec.get("metrics") or {}
    return clean({k: rec[k] if k in rec else metrics.get(k) for k in JSON_FIELDS})


def render(records: list[dict[str, Any]], fmt: str, *, group_by_benchmark: bool = False) -> str:
    """A table of runs: :func:`sesamo_bench.report.render_report` when present, else a simple one."""
    try:
        from .report import render_report
    except ImportError:
        return simple_table(records, fmt)
    return render_report(records, fmt=fmt, group_by_benchmark=group_by_benchmark)


def simple_table(records: list[dict[str, Any]], fmt: str) -> str:
    """Fallback table (one row per run) used until :mod:`sesamo_bench.report` exists."""
    import csv
    import io

    from tabulate import tabulate

    if fmt == "json":
        return json.dumps([run_summary(r) for r in records], indent=2)
    cols = ("run_id", "target", "method", "seed", "params", "status", "steps", "ess", "log_z", "log_z_err",
            "breaking_ratio", "breaking_ratio_exact", "wall_s")
    sweep_keys = _varying_params(records)
    rows = [[r.get("run_id"), r.get("target"), r.get("method"), r.get("seed"),
             " ".join(f"{k}={r['params'].get(k)}" for k in sweep_keys), r.get("status"), r.get("steps"),
             r.get("ess"), r.get("log_z"), r.get("log_z_err"), r.get("breaking_ratio"),
             r.get("breaking_ratio_exact"), r.get("wall_s")] for r in records]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        w.writerows(rows)
        return buf.getvalue().rstrip("\n")
    tablefmt = {"terminal": "simple", "markdown": "github", "latex": "latex"}[fmt]
    return tabulate(rows, headers=cols, tablefmt=tablefmt, floatfmt=".4g", missingval="-")


def _varying_params(records: list[dict[str, Any]]) -> list[str]:
    keys: dict[str, set] = {}
    for r in records:
        for k, v in (r.get("params") or {}).items():
            keys.setdefault(k, set()).add(json.dumps(v))
    return [k for k, vals in keys.items() if len(vals) > 1]


# ---------------------------------------------------------------------------------------------
# status, collect (cluster jobs)
# ---------------------------------------------------------------------------------------------
@app.command("status")
def status_cmd(
    store: Optional[Path] = typer.Option(None, "--store", help="results database whose jobs to show "
                                                              "(default: ./sesamo-runs/results.sqlite)"),
    json_out: bool = typer.Option(False, "--json", help="a JSON array of the jobs"),
    tail: int = typer.Option(10, "--tail", min=0, help="log lines shown for a failed job"),
) -> None:
    """Queued / running / finished / failed cluster jobs of the submitted grids (log tail of failed ones)."""
    from . import cluster
    from .store import DEFAULT_STORE

    path = store or DEFAULT_STORE
    _check_store_file(path)
    statuses = cluster.job_statuses(path.resolve().parent, tail=tail)
    if json_out:
        typer.echo(json.dumps([{"submission": s.submission, "executor": s.executor, "job_id": s.entry["job_id"],
                                "run_id": s.entry["run_id"], "label": s.entry["label"], "state": s.state,
                                "detail": s.detail, "log": s.log, "log_tail": s.log_tail,
                                "stdout": s.entry["stdout"], "stderr": s.entry["stderr"]} for s in statuses],
                              indent=2))
        return
    if not statuses:
        typer.echo(f"no submitted jobs under {path.resolve().parent / 'jobs'}", err=True)
        return
    typer.echo(status_text(statuses))


def _check_store_file(path: Path) -> None:
    """A ``--store`` that exists must be an SQLite file (checked without opening it: `status` also
    works where the database is read-only)."""
    from .errors import StoreError

    try:
        if not (path.exists() or path.is_symlink()):
            return
        with open(path, "rb") as fh:
            head = fh.read(16) if path.is_file() else b""
    except (OSError, RuntimeError) as exc:
        raise StoreError(f"cannot open results store {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if head != b"SQLite format 3\x00":
        raise StoreError(f"{path} is not a sesamo-bench results database")


def status_text(statuses: list) -> str:
    """The text of ``sesamo-bench status``."""
    from .cluster import STATES

    lines: list[str] = []
    current = None
    for s in statuses:
        if s.submission != current:
            current = s.submission
            lines.append(f"submission {s.submission} ({s.executor})")
        lines.append(f"  {s.entry['job_id']:<14} {s.entry['run_id']}  {s.entry['label']:<40} {s.state}"
                     + (f"  ({s.detail})" if s.detail else ""))
        if s.log_tail:
            lines.append(f"    last lines of {s.log}:")
            lines.extend(f"    | {line}" for line in s.log_tail.splitlines())
    counts = {k: sum(s.state == k for s in statuses) for k in STATES}
    lines.append(", ".join(f"{n} {k}" for k, n in counts.items() if n))
    return "\n".join(lines)


@app.command("collect")
def collect_cmd(
    store: Optional[Path] = typer.Option(None, "--store", help="results database to record the jobs' runs in "
                                                              "(default: ./sesamo-runs/results.sqlite)"),
    json_out: bool = typer.Option(False, "--json", help="print only a JSON array of the collected runs"),
) -> None:
    """Record the runs of ended cluster jobs (their run directories) in the results database."""
    from . import cluster

    st = _open_store(store)
    got = cluster.collect(st)
    if json_out:
        typer.echo(json.dumps([run_summary(r) for r in got.records], indent=2))
    elif got.records:
        typer.echo(render(got.records, "terminal"))
    counts: dict[str, int] = {}
    for r in got.records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    typer.echo(f"collected {len(got.records)} run(s) into {st.path}"
               + "".join(f", {n} {k}" for k, n in counts.items())
               + f"; {len(got.pending)} job(s) still queued or running", err=True)


# ---------------------------------------------------------------------------------------------
# report, plot, show
# ---------------------------------------------------------------------------------------------
def _open_store(store: Path | None):
    from .store import DEFAULT_STORE, Store

    return Store(store or DEFAULT_STORE, create=False)


@app.command("report")
def report_cmd(
    target: Optional[str] = typer.Option(None, "--target"),
    method: Optional[str] = typer.Option(None, "--method"),
    benchmark: Optional[str] = typer.Option(None, "--benchmark"),
    fmt: str = typer.Option("terminal", "--format", help="terminal | markdown | csv | json | latex"),
    by_benchmark: bool = typer.Option(False, "--by-benchmark", help="one table per benchmark"),
    store: Optional[Path] = typer.Option(None, "--store"),
    observables: Optional[str] = typer.Option(None, "--observables", help="the measured observables instead "
                                              "('all' or a comma list; see `measure` and `hmc`)"),
) -> None:
    """Tables of every run in the store (ESS, ln Z, breaking ratio; counts of diverged/failed runs)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    runs = _open_store(store).runs(target=target, method=method, benchmark=benchmark)
    if observables:
        from .measure import observable_rows, render_observables

        rows = observable_rows(runs, _names(observables))
        if not rows:
            raise ConfigError("no measured observables in the store (run `sesamo-bench measure RUN` or "
                              "`sesamo-bench hmc --target T` first; nothing matched the selection)")
        typer.echo(render_observables(rows, fmt))
        return
    if not runs:
        typer.echo("no runs match", err=True)
        return
    typer.echo(render(runs, fmt, group_by_benchmark=by_benchmark))


@app.command("plot")
def plot_cmd(
    out: Path = typer.Option(Path("sesamo-plots"), "--out", help="folder for the PNG files"),
    kind: List[str] = typer.Option([], "--kind", help="density | ess-time | breaking | particles (repeatable) (default: all)"),
    target: Optional[str] = typer.Option(None, "--target"),
    method: Optional[str] = typer.Option(None, "--method"),
    benchmark: Optional[str] = typer.Option(None, "--benchmark"),
    store: Optional[Path] = typer.Option(None, "--store"),
) -> None:
    """PNG figures from the store: densities, ESS vs training time, breaking ratios, particle histograms."""
    kinds = list(kind) or ["density", "ess-time", "breaking", "particles"]
    for k in kinds:
        if k not in ("density", "ess-time", "breaking", "particles"):
            raise ConfigError(f"--kind must be one of density, ess-time, breaking, particles; got {k!r}")
    runs = _open_store(store).runs(target=target, method=method, benchmark=benchmark)
    try:
        from .plot import make_plots
    except ImportError:
        raise UserError("plotting is not available in this installation (sesamo_bench.plot is missing)") from None
    if not runs:
        typer.echo("no runs match", err=True)
        return
    for path in make_plots(runs, out, kinds=kinds):
        typer.echo(str(path))


@app.command("show")
def show_cmd(
    run: str = typer.Argument(..., help="run id or a unique prefix of it"),
    store: Optional[Path] = typer.Option(None, "--store"),
    json_out: bool = typer.Option(False, "--json", help="the whole record (with history) as JSON"),
) -> None:
    """One run's configuration, provenance and metrics."""
    from .store import clean

    rec = _open_store(store).find(run)
    if json_out:
        typer.echo(json.dumps(clean(rec), indent=2))
        return
    typer.echo(show_text(rec))


def show_text(rec: dict[str, Any]) -> str:
    lines = [f"run {rec['run_id']}: {rec['target']}/{rec['method']}/seed{rec['seed']}"
             + (f" (benchmark {rec['benchmark']})" if rec.get("benchmark") else ""),
             f"status:   {rec['status']}" + (f" ({rec['error']})" if rec.get("error") else ""),
             f"steps:    {rec['steps']}   wall: {rec['wall_s'] or 0:.2f} s   "
             f"history: {len(rec.get('history') or [])} rows",
             f"run dir:  {rec['run_dir']}",
             f"started:  {rec['started']}   finished: {rec['finished'] or '-'}",
             "params:   " + ", ".join(f"{k}={v}" for k, v in (rec.get("params") or {}).items())]
    for title in ("metrics", "config", "provenance"):
        lines.append(f"{title}:")
        for k, v in (rec.get(title) or {}).items():
            lines.append(f"  {k:<22} {v}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# measure, hmc
# ---------------------------------------------------------------------------------------------
def _names(observables: str | None) -> list[str] | None:
    from .grid import parse_list

    return None if not observables or observables == "all" else parse_list(observables, "--observables")


def _count(value: int, option: str, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise ConfigError(f"{option} must be an integer in [{lo}, {hi}], got {value}")
    return value


def _print_measurements(recs: list[dict[str, Any]], names: list[str] | None, json_out: bool) -> None:
    from .measure import observable_rows, render_observables

    rows = observable_rows(recs, names)
    typer.echo(render_observables(rows, "json" if json_out else "terminal"))


@app.command("measure")
def measure_cmd(
    run: str = typer.Argument(..., help="run id or a unique prefix of it (a finished run)"),
    observables: Optional[str] = typer.Option(None, "--observables", help="comma list of the target's primary "
                                              "observables, or 'all' (default: all, with the derived ones)"),
    samples: int = typer.Option(65536, "--samples", help="fresh samples drawn from the trained flow"),
    mcmc: bool = typer.Option(False, "--mcmc", help="also run neural MCMC (independence Metropolis) on them"),
    amortise: Optional[int] = typer.Option(None, "--amortise", help="samples the training time is spread over "
                                           "in the cost per effective sample (default: --samples)"),
    seed: int = typer.Option(0, "--seed", help="seed of the draws and of the Metropolis decisions"),
    store: Optional[Path] = typer.Option(None, "--store"),
    json_out: bool = typer.Option(False, "--json", help="print only the estimates as a JSON array"),
) -> None:
    """Unbiased observables of a trained run: reweighting and neural MCMC, Gamma-method errors."""
    from .measure import attach, load_trained, measure_flow
    from .store import DEFAULT_STORE, Store, write_json

    _count(samples, "--samples", 2, 10**8)
    _count(seed, "--seed", 0, 2**32 - 1)
    if amortise is not None:
        _count(amortise, "--amortise", 1, 10**15)
    names = _names(observables)
    st = Store(store or DEFAULT_STORE, create=False)
    rec = st.find(run)
    target, model = load_trained(rec)
    got = measure_flow(model, target, samples=samples, train_seconds=float(rec.get("wall_s") or 0.0),
                       amortise=amortise, mcmc=mcmc, names=names, seed=seed)
    new = attach(rec, got)
    st.put(new)
    write_json(Path(rec["run_dir"]) / "measurements.json", new["metrics"]["measurements"])
    _print_measurements([new], names, json_out)


@app.command("hmc")
def hmc_cmd(
    target: str = typer.Option(..., "--target", help="target plugin (see `list targets`)"),
    set_: List[str] = typer.Option([], "--set", help="target parameter key=value (repeatable)"),
    observables: Optional[str] = typer.Option(None, "--observables", help="comma list, or 'all' (default)"),
    samples: int = typer.Option(16384, "--samples", help="states recorded, over all chains"),
    chains: int = typer.Option(16, "--chains", help="independent chains run side by side"),
    global_moves: bool = typer.Option(False, "--global-moves", help="add a global move: a random element of the "
                                      "target's symmetry group, Metropolis-tested (exact also where broken)"),
    leapfrog: int = typer.Option(10, "--leapfrog", help="leapfrog steps per trajectory"),
    burn_in: int = typer.Option(200, "--burn-in", help="trajectories before recording (step size tuned)"),
    thin: int = typer.Option(1, "--thin", help="trajectories between recorded states"),
    seed: int = typer.Option(0, "--seed"),
    store: Optional[Path] = typer.Option(None, "--store", help="results database (default: "
                                         "./sesamo-runs/results.sqlite; created if missing)"),
    json_out: bool = typer.Option(False, "--json", help="print only the estimates as a JSON array"),
) -> None:
    """HMC baseline: observables of a target with Gamma-method errors, recorded as method 'hmc'."""
    from . import plugins
    from .grid import parse_assignments
    from .measure import hmc_record, measure_hmc
    from .store import DEFAULT_STORE, Store

    _count(samples, "--samples", 2, 10**8)
    _count(chains, "--chains", 1, 4096)
    _count(leapfrog, "--leapfrog", 1, 10**4)
    _count(burn_in, "--burn-in", 0, 10**7)
    _count(thin, "--thin", 1, 10**4)
    _count(seed, "--seed", 0, 2**32 - 1)
    names = _names(observables)
    tgt = plugins.targets.create(target, parse_assignments(set_, "--set"), table=f"target '{target}'")
    st = Store(store or DEFAULT_STORE)
    m = measure_hmc(tgt, samples=samples, chains=chains, global_moves=global_moves, n_leapfrog=leapfrog,
                    burn_in=burn_in, thin=thin, seed=seed, names=names)
    rec = hmc_record(tgt, m)
    st.put(rec)
    _print_measurements([rec], names, json_out)


@app.command("perf")
def perf_cmd(
    quick: bool = typer.Option(False, "--quick", help="a short subset: GMM and complex phi^4, about 10-30 s"),
    sections: Optional[str] = typer.Option(None, "--sections", help="comma list: matmul,throughput,volume,ess,compile"),
    targets: Optional[str] = typer.Option(None, "--targets", help="comma list of targets"),
    presets: Optional[str] = typer.Option(None, "--presets", help="comma list of quick,paper"),
    batches: Optional[str] = typer.Option(None, "--batches", help="comma list, e.g. 1024,8192"),
    reps: Optional[int] = typer.Option(None, "--reps", min=1, help="timed repetitions"),
    threads: int = typer.Option(0, "--threads", min=0, help="torch intra-op threads (0: torch default; "
                                "training runs use 1)"),
    no_peer: bool = typer.Option(False, "--no-peer", help="skip the normflows comparison"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the results as JSON"),
) -> None:
    """Training-throughput benchmark: steps/s against normflows and against the matmul rate."""
    from .perf import PerfOptions, render, run_perf
    from .train import resolve_device

    resolve_device(device)
    opt = PerfOptions.quick_defaults() if quick else PerfOptions()
    for name, value in (("sections", sections), ("targets", targets), ("presets", presets)):
        if value:
            setattr(opt, name, tuple(v for v in value.split(",") if v))
    bad = [p for p in opt.presets if p not in ("quick", "paper")]
    if bad:
        raise ConfigError(f"--presets: unknown preset '{bad[0]}'. Allowed: quick, paper")
    if targets:
        from . import plugins

        for name in opt.targets:
            plugins.targets.get(name)
    if batches:
        try:
            opt.batches = tuple(int(v) for v in batches.split(",") if v)
        except ValueError:
            raise ConfigError(f"--batches expects comma-separated integers, got {batches!r}") from None
        bad_batch = [b for b in opt.batches if not 1 <= b <= MAX_PERF_BATCH]
        if bad_batch or not opt.batches:
            raise ConfigError(f"--batches: each batch must be an integer from 1 to {MAX_PERF_BATCH}, "
                              f"got {bad_batch[0] if bad_batch else batches!r}")
    if reps:
        opt.reps = reps
    if out is not None and not out.parent.is_dir():  # fail now, not after the whole benchmark
        raise ConfigError(f"--out: folder {out.parent} does not exist")
    opt.device, opt.peer, opt.threads = device, not no_peer, threads
    res = run_perf(opt, log=lambda m: typer.echo(f"... {m}", err=True))
    typer.echo(render(res))
    if out is not None:
        out.write_text(json.dumps(res, indent=1))


REFERENCES = ("phi4-real",)


@app.command("reference")
def reference_cmd(
    what: str = typer.Argument(..., help="the reference to regenerate: phi4-real"),
    out: Optional[Path] = typer.Option(None, "--out", help="output JSON (default: the file shipped with the "
                                       "package, sesamo_bench/data/phi4_real_breaking_ratio.json)"),
    chains: int = typer.Option(256, "--chains", min=1, help="independent HMC chains"),
    samples: int = typer.Option(8000, "--samples", min=2, help="recorded trajectories per chain"),
    burn_in: int = typer.Option(400, "--burn-in", min=0, help="trajectories before recording"),
    seed: int = typer.Option(20261201, "--seed", help="seed of the chains' random stream"),
) -> None:
    """Regenerate an exact reference by Monte Carlo (phi4-real: the breaking ratio R(alpha), a few CPU minutes)."""
    if what not in REFERENCES:
        raise ConfigError(f"reference: unknown reference {what!r}. Available: {', '.join(REFERENCES)}")
    from .phi4_reference import write

    path = write(out=out, chains=chains, samples=samples, burn_in=burn_in, seed=seed,
                 log=lambda m: typer.echo(f"... {m}", err=True))
    typer.echo(str(path))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    typer.main.get_command(app).main(args=argv, prog_name="sesamo-bench")


if __name__ == "__main__":  # pragma: no cover
    main()
