r"""Aggregation of stored runs over seeds: one group per (benchmark, target, method, flow, params,
preset), with mean and sample standard deviation (``ddof=1``, the paper's "mean(std) over ten
models") of ESS, ln Z, breaking ratios and the later metrics, and the labels and order the tables use.

Pure functions of run records (:class:`~sesamo_bench.harness.record.RunRecord`, as ``Store.runs()``
returns them, or mappings of their columns): ``benchmark``, ``target``, ``method``, ``seed``,
``params`` (target parameters, incl. swept values), ``config`` (``RunConfig.to_dict()``),
``status``, ``wall_s``, ``ess``, ``log_z``, ``breaking_ratio``, ``breaking_ratio_exact`` and the
metrics (``log_z_exact``, ...).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ..core.metrics import error_reliable
from ..harness.record import RunRecord
from .formatting import _finite

#: the statuses a run record can have
STATUSES = ("finished", "failed", "diverged", "interrupted", "running")
#: the methods of the paper's Table 1, in its column order
METHOD_ORDER = ("realnvp", "canonicalization", "sesamo")


def _method(method: str) -> Any:
    """The class of a discovered method, None for a name no plugin declares (a stored row of a
    method that is not installed here)."""
    from .. import plugins

    return plugins.methods.items.get(method)


def method_label(method: str) -> str:
    """How tables and plots name ``method``: the ``label`` its class declares (else its name)."""
    return getattr(_method(method), "label", "") or method


def method_colour(method: str, i: int = 0) -> str:
    """Its plot colour: the ``colour`` its class declares, else the ``i``-th of matplotlib's cycle."""
    return getattr(_method(method), "colour", "") or f"C{(i + 3) % 10}"


class _Labels(Mapping):
    """``{name: label}`` of every discovered method, read from the classes (:func:`method_label`)."""

    def __getitem__(self, method: str) -> str:
        if _method(method) is None:
            raise KeyError(method)
        return method_label(method)

    def __iter__(self) -> Iterator[str]:
        from .. import plugins

        return iter(plugins.methods.items)

    def __len__(self) -> int:
        from .. import plugins

        return len(plugins.methods.items)


#: ``{name: label}`` of every method (declared on the method classes)
METHOD_LABELS: Mapping[str, str] = _Labels()


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; ``None`` for a single value) of finite values."""
    v = [float(x) for x in values if _finite(x)]
    if not v:
        return None, None
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))

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
    """Sort key of the methods: the ``order`` their classes declare (the paper's three first, in
    its column order), then the name; methods not installed here last."""
    cls = _method(method)
    return (getattr(cls, "order", 100), method) if cls is not None else (10**6, method)

def _group_sort(g: dict[str, Any]) -> tuple:
    return (g["benchmark"] or "", g["target"], _params_sort(g["params"]), g["preset"] or "", method_rank(g["method"]),
            g.get("flow") or "")

def flow_label(config: dict[str, Any] | None) -> str:
    """The architecture of a run's configuration: ``realnvp`` (the default) or ``name(key=value,...)``."""
    config = config or {}
    inner = ",".join(f"{k}={v}" for k, v in sorted((config.get("flow_params") or {}).items()))
    return (config.get("flow") or "realnvp") + (f"({inner})" if inner else "")

#: hyperparameters left out of :func:`training_overrides`: the architecture (its own column) and
#: settings that change what is kept, not what is trained or measured
BOOKKEEPING = ("flow", "flow_params", "checkpoint_every", "save_samples")

