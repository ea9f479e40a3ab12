r"""Building a run: the target, the bound symmetry and the model of a
:class:`~sesamo_bench.harness.config.RunConfig`, with every check before anything is trained (device,
memory, a finite action, an exact symmetry, the objective)."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import plugins
from .config import RunConfig
from ..errors import ConfigError, IncompatibleError
from ..core.flows import MLP
from ..core.architecture import FlowSpec, target_domain
from ..core.methods import Method, method_class
from ..core.symmetry import Symmetry
from ..core.target import Target


# ---------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' is not available on this machine (torch sees no CUDA GPU); use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device must be one of auto, cpu, cuda; got {name!r}")
    return torch.device(name)


_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(name: str, target: Target) -> torch.dtype:
    return (target.dtype or torch.float32) if name == "auto" else _DTYPES[name]


def resolve_mlp_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    """dtype of the conditioner MLPs: ``auto`` is the run's ``dtype``."""
    return dtype if name == "auto" else _DTYPES[name]


def build_target(cfg: RunConfig) -> Target:
    return plugins.targets.create(cfg.target, cfg.target_params, table=f"target '{cfg.target}'")


def build_symmetry(cfg: RunConfig, target: Target):
    default = method_class(cfg.method).symmetry_for(target)
    name = cfg.symmetry or default[0]
    params = {**default[1], **cfg.symmetry_params} if name == default[0] else dict(cfg.symmetry_params)
    sym = plugins.symmetries.create(name, params, table=f"symmetry '{name}'")
    return sym.bind(target.shape)


def check_exact(sym, target: Target, *, n: int = 64, dtype=torch.float64, seed: int = 1234) -> None:
    """A symmetry used as exact must leave the action invariant: checked on random fields."""
    if getattr(sym, "broken", False):
        return
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *target.shape, dtype=dtype, generator=gen) * 1.5
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        u = sym.random_elements(n, x)
    finally:
        torch.set_rng_state(state)
    f0, f1 = target.action(x), target.action(sym.act(x, u))
    tol = 1e-6 * (1 + f0.abs())
    if not bool(((f0 - f1).abs() <= tol).all()):
        raise IncompatibleError(
            f"symmetry '{sym.name}' is declared exact but does not leave the action of target "
            f"'{target.name}' invariant (set symmetry.broken=true or choose another symmetry)"
        )


def memory_limit() -> int:
    """Bytes this process can use at most: physical memory, or the cgroup's limit when lower."""
    try:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        limit = 1 << 40
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < limit:
            limit = int(text)
    return limit


def estimate_bytes(cfg: RunConfig, shape: tuple[int, ...]) -> int:
    r"""A generous estimate of the memory one run needs, from its sizes alone (nothing is allocated):
    parameters with gradients and Adam moments, the activations of one training batch kept for the
    backward pass, one evaluation chunk, the log-weights of the largest evaluation and the saved
    samples, at 8 bytes a number, plus ~4 KiB of Python objects per layer."""
    dim = math.prod(int(n) for n in shape) if shape else 1
    w, h, c = _sizes(cfg)
    k = cfg.components if cfg.method == "vmonf" else 1  # a mixture of k flows
    per_mlp = (dim * w + (h - 1) * w * w + w * 2 * dim) if h > 0 else 2 * dim * dim
    params = c * (per_mlp + 2 * dim)
    per_sample = c * (h * w + 6 * dim) + 4 * dim  # activations of one sample through the flow
    train = 3 * cfg.batch_size * per_sample
    evaluation = min(16384, max(cfg.eval_samples, cfg.final_samples)) * per_sample
    weights = 4 * max(cfg.eval_samples, cfg.final_samples) + 2 * min(cfg.save_samples, cfg.final_samples) * dim
    # (the mixture's batch is shared out among its components: only the weights grow with k)
    return 8 * (k * 4 * params + train + evaluation + weights) + 4096 * k * c * (h + 3)


