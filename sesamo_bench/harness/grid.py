r"""Planning a grid of runs: targets x methods x seeds x sweep values, all validated up front.

:func:`plan` resolves every run's :class:`~sesamo_bench.harness.config.RunConfig` and, once per
(sweep point, method), builds the target, the symmetry and the model on the CPU and checks an
exact symmetry against the action (:func:`sesamo_bench.harness.train.check_exact`), so that bad input
fails before anything is trained or written to the store.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any

from .. import plugins
from .config import HYPER, RunConfig, resolve
from ..errors import ConfigError, IncompatibleError
from ..core.methods import METHODS, method_class
from .store import run_id


@dataclass
class GridRequest:
    r"""What the user asked for (from the command line or a ``benchmarks.toml`` table).

    Attributes:
        target: target name.
        methods: method names; ``None`` means all methods (incompatible ones are skipped with a note).
        seeds: seeds, each >= 0.
        preset: ``smoke``, ``quick`` or ``paper``.
        overrides: ``key -> value`` for target parameters, hyperparameters and ``symmetry.<param>``.
        method_overrides: ``method -> {key: value}`` hyperparameters for one method.
        sweeps: ``key -> [values]``; one run per combination of values.
        symmetry: symmetry name replacing the target's default one.
        benchmark: name of the ``benchmarks.toml`` benchmark (part of the run id).
    """

    target: str
    methods: list[str] | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    preset: str = "quick"
    overrides: dict[str, Any] = field(default_factory=dict)
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    sweeps: dict[str, list[Any]] = field(default_factory=dict)
    symmetry: str | None = None
    benchmark: str | None = None


@dataclass
class PlannedRun:
    """One validated run: its configuration, id, benchmark and parameters (target + sweep values)."""

    config: RunConfig
    run_id: str
    benchmark: str | None
    params: dict[str, Any]


def plan(req: GridRequest) -> tuple[list[PlannedRun], list[str]]:
    """Resolve and validate a grid; returns the runs and notes (e.g. skipped methods)."""
    from .build import check_model, prepare

    plugins.targets.get(req.target)
    implicit = req.methods is None
    methods = list(METHODS) if implicit else list(dict.fromkeys(req.methods))
    if not methods:
        raise ConfigError("no methods given")
    for m in methods:
        method_class(m)
    for m in req.method_overrides:
        method_class(m)
    if not req.seeds:
        raise ConfigError("no seeds given")
    for s in req.seeds:
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < SEED_LIMIT:
            raise ConfigError(f"seeds must be integers >= 0 and < 2**32 ({SEED_LIMIT}), got {s!r}")
    for key, values in req.sweeps.items():
        if not values:
            raise ConfigError(f"sweep '{key}' has no values")
    refuse_set_and_swept(req.overrides, req.sweeps)
    seeds = list(dict.fromkeys(req.seeds))
    points = [dict(zip(req.sweeps, combo)) for combo in itertools.product(*req.sweeps.values())] or [{}]
    runs: list[PlannedRun] = []
    notes: list[str] = []
    skipped: set[str] = set()
    seen: set[str] = set()
    for point in points:
        overrides = {**req.overrides, **point}
        for method in methods:
            if method in skipped:
                continue
            cfgs = [resolve(req.target, method, seed=s, preset=req.preset, overrides=overrides,
                            method_overrides=req.method_overrides.get(method)) for s in seeds]
            if req.symmetry is not None:
                cfgs = [dataclasses.replace(c, symmetry=req.symmetry) for c in cfgs]
            cfg = cfgs[0]  # the seeds share everything checked here: target, symmetry and model built once
            target, sym = prepare(cfg)
            try:
                check_model(cfg, target, sym)  # no model is built to plan a grid
            except IncompatibleError as exc:
                if not implicit:
                    raise
                skipped.add(method)
                notes.append(f"skipping {method} on {req.target}: {exc}")
                continue
            tparams = target.params()
            params = dict(tparams)
            for key in point:
                if key in tparams:
                    continue
                if key.startswith("symmetry."):
                    params[key] = cfg.symmetry_params.get(key.split(".", 1)[1])
                elif key in HYPER:
                    params[key] = getattr(cfg, key)
            shadow = plugin_sources(cfg, target)
            for c in cfgs:
                rid = run_id(identity(c, tparams, shadow), req.benchmark)
                if rid not in seen:  # e.g. --sweep beta=1,1.0
                    seen.add(rid)
                    runs.append(PlannedRun(c, rid, req.benchmark, params))
    if not runs:
        raise IncompatibleError(f"no method can run on target '{req.target}' ({'; '.join(notes)})")
    return runs, notes


def identity(cfg: RunConfig, target_params: dict[str, Any], shadow: dict[str, str] | None = None
             ) -> dict[str, Any]:
    """What a run id is the hash of: the configuration, the target's resolved parameters and, where
    plugins shadow built-ins of the same name, their digests (:func:`plugin_sources`)."""
    ident = cfg.to_dict()
    ident["target_params"] = target_params
    if shadow:  # a plugin in place of a built-in of the same name: its own runs
        ident["plugin_sources"] = shadow
    return ident


def refuse_set_and_swept(overrides: dict[str, Any], sweeps: dict[str, list[Any]]) -> None:
    """A key both set to one value and swept (in any of its spellings) is a ConfigError."""
    from .config import canonical_key

    fixed = {canonical_key(k): k for k in overrides}
    swept: dict[str, str] = {}
    for key in sweeps:
        other = swept.setdefault(canonical_key(key), key)
        if other != key:
            raise ConfigError(f"--sweep: '{other}' and '{key}' name the same setting; give it once")
    for key, values in sweeps.items():
        if canonical_key(key) in fixed:
            k = fixed[canonical_key(key)]
            raise ConfigError(f"'{key}' is both swept ({key}={','.join(map(str, values))}) and set "
                              f"({k}={overrides[k]}); give it once, with --set or with --sweep")


#: seeds are used modulo 2**32 by some generators: larger ones are refused rather than aliased
SEED_LIMIT = 2**32


def plugin_sources(cfg: RunConfig, target: Any) -> dict[str, str]:
    """``{"target:<name>": sha256, "symmetry:<name>": sha256, "architecture:<name>": sha256, ...}`` of
    the plugins of a run (its target, its symmetry, the one its method uses, its flow's architecture,
    its method) that
    shadow a built-in plugin of the same name (empty when the built-ins are used: their run ids stay)."""
    out = {}
    syms = [cfg.symmetry or target.symmetry()[0]]
    if not cfg.symmetry:  # e.g. equivariant: the target's largest exact symmetry
        syms.append(method_class(cfg.method).symmetry_for(target)[0])
    used = [("target", plugins.targets, cfg.target),
            *(("symmetry", plugins.symmetries, s) for s in dict.fromkeys(syms)),
            ("architecture", plugins.architectures, cfg.flow), ("method", plugins.methods, cfg.method)]
    for kind, registry, name in used:
        digest = registry.shadow_digest(name)
        if digest is not None:
            out[f"{kind}:{name}"] = digest
    return out


def parse_list(text: str, what: str) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]``; empty items are an error."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise ConfigError(f"{what}: expected a comma-separated list, got {text!r}")
    return items


def parse_seeds(text: str) -> list[int]:
    out = []
    for item in parse_list(text, "--seeds"):
        try:
            s = int(item)
        except ValueError:
            raise ConfigError(f"--seeds: expected integers >= 0, got {item!r}") from None
        if not 0 <= s < SEED_LIMIT:
            raise ConfigError(f"--seeds: seeds must be >= 0 and < 2**32 ({SEED_LIMIT}; larger seeds would repeat "
                              f"smaller ones), got {s}")
        out.append(s)
    return out


def parse_assignments(items: list[str], option: str) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{k: v}``; a missing ``=`` or empty key is an error."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{option}: expected key=value, got {item!r}")
        if key in out:
            raise ConfigError(f"{option}: key '{key}' given twice ({key}={out[key]} and {key}={value.strip()}); "
                              f"give each key once")
        out[key] = value.strip()
    return out


def parse_sweeps(items: list[str]) -> dict[str, list[str]]:
    """``["beta=1,1.5,2"]`` -> ``{"beta": ["1", "1.5", "2"]}``.

    Values are separated by commas; for list-valued parameters separate the alternatives with
    ``/`` (``shape=8,8/16,16``).
    """
    out = {}
    for key, value in parse_assignments(items, "--sweep").items():
        sep = "/" if "/" in value else ","
        values = [v.strip() for v in value.split(sep)]
        if any(not v for v in values):
            raise ConfigError(f"--sweep {key}: empty value in {value!r}")
        out[key] = values
    return out
