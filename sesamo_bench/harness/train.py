r"""Build a model from a :class:`~sesamo_bench.harness.config.RunConfig`, train it, evaluate it.

Training minimises the self-reparametrized KL (paper Eq. 18) with Adam and, by default, the
paper's plateau rule (App. I; ``lr_schedule = "cosine"`` anneals instead, for short budgets):
every step the standard deviation of the last ``lr_window`` losses is fed to
:class:`torch.optim.lr_scheduler.ReduceLROnPlateau`, which multiplies the learning rate by
``lr_factor`` when it has not improved for ``lr_patience`` steps (floor ``lr_min``).

ESS and ln Z are evaluated under ``no_grad`` every ``eval_every`` steps from the exact density
(:meth:`~sesamo_bench.core.methods.Method.log_prob`), and once more at the end on ``final_samples``.
"""

from __future__ import annotations

import collections
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..core import kernels, metrics
from .. import plugins
from .checkpoint import CheckpointError, check_fits, load_checkpoint, save_checkpoint
# the checkpoint's names lived here before harness.checkpoint (kept for callers of 0.2)
from .checkpoint import CHECKPOINT_KEYS as CHECKPOINT_KEYS, plain as plain
from .config import RunConfig
from .record import METRICS
from ..errors import ConfigError, DivergedError, IncompatibleError
from ..core.flows import MLP
from ..core.loss import log_weights, negative_log_likelihood, penalty, self_reparametrized_kl
from ..core.architecture import target_domain
from ..core.methods import Method, method_class
from ..core.symmetry import Symmetry
from ..core.target import Target


class Interrupted(Exception):
    """Raised by :func:`train` when ``should_stop`` asks it to stop; a checkpoint was written."""

    def __init__(self, step: int):
        self.step = step
        super().__init__(f"interrupted at step {step}")


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
    domain = target_domain(target)
    kwargs = dict(flow=cfg.flow_spec(), lattice=domain.lattice, particles=domain.particles, prior_mean=cfg.prior_mean,
                  prior_var=cfg.prior_var, kernels=cfg.kernels, **mcls.options(cfg))
    try:
        model = mcls(target.shape, sym if mcls.needs_symmetry else None, **kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, (ConfigError, IncompatibleError)):
            raise
        raise ConfigError(f"{cfg.method}: {exc}") from None
    model = model.to(device=device, dtype=dtype)
    mlp_dtype = resolve_mlp_dtype(cfg.mlp_dtype, dtype)
    if mlp_dtype != dtype:  # mixed precision: only the conditioners change dtype (flows.MLP)
        for m in model.modules():
            if isinstance(m, MLP):
                m.to(dtype=mlp_dtype)
    return model


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
    device, dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype, target)
    model = build_model(cfg, target, sym)
    check_flow_matching(cfg, model)
    return target, model, device, dtype


def training_rows(cfg: RunConfig, target: Target) -> tuple[Tensor, list[int]]:
    """The training split a run learns from (``train_subset``: all of it, or the rows of its most
    populated metastable state, :func:`sesamo_bench.analysis.states.restrict`) and the states it covers."""
    from ..analysis.states import restrict

    return restrict(target, target.training_data("train"), cfg.train_subset)


def check_flow_matching(cfg: RunConfig, model: Method) -> None:
    """``objective = flow-matching`` regresses a vector field: the model's flow must be a continuous
    one (``Architecture.velocity``); one-line :class:`~sesamo_bench.errors.IncompatibleError` otherwise
    (``--methods all`` skips such a method with a note)."""
    from ..core.flow_matching import velocity_field

    if cfg.objective != "flow-matching" or velocity_field(model) is not None:
        return
    have = [n for n in plugins.architectures.names() if callable(getattr(plugins.architectures.get(n), "velocity",
                                                                           None))]
    raise IncompatibleError(f"objective 'flow-matching' needs a continuous flow with a vector field, and method "
                      f"'{cfg.method}' with flow '{cfg.flow}' has none; continuous flows: {', '.join(have)} "
                      f"(method equivariant), or use objective=ml")


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
class EvaluationStopped(Exception):
    """:func:`evaluate` saw ``should_stop`` return True between two chunks."""