def _sizes(cfg: RunConfig) -> tuple[int, int, int]:
    """``(width, hidden_layers, couplings)`` of the run's flow: another architecture's own
    ``flow.<key>`` of these names where it has them (``flow=lattice-affine --set flow.couplings=N``)."""
    fp = cfg.flow_params or {}

    def size(key: str) -> int:
        v = fp.get(key, getattr(cfg, key))
        return v if isinstance(v, int) and not isinstance(v, bool) else getattr(cfg, key)

    return size("width"), size("hidden_layers"), size("couplings")


def check_size(cfg: RunConfig, target: Target) -> None:
    """Refuse (:class:`ConfigError`, one line) a run whose sizes cannot fit in this machine's memory."""
    need, have = estimate_bytes(cfg, tuple(target.shape)), memory_limit()
    if need > have:
        (w, h, c), mix = _sizes(cfg), (f"components={cfg.components}, " if cfg.method == "vmonf" else "")
        flow = "" if cfg.flow == "realnvp" else f"flow={cfg.flow}, "
        sizes = (f"{flow}{mix}width={w}, hidden_layers={h}, couplings={c}, "
                 f"batch_size={cfg.batch_size}, eval_samples={cfg.eval_samples}, final_samples={cfg.final_samples}, "
                 f"save_samples={cfg.save_samples}, field shape {tuple(target.shape)}")
        raise ConfigError(f"{cfg.target}/{cfg.method}: the run would need about {need / 2**30:.3g} GiB of memory "
                          f"({sizes}), more than the {have / 2**30:.3g} GiB of this machine; reduce these sizes")


def check_finite_action(target: Target, *, n: int = 16, seed: int = 4321) -> None:
    """The action must be finite on standard-normal fields (a parameter like u=1e308 overflows it)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *target.shape, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        f = target.action(x)
    if not bool(torch.isfinite(f).all()):
        params = ", ".join(f"{k}={v}" for k, v in target.params().items())
        raise ConfigError(f"target '{target.name}': its action is not finite on standard-normal fields "
                          f"with {params} (a parameter is too large or too small)")


def build_model(cfg: RunConfig, target: Target, sym: Symmetry | None) -> Method:
    r"""The method ``cfg.method`` for ``target`` (with the bound symmetry ``sym``), from the
    architecture, prior, device and dtypes of ``cfg``. Draws its initial weights from torch's global
    generator, and touches no other process state.
    """
    mcls = method_class(cfg.method)
    device, dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype, target)
    with _one_line(cfg):
        model = mcls(target.shape, sym if mcls.needs_symmetry else None, **_method_kwargs(cfg, target))
    model = model.to(device=device, dtype=dtype)
    mlp_dtype = resolve_mlp_dtype(cfg.mlp_dtype, dtype)
    if mlp_dtype != dtype:  # mixed precision: only the conditioners change dtype (flows.MLP)
        for m in model.modules():
            if isinstance(m, MLP):
                m.to(dtype=mlp_dtype)
    return model


def _method_kwargs(cfg: RunConfig, target: Target) -> dict[str, Any]:
    """The method's constructor keyword arguments from the run configuration."""
    domain = target_domain(target)
    return dict(flow=cfg.flow_spec(), lattice=domain.lattice, particles=domain.particles, prior_mean=cfg.prior_mean,
                prior_var=cfg.prior_var, kernels=cfg.kernels, **method_class(cfg.method).options(cfg))


@contextlib.contextmanager
def _one_line(cfg: RunConfig) -> Iterator[None]:
    """A TypeError or ValueError of a method or architecture (a bad keyword, a bad value) as one-line
    :class:`ConfigError`."""
    try:
        yield
    except (TypeError, ValueError) as exc:
        if isinstance(exc, (ConfigError, IncompatibleError)):
            raise
        raise ConfigError(f"{cfg.method}: {exc}") from None


def check_model(cfg: RunConfig, target: Target, sym: Symmetry | None) -> None:
    r"""Every check of building the run's model that needs no model built: the method with this
    symmetry, flow and options (:meth:`Method.validate`: its own refusals, the flow's domain, the
    architecture and its parameter values on it) and what the objective needs of the flow. The
    planner calls it once per method of a grid, and :func:`build` before it builds, so a grid and a
    run refuse the same things in the same words (one line:
    :class:`~sesamo_bench.errors.IncompatibleError` or :class:`~sesamo_bench.errors.ConfigError`)."""
    mcls = method_class(cfg.method)
    kwargs = _method_kwargs(cfg, target)
    spec = kwargs.pop("flow")
    with _one_line(cfg):
        mcls.validate(tuple(target.shape), sym if mcls.needs_symmetry else None, spec, **kwargs)
    check_flow_matching(cfg, mcls, spec)


