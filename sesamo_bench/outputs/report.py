r"""The runs table of ``sesamo-bench report`` and ``run``: one row per group of seeds
(:mod:`~sesamo_bench.outputs.aggregate`) in terminal, markdown, csv, json or latex
(:mod:`~sesamo_bench.outputs.formatting`); the paper's Table 1 beside ours is
:mod:`~sesamo_bench.outputs.paper`.

Pure functions of run records as returned by ``Store.runs()`` (JSON columns decoded): dicts with
``benchmark``, ``target``, ``method``, ``seed``, ``params`` (target parameters, incl. swept values),
``config`` (``RunConfig.to_dict()``), ``status``, ``wall_s``, ``ess``, ``log_z``,
``breaking_ratio``, ``breaking_ratio_exact`` and ``metrics`` (``log_z_exact``, ...).

Uncertainties are the sample standard deviation over seeds (``ddof=1``), as in the paper's
"mean(std) over ten models", printed in the last digits: ``0.951(3)`` means 0.951 +- 0.003.
"""

from __future__ import annotations

import csv
import io
import json
import math
import textwrap
import warnings
from collections.abc import Iterable
from typing import Any

from ..core import metrics as _metrics
from ..errors import UnknownNameError
from . import aggregate as _aggregate, formatting as _formatting, paper as _paper
from .aggregate import STATUSES, aggregate, params_key, params_label, shown_params
from .formatting import FORMATS, _finite, _latex_escape, _table, format_err

#: names that moved out of this module -> their module now; they import from here, with a
#: DeprecationWarning, until 0.3.0 (CHANGELOG.md)
MOVED_NAMES = {
    "render_table1": _paper, "paper_table1": _paper,
    "METHOD_LABELS": _aggregate, "METHOD_ORDER": _aggregate, "flow_label": _aggregate, "method_rank": _aggregate,
    "parse_err": _formatting, "error_reliable": _metrics,
}


def __getattr__(name: str) -> Any:
    home = MOVED_NAMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"{__name__}.{name} moved to {home.__name__}.{name}; the old path goes in 0.3.0",
                  DeprecationWarning, stacklevel=2)
    return getattr(home, name)

CAPTION = ("ESS, ln Z and R (breaking ratio, paper Eq. 39): mean(std) over the finished seeds, std = sample "
           "standard deviation (ddof=1) printed in the last digits; a single seed shows no uncertainty. "
           "Only finished runs enter the means; failures counts failed/diverged/interrupted/running runs. "
           "R: learned by the modulation; R IS: importance-weighted from the samples (one seed: with its "
           "delta-method error); R exact: closed form, or for phi4-real the suite's HMC reference with its "
           "error. no support: target mass where ln q = -inf, from reference samples of p (one seed: with its "
           "binomial error). * after ln Z or R IS: ESS x N < 100 in a seed, too few effective samples for an "
           "importance-sampling error (none shown; sesamo_bench.core.metrics.MIN_EFFECTIVE_SAMPLES). "
           "energy W2, dist W2 (particle targets): 2-Wasserstein distances of the energy and pair-distance "
           "distributions of the model's saved samples (unweighted) to the reference samples. (HMC): the same "
           "against the held-out split of the suite's converged HMC, where the reference samples are "
           "approximate (DW-4's literature files).")
#: the columns of the exact reference (targets whose reference samples are approximate)
EXACT_HEADERS = ("energy W2 (HMC)", "dist W2 (HMC)", "no support (HMC)")
EMPTY = "no runs in the store to report (train some first; nothing matched the selection)"


# -- numbers ----------------------------------------------------------------------------------------


def _exact_like(exact: float | None, estimate: str) -> str:
    """An exact reference printed with the decimals of the estimate beside it (one more)."""
    head = estimate.split("(")[0]
    if not _finite(exact) or "." not in head or "e" in head.lower():
        return format_err(exact, None)
    return f"{exact:.{len(head.split('.')[1]) + 1}f}"