@dataclass
class Evaluation:
    ess: float
    log_z: float
    log_z_err: float
    ess_path: float
    outside_cell: float
    x: Tensor | None = None
    log_w: Tensor | None = None
    #: ESS x N, and whether it is large enough for ``log_z_err`` (metrics.MIN_EFFECTIVE_SAMPLES)
    ess_n: float | None = None
    log_z_err_reliable: bool | None = None
    #: importance-weighted breaking ratio of the samples and its error (where ``sign_fn`` is given)
    breaking_ratio_is: float | None = None
    breaking_ratio_is_err: float | None = None
    #: fraction of samples whose density an architecture's guard made finite but wrong (M = 0, e^rho underflow)
    underflow: float = 0.0


def _underflow(model: Method, n: int) -> Tensor | None:
    """OR of the ``underflow`` masks ``(n,)`` the model's modules recorded since the last read
    (``architectures/u1_fourier.flag_underflow``), which are cleared."""
    hit = None
    for mod in model.modules():
        flag = getattr(mod, "underflow", None)
        if isinstance(flag, Tensor):
            mod.underflow = None
            if flag.shape == (n,):
                hit = flag if hit is None else hit | flag
    return hit


@torch.no_grad()
def evaluate(model: Method, target: Target, n: int, *, chunk: int = 16384, keep: int = 0,
             should_stop: Callable[[], bool] | None = None,
             sign_fn: Callable[[Tensor], Tensor | None] | None = None) -> Evaluation:
    """ESS and ln Z from ``n`` fresh samples, with the exact density; ``keep`` samples returned.

    ``should_stop`` is polled before every chunk; when it returns True :class:`EvaluationStopped`
    is raised (the caller writes its checkpoint and stops). ``sign_fn`` (a symmetry's
    ``breaking_sign``) adds the importance-weighted breaking ratio."""
    was = model.training
    model.eval()
    lw, lw_path, outside, xs, signs = [], [], 0, [], []
    under = 0
    _underflow(model, 0)  # clear what training recorded
    done = 0
    while done < n:
        if should_stop is not None and should_stop():
            model.train(was)
            raise EvaluationStopped()
        m = min(chunk, n - done)
        s = model.sample(m)
        hit = _underflow(model, m)
        lp = target.log_prob(s.x)
        lw.append(log_weights(lp, model.log_prob(s.x)).double())
        hits = [h for h in (hit, _underflow(model, m)) if h is not None]  # sampling path, exact density
        under += int(torch.stack(hits).any(0).sum()) if hits else 0
        lw_path.append(log_weights(lp, s.log_q).double())
        if s.cell is not None:
            outside += int((model.symmetry.penalty_fn(s.cell) > 0).sum())
        if sign_fn is not None and (sg := sign_fn(s.x)) is not None:
            signs.append(sg.cpu())
        if len(xs) * chunk < keep:
            xs.append(s.x.detach())
        done += m
    model.train(was)
    log_w = torch.cat(lw).cpu()
    lz, lz_err = metrics.log_z(log_w)
    x = torch.cat(xs)[:keep].cpu() if keep else None
    n_eff = metrics.effective_samples(log_w)
    r_is = metrics.weighted_breaking_ratio(log_w, torch.cat(signs)) if signs else (None, None)
    return Evaluation(metrics.ess(log_w), lz, lz_err, metrics.ess(torch.cat(lw_path).cpu()), outside / n,
                      x, log_w[:keep] if keep else None, n_eff, metrics.error_reliable(n_eff), *r_is,
                      underflow=under / n)


@torch.no_grad()
def heldout_nll(model: Method, target: Target, *, chunk: int = 4096) -> dict[str, float]:
    r"""The mean of -ln q(x) over the target's held-out samples (``training_data("test")``, never used
    in training), its standard error, and per dimension of the field (for particles: per reduced
    coordinate, the (n - 1) d Helmert coordinates; the centre-of-mass-free subspace, on which the
    Helmert map is an isometry). Non-finite -ln q (a sample outside the model's support) gives inf."""
    x = target.training_data("test")
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        lq = torch.cat([model.log_prob(x[i:i + chunk].to(device=device, dtype=dtype)).double().cpu()
                        for i in range(0, x.shape[0], chunk)])
    finally:
        model.train(was)
    nll = -lq
    if not bool(torch.isfinite(nll).all()):
        return {"nll": math.inf, "nll_err": None, "nll_per_dim": math.inf, "nll_n": int(x.shape[0])}
    mean, err = float(nll.mean()), float(nll.std() / math.sqrt(nll.numel()))
    return {"nll": mean, "nll_err": err, "nll_per_dim": mean / target.dim, "nll_n": int(x.shape[0])}


