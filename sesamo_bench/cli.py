r"""The ``sesamo-bench`` command line: ``list``, ``run``, ``report``, ``plot``, ``show``.

Each command only parses its arguments and calls plain functions (:mod:`sesamo_bench.grid`,
:mod:`sesamo_bench.runner`, :mod:`sesamo_bench.store`, :mod:`sesamo_bench.benchmarks`). Every
error a user can cause (:class:`~sesamo_bench.errors.UserError`, a bad option, an unreadable
store) becomes one line ``error: <message>`` on stderr and exit code 2, before anything is
written to the store.

Exit codes: 0 success; 1 some run ``failed``; 2 bad input or unusable store; 130 / 143 the grid
was stopped by SIGINT / SIGTERM (checkpoints kept, continue with ``--resume``).
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
               "log_z", "log_z_err", "breaking_ratio", "breaking_ratio_exact", "run_dir", "error")
LIST_WHAT = ("targets", "symmetries", "methods", "benchmarks", "presets")
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
    what: Optional[str] = typer.Argument(None, help="targets | symmetries | methods | benchmarks | presets"),
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
    workers: int = typer.Option(1, "--workers", min=1, help="parallel worker processes"),
    store: Optional[Path] = typer.Option(None, "--store",
                                         help="results database (default: ./sesamo-runs/results.sqlite)"),
    json_out: bool = typer.Option(False, "--json", help="print only a JSON array of the runs on stdout"),
    quiet: bool = typer.Option(False, "--quiet", help="plain log lines instead of progress bars"),
    resume: bool = typer.Option(False, "--resume", help="skip finished runs, continue interrupted ones"),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", help="run a benchmark of benchmarks.toml"),
    benchmarks_file: Optional[Path] = typer.Option(None, "--benchmarks-file", help="benchmarks.toml to use"),
) -> None:
    """Train a grid of runs (methods x seeds x sweep values) and record them in the store."""
    from . import grid

    req = grid_request(target=target, methods=methods, preset=preset, seeds=seeds, sets=set_, sweeps=sweep,
                       device=device, dtype=dtype, benchmark=benchmark, benchmarks_file=benchmarks_file)
    runs, notes = grid.plan(req)
    code = run_and_report(runs, notes, store_path=store, workers=workers, resume=resume, json_out=json_out,
                          quiet=quiet)
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


def run_and_report(runs: list, notes: list[str], *, store_path: Path | None, workers: int, resume: bool,
                   json_out: bool, quiet: bool) -> int:
    """Run a planned grid, print the table (or JSON) and return the exit code."""
    from .progress import LogReporter, RichReporter
    from .runner import EXIT_SIGNAL, run_grid
    from .store import DEFAULT_STORE, Store

    st = Store(store_path or DEFAULT_STORE)
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    reporter = LogReporter() if quiet else RichReporter()
    with reporter:
        outcome = run_grid(runs, st, workers=workers, resume=resume, reporter=reporter)
    records = outcome.records
    if json_out:
        typer.echo(json.dumps([run_summary(r) for r in records], indent=2))
    elif records:
        typer.echo(render(records, "terminal"))
    if outcome.signal is not None:
        kept = [r for r in records if r["status"] == "interrupted"]
        name = {2: "SIGINT", 15: "SIGTERM"}.get(outcome.signal, f"signal {outcome.signal}")
        typer.echo(f"stopped by {name}: {len(kept)} interrupted run(s) kept with their checkpoints"
                   + "".join(f"\n  {r['run_id']} {r['target']}/{r['method']}/seed{r['seed']} at step {r['steps']}: "
                             f"{r['run_dir']}" for r in kept)
                   + f"\n{outcome.not_started} run(s) not started; rerun the same command with --resume to finish",
                   err=True)
        return EXIT_SIGNAL.get(outcome.signal, 130)
    return 1 if any(r["status"] == "failed" for r in records) else 0


def run_summary(rec: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` object of one run (NaN/Inf as null)."""
    from .store import clean

    return clean({k: rec.get(k) for k in JSON_FIELDS})


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
) -> None:
    """Tables of every run in the store (ESS, ln Z, breaking ratio; counts of diverged/failed runs)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    runs = _open_store(store).runs(target=target, method=method, benchmark=benchmark)
    if not runs:
        typer.echo("no runs match", err=True)
        return
    typer.echo(render(runs, fmt, group_by_benchmark=by_benchmark))


@app.command("plot")
def plot_cmd(
    out: Path = typer.Option(Path("sesamo-plots"), "--out", help="folder for the PNG files"),
    kind: List[str] = typer.Option([], "--kind", help="density | ess-time | breaking (repeatable) (default: all)"),
    target: Optional[str] = typer.Option(None, "--target"),
    method: Optional[str] = typer.Option(None, "--method"),
    benchmark: Optional[str] = typer.Option(None, "--benchmark"),
    store: Optional[Path] = typer.Option(None, "--store"),
) -> None:
    """PNG figures from the store: densities, ESS vs training time, breaking ratios."""
    kinds = list(kind) or ["density", "ess-time", "breaking"]
    for k in kinds:
        if k not in ("density", "ess-time", "breaking"):
            raise ConfigError(f"--kind must be one of density, ess-time, breaking; got {k!r}")
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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    typer.main.get_command(app).main(args=argv, prog_name="sesamo-bench")


if __name__ == "__main__":  # pragma: no cover
    main()
