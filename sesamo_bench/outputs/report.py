r"""Tables of stored runs: aggregation over seeds and rendering (terminal, markdown, csv, json, latex).

Pure functions of run records as returned by ``Store.runs()`` (JSON columns decoded): dicts with
``benchmark``, ``target``, ``method``, ``seed``, ``params`` (target parameters, incl. swept values),
``config`` (``RunConfig.to_dict()``), ``status``, ``wall_s``, ``ess``, ``log_z``,
``breaking_ratio``, ``breaking_ratio_exact`` and ``metrics`` (``log_z_exact``, ...).

Uncertainties are the sample standard deviation over seeds (``ddof=1``), as in the paper's
"mean(std) over ten models", printed in the last digits: ``0.951(3)`` means 0.951 +- 0.003.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import textwrap
from collections.abc import Iterable
from typing import Any

from tabulate import tabulate

from ..errors import UnknownNameError
from ..core.metrics import error_reliable

FORMATS = ("terminal", "markdown", "csv", "json", "latex")
STATUSES = ("finished", "failed", "diverged", "interrupted", "running")
#: display order of the methods; others follow alphabetically
METHOD_ORDER = ("realnvp", "canonicalization", "sesamo")
METHOD_LABELS = {"realnvp": "RealNVP", "canonicalization": "Canonicalization", "sesamo": "SESaMo"}
CAPTION = ("ESS, ln Z and R (breaking ratio, paper Eq. 39): mean(std) over the finished seeds, std = sample "
           "standard deviation (ddof=1) printed in the last digits; a single seed shows no uncertainty. "
           "Only finished runs enter the means; failures counts failed/diverged/interrupted/running runs. "
           "R: learned by the modulation; R IS: importance-weighted from the samples (one seed: with its "
           "delta-method error); R exact: closed form, or for phi4-real the suite's HMC reference with its "
           "error. no support: target mass where ln q = -inf, from reference samples of p (one seed: with its "
           "binomial error). * after ln Z or R IS: ESS x N < 100 in a seed, too few effective samples for an "
           "importance-sampling error (none shown; sesamo_bench.core.metrics.MIN_EFFECTIVE_SAMPLES). "
           "energy W2, dist W2 (particle targets): 2-Wasserstein distances of the energy and pair-distance "
           "distributions of the model's saved samples (unweighted) to the reference samples.")
EMPTY = "no runs in the store to report (train some first; nothing matched the selection)"


# -- numbers ----------------------------------------------------------------------------------------
def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _plain(mean: float, sig: int = 4) -> str:
    """``mean`` with ``sig`` significant digits in fixed-point notation (``0.9512``, ``-150.3``)."""
    if mean == 0:
        return "0"
    decimals = sig - 1 - math.floor(math.log10(abs(mean)))
    if decimals > 8:  # tiny numbers: fixed point would be all zeros
        return f"{mean:.{sig}g}"
    return f"{mean:.{max(decimals, 0)}f}"


def format_err(mean: float | None, err: float | None) -> str:
    r"""A value with its uncertainty in the last digits, physicists' notation.

    The error keeps two significant digits when its leading digit is 1 or 2 (PDG-like; the paper's
    ``0.75(26)``, ``0.88(15)``) and one otherwise (``0.951(3)``); an error that rounds up to the
    next decade (0.0096) becomes two digits (``(10)``). The value is rounded to the same decimal
    place. Errors >= 1 that reach across the decimal point are written in full (``12.3(1.2)``);
    without decimals both are integers (``-150(25)``).

    Arguments:
        mean: the value; ``None`` or NaN gives ``"-"``.
        err: its uncertainty; ``None``, NaN, infinite or 0 (e.g. a single seed) give the value
            alone with 4 significant digits.

    Returns:
        The formatted string.

    Example:
        >>> format_err(0.7512, 0.262), format_err(0.9512, 0.0031), format_err(12.34, 1.23)
        ('0.75(26)', '0.951(3)', '12.3(1.2)')
        >>> format_err(0.99912, 0.0), format_err(float("nan"), 0.1)
        ('0.9991', '-')
    """
    if not _finite(mean):
        return "-"
    if not _finite(err) or err == 0:
        return _plain(mean)
    err = abs(err)
    exp = math.floor(math.log10(err))
    lead = round(err / 10 ** (exp - 2))  # three leading digits, 100..1000
    if lead >= 1000:  # log10 rounding or 999.5+
        exp, lead = exp + 1, round(lead / 10)
    if lead >= 950:  # 0.0096 -> 0.010: two digits of the next decade
        exp, sig = exp + 1, 2
    else:
        sig = 2 if lead < 300 else 1
    decimals = sig - 1 - exp
    if decimals <= 0:
        return f"{round(mean, decimals):.0f}({round(err, decimals):.0f})"
    digits = round(err * 10**decimals)
    inner = f"{err:.{decimals}f}" if digits >= 10**decimals else str(digits)
    return f"{mean:.{decimals}f}({inner})"


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; ``None`` for a single value) of finite values."""
    v = [float(x) for x in values if _finite(x)]
    if not v:
        return None, None
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