def training_overrides(run: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters a run was given on top of its preset (``--set steps=50000``, a
    benchmark's ``set`` table): those of its configuration that differ from what the preset gives
    its method, less :data:`BOOKKEEPING`, execution settings (threads, device: they do
    not change what is computed) and swept keys (already among its params). Empty where the
    target's plugin is not installed (nothing to compare with)."""
    from ..harness.config import EXECUTION_ONLY, HYPER, preset_values

    config = run.get("config") or {}
    try:
        from .. import plugins

        given = preset_values(plugins.targets.get(run["target"]), config.get("preset") or "quick", run["method"])
    except Exception:
        return {}
    swept = run.get("params") or {}
    return {k: config[k] for k, default in HYPER.items()
            if k in config and k not in EXECUTION_ONLY and k not in BOOKKEEPING and k not in swept
            and not _same(config[k], given.get(k, default))}

def group_params(run: dict[str, Any]) -> dict[str, Any]:
    """The target parameters of a run, with its non-default symmetry parameters as ``symmetry.<key>``
    (runs that restrict the group differently are different experiments) and the hyperparameters it
    was given on top of its preset (:func:`training_overrides`: a 6000- and a 50 000-step run of one
    preset are not pooled)."""
    config = run.get("config") or {}
    sym = config.get("symmetry_params") or {}
    out = {**(run.get("params") or {}), **{f"symmetry.{k}": v for k, v in sym.items()}, **training_overrides(run)}
    if run.get("method") == "hmc" and config.get("global_moves"):  # a different sampler
        out["global_moves"] = True
    return out


#: what a group summarises over its finished seeds (name, with the standard deviation), in the output's order
_SUMMARISED = (("ess", True), ("log_z", True), ("breaking_ratio", True), ("log_z_err", False),
               ("breaking_ratio_is", True), ("breaking_ratio_is_err", False), ("support_missing", True),
               ("support_missing_err", False), ("energy_w2", True), ("distance_w2", True), ("energy_w1", True),
               ("distance_w1", True), ("energy_w2_exact", True), ("distance_w2_exact", True),
               ("support_missing_exact", True), ("support_missing_exact_err", False))


def aggregate(runs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    r"""Group runs over seeds and summarise each group.

    Groups are keyed by (benchmark, target, method, architecture, params, preset), params being the
    target's, the symmetry's and the hyperparameters set on top of the preset (:func:`group_params`):
    runs of different presets, architectures, groups or training settings are not comparable and are
    never pooled. Only ``finished`` runs enter the means; the others are
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
    groups: dict[tuple, list[RunRecord]] = {}
    for r in (RunRecord.from_row(r, strict=False) for r in runs):
        preset = r.config.get("preset")
        key = (r.benchmark, r.target, r.method, params_key(group_params(r)), preset,
               "-" if r.method == "hmc" else flow_label(r.config))  # HMC has no flow
        groups.setdefault(key, []).append(r)
    out = []
    for (bench, target, method, _, preset, flow), rs in groups.items():
        fin = sorted((r for r in rs if r.status == "finished"), key=lambda r: r.seed or 0)
        g: dict[str, Any] = {"benchmark": bench, "target": target, "method": method,
                             "params": group_params(rs[0]), "preset": preset, "flow": flow,
                             "seeds": [r.seed for r in fin], "n_runs": len(rs)}
        for s in STATUSES:
            g[f"n_{s}"] = sum(r.status == s for r in rs)
        for name, spread in _SUMMARISED:
            m, sd = _mean_std([getattr(r, name) for r in fin])
            g[f"{name}_mean"] = m
            if spread:
                g[f"{name}_std"] = sd
        n_eff = [float(r.ess_n) for r in fin if _finite(r.ess_n)]
        g["ess_n_min"] = min(n_eff) if n_eff else None
        g["log_z_err_reliable"] = None if not n_eff else bool(error_reliable(min(n_eff)))
        # exact references are properties of the target: take them from any run of the group
        for name in ("log_z_exact", "breaking_ratio_exact", "breaking_ratio_exact_err"):
            g[name] = next((float(getattr(r, name)) for r in rs if _finite(getattr(r, name))), None)
        g["wall_s_mean"] = _mean_std([r.wall_s for r in fin])[0]
        out.append(g)
    return sorted(out, key=_group_sort)
