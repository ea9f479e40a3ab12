r"""Run configuration: presets, ``--set`` overrides and validation.

A run is fully described by a :class:`RunConfig`. :func:`resolve` builds one from a target's
preset (``smoke``, ``quick`` or ``paper``; see :attr:`sesamo_bench.core.target.Target.presets`), the
per-method overrides of that preset and user overrides (``--set key=value`` or a
``benchmarks.toml`` table). Keys are either training/architecture fields of :class:`RunConfig`,
target parameters (``beta``), ``symmetry.<param>``, ``flow`` (an architecture name, see
:mod:`sesamo_bench.core.architecture`) or ``flow.<param>``; anything else is an error naming the
allowed keys.

The architecture's parameters live in ``flow_params``, except those of the default ``realnvp``:
they are the fields ``couplings``, ``hidden_layers``, ``width``, ``activation`` and
``scale_bound`` (``flow.width=100`` and ``width=100`` are the same run), so the configurations
from before the architecture registry keep their run ids. These fields, their defaults and their
ranges are generated from their one declaration, :class:`sesamo_bench.core.flows.CouplingParams`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, UnknownNameError
from ..core.flows import CouplingParams  # realnvp's parameters: RunConfig fields
from ..core.kernels import KERNELS  # the coupling MLPs' kernels
from ..registry import _coerce, parameters

PRESETS = ("smoke", "quick", "paper")
DTYPES = ("auto", "float32", "float64")
DEVICES = ("auto", "cpu", "cuda")
LR_SCHEDULES = ("plateau", "cosine")
MLP_DTYPES = ("auto", "float32", "float64")  # the coupling MLPs' dtype; auto: the run's dtype
#: training objectives (:mod:`sesamo_bench.core.loss`): the energy-only reverse KL of the paper, maximum
#: likelihood on the target's training samples, their weighted sum (Noé et al. 2019), and conditional
#: flow matching of a continuous flow's vector field (sesamo_bench.core.flow_matching)
OBJECTIVES = ("reverse-kl", "ml", "mixed", "flow-matching")
#: how flow matching pairs prior and training samples (sesamo_bench.core.flow_matching.PAIRINGS)
FM_PAIRINGS = ("aligned", "ot", "independent")
#: which training samples a run learns from (sesamo_bench.analysis.states.SUBSETS)
TRAIN_SUBSETS = ("all", "one-state")


def hyper(default: Any, *, lo: float | None = None, above: float | None = None, hi: float | None = None,
          choices: tuple[str, ...] | None = None, execution: bool = False, later: bool = False) -> Any:
    r"""A hyperparameter of :class:`RunConfig`: its default, what it allows and how it enters the run id.

    Arguments:
        default: the value without ``--set``; its type is the type ``--set`` values are coerced to.
        lo, above, hi: allowed range, ``lo <= v`` (or ``above < v``) and ``v <= hi``.
        choices: the allowed names of a string hyperparameter.
        execution: how the run is executed, not what it computes (device, threads, kernels): left
            out of the run id.
        later: added after the first release; left out of the run id while it holds ``default``
            (the behaviour before it existed), so earlier stores keep their ids.
    """
    rng = (lo, True, hi) if lo is not None else (above, False, hi) if above is not None else None
    meta = {"hyper": True, "range": rng, "choices": choices, "execution": execution, "later": later}
    if isinstance(default, (dict, list)):
        return field(default_factory=type(default), metadata=meta)
    return field(default=default, metadata=meta)


def declared(spec: type, *, after: str):
    r"""Class decorator, applied before :func:`~dataclasses.dataclass`: the fields of the dataclass
    ``spec`` (name, type, default, range: :meth:`CouplingParams.allowed`) become hyperparameters
    (:func:`hyper`) of the decorated class, in their order, right after its field ``after``.

    So parameters declared elsewhere (the couplings' ones, beside the flow that takes them) are
    spelled once."""

    def add(cls: type) -> type:
        ann = cls.__dict__["__annotations__"]  # changed in place: the dict dataclass reads
        items = list(ann.items())
        at = [name for name, _ in items].index(after) + 1
        ranges = spec.allowed()
        own = [(f.name, f.type) for f in dataclasses.fields(spec)]
        clash = sorted(set(ann) & {name for name, _ in own})
        if clash:
            raise TypeError(f"declared: {cls.__name__} spells '{clash[0]}' itself")
        ann.clear()
        ann.update(items[:at] + own + items[at:])
        for f in dataclasses.fields(spec):
            setattr(cls, f.name, hyper(f.default, **ranges[f.name]))
        return cls

    return add


@dataclass
@declared(CouplingParams, after="checkpoint_every")
class RunConfig:
    """Everything that determines one training run (target x method x seed).

    A new hyperparameter is one line here (:func:`hyper`): ``--set``, ``benchmarks.toml``,
    validation, presets, ``list presets`` and the run id follow from it.
    """

    target: str
    method: str
    seed: int = 0
    preset: str = "quick"
    target_params: dict[str, Any] = field(default_factory=dict)
    symmetry: str | None = None
    symmetry_params: dict[str, Any] = field(default_factory=dict)
    # training (paper App. I). Every float has a range a run can use (a learning rate above 1
    # or a prior variance of 1e308 diverges at the first steps; a mean of 1e3 overflows the
    # action): checked at planning (check_hyper), subnormal values refused as well
    steps: int = hyper(1000, lo=1)
    batch_size: int = hyper(1024, lo=1)
    lr: float = hyper(5e-4, above=0, hi=1.0)
    # learning rate of the modulation's breaking parameters (0: same as lr)
    lr_breaking: float = hyper(0.0, lo=0, hi=1.0)
    gamma: float = hyper(0.5, lo=0, hi=1.0)
    penalty_a: float = hyper(1000.0, lo=0, hi=1e6)
    penalty_b: float = hyper(100.0, lo=0, hi=1e6)
    lr_factor: float = hyper(0.92, above=0, hi=1.0)
    lr_patience: int = hyper(2000, lo=1)
    lr_window: int = hyper(100, lo=2)
    lr_min: float = hyper(1e-6, lo=0, hi=1.0)
    # "plateau" (paper App. I) or "cosine" (anneal to lr_min over the run)
    lr_schedule: str = hyper("plateau", choices=LR_SCHEDULES)
    grad_clip: float = hyper(0.0, lo=0, hi=1e6)
    # evaluation and bookkeeping
    eval_every: int = hyper(100, lo=1)
    eval_samples: int = hyper(4096, lo=2)
    final_samples: int = hyper(65536, lo=2)
    save_samples: int = hyper(20000, lo=0)
    checkpoint_every: int = hyper(500, lo=1)
    # architecture (paper Table 3): here come realnvp's parameters, the fields of
    # core.flows.CouplingParams (couplings, hidden_layers, width, activation, scale_bound), with their
    # defaults and ranges (@declared)
    prior_mean: float = hyper(0.0, lo=-100.0, hi=100.0)
    prior_var: float = hyper(1.0, above=0, hi=1e4)
    # execution
    device: str = hyper("auto", choices=DEVICES, execution=True)
    dtype: str = hyper("auto", choices=DTYPES)
    # dtype of the couplings' conditioner MLPs (auto: the run's dtype). The samples, the coupling
    # transforms, ln q and the action stay in the run's dtype whatever this is (flows.MLP)
    mlp_dtype: str = hyper("auto", choices=MLP_DTYPES, later=True)
    compile: bool = hyper(False, execution=True)
    # CPU intra-op threads (0: torch default); an execution setting like device
    threads: int = hyper(0, lo=0, execution=True)
    # MLP kernels: auto (fused, native or oneDNN, on float32 CPU), native, onednn, aten
    kernels: str = hyper("auto", choices=KERNELS, execution=True)
    # the flow's architecture (sesamo_bench.core.architecture); realnvp takes the fields above
    flow: str = hyper("realnvp", later=True)
    flow_params: dict[str, Any] = field(default_factory=dict, metadata={"later": True})
    # the number of flows of a mixture (method vmonf)
    components: int = hyper(4, lo=1, hi=64, later=True)
    # what training minimises: reverse-kl (the self-reparametrized KL above, from the energy only),
    # ml (maximum likelihood on the target's training samples, Target.training_data), or mixed:
    # ml + kl_weight * reverse-kl (Noé et al. 2019, Boltzmann generators), or flow-matching: a continuous
    # flow's vector field regressed on straight paths from prior to training samples, each prior sample
    # aligned to its partner by permutation and rotation (fm_pairing; Klein et al. 2023)
    objective: str = hyper("reverse-kl", choices=OBJECTIVES, later=True)
    kl_weight: float = hyper(0.1, lo=0, hi=1e3, later=True)
    fm_pairing: str = hyper("aligned", choices=FM_PAIRINGS, later=True)
    # the training samples used: all, or those of the most populated metastable state (the
    # equivariant-flow paper's generalisation experiment, sesamo_bench.analysis.states)
    train_subset: str = hyper("all", choices=TRAIN_SUBSETS, later=True)

    def arch(self) -> dict[str, Any]:
        """The default architecture's parameters (:data:`REALNVP_FIELDS`) of this run."""
        return {k: getattr(self, k) for k in REALNVP_FIELDS}

    def flow_spec(self):
        """The :class:`~sesamo_bench.core.architecture.FlowSpec` of this run."""
        from ..core.architecture import FlowSpec

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
#: RunConfig fields that are the default architecture's parameters (declared by CouplingParams)
REALNVP_FIELDS: tuple[str, ...] = CouplingParams.names()

_FIELDS = dataclasses.fields(RunConfig)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


#: the hyperparameters (``--set`` keys) and their defaults
HYPER: dict[str, Any] = {f.name: _default(f) for f in _FIELDS if f.metadata.get("hyper")}
#: allowed range of each numeric hyperparameter: (lower, lower inclusive, upper)
RANGES: dict[str, tuple[float, bool, float | None]] = {f.name: f.metadata["range"] for f in _FIELDS
                                                       if f.metadata.get("range")}
#: hyperparameters that take one of a few names
CHOICES: dict[str, tuple[str, ...]] = {f.name: f.metadata["choices"] for f in _FIELDS if f.metadata.get("choices")}
#: fields that say how a run is executed, not what it computes: not part of the run id
EXECUTION_ONLY: tuple[str, ...] = tuple(f.name for f in _FIELDS if f.metadata.get("execution"))
#: fields added after the first release, left out of the run id at these values (their
#: behaviour before the field existed), so earlier stores keep their ids
LATER_FIELDS: dict[str, Any] = {f.name: _default(f) for f in _FIELDS if f.metadata.get("later")}


def check_hyper(key: str, value: Any, where: str = "--set") -> Any:
    """Coerce ``value`` to the type of hyperparameter ``key`` and check its range."""
    if key not in HYPER:
        raise ConfigError(f"{where}: unknown key '{key}'. Allowed: {', '.join(sorted(HYPER))}")
    rng = ""
    if key in RANGES:
        lo, inclusive, hi = RANGES[key]
        rng = f"{'>=' if inclusive else '>'} {lo:g}" + (f" and <= {hi:g}" if hi is not None else "")
    if isinstance(HYPER[key], float) and not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if number is not None and number != 0.0 and abs(number) < sys.float_info.min:
            raise ConfigError(f"{where}: '{key}' must be {rng or 'a normal float'} and not subnormal "
                              f"(|value| >= {sys.float_info.min:.3g}), got {value!r}")
    value = _coerce(value, HYPER[key], key, where)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: '{key}' must be a finite number, got {value!r}")
    if key in RANGES:
        ok = (value >= lo if inclusive else value > lo) and (hi is None or value <= hi)
        if not ok:
            raise ConfigError(f"{where}: '{key}' must be {rng}, got {value!r}")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{where}: '{key}' must be one of {', '.join(CHOICES[key])}, got {value!r}")
    return value


def canonical_key(key: str) -> str:
    """The one name of a setting that has two spellings: ``target.beta`` -> ``beta``,
    ``flow.width`` -> ``width`` (the default architecture's parameters); other keys unchanged."""
    if key.startswith("target."):
        return key.split(".", 1)[1]
    if key.startswith("flow.") and key.split(".", 1)[1] in REALNVP_FIELDS:
        return key.split(".", 1)[1]
    return key


def split_overrides(overrides: dict[str, Any], target_cls: type, where: str = "--set") -> tuple[dict, dict, dict]:
    """Sort ``key=value`` overrides into (hyperparameters, target parameters, symmetry parameters).

    ``flow.<param>`` keys are collected into ``hyper["flow_params"]`` (checked by :func:`resolve`
    against the architecture's schema once the architecture is known)."""
    hyper, tparams, sparams = {}, {}, {}
    tschema = parameters(target_cls)
    spelled: dict[str, str] = {}
    for key in overrides:  # `beta` and `target.beta`, `width` and `flow.width`: one setting, given once
        other = spelled.setdefault(canonical_key(key), key)
        if other != key:
            raise ConfigError(f"{where}: '{other}' and '{key}' name the same setting; give it once")
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
    from .. import plugins
    from ..core.methods import method_class

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
    user_flow = {**hyper.pop("flow_params", {}), **h2.pop("flow_params", {})}
    flow_params.update(preset_flow)
    flow_params.update(user_flow)
    values.update(hyper)
    values.update(h2)
    tparams.update(t2)
    sparams.update(s2)
    values["flow_params"] = flow_params
    mcls = method_class(method)
    if mcls.chooses_flow and "flow" not in {**hyper, **h2}:
        # a method that needs a particular kind of flow (an equivariant one) picks it unless the
        # user named one; the preset's parameters of another architecture do not apply to it, the
        # user's flow.<key> do (checked against the chosen architecture's schema)
        current = values.get("flow", DEFAULT_FLOW)
        chosen = mcls.default_flow(plugins.targets.create(target, tparams, table=f"target '{target}'"), current)
        if chosen != current:
            values["flow"], values["flow_params"] = chosen, user_flow
    _resolve_flow(values, where="--set")
    return RunConfig(target=target, method=method, seed=seed, preset=preset, target_params=tparams,
                     symmetry_params=sparams, **values)


def _resolve_flow(values: dict[str, Any], *, where: str) -> None:
    """Check ``flow`` and ``flow_params`` in place; the default architecture's parameters move to
    their RunConfig fields (one spelling per run, hence one run id)."""
    from ..core.architecture import check_params

    name = values.get("flow", DEFAULT_FLOW)
    params = check_params(name, values.pop("flow_params"), where=where)
    if name == DEFAULT_FLOW:
        for k in REALNVP_FIELDS:
            if k in params:
                values[k] = check_hyper(k, params.pop(k), where)
    values["flow_params"] = params