@torch.no_grad()
def support(model: Method, target: Target, n: int, *, seed: int, chunk: int = 16384,
            should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    r"""The target mass where the model has no support (ln q = -inf), from ``n`` reference samples of p.

    The samples come from :meth:`Target.reference_samples` (exact draws or the suite's HMC) with
    their own generator, so the run's random stream is untouched. Returns the metrics
    ``support_missing``, ``support_missing_err`` (binomial), ``support_missing_count`` and
    ``support_reference_n``; all ``None`` where the target has no reference samples.
    ``should_stop`` is polled before every chunk (:class:`EvaluationStopped`, as in :func:`evaluate`).
    """
    gen = torch.Generator().manual_seed(10007 * seed + 1)
    ref = target.reference_samples(n, generator=gen)
    if ref is None:
        return dict.fromkeys(("support_missing", "support_missing_err", "support_missing_count",
                              "support_reference_n"))
    p = next(model.parameters())
    was = model.training
    model.eval()
    parts = []
    try:
        for i in range(0, ref.shape[0], chunk):
            if should_stop is not None and should_stop():
                raise EvaluationStopped()
            parts.append(model.log_prob(ref[i:i + chunk].to(device=p.device, dtype=p.dtype)).cpu())
    finally:
        model.train(was)
    lq = torch.cat(parts)
    mass, err, count = metrics.missing_support(lq)
    return {"support_missing": mass, "support_missing_err": err, "support_missing_count": count,
            "support_reference_n": int(ref.shape[0])}


def breaking_sign_fn(cfg: RunConfig, model: Method, target: Target,
                     device: torch.device) -> Callable[[Tensor], Tensor | None] | None:
    """The breaking sign of the target's declared symmetry, whose breaking ratio is the exact
    reference (also for ``realnvp``, and for ``equivariant``, which may enforce only a subgroup such
    as the Hubbard model's global flip), or ``None`` without one."""
    sym = model.symmetry
    declared, params = target.symmetry()
    if sym is None or sym.name != declared:
        if sym is not None:  # the method enforces another group: the run's symmetry.* do not apply
            params = dict(params)
        elif cfg is not None and cfg.symmetry in (None, declared):
            params = {**params, **cfg.symmetry_params}
        try:
            sym = plugins.symmetries.create(declared, params, table=f"symmetry '{declared}'").bind(target.shape)
            sym = sym.to(device)
        except (ConfigError, IncompatibleError, TypeError, ValueError):
            return None
    if sym.breaking_sign(torch.zeros(1, *target.shape, device=device)) is None:
        return None
    return sym.breaking_sign


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
@dataclass
class Result:
    """What one run produced."""

    config: RunConfig
    status: str
    steps: int
    wall_s: float
    ess: float | None = None
    log_z: float | None = None
    log_z_err: float | None = None
    ess_path: float | None = None
    outside_cell: float | None = None
    underflow: float | None = None
    breaking_ratio: float | None = None
    breaking_ratio_exact: float | None = None
    probabilities: list[float] | None = None
    probabilities_exact: list[float] | None = None
    log_z_exact: float | None = None
    ess_n: float | None = None
    log_z_err_reliable: bool | None = None
    breaking_ratio_is: float | None = None
    breaking_ratio_is_err: float | None = None
    breaking_ratio_exact_err: float | None = None
    support_missing: float | None = None
    support_missing_err: float | None = None
    support_missing_count: int | None = None
    support_reference_n: int | None = None
    energy_w1: float | None = None
    energy_w2: float | None = None
    distance_w1: float | None = None
    distance_w2: float | None = None
    reference_energy_mean: float | None = None
    coordinate_w2: float | None = None
    nll: float | None = None
    nll_err: float | None = None
    nll_per_dim: float | None = None
    nll_n: int | None = None
    train_rows: int | None = None
    unseen_states: float | None = None
    unseen_states_is: float | None = None
    unseen_states_ref: float | None = None
    state_fractions: list[float] | None = None
    state_fractions_ref: list[float] | None = None
    device: str = "cpu"
    dtype: str = "float32"
    error: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    samples: Tensor | None = None
    sample_log_w: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        keys = ("ess", "log_z", "log_z_err", "ess_path", "outside_cell", "breaking_ratio",
                "breaking_ratio_exact", "probabilities", "probabilities_exact", "log_z_exact", *EXTRA_METRICS)
        return {**{k: getattr(self, k) for k in keys}, **self.info}


#: metrics added after the first release, declared in :class:`sesamo_bench.harness.record.RunRecord`
#: (those with ``json=True`` are also ``run --json`` fields)
EXTRA_METRICS = METRICS


def param_groups(model: Method, cfg: RunConfig) -> list[dict[str, Any]]:
    """Adam parameter groups: the flow, and the modulation's breaking parameters (``lr_breaking``)."""
    mod = model.symmetry.modulation if model.symmetry is not None and model.uses_modulation else None
    breaking = [p for p in mod.parameters() if p.requires_grad] if mod is not None else []
    ids = {id(p) for p in breaking}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": rest}]
    if breaking:
        groups.append({"params": breaking, "lr": cfg.lr_breaking or cfg.lr})
    return groups


class Trainer:
    r"""Optimizer, learning-rate schedule and one training step of a run.

    A step draws ``batch_size`` samples, evaluates the objective (:meth:`loss`: by default the
    self-reparametrized KL with the penalty, paper Eqs. 11, 18), back-propagates and updates the flow
    and the breaking parameters with (fused) Adam; the schedule is the paper's plateau rule or a
    cosine anneal (``lr_schedule``).
    :func:`train` loops over :meth:`step`; the performance benchmark times it.
    """

    def __init__(self, cfg: RunConfig, model: Method, target: Target, device: torch.device):
        self.cfg, self.model, self.target = cfg, model, target
        # fused Adam: one kernel over all parameters instead of ~10 ops per tensor (CPU and CUDA)
        self.opt = torch.optim.Adam(param_groups(model, cfg), lr=cfg.lr, fused=device.type in ("cpu", "cuda"))
        if cfg.lr_schedule == "cosine":
            self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=cfg.steps, eta_min=cfg.lr_min)
        else:
            self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.opt, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience, min_lr=cfg.lr_min)
        self.losses: collections.deque[float] = collections.deque(maxlen=cfg.lr_window)
        self.sample_fn = torch.compile(model.sample, dynamic=False) if cfg.compile else model.sample
        #: the target's training samples, for objectives that learn from them (None: reverse-kl)
        self.data: Tensor | None = None
        if cfg.objective != "reverse-kl":
            dtype = next(model.parameters()).dtype
            self.data = training_rows(cfg, target)[0].to(device=device, dtype=dtype)

    @property
    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def loss(self) -> Tensor:
        """The objective on one fresh batch (scalar, with graph): ``objective = reverse-kl`` the
        self-reparametrized KL of ``batch_size`` samples of the model, ``ml`` the negative
        log-likelihood of ``batch_size`` training samples (drawn with replacement), ``mixed`` the NLL
        plus ``kl_weight`` times the KL, ``flow-matching`` the conditional flow-matching loss of the
        flow's vector field on ``batch_size`` training samples (:mod:`sesamo_bench.core.flow_matching`)."""
        cfg = self.cfg
        if self.data is None:
            return self.reverse_kl()
        idx = torch.randint(self.data.shape[0], (cfg.batch_size,), device=self.data.device)
        if cfg.objective == "flow-matching":
            from ..core.flow_matching import flow_matching_loss

            return flow_matching_loss(self.model, self.data[idx], pairing=cfg.fm_pairing)
        nll = negative_log_likelihood(self.model.log_prob(self.data[idx]))
        return nll if cfg.objective == "ml" else nll + cfg.kl_weight * self.reverse_kl()

    def reverse_kl(self) -> Tensor:
        """The self-reparametrized KL with the penalty (paper Eqs. 11, 18) on ``batch_size`` samples."""
        cfg, model = self.cfg, self.model
        s = self.sample_fn(cfg.batch_size)
        log_w = log_weights(self.target.log_prob(s.x), s.log_q)
        pen = (penalty(model.symmetry.penalty_fn(s.cell), a=cfg.penalty_a, b=cfg.penalty_b)
               if s.cell is not None else None)
        return self_reparametrized_kl(log_w, pen, gamma=cfg.gamma, log_v=s.log_v)

    def step(self, step: int) -> float:
        """One optimisation step; returns the loss. Raises :class:`DivergedError` on NaN/Inf."""
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss()
        if not torch.isfinite(loss):
            raise DivergedError(step, "loss")
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        lv = float(loss.detach())
        self.losses.append(lv)
        if self.cfg.lr_schedule == "cosine":
            self.sched.step()
        elif len(self.losses) >= 2:
            self.sched.step(float(torch.tensor(list(self.losses)).std()))
        return lv

    def state_dict(self) -> dict[str, Any]:
        return {"opt": self.opt.state_dict(), "sched": self.sched.state_dict(), "losses": list(self.losses)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.losses.extend(state["losses"])


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


_save_checkpoint = save_checkpoint


@dataclass
class Fit:
    """What :func:`fit` leaves: the last step, the training wall time, the history, the optimizer."""

    steps: int
    wall_s: float
    history: list[dict[str, float]]
    trainer: Trainer


def fit(model: Method, target: Target, settings: RunConfig, *,
        callbacks: Sequence[Callable[[dict[str, float]], None]] = (),
        progress: Callable[[int, float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        checkpoint: Path | None = None, state: dict[str, Any] | None = None) -> Fit:
    r"""Train ``model`` on ``target`` for ``settings.steps`` steps (the library's training loop).

    Touches no process-wide state but torch's global random generator, which sampling draws from
    (seed it first with :func:`torch.manual_seed` for reproducible numbers); thread count, seeding
    and the allocator are the caller's (the command line's workers set them, :func:`train`).

    Arguments:
        model: a :class:`~sesamo_bench.core.methods.Method` (on its device and dtype).
        target: the target it samples.
        settings: the training hyperparameters (a :class:`~sesamo_bench.harness.config.RunConfig`; see
            :func:`sesamo_bench.preset`).
        callbacks: called with each history row (``step``, ``loss``, ``ess``, ``log_z``, ``lr``,
            ``wall_s``, ``breaking_ratio`` where defined), every ``eval_every`` steps.
        progress: called after every step with ``(step, loss)``.
        should_stop: polled every step and between evaluation chunks; when it returns True a
            checkpoint is written and :class:`Interrupted` is raised.
        checkpoint: file for the training state (written every ``checkpoint_every`` steps, on
            interruption and at the end); ``None`` disables checkpoints.
        state: a checkpoint's contents (:func:`load_checkpoint`) to continue from.

    Returns:
        A :class:`Fit`.

    Raises:
        DivergedError: NaN/Inf in the loss, the weights or the evaluation's log-weights.
        CheckpointError: ``state`` does not fit the model.
    """
    cfg = settings
    device = next(model.parameters()).device
    trainer = Trainer(cfg, model, target, device)
    history: list[dict[str, float]] = []
    start_step, wall_before = 0, 0.0
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            trainer.load_state_dict(state)
            torch.set_rng_state(state["rng"].cpu())
            if state.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
        except Exception as exc:  # noqa: BLE001 - shapes or keys of another model, a damaged state
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            where = f"checkpoint {checkpoint}" if checkpoint is not None else "the checkpoint"
            raise CheckpointError(f"{where} does not fit this run ({type(exc).__name__}: {first})") from None
        check_fits(state, cfg.to_dict(), f"checkpoint {checkpoint}" if checkpoint is not None else "the checkpoint")
        history = state["history"]
        start_step, wall_before = state["step"], float(state["wall_s"])

    def snapshot(step: int, wall: float) -> dict[str, Any]:
        return {"model": model.state_dict(), **trainer.state_dict(), "history": history, "step": step,
                "wall_s": wall, "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "config": cfg.to_dict()}

    t0 = time.perf_counter() - wall_before
    step = start_step
    saved = [start_step]  # step of the latest checkpoint written

    def save(step: int) -> None:
        if checkpoint is not None:
            save_checkpoint(checkpoint, snapshot(step, time.perf_counter() - t0))
            saved[0] = step
    for step in range(start_step + 1, cfg.steps + 1):
        lv = trainer.step(step)
        if progress is not None:
            progress(step, lv)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            for p in model.parameters():
                if not bool(torch.isfinite(p).all()):
                    raise DivergedError(step, "weights")
            try:
                ev = evaluate(model, target, cfg.eval_samples, should_stop=should_stop)
            except EvaluationStopped:
                # the model has moved past the last checkpoint and the evaluation drew part of its
                # samples: stop at that checkpoint, which resumes to the same numbers
                raise Interrupted(saved[0]) from None
            if not math.isfinite(ev.ess):
                raise DivergedError(step, "log-weights")
            row = {"step": step, "loss": lv, "ess": ev.ess, "log_z": ev.log_z, "lr": trainer.lr,
                   "wall_s": time.perf_counter() - t0}
            br = model.breaking_ratio()
            if br is not None:
                row["breaking_ratio"] = br
            history.append(row)
            for callback in callbacks:
                callback(row)
        # polled before the checkpoint is written: a run whose claim was taken over while it was
        # stopped (SIGSTOP) learns it here and writes nothing (should_stop raises)
        stop = should_stop is not None and should_stop()
        if stop or step % cfg.checkpoint_every == 0:
            save(step)
        if stop:
            raise Interrupted(step)
    train_wall = time.perf_counter() - t0
    if checkpoint is not None:
        save_checkpoint(checkpoint, snapshot(step, train_wall))
    return Fit(step, train_wall, history, trainer)


def train(cfg: RunConfig, *, checkpoint: Path | None = None, resume: bool = False,
          callback: Callable[[dict[str, float]], None] | None = None,
          should_stop: Callable[[], bool] | None = None,
          progress: Callable[[int, float], None] | None = None) -> Result:
    r"""Train one run of the benchmark to completion and evaluate it (what a worker runs).

    Sets the run's process policy first: its thread count (``cfg.threads``), the global seed and,
    on a CPU, glibc's memory retention; then :func:`build`, :func:`fit` and :func:`evaluate`.

    Arguments:
        cfg: the run.
        checkpoint: file for the training state; ``None`` disables checkpoints.
        resume: continue from ``checkpoint`` if it exists.
        callback: called with each history row (step, loss, ess, lr, wall_s, ...).
        should_stop: polled every step (see :func:`fit`).
        progress: called after every step with ``(step, loss)`` (for progress bars).

    Raises:
        DivergedError: NaN/Inf in the loss, the weights or the evaluation's log-weights.
        CheckpointError: the checkpoint cannot be loaded or does not fit the run.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _seed_all(cfg.seed)
    target, model, device, dtype = build(cfg)
    if device.type == "cpu":
        kernels.keep_freed_memory()
    state = None
    if resume and checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint, map_location=device)
    done = fit(model, target, cfg, callbacks=[callback] if callback is not None else [], progress=progress,
               should_stop=should_stop, checkpoint=checkpoint, state=state)
    step = done.steps
    try:
        ev = evaluate(model, target, cfg.final_samples, keep=cfg.save_samples, should_stop=should_stop,
                      sign_fn=breaking_sign_fn(cfg, model, target, device))
        if not math.isfinite(ev.ess):
            raise DivergedError(step, "log-weights")
        sup = support(model, target, cfg.final_samples, seed=cfg.seed, should_stop=should_stop)
    except EvaluationStopped:
        raise Interrupted(step) from None  # the checkpoint of the last step was just written
    ref_metrics = target.reference_metrics(ev.x) if ev.x is not None else {}
    held = heldout_nll(model, target) if target.offers_training_data() else {}
    if cfg.train_subset != "all":
        from ..analysis.states import state_metrics

        rows, trained_on = training_rows(cfg, target)
        held.update(train_rows=int(rows.shape[0]), **state_metrics(target, ev.x, ev.log_w, trained_on))
    exact_err = getattr(target, "breaking_ratio_error", None)
    return Result(
        config=cfg, status="finished", steps=step, wall_s=done.wall_s,
        ess=ev.ess, log_z=ev.log_z, log_z_err=ev.log_z_err, ess_path=ev.ess_path, outside_cell=ev.outside_cell,
        underflow=ev.underflow,
        breaking_ratio=model.breaking_ratio(),
        breaking_ratio_exact=target.breaking_ratio(),
        probabilities=model.probabilities(),
        probabilities_exact=target.mode_probabilities() if model.probabilities() is not None else None,
        log_z_exact=target.log_z(), ess_n=ev.ess_n, log_z_err_reliable=ev.log_z_err_reliable,
        breaking_ratio_is=ev.breaking_ratio_is, breaking_ratio_is_err=ev.breaking_ratio_is_err,
        breaking_ratio_exact_err=exact_err() if exact_err is not None else None, **sup, **ref_metrics, **held,
        device=str(device), dtype=str(dtype).replace("torch.", ""),
        history=done.history, samples=ev.x, sample_log_w=ev.log_w, info=model.info(),
    )
