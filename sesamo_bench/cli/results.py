"""``sesamo-bench report``, ``plot`` and ``show``: tables, figures and one run, from the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import ConfigError

FORMATS = ("terminal", "markdown", "csv", "json", "latex")


def names(observables: str | None) -> list[str] | None:
    """``--observables``: ``None`` for all, else the comma list."""
    from ..harness.grid import parse_list

    return None if not observables or observables == "all" else parse_list(observables, "--observables")


def report_cmd(
    target: Optional[str] = typer.Option(None, "--target"),
    method: Optional[str] = typer.Option(None, "--method"),
    benchmark: Optional[str] = typer.Option(None, "--benchmark"),
    fmt: str = typer.Option("terminal", "--format", help="terminal | markdown | csv | json | latex"),
    by_benchmark: bool = typer.Option(False, "--by-benchmark", help="one table per benchmark"),
    store: Optional[Path] = typer.Option(None, "--store"),
    observables: Optional[str] = typer.Option(None, "--observables", help="the measured observables instead "
                                              "('all' or a comma list; see `measure` and `hmc`)"),
    table1: bool = typer.Option(False, "--table1", help="the paper's Table 1 with our ESS beside it"),
) -> None:
    """Tables of every run in the store (ESS, ln Z, breaking ratio; counts of diverged/failed runs)."""
    from ..harness.store import open_existing
    from ..outputs.report import render_report

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    runs = open_existing(store).runs(target=target, method=method, benchmark=benchmark)
    if observables:
        from ..outputs.observables import observable_rows, render_observables

        rows = observable_rows(runs, names(observables))
        if not rows:
            raise ConfigError("no measured observables in the store (run `sesamo-bench measure RUN` or "
                              "`sesamo-bench hmc --target T` first; nothing matched the selection)")
        typer.echo(render_observables(rows, fmt))
        return
    if table1:
        from ..outputs.paper import render_table1

        typer.echo(render_table1(runs, fmt=fmt))  # the paper's rows also without runs of ours
        return
    if not runs:
        typer.echo("no runs match", err=True)
        return
    typer.echo(render_report(runs, fmt=fmt, group_by_benchmark=by_benchmark))


def plot_cmd(
    out: Path = typer.Option(Path("sesamo-plots"), "--out", help="folder for the PNG files"),
    kind: List[str] = typer.Option([], "--kind", help="density | ess-time | breaking | particles | autocorr | "
                                                      "generalisation (repeatable; default: all)"),
    target: Optional[str] = typer.Option(None, "--target"),
    method: Optional[str] = typer.Option(None, "--method"),
    benchmark: Optional[str] = typer.Option(None, "--benchmark"),
    store: Optional[Path] = typer.Option(None, "--store"),
) -> None:
    """PNG figures from the store: densities, ESS vs training time, breaking ratios, particle histograms,
    the generalisation experiment (Köhler et al. 2020, Fig. 1)."""
    from ..harness.store import open_existing
    from ..outputs.plot import KINDS, make_plots

    kinds = list(kind) or list(KINDS)
    for k in kinds:
        if k not in KINDS:
            raise ConfigError(f"--kind must be one of {', '.join(KINDS)}; got {k!r}")
    runs = open_existing(store).runs(target=target, method=method, benchmark=benchmark)
    if not runs:
        typer.echo("no runs match", err=True)
        return
    for path in make_plots(runs, out, kinds=kinds):
        typer.echo(str(path))


def show_cmd(
    run: str = typer.Argument(..., help="run id or a unique prefix of it"),
    store: Optional[Path] = typer.Option(None, "--store"),
    json_out: bool = typer.Option(False, "--json", help="the whole record (with history) as JSON"),
) -> None:
    """One run's configuration, provenance and metrics."""
    from ..harness.store import clean, open_existing
    from ..outputs.text import show_text

    rec = open_existing(store).find(run)
    if json_out:
        typer.echo(json.dumps(clean(rec), indent=2))
        return
    typer.echo(show_text(rec))
