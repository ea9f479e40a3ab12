r"""The observables table: one row per run, estimator and observable of every stored measurement
(``sesamo-bench report --observables``, ``measure``, ``hmc``)."""

from __future__ import annotations

import math
from typing import Any

from ..analysis.observables import Estimate
from ..harness.measure import Measurement


def estimate_rows(m: Measurement, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows ``observable, value, error, exact, pull, tau_int, rhat, n_eff, cost`` of one measurement."""
    rows = []
    for k, e in m.estimates.items():
        if names and k.split("[")[0] not in names:
            continue
        ex = (m.exact or {}).get(k)
        pull = (e.value - ex) / e.error if ex is not None and e.error > 0 and math.isfinite(e.value) else None
        rows.append({"observable": k, "value": e.value, "error": e.error, "exact": ex, "pull": pull,
                     "tau_int": e.tau_int, "rhat": e.rhat, "n_eff": e.n_eff, "cost_s": m.cost.get(k)})
    return rows



OBS_HEADERS = ["run", "target", "method", "estimator", "observable", "estimate", "exact", "pull", "tau_int",
               "R-hat", "acceptance", "cost s/eff"]


def observable_rows(runs: list[dict[str, Any]], names: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per run, estimator and observable of every stored measurement."""
    out = []
    for rec in runs:
        for kind, m in ((rec.get("metrics") or {}).get("measurements") or {}).items():
            # (Store.runs leaves out damaged measurements; NaN is stored as null)
            ests = {k: Estimate(**{**e, **{f: math.nan for f in ("value", "error") if e.get(f) is None}})
                    for k, e in m["estimates"].items()}
            meas = Measurement(kind, m["samples"], m["seconds"], ests,
                               m.get("exact"), m.get("acceptance"), m.get("cost") or {}, m.get("settings") or {})
            for row in estimate_rows(meas, names):
                out.append({"run_id": rec["run_id"], "target": rec["target"], "method": rec["method"],
                            "estimator": kind, "acceptance": meas.acceptance, **row})
    return out


def render_observables(rows: list[dict[str, Any]], fmt: str = "terminal") -> str:
    """The observable table (terminal, markdown, latex, csv or json)."""
    import csv
    import io
    import json

    from ..harness.store import clean
    from .formatting import _table, format_err

    if fmt == "json":
        return json.dumps(clean(rows), indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["run_id"])
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()

    def num(v: float | None, spec: str) -> str:
        return "-" if v is None or not math.isfinite(v) else format(v, spec)

    from ..core.metrics import MIN_EFFECTIVE_SAMPLES

    def estimate(r: dict[str, Any]) -> str:  # '*': too few effective samples for the error to mean much
        few = r.get("n_eff") is not None and r["n_eff"] < MIN_EFFECTIVE_SAMPLES
        return format_err(r["value"], r["error"]) + ("*" if few else "")

    table = [[r["run_id"][:8], r["target"], r["method"], r["estimator"], r["observable"],
              estimate(r), num(r["exact"], ".6g"), num(r["pull"], "+.1f"),
              num(r["tau_int"], ".2f"), "inf" if r.get("rhat") == math.inf else num(r.get("rhat"), ".3f"),
              num(r["acceptance"], ".3f"), num(r["cost_s"], ".2e")] for r in rows]
    caption = ("estimate(error): error from the Gamma method (pyerrors); pull = (estimate - exact) / error; "
               "R-hat over the chains (HMC), above 1.1 the error is the spread of the chain means (and tau_int "
               "the one it implies); "
               "cost s/eff = seconds (training amortised, sampling, burn-in) per effective sample, "
               "Var(O) / error^2; * after the estimate: fewer than 100 effective samples (Var(O) / error^2), "
               "the error itself is unreliable and the estimate may be far off (a flow that misses most of "
               "the target)")
    return _table(OBS_HEADERS, table, fmt, title=None, width=200) + ("\n\n" + caption if fmt == "terminal" else "")
