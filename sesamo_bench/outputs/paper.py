r"""The paper's Table 1 (ESS, mean(std) over ten models) as data, and our runs beside it."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import Any

from ..errors import UnknownNameError
from .aggregate import (METHOD_ORDER, method_label, _same, _target_defaults, aggregate, params_key, params_label,
                        shown_params)
from .formatting import FORMATS, _latex_escape, _table, format_err, parse_err

#: row id -> (model, symmetry, target, the params selecting our runs, ESS texts of realnvp /
#: canonicalization / sesamo; None: not applicable)
_TABLE1 = {
    "gmm-exact-z8": ("Gaussian mixture model", "exact Z8", "gaussian-mixture", {"b": 0.0},
                     ("0.75(26)", "0.992(4)", "0.999(1)")),
    "phi4-complex-exact-u1": ("Complex phi4 theory", "exact U(1)", "phi4-complex", {"alpha": 0.0},
                              ("0.16(8)", None, "0.951(3)")),
    "phi4-complex-broken-u1": ("Complex phi4 theory", "broken U(1)", "phi4-complex", {"alpha": 0.005},
                               ("0.22(4)", None, "0.948(4)")),
    "hubbard-broken-z4": ("Hubbard model", "broken Z4", "hubbard", {}, ("0.88(15)", "0.85(1)", "0.999(2)")),
}


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

#: methods the paper's Table 1 has no column for: ours only
EXTRA_METHODS = ("equivariant", "vmonf")


def _not_applicable(method: str, target: str, params: dict[str, Any]) -> str | None:
    """Why ``method`` cannot run on ``target`` (one short phrase), or ``None``."""
    if method != "equivariant":
        return None
    try:
        from .. import plugins
        from ..core.equivariant import architectures_for

        tgt = plugins.targets.create(target, params)
        group = plugins.methods.get("equivariant").symmetry_for(tgt)[0]
        return None if architectures_for(group, tgt) else f"n/a: no {group}-equivariant flow"
    except Exception:  # a missing plugin: nothing to say
        return None


def _matches(params: dict[str, Any], want: dict[str, Any], defaults: dict[str, Any]) -> bool:
    return all(_same(params.get(k, defaults.get(k)), v) for k, v in want.items())


def _ours(rec: dict[str, Any], method: str, groups: list[dict[str, Any]], empty: str) -> None:
    """Our numbers for ``method`` in a Table 1 record: the group with the most seeds in the numeric
    fields (``_ess_mean``, ``_ess_std``, ``_seeds``, ``_flow``), every architecture in the cell, its flow
    named where it is not the default MLP RealNVP (``0.347(2) [u1-fourier]; 0.0008(6)``)."""
    g = groups[0] if groups else None
    rec[f"{method}_ess_mean"] = g and g["ess_mean"]
    rec[f"{method}_ess_std"] = g and g["ess_std"]
    rec[f"{method}_seeds"] = g["n_finished"] if g else 0
    rec[f"{method}_flow"] = g and g["flow"]
    cells = [format_err(x["ess_mean"], x["ess_std"]) + ("" if x["flow"] in ("realnvp", "") else f" [{x['flow']}]")
             for x in groups]
    rec[f"{method}_ours"] = "; ".join(cells) if cells else empty


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
        mine = [g for g in groups if g["target"] == row["target"] and g["method"] in (*METHOD_ORDER, *EXTRA_METHODS)
                and g["n_finished"] and _matches(g["params"], row["params"], defaults)]
        variants: dict[tuple, dict[str, dict]] = {}
        for g in mine:  # several architectures of one method: the most seeds first
            variants.setdefault((g["benchmark"], params_key(g["params"]), g["preset"]), {}).setdefault(
                g["method"], []).append(g)
        for by_method in variants.values():
            for gs in by_method.values():
                gs.sort(key=lambda g: -g["n_finished"])
        for vkey, by_method in (variants.items() or [((None, None, None), {})]):
            rec: dict[str, Any] = {"row": key, "model": row["model"], "symmetry": row["symmetry"],
                                   "target": row["target"], "benchmark": vkey[0], "preset": vkey[2],
                                   "params": json.loads(vkey[1]) if vkey[1] else None}
            for m in METHOD_ORDER:
                p = row["ess"][m]
                rec[f"{m}_paper_mean"] = p and p["mean"]
                rec[f"{m}_paper_std"] = p and p["std"]
                rec[f"{m}_paper"] = p["text"] if p else "n/a"
                _ours(rec, m, by_method.get(m, []), "-")
            for m in EXTRA_METHODS:
                gs = by_method.get(m, [])
                _ours(rec, m, gs, "-" if gs else _not_applicable(m, row["target"], row["params"]) or "-")
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
        headers += [f"{method_label(m)} (paper)", f"{method_label(m)} (ours)"]
    headers += [f"{method_label(m)} (ours)" for m in EXTRA_METHODS]
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
        line += [r[f"{m}_ours"] for m in EXTRA_METHODS]
        rows.append(line)
    caption = ("ESS after training, mean(std) over seeds (sample std, ddof=1). Paper: Table 1 of the SESaMo "
               "paper, ten models each; n/a: canonicalization does not handle the continuous U(1) symmetry. "
               "Equivariant (an invariant prior through an equivariant flow) and VMONF (a mixture of 4 flows): "
               "no numbers in the paper. [name]: the flow architecture where it is not the MLP RealNVP; "
               "several architectures of one method are separated by ';'.")
    text = _table(headers, rows, fmt, title=None, width=200)
    if fmt == "latex":
        return f"\\begin{{table}}\n\\centering\n{text}\n\\caption{{{_latex_escape(caption)}}}\n\\end{{table}}"
    return text + "\n\n" + caption