# -- grouping ---------------------------------------------------------------------------------------
def params_key(params: dict[str, Any] | None) -> str:
    """A hashable, canonical form of a parameter dict (sorted JSON)."""
    return json.dumps(params or {}, sort_keys=True, default=str)


def params_label(params: dict[str, Any] | None) -> str:
    """``"alpha=0.005, shape=8x8"``; ``"-"`` for no parameters (the target's defaults)."""
    if not params:
        return "-"
    out = []
    for k in sorted(params):
        v = params[k]
        if isinstance(v, (list, tuple)) and all(isinstance(i, int) for i in v):
            v = "x".join(str(i) for i in v)
        elif isinstance(v, float):
            v = f"{v:g}"
        out.append(f"{k}={v}")
    return ", ".join(out)


@functools.lru_cache(maxsize=64)
def _target_defaults(name: str) -> dict[str, Any]:
    """The target plugin's constructor defaults; ``{}`` when the plugin is missing."""
    try:
        from .. import plugins
        from ..registry import parameters

        return parameters(plugins.targets.get(name))
    except Exception:  # no plugin: every parameter counts as set
        return {}


def _same(a: Any, b: Any) -> bool:
    if _finite(a) and _finite(b):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def shown_params(target: str, params: dict[str, Any], siblings: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    r"""The parameters worth printing: those differing from the target's defaults or varying.

    Run records carry every target parameter (defaults included) plus swept hyperparameters;
    tables and file names show only the keys that are not the plugin's default or that take
    more than one value among ``siblings`` (the params of the other runs of the same target).
    """
    defaults = _target_defaults(target)
    siblings = list(siblings)
    out = {}
    for k, v in params.items():
        varies = any(not _same(p.get(k, defaults.get(k)), v) for p in siblings)  # missing = default
        if varies or k not in defaults or not _same(v, defaults[k]):
            out[k] = v
    return out


def _sort_value(v: Any) -> tuple:
    return (0, float(v), "") if _finite(v) else (1, 0.0, str(v))


def _params_sort(params: dict[str, Any]) -> tuple:
    return tuple((k, _sort_value(params[k])) for k in sorted(params))


def method_rank(method: str) -> tuple[int, str]:
    """Sort key putting the paper's methods in the paper's column order."""
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def _group_sort(g: dict[str, Any]) -> tuple:
    return (g["benchmark"] or "", g["target"], _params_sort(g["params"]), g["preset"] or "", method_rank(g["method"]),
            g.get("flow") or "")


def _exact_like(exact: float | None, estimate: str) -> str:
    """An exact reference printed with the decimals of the estimate beside it (one more)."""
    head = estimate.split("(")[0]
    if not _finite(exact) or "." not in head or "e" in head.lower():
        return format_err(exact, None)
    return f"{exact:.{len(head.split('.')[1]) + 1}f}"


def flow_label(config: dict[str, Any] | None) -> str:
    """The architecture of a run's configuration: ``realnvp`` (the default) or ``name(key=value,...)``."""
    config = config or {}
    inner = ",".join(f"{k}={v}" for k, v in sorted((config.get("flow_params") or {}).items()))
    return (config.get("flow") or "realnvp") + (f"({inner})" if inner else "")


def aggregate(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    r"""Group runs over seeds and summarise each group.

    Groups are keyed by (benchmark, target, method, architecture, params, preset): runs of different
    presets or architectures are not comparable and are never pooled. Only ``finished`` runs enter the means; the others are
    counted by status.

    Arguments:
        runs: run records (see the module docstring).

    Returns:
        One dict per group, sorted by benchmark, target, params, preset and method, with keys
        ``benchmark, target, method, params, preset, seeds`` (finished seeds), ``n_runs``,
        ``n_finished, n_failed, n_diverged, n_interrupted, n_running``, ``ess_mean, ess_std,
        log_z_mean, log_z_std, breaking_ratio_mean, breaking_ratio_std`` (std: sample standard
        deviation over seeds, ddof=1, ``None`` for one seed), ``log_z_err_mean`` (mean of the
        per-run statistical error), ``log_z_exact, breaking_ratio_exact`` (``None`` where unknown),
        ``breaking_ratio_exact_err`` (the error of a Monte Carlo reference), ``breaking_ratio_is_mean,
        breaking_ratio_is_std, breaking_ratio_is_err_mean`` (importance-weighted R),
        ``support_missing_mean, support_missing_std, support_missing_err_mean`` (target mass without
        support), ``ess_n_min`` (the smallest ESS x N of the seeds), ``log_z_err_reliable``
        (``ess_n_min >= metrics.MIN_EFFECTIVE_SAMPLES``; ``None`` for runs recorded without it)
        and ``wall_s_mean``.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        preset = (r.get("config") or {}).get("preset")
        key = (r.get("benchmark"), r["target"], r["method"], params_key(r.get("params")), preset,
               flow_label(r.get("config")))
        groups.setdefault(key, []).append(r)
    out = []
    for (bench, target, method, _, preset, flow), rs in groups.items():
        fin = sorted((r for r in rs if r.get("status") == "finished"), key=lambda r: r.get("seed", 0))
        g: dict[str, Any] = {"benchmark": bench, "target": target, "method": method,
                             "params": dict(rs[0].get("params") or {}), "preset": preset, "flow": flow,
                             "seeds": [r.get("seed") for r in fin], "n_runs": len(rs)}
        for s in STATUSES:
            g[f"n_{s}"] = sum(r.get("status") == s for r in rs)
        for name in ("ess", "log_z", "breaking_ratio"):
            g[f"{name}_mean"], g[f"{name}_std"] = _mean_std([r.get(name) for r in fin])
        g["log_z_err_mean"] = _mean_std([r.get("log_z_err") for r in fin])[0]
        ms = [(r.get("metrics") or {}) for r in fin]
        for name in ("breaking_ratio_is", "support_missing"):
            g[f"{name}_mean"], g[f"{name}_std"] = _mean_std([m.get(name) for m in ms])
            g[f"{name}_err_mean"] = _mean_std([m.get(f"{name}_err") for m in ms])[0]
        for name in ("energy_w2", "distance_w2", "energy_w1", "distance_w1"):
            g[f"{name}_mean"], g[f"{name}_std"] = _mean_std([m.get(name) for m in ms])
        n_eff = [float(m["ess_n"]) for m in ms if _finite(m.get("ess_n"))]
        g["ess_n_min"] = min(n_eff) if n_eff else None
        g["log_z_err_reliable"] = None if not n_eff else bool(error_reliable(min(n_eff)))
        # exact references are properties of the target: take them from any run of the group
        g["log_z_exact"] = next((float(v) for r in rs if _finite(v := (r.get("metrics") or {}).get("log_z_exact"))),
                                None)
        g["breaking_ratio_exact"] = next((float(r["breaking_ratio_exact"]) for r in rs
                                          if _finite(r.get("breaking_ratio_exact"))), None)
        g["breaking_ratio_exact_err"] = next(
            (float(v) for r in rs if _finite(v := (r.get("metrics") or {}).get("breaking_ratio_exact_err"))), None)
        g["wall_s_mean"] = _mean_std([r.get("wall_s") for r in fin])[0]
        out.append(g)
    return sorted(out, key=_group_sort)


# -- rendering --------------------------------------------------------------------------------------
def _failures(g: dict[str, Any]) -> str:
    parts = [f"{g[f'n_{s}']} {s}" for s in STATUSES[1:] if g[f"n_{s}"]]
    return ", ".join(parts) if parts else "-"


def _display_rows(groups: list[dict[str, Any]], *, benchmark_col: bool, preset_col: bool,
                  flow_col: bool = False) -> tuple[list, list]:
    headers = (["benchmark"] if benchmark_col else []) + ["target", "method"] + (["flow"] if flow_col else []) + \
        ["params"] + (["preset"] if preset_col else []) + \
        ["seeds", "ESS", "ln Z", "ln Z exact", "R", "R IS", "R exact", "no support", "energy W2", "dist W2",
         "wall s", "failures"]
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
        missing = g.get("support_missing_mean")
        missing = "0" if missing == 0 else format_err(missing, _spread(g, "support_missing"))
        row += [str(g["n_finished"]),
                format_err(g["ess_mean"], g["ess_std"]),
                log_z, _exact_like(g["log_z_exact"], log_z.rstrip("*")),
                ratio, ratio_is, exact_r, missing,
                format_err(g.get("energy_w2_mean"), g.get("energy_w2_std")),
                format_err(g.get("distance_w2_mean"), g.get("distance_w2_std")),
                "-" if g["wall_s_mean"] is None else f"{g['wall_s_mean']:.1f}",
                _failures(g)]
        rows.append(row)
    # the columns added later stay out of tables of runs recorded without them
    for name in ("R IS", "no support", "energy W2", "dist W2"):
        i = headers.index(name)
        if all(r[i] in ("-", "") for r in rows):
            headers.pop(i)
            for r in rows:
                r.pop(i)
    return headers, rows


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
              "energy_w1_mean", "energy_w1_std", "distance_w1_mean", "distance_w1_std"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for g in groups:
        row = _raw(g)
        row["params"] = params_key(g["params"])
        row["seeds"] = " ".join(str(s) for s in g["seeds"])
        w.writerow({k: "" if row.get(k) is None else row[k] for k in fields})
    return buf.getvalue()


def _table(headers: list[str], rows: list[list[str]], fmt: str, *, title: str | None, width: int) -> str:
    if fmt == "terminal":
        from rich import box
        from rich.console import Console
        from rich.table import Table

        t = Table(*headers, title=title, box=box.SIMPLE_HEAD, title_justify="left")
        for i, h in enumerate(headers):
            if h in ("seeds", "ESS", "ln Z", "ln Z exact", "R", "R IS", "R exact", "no support", "energy W2", "dist W2",
                     "wall s"):
                t.columns[i].justify = "right"
        for row in rows:
            t.add_row(*row)
        # the table takes the width it needs (never squeezed or truncated); only the caption wraps at width
        console = Console(file=io.StringIO(), width=max(width, 400), color_system=None, force_terminal=False)
        console.print(t)
        lines = [line.rstrip() for line in console.file.getvalue().splitlines()]
        return "\n".join(lines).strip("\n")
    if fmt == "markdown":
        text = tabulate(rows, headers, tablefmt="github", disable_numparse=True)
        return f"**{title}**\n\n{text}" if title else text
    # latex
    text = tabulate(rows, headers, tablefmt="latex_booktabs", disable_numparse=True)
    return f"% {title}\n{text}" if title else text


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


def _latex_escape(s: str) -> str:
    return s.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


# -- the paper's Table 1 ----------------------------------------------------------------------------
_TABLE1 = {
    "gmm-exact-z8": ("Gaussian mixture model", "exact Z8", "gaussian-mixture", {"b": 0.0},
                     ("0.75(26)", "0.992(4)", "0.999(1)")),
    "phi4-complex-exact-u1": ("Complex phi4 theory", "exact U(1)", "phi4-complex", {"alpha": 0.0},
                              ("0.16(8)", None, "0.951(3)")),
    "phi4-complex-broken-u1": ("Complex phi4 theory", "broken U(1)", "phi4-complex", {"alpha": 0.005},
                               ("0.22(4)", None, "0.948(4)")),
    "hubbard-broken-z4": ("Hubbard model", "broken Z4", "hubbard", {}, ("0.88(15)", "0.85(1)", "0.999(2)")),
}


def parse_err(text: str) -> tuple[float, float]:
    r"""Inverse of :func:`format_err`: ``"0.75(26)" -> (0.75, 0.26)``, ``"12.3(1.2)" -> (12.3, 1.2)``."""
    mean_s, _, rest = text.partition("(")
    err_s = rest.rstrip(")")
    mean = float(mean_s)
    if not err_s:
        return mean, 0.0
    if "." in err_s:
        return mean, float(err_s)
    decimals = len(mean_s.partition(".")[2])
    return mean, int(err_s) / 10**decimals


def paper_table1() -> dict[str, dict[str, Any]]:
    r"""The ESS of the paper's Table 1 (mean(std) over ten models).

    Returns:
        ``{row_id: {"model", "symmetry", "target", "params", "ess"}}`` where ``params`` selects our
        runs (a key missing from a run's params counts as the target's default) and ``ess`` maps
        ``realnvp``/``canonicalization``/``sesamo`` to ``{"text": "0.75(26)", "mean": 0.75,
        "std": 0.26}`` or ``None`` (not applicable: canonicalization of a continuous symmetry).
    """
    out = {}
    for key, (model, sym, target, params, texts) in _TABLE1.items():
        ess = {}
        for method, text in zip(METHOD_ORDER, texts):
            if text is None:
                ess[method] = None
            else:
                m, s = parse_err(text)
                ess[method] = {"text": text, "mean": m, "std": s}
        out[key] = {"model": model, "symmetry": sym, "target": target, "params": dict(params), "ess": ess}
    return out


def _matches(params: dict[str, Any], want: dict[str, Any], defaults: dict[str, Any]) -> bool:
    return all(_same(params.get(k, defaults.get(k)), v) for k, v in want.items())


def render_table1(runs: Iterable[dict[str, Any]], fmt: str = "markdown") -> str:
    r"""Our ESS beside the paper's Table 1, one line per paper row and matching run group.

    Arguments:
        runs: run records; groups are matched to a paper row by target and the row's params.
        fmt: ``markdown``, ``terminal``, ``latex`` (tables) or ``csv``/``json`` (raw numbers).

    Returns:
        The table; paper rows without matching runs show ``-`` for ours.
    """
    if fmt not in FORMATS:
        raise UnknownNameError("report format", fmt, list(FORMATS))
    groups = aggregate(runs)
    table = paper_table1()
    records = []
    for key, row in table.items():
        defaults = _target_defaults(row["target"])
        mine = [g for g in groups if g["target"] == row["target"] and _matches(g["params"], row["params"], defaults)]
        variants: dict[tuple, dict[str, dict]] = {}
        for g in mine:
            variants.setdefault((g["benchmark"], params_key(g["params"]), g["preset"]), {})[g["method"]] = g
        for vkey, by_method in (variants.items() or [((None, None, None), {})]):
            rec: dict[str, Any] = {"row": key, "model": row["model"], "symmetry": row["symmetry"],
                                   "target": row["target"], "benchmark": vkey[0], "preset": vkey[2],
                                   "params": json.loads(vkey[1]) if vkey[1] else None}
            for m in METHOD_ORDER:
                p, g = row["ess"][m], by_method.get(m)
                rec[f"{m}_paper_mean"] = p and p["mean"]
                rec[f"{m}_paper_std"] = p and p["std"]
                rec[f"{m}_paper"] = p["text"] if p else "n/a"
                rec[f"{m}_ess_mean"] = g and g["ess_mean"]
                rec[f"{m}_ess_std"] = g and g["ess_std"]
                rec[f"{m}_seeds"] = g["n_finished"] if g else 0
                rec[f"{m}_ours"] = format_err(g["ess_mean"], g["ess_std"]) if g else "-"
            records.append(rec)
    if fmt == "json":
        return json.dumps(records, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        fields = [k for k in records[0] if not k.endswith(("_paper", "_ours"))]
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow({k: "" if r[k] is None else (params_key(r[k]) if k == "params" else r[k]) for k in fields})
        return buf.getvalue()
    headers = ["model", "symmetry", "ours: params"]
    for m in METHOD_ORDER:
        headers += [f"{METHOD_LABELS[m]} (paper)", f"{METHOD_LABELS[m]} (ours)"]
    rows = []
    for r in records:
        shown = {} if r["params"] is None else shown_params(r["target"], r["params"])
        label = "(no runs)" if r["params"] is None else (params_label(shown) if shown else "defaults")
        if r["preset"]:
            label += f" [{r['preset']}]"
        if r["benchmark"]:
            label = f"{r['benchmark']}: {label}"
        line = [r["model"], r["symmetry"], label]
        for m in METHOD_ORDER:
            line += [r[f"{m}_paper"], r[f"{m}_ours"]]
        rows.append(line)
    caption = ("ESS after training, mean(std) over seeds (sample std, ddof=1). Paper: Table 1 of the SESaMo "
               "paper, ten models each; n/a: canonicalization does not handle the continuous U(1) symmetry.")
    text = _table(headers, rows, fmt, title=None, width=200)
    if fmt == "latex":
        return f"\\begin{{table}}\n\\centering\n{text}\n\\caption{{{_latex_escape(caption)}}}\n\\end{{table}}"
    return text + "\n\n" + caption