def prepare(cfg: RunConfig) -> tuple[Target, Symmetry | None]:
    r"""The target and bound symmetry of a run, with every check before a model is built: the
    device exists, the sizes fit in memory, the action is finite, and a symmetry used as exact
    leaves the action invariant (one-line :class:`~sesamo_bench.errors.ConfigError` otherwise)."""
    resolve_device(cfg.device)
    target = build_target(cfg)
    check_size(cfg, target)  # before anything the size of the run is allocated
    check_finite_action(target)
    check_objective(cfg, target)
    sym = None
    if method_class(cfg.method).needs_symmetry or cfg.symmetry:
        sym = build_symmetry(cfg, target)
        check_exact(sym, target)
    return target, sym


def check_objective(cfg: RunConfig, target: Target) -> None:
    """An objective that learns from samples needs a target with training samples and a method with
    an exact density (one-line :class:`~sesamo_bench.errors.ConfigError` otherwise)."""
    if cfg.objective == "reverse-kl":
        if cfg.train_subset != "all":
            raise ConfigError(f"train_subset '{cfg.train_subset}' restricts the training samples, and objective "
                              f"'reverse-kl' uses none; use objective=ml, mixed or flow-matching")
        return
    if not target.offers_training_data():
        have = [n for n in plugins.targets.names()
                if plugins.targets.items[n].training_data is not Target.training_data]
        raise ConfigError(f"objective '{cfg.objective}' learns from samples of the target, and target "
                          f"'{cfg.target}' has none (Target.training_data); targets with them: {', '.join(have)}")
    if cfg.train_subset != "all":
        from ..analysis.states import offers_states

        if not offers_states(target):
            raise ConfigError(f"train_subset '{cfg.train_subset}' needs metastable states of the target "
                              f"(Target.metastable_state), and target '{cfg.target}' defines none; use "
                              f"train_subset=all")
    mcls = method_class(cfg.method)
    if not mcls.exact_density:
        raise ConfigError(f"objective '{cfg.objective}' needs the exact density of the samples, which method "
                          f"'{cfg.method}' does not have; use objective=reverse-kl")


def build(cfg: RunConfig) -> tuple[Target, Method, torch.device, torch.dtype]:
    """Target, model (on device and dtype), device and dtype of a run; validates the combination."""
    target, sym = prepare(cfg)
    check_model(cfg, target, sym)
    device, dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype, target)
    return target, build_model(cfg, target, sym), device, dtype


def training_rows(cfg: RunConfig, target: Target) -> tuple[Tensor, list[int]]:
    """The training split a run learns from (``train_subset``: all of it, or the rows of its most
    populated metastable state, :func:`sesamo_bench.analysis.states.restrict`) and the states it covers."""
    from ..analysis.states import restrict

    return restrict(target, target.training_data("train"), cfg.train_subset)


def check_flow_matching(cfg: RunConfig, mcls: type[Method], spec: FlowSpec) -> None:
    """``objective = flow-matching`` regresses a vector field: the method's one flow must be a
    continuous one (``Architecture.velocity``); one-line :class:`~sesamo_bench.errors.IncompatibleError`
    otherwise (``--methods all`` skips such a method with a note)."""
    flow = spec.module if spec.module is not None else spec.cls
    if cfg.objective != "flow-matching" or (mcls.one_flow and callable(getattr(flow, "velocity", None))):
        return
    have = [n for n in plugins.architectures.names() if callable(getattr(plugins.architectures.get(n), "velocity",
                                                                           None))]
    raise IncompatibleError(f"objective 'flow-matching' needs a continuous flow with a vector field, and method "
                      f"'{cfg.method}' with flow '{cfg.flow}' has none; continuous flows: {', '.join(have)} "
                      f"(method equivariant), or use objective=ml")
