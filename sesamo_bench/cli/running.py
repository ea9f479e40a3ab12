"""``sesamo-bench run``, ``status`` and ``collect``: train a grid here or as cluster jobs, follow and record
the jobs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from ..errors import ConfigError
from ..harness.record import summary

#: most worker processes ``run --workers`` accepts
MAX_WORKERS = 4096


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
    from ..harness import benchmarks, grid
    from ..harness.executor import ClusterExecutor

    cluster_opts = {"--wait": wait, "--slurm-partition": slurm_partition, "--slurm-gpus": slurm_gpus,
                    "--slurm-cpus": slurm_cpus, "--slurm-mem": slurm_mem, "--slurm-time": slurm_time,
                    "--slurm-sbatch": slurm_sbatch}
    ex = None
    if executor == "local":
        given = [k for k, v in cluster_opts.items() if v not in (None, False, [])]
        if given:
            raise ConfigError(f"{given[0]} applies to --executor slurm (or submitit-local), not to local runs")
    else:
        from ..harness import cluster

        if executor not in cluster.EXECUTORS:
            raise ConfigError(f"--executor must be one of {', '.join(cluster.EXECUTORS)}, got {executor!r}")
        if workers is not None:
            raise ConfigError(f"--workers applies to --executor local; with --executor {executor} every run is a job")
        cluster.require_submitit()
        cli = cluster.cli_settings(partition=slurm_partition, gpus=slurm_gpus, cpus=slurm_cpus, mem=slurm_mem,
                                   time_min=slurm_time, sbatch=slurm_sbatch)
        ex = ClusterExecutor(executor, benchmarks.executor_settings(benchmarks_file).overridden_by(cli))
    req = benchmarks.grid_request(target=target, methods=methods, preset=preset, seeds=seeds, sets=set_, sweeps=sweep,
                                  device=device, dtype=dtype, benchmark=benchmark, benchmarks_file=benchmarks_file)
    runs, notes = grid.plan(req)
    if ex is None:
        code = run_here(runs, notes, store_path=store, workers=workers, resume=resume, json_out=json_out, quiet=quiet)
    else:
        code = run_as_jobs(runs, notes, ex, store_path=store, resume=resume, wait=wait, json_out=json_out)
    if code:
        raise typer.Exit(code)


def _print_records(records: list[dict[str, Any]], json_out: bool) -> None:
    from ..outputs.report import render_report

    if json_out:
        typer.echo(json.dumps([summary(r) for r in records], indent=2))
    elif records:
        typer.echo(render_report(records, fmt="terminal"))


def signal_name(signum: int) -> str:
    return {2: "SIGINT", 15: "SIGTERM"}.get(signum, f"signal {signum}")


def run_here(runs: list, notes: list[str], *, store_path: Path | None, workers: int | None, resume: bool,
             json_out: bool, quiet: bool) -> int:
    """Run a planned grid on this machine, print the table (or JSON) and return the exit code."""
    from ..harness.executor import LocalPool, resume_plan
    from ..harness.runner import EXIT_SIGNAL, ForcedStop, default_workers
    from ..harness.store import DEFAULT_STORE, Store
    from ..outputs.progress import LogReporter, RichReporter

    st = Store(store_path or DEFAULT_STORE)
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    plan = resume_plan(runs, st, resume=resume)
    pool = LocalPool(workers if workers is not None else default_workers(runs))
    reporter = LogReporter() if quiet else RichReporter()
    try:
        with reporter:
            outcome = pool.start(plan, st, reporter=reporter)
    except ForcedStop as exc:
        typer.echo(f"stopped at once by a second {signal_name(exc.signum)}: the runs in progress keep their last "
                   f"checkpoint; rerun the same command with --resume to finish", err=True)
        return EXIT_SIGNAL.get(exc.signum, 130)
    records = outcome.records
    _print_records(records, json_out)
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


def run_as_jobs(runs: list, notes: list[str], ex: Any, *, store_path: Path | None, resume: bool, wait: bool,
                json_out: bool) -> int:
    """Submit a planned grid as cluster jobs; with ``wait``, wait for them and collect the results."""
    from ..harness.executor import resume_plan
    from ..harness.record import summary_line
    from ..harness.store import DEFAULT_STORE, Store

    st = Store(store_path or DEFAULT_STORE)
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    ex.prepare(runs, st, resume=resume)
    plan = resume_plan(runs, st, resume=resume, busy=ex.busy(st))
    for note in plan.notes():
        typer.echo(note if note.startswith("reusing") else f"note: {note}", err=True)
    sub = ex.start(plan, st)
    if sub is not None:
        m = sub.manifest
        typer.echo(f"submitted {len(m['jobs'])} job(s) with --executor {ex.name}: submission {m['submission']}, "
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
            got = ex.wait(sub, st, on_done=done)
        except KeyboardInterrupt:
            typer.echo(f"stopped waiting; the jobs go on: follow them with `sesamo-bench status{flag}` and record "
                       f"them with `sesamo-bench collect{flag}`", err=True)
            return 130
        for rec in got:
            typer.echo(summary_line(rec), err=True)
    by_id = {r["run_id"]: r for r in st.runs()}
    records = [by_id[r.run_id] for r in runs if r.run_id in by_id]
    _print_records(records, json_out)
    return 1 if any(r["status"] == "failed" for r in records) else 0


def status_cmd(
    store: Optional[Path] = typer.Option(None, "--store", help="results database whose jobs to show "
                                                              "(default: ./sesamo-runs/results.sqlite)"),
    json_out: bool = typer.Option(False, "--json", help="a JSON array of the jobs"),
    tail: int = typer.Option(10, "--tail", min=0, help="log lines shown for a failed job"),
) -> None:
    """Queued / running / finished / failed cluster jobs of the submitted grids (log tail of failed ones)."""
    from ..harness import cluster
    from ..harness.store import DEFAULT_STORE, check_store_file
    from ..outputs.text import status_text

    path = store or DEFAULT_STORE
    check_store_file(path)
    statuses = cluster.job_statuses(path.resolve().parent, tail=tail)
    if json_out:
        typer.echo(json.dumps([s.summary() for s in statuses], indent=2))
        return
    if not statuses:
        typer.echo(f"no submitted jobs under {path.resolve().parent / 'jobs'}", err=True)
        return
    typer.echo(status_text(statuses))


def collect_cmd(
    store: Optional[Path] = typer.Option(None, "--store", help="results database to record the jobs' runs in "
                                                              "(default: ./sesamo-runs/results.sqlite)"),
    json_out: bool = typer.Option(False, "--json", help="print only a JSON array of the collected runs"),
) -> None:
    """Record the runs of ended cluster jobs (their run directories) in the results database."""
    from ..harness import cluster
    from ..harness.store import open_existing

    st = open_existing(store)
    got = cluster.collect(st)
    _print_records(got.records, json_out)
    counts: dict[str, int] = {}
    for r in got.records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    typer.echo(f"collected {len(got.records)} run(s) into {st.path}"
               + "".join(f", {n} {k}" for k, n in counts.items())
               + f"; {len(got.pending)} job(s) still queued or running", err=True)
