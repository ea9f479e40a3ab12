r"""Run configuration: presets, ``--set`` overrides and validation.

A run is fully described by a :class:`RunConfig`. :func:`resolve` builds one from a target's
preset (``smoke``, ``quick`` or ``paper``; see :attr:`sesamo_bench.target.Target.presets`), the
per-method overrides of that preset and user overrides (``--set key=value`` or a
``benchmarks.toml`` table). Keys are either training/architecture fields of :class:`RunConfig`,
target parameters (``beta``), ``symmetry.<param>``, ``flow`` (an architecture name, see
:mod:`sesamo_bench.architecture`) or ``flow.<param>``; anything else is an error naming the
allowed keys.

The architecture's parameters live in ``flow_params``, except those of the default ``realnvp``:
they are the fields ``couplings``, ``hidden_layers``, ``width``, ``activation`` and
``scale_bound`` (``flow.width=100`` and ``width=100`` are the same run), so the configurations
from before the architecture registry keep their run ids.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, UnknownNameError
from .registry import _coerce, parameters

PRESETS = ("smoke", "quick", "paper")
DTYPES = ("auto", "float32", "float64")
DEVICES = ("auto", "cpu", "cuda")
LR_SCHEDULES = ("plateau", "cosine")
KERNELS = ("auto", "native", "onednn", "aten")  # the coupling MLPs' kernels (sesamo_bench.kernels)
MLP_DTYPES = ("auto", "float32", "float64")  # the coupling MLPs' dtype; auto: the run's dtype


@dataclass
class RunConfig:
    """Everything that determines one training run (target x method x seed)."""

    target: str
    method: str
    seed: int = 0
    preset: str = "quick"
    target_params: dict[str, Any] = field(default_factory=dict)
    symmetry: str | None = None
    symmetry_params: dict[str, Any] = field(default_factory=dict)
    # training (paper App. I)
    steps: int = 1000
    batch_size: int = 1024
    lr: float = 5e-4
    lr_breaking: float = 0.0  # learning rate of the modulation's breaking parameters (0: same as lr)
    gamma: float = 0.5
    penalty_a: float = 1000.0
    penalty_b: float = 100.0
    lr_factor: float = 0.92
    lr_patience: int = 2000
    lr_window: int = 100
    lr_min: float = 1e-6
    lr_schedule: str = "plateau"  # "plateau" (paper App. I) or "cosine" (anneal to lr_min over the run)
    grad_clip: float = 0.0
    # evaluation and bookkeeping
    eval_every: int = 100
    eval_samples: int = 4096
    final_samples: int = 65536
    save_samples: int = 20000
    checkpoint_every: int = 500
    # architecture (paper Table 3)
    couplings: int = 6
    hidden_layers: int = 4
    width: int = 40
    activation: str = "relu"
    scale_bound: float = 3.0
    prior_mean: float = 0.0
    prior_var: float = 1.0
    # execution
    device: str = "auto"
    dtype: str = "auto"
    # dtype of the couplings' conditioner MLPs (auto: the run's dtype). The samples, the coupling
    # transforms, ln q and the action stay in the run's dtype whatever this is (flows.MLP)
    mlp_dtype: str = "auto"
    compile: bool = False
    threads: int = 0  # CPU intra-op threads (0: torch default); an execution setting like device
    kernels: str = "auto"  # MLP kernels: auto (fused, native or oneDNN, on float32 CPU), native, onednn, aten
    # the flow's architecture (sesamo_bench.architecture); realnvp takes the fields above
    flow: str = "realnvp"
    flow_params: dict[str, Any] = field(default_factory=dict)
    # the number of flows of a mixture (method vmonf)
    components: int = 4

    def arch(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("couplings", "hidden_layers", "width", "activation", "scale_bound")}

    def flow_spec(self):
        """The :class:`~sesamo_bench.architecture.FlowSpec` of this run."""
        from .architecture import FlowSpec

        spec = FlowSpec(self.flow, {}, kernels=self.kernels)
        # realnvp (and architectures that declare run_fields) take the run's couplings, width, ...
        fields = self.flow == DEFAULT_FLOW or getattr(spec.cls, "run_fields", False)
        spec.params = {**self.arch(), **self.flow_params} if fields else dict(self.flow_params)
        return spec

    def flow_label(self) -> str:
        """``realnvp`` or ``name(key=value,...)`` of the non-default architecture parameters."""
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.flow_params.items()))
        return self.flow + (f"({inner})" if inner else "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def label(self) -> str:
        sweep = ",".join(f"{k}={v}" for k, v in sorted(self.target_params.items()))
        return f"{self.target}/{self.method}/seed{self.seed}" + (f" [{sweep}]" if sweep else "")


DEFAULT_FLOW = "realnvp"
#: RunConfig fields that are the default architecture's parameters
REALNVP_FIELDS = ("couplings", "hidden_layers", "width", "activation", "scale_bound")

HYPER = {f.name: f.default for f in dataclasses.fields(RunConfig)
         if f.name not in ("target", "method", "seed", "preset", "target_params", "symmetry", "symmetry_params",
                           "flow_params")}

#: allowed range of each numeric hyperparameter: (lower, lower inclusive, upper)
RANGES: dict[str, tuple[float, bool, float | None]] = {
    "steps": (1, True, None), "batch_size": (1, True, None), "lr": (0, False, None), "lr_breaking": (0, True, None),
    "gamma": (0, True, 1.0), "penalty_a": (0, True, None), "penalty_b": (0, True, None),
    "lr_factor": (0, False, 1.0), "lr_patience": (1, True, None), "lr_window": (2, True, None),
    "lr_min": (0, True, None), "grad_clip": (0, True, None), "eval_every": (1, True, None),
    "eval_samples": (2, True, None), "final_samples": (2, True, None), "save_samples": (0, True, None),
    "checkpoint_every": (1, True, None), "threads": (0, True, None), "couplings": (1, True, None),
    "hidden_layers": (0, True, None), "components": (1, True, 64),
    "width": (1, True, None), "scale_bound": (0, False, None), "prior_var": (0, False, None),
}


#: hyperparameters that take one of a few names
CHOICES: dict[str, tuple[str, ...]] = {"lr_schedule": LR_SCHEDULES, "dtype": DTYPES, "mlp_dtype": MLP_DTYPES,
                                       "kernels": KERNELS, "device": DEVICES}


def check_hyper(key: str, value: Any, where: str = "--set") -> Any:
    """Coerce ``value`` to the type of hyperparameter ``key`` and check its range."""
    if key not in HYPER:
        raise ConfigError(f"{where}: unknown key '{key}'. Allowed: {', '.join(sorted(HYPER))}")
    value = _coerce(value, HYPER[key], key, where)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: '{key}' must be a finite number, got {value!r}")
    if key in RANGES:
        lo, inclusive, hi = RANGES[key]
        ok = (value >= lo if inclusive else value > lo) and (hi is None or value <= hi)
        if not ok:
            rng = f"{'>=' if inclusive else '>'} {lo:g}" + (f" and <= {hi:g}" if hi is not None else "")
            raise ConfigError(f"{where}: '{key}' must be {rng}, got {value!r}")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{where}: '{key}' must be one of {', '.join(CHOICES[key])}, got {value!r}")
    return value


def split_overrides(overrides: dict[str, Any], target_cls: type, where: str = "--set") -> tuple[dict, dict, dict]:
    """Sort ``key=value`` overrides into (hyperparameters, target parameters, symmetry parameters).

    ``flow.<param>`` keys are collected into ``hyper["flow_params"]`` (checked by :func:`resolve`
    against the architecture's schema once the architecture is known)."""
    hyper, tparams, sparams = {}, {}, {}
    tschema = parameters(target_cls)
    for key, value in overrides.items():
        if key.startswith("flow."):
            hyper.setdefault("flow_params", {})[key.split(".", 1)[1]] = value
        elif key.startswith("symmetry."):
            sparams[key.split(".", 1)[1]] = value
        elif key.startswith("target."):
            k = key.split(".", 1)[1]
            if k not in tschema:
                raise ConfigError(f"{where}: unknown target parameter '{k}' of '{target_cls.name}'. "
                                  f"Allowed: {', '.join(sorted(tschema))}")
            tparams[k] = value
        elif key in tschema:
            tparams[key] = value
        elif key in HYPER:
            hyper[key] = check_hyper(key, value, where)
        else:
            allowed = sorted(set(tschema) | set(HYPER))
            raise ConfigError(f"{where}: unknown key '{key}'. Allowed: {', '.join(allowed)}, symmetry.<param>, "
                              "flow.<param>")
    return hyper, tparams, sparams


def preset_values(target_cls: type, preset: str, method: str) -> dict[str, Any]:
    """The hyperparameters a target's preset gives one method."""
    if preset not in PRESETS:
        raise UnknownNameError("preset", preset, list(PRESETS))
    table = dict(target_cls.presets.get(preset, {}))
    per_method = table.pop("methods", {})
    table.update(per_method.get(method, {}))
    return table


def resolve(target: str, method: str, *, seed: int = 0, preset: str = "quick",
            overrides: dict[str, Any] | None = None, method_overrides: dict[str, Any] | None = None) -> RunConfig:
    """Build and validate the configuration of one run (nothing is trained or written)."""
    from . import plugins
    from .methods import method_class

    tcls = plugins.targets.get(target)
    method_class(method)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed must be an integer >= 0 and < 2**32, got {seed!r}")
    where = f"preset '{preset}' of target '{target}'"
    pv = preset_values(tcls, preset, method)
    preset_flow = {k.split(".", 1)[1]: pv.pop(k) for k in list(pv) if k.startswith("flow.")}
    values = {k: check_hyper(k, v, where) for k, v in pv.items()}
    hyper, tparams, sparams = split_overrides(dict(overrides or {}), tcls)
    h2, t2, s2 = split_overrides(dict(method_overrides or {}), tcls, f"--set for method '{method}'")
    flow_params: dict[str, Any] = {}
    # an architecture chosen by the user drops the preset's parameters of another architecture
    if "flow" in {**hyper, **h2} and {**hyper, **h2}["flow"] != values.get("flow", DEFAULT_FLOW):
        preset_flow = {}
    flow_params.update(preset_flow)
    flow_params.update(hyper.pop("flow_params", {}))
    flow_params.update(h2.pop("flow_params", {}))
    values.update(hyper)
    values.update(h2)
    tparams.update(t2)
    sparams.update(s2)
    values["flow_params"] = flow_params
    mcls = method_class(method)
    if mcls.chooses_flow and "flow" not in {**hyper, **h2}:
        # a method that needs a particular kind of flow (an equivariant one) picks it unless the
        # user named one; the preset's parameters of another architecture do not apply to it
        current = values.get("flow", DEFAULT_FLOW)
        chosen = mcls.default_flow(plugins.targets.create(target, tparams, table=f"target '{target}'"), current)
        if chosen != current:
            values["flow"], values["flow_params"] = chosen, {}
    _resolve_flow(values, where="--set")
    return RunConfig(target=target, method=method, seed=seed, preset=preset, target_params=tparams,
                     symmetry_params=sparams, **values)


def _resolve_flow(values: dict[str, Any], *, where: str) -> None:
    """Check ``flow`` and ``flow_params`` in place; the default architecture's parameters move to
    their RunConfig fields (one spelling per run, hence one run id)."""
    from .architecture import check_params

    name = values.get("flow", DEFAULT_FLOW)
    params = check_params(name, values.pop("flow_params"), where=where)
    if name == DEFAULT_FLOW:
        for k in REALNVP_FIELDS:
            if k in params:
                values[k] = check_hyper(k, params.pop(k), where)
    values["flow_params"] = params