# -- rendering --------------------------------------------------------------------------------------
def _failures(g: dict[str, Any]) -> str:
    parts = [f"{g[f'n_{s}']} {s}" for s in STATUSES[1:] if g[f"n_{s}"]]
    return ", ".join(parts) if parts else "-"


def _display_rows(groups: list[dict[str, Any]], *, benchmark_col: bool, preset_col: bool,
                  flow_col: bool = False) -> tuple[list, list]:
    headers = (["benchmark"] if benchmark_col else []) + ["target", "method"] + (["flow"] if flow_col else []) + \
        ["params"] + (["preset"] if preset_col else []) + \
        ["seeds", "ESS", "ln Z", "ln Z exact", "R", "R IS", "R exact", "no support", "energy W2", "dist W2",
         *EXACT_HEADERS, "wall s", "failures"]
    rows = []
    for g in groups:
        shown = shown_params(g["target"], g["params"], (h["params"] for h in groups if h["target"] == g["target"]))
        row = ([g["benchmark"] or "-"] if benchmark_col else []) + [g["target"], g["method"]] + \
            ([g.get("flow") or "realnvp"] if flow_col else []) + [params_label(shown)]
        row += [g["preset"] or "-"] if preset_col else []
        flagged = g.get("log_z_err_reliable") is False
        log_z = _flagged(g["log_z_mean"], g["log_z_std"], flagged)
        ratio = format_err(g["breaking_ratio_mean"], g["breaking_ratio_std"])
        ratio_is = _flagged(g.get("breaking_ratio_is_mean"), _spread(g, "breaking_ratio_is"), flagged)
        exact_r = (format_err(g["breaking_ratio_exact"], g["breaking_ratio_exact_err"])
                   if _finite(g.get("breaking_ratio_exact_err"))
                   else _exact_like(g["breaking_ratio_exact"], ratio if ratio != "-" else ratio_is.rstrip("*")))
        missing = _missing(g, "support_missing")
        row += [str(g["n_finished"]),
                format_err(g["ess_mean"], g["ess_std"]),
                log_z, _exact_like(g["log_z_exact"], log_z.rstrip("*")),
                ratio, ratio_is, exact_r, missing,
                format_err(g.get("energy_w2_mean"), g.get("energy_w2_std")),
                format_err(g.get("distance_w2_mean"), g.get("distance_w2_std")),
                format_err(g.get("energy_w2_exact_mean"), g.get("energy_w2_exact_std")),
                format_err(g.get("distance_w2_exact_mean"), g.get("distance_w2_exact_std")),
                _missing(g, "support_missing_exact"),
                "-" if g["wall_s_mean"] is None else f"{g['wall_s_mean']:.1f}",
                _failures(g)]
        rows.append(row)
    # the columns added later stay out of tables of runs recorded without them
    for name in ("R IS", "no support", "energy W2", "dist W2", *EXACT_HEADERS):
        i = headers.index(name)
        if all(r[i] in ("-", "") for r in rows):
            headers.pop(i)
            for r in rows:
                r.pop(i)
    return headers, rows


def _missing(g: dict[str, Any], name: str) -> str:
    mean = g.get(f"{name}_mean")
    return "0" if mean == 0 else format_err(mean, _spread(g, name))


def _spread(g: dict[str, Any], name: str) -> float | None:
    """The std over seeds, or for a single seed the run's own statistical error."""
    return g.get(f"{name}_std") if len(g["seeds"]) > 1 else g.get(f"{name}_err_mean")


def _flagged(mean: float | None, err: float | None, flagged: bool) -> str:
    """An importance-sampling estimate: without its error and with ``*`` when ESS x N is too small."""
    return format_err(mean, None) + "*" if flagged and _finite(mean) else format_err(mean, err)


def _raw(g: dict[str, Any]) -> dict[str, Any]:
    """A group with NaN/inf replaced by ``None`` (JSON-safe)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in g.items()}


def _csv(groups: list[dict[str, Any]]) -> str:
    fields = ["benchmark", "target", "method", "params", "preset", "seeds", "n_runs", *(f"n_{s}" for s in STATUSES),
              "ess_mean", "ess_std", "log_z_mean", "log_z_std", "log_z_err_mean", "log_z_exact",
              "breaking_ratio_mean", "breaking_ratio_std", "breaking_ratio_exact", "wall_s_mean",
              "breaking_ratio_is_mean", "breaking_ratio_is_std", "breaking_ratio_is_err_mean",
              "breaking_ratio_exact_err",
              "support_missing_mean", "support_missing_std", "support_missing_err_mean", "ess_n_min",
              "log_z_err_reliable", "flow", "energy_w2_mean", "energy_w2_std", "distance_w2_mean", "distance_w2_std",
              "energy_w1_mean", "energy_w1_std", "distance_w1_mean", "distance_w1_std",
              "energy_w2_exact_mean", "energy_w2_exact_std", "distance_w2_exact_mean", "distance_w2_exact_std",
              "support_missing_exact_mean", "support_missing_exact_std", "support_missing_exact_err_mean"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for g in groups:
        row = _raw(g)
        row["params"] = params_key(g["params"])
        row["seeds"] = " ".join(str(s) for s in g["seeds"])
        w.writerow({k: "" if row.get(k) is None else row[k] for k in fields})
    return buf.getvalue()


def render_report(runs: Iterable[dict[str, Any]], *, fmt: str = "terminal", group_by_benchmark: bool = False,
                  width: int = 160) -> str:
    r"""Render the aggregated runs as a table.

    Arguments:
        runs: run records (see the module docstring).
        fmt: ``terminal`` (plain text, rich), ``markdown`` (GitHub), ``csv`` and ``json`` (raw
            numbers, one row/object per group, see :func:`aggregate`), ``latex`` (booktabs).
        group_by_benchmark: one table per benchmark (human formats); otherwise one table, with a
            ``benchmark`` column only when the runs come from more than one benchmark.
        width: console width of the terminal format.

    Returns:
        The rendered text. Without runs: a one-line message for the human formats, ``[]`` for
        json and the header line for csv (so both stay parseable).

    Raises:
        UnknownNameError: for an unknown ``fmt``.
    """
    if fmt not in FORMATS:
        raise UnknownNameError("report format", fmt, list(FORMATS))
    groups = aggregate(runs)
    if fmt == "json":
        return json.dumps([_raw(g) for g in groups], indent=2, default=str)
    if fmt == "csv":
        return _csv(groups)
    if not groups:
        return EMPTY
    preset_col = len({g["preset"] for g in groups}) > 1
    flow_col = any((g.get("flow") or "realnvp") != "realnvp" for g in groups)  # a column once any run differs
    if group_by_benchmark:
        sections: dict[Any, list] = {}
        for g in groups:
            sections.setdefault(g["benchmark"], []).append(g)
        parts = [(f"benchmark: {b}" if b else "ad-hoc runs (no benchmark)", gs) for b, gs in sections.items()]
        benchmark_col = False
    else:
        parts = [(None, groups)]
        benchmark_col = len({g["benchmark"] for g in groups}) > 1
    tables = []
    for title, gs in parts:
        headers, rows = _display_rows(gs, benchmark_col=benchmark_col, preset_col=preset_col, flow_col=flow_col)
        tables.append(_table(headers, rows, fmt, title=title, width=width))
    if fmt == "latex":
        body = "\n\n".join(tables)
        return f"\\begin{{table}}\n\\centering\n{body}\n\\caption{{{_latex_escape(CAPTION)}}}\n\\end{{table}}"
    caption = textwrap.fill(CAPTION, width) if fmt == "terminal" else CAPTION
    return "\n\n".join(tables) + "\n\n" + caption
