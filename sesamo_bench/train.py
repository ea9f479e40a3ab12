r"""Build a model from a :class:`~sesamo_bench.config.RunConfig`, train it, evaluate it.

Training minimises the self-reparametrized KL (paper Eq. 18) with Adam and, by default, the
paper's plateau rule (App. I; ``lr_schedule = "cosine"`` anneals instead, for short budgets):
every step the standard deviation of the last ``lr_window`` losses is fed to
:class:`torch.optim.lr_scheduler.ReduceLROnPlateau`, which multiplies the learning rate by
``lr_factor`` when it has not improved for ``lr_patience`` steps (floor ``lr_min``).

ESS and ln Z are evaluated under ``no_grad`` every ``eval_every`` steps from the exact density
(:meth:`~sesamo_bench.methods.Method.log_prob`), and once more at the end on ``final_samples``.
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

from . import kernels, metrics, plugins
from .config import RunConfig
from .errors import ConfigError, DivergedError, IncompatibleError
from .flows import MLP
from .loss import log_weights, penalty, self_reparametrized_kl
from .architecture import target_domain
from .methods import Method, method_class
from .symmetry import Symmetry
from .target import Target


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


def build_model(cfg: RunConfig, target: Target, sym: Symmetry | None) -> Method:
    r"""The method ``cfg.method`` for ``target`` (with the bound symmetry ``sym``), from the
    architecture, prior, device and dtypes of ``cfg``. Draws its initial weights from torch's global
    generator, and touches no other process state.
    """
    mcls = method_class(cfg.method)
    device, dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype, target)
    kwargs = dict(flow=cfg.flow_spec(), lattice=target_domain(target).lattice, prior_mean=cfg.prior_mean, prior_var=cfg.prior_var,
                  kernels=cfg.kernels, **mcls.options(cfg))
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


def build(cfg: RunConfig) -> tuple[Target, Method, torch.device, torch.dtype]:
    """Target, model (on device and dtype), device and dtype of a run; validates the combination."""
    target = build_target(cfg)
    mcls = method_class(cfg.method)
    device, dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype, target)
    sym = None
    if mcls.needs_symmetry or cfg.symmetry:
        sym = build_symmetry(cfg, target)
        check_exact(sym, target)
    return target, build_model(cfg, target, sym), device, dtype


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    ess: float
    log_z: float
    log_z_err: float
    ess_path: float
    outside_cell: float
    x: Tensor | None = None
    log_w: Tensor | None = None


@torch.no_grad()
def evaluate(model: Method, target: Target, n: int, *, chunk: int = 16384, keep: int = 0) -> Evaluation:
    """ESS and ln Z from ``n`` fresh samples, with the exact density; ``keep`` samples returned."""
    was = model.training
    model.eval()
    lw, lw_path, outside, xs = [], [], 0, []
    done = 0
    while done < n:
        m = min(chunk, n - done)
        s = model.sample(m)
        lp = target.log_prob(s.x)
        lw.append(log_weights(lp, model.log_prob(s.x)).double())
        lw_path.append(log_weights(lp, s.log_q).double())
        if s.cell is not None:
            outside += int((model.symmetry.penalty_fn(s.cell) > 0).sum())
        if len(xs) * chunk < keep:
            xs.append(s.x.detach())
        done += m
    model.train(was)
    log_w = torch.cat(lw).cpu()
    lz, lz_err = metrics.log_z(log_w)
    x = torch.cat(xs)[:keep].cpu() if keep else None
    return Evaluation(metrics.ess(log_w), lz, lz_err, metrics.ess(torch.cat(lw_path).cpu()), outside / n,
                      x, log_w[:keep] if keep else None)


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
    breaking_ratio: float | None = None
    breaking_ratio_exact: float | None = None
    probabilities: list[float] | None = None
    probabilities_exact: list[float] | None = None
    log_z_exact: float | None = None
    device: str = "cpu"
    dtype: str = "float32"
    error: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    samples: Tensor | None = None
    sample_log_w: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        keys = ("ess", "log_z", "log_z_err", "ess_path", "outside_cell", "breaking_ratio",
                "breaking_ratio_exact", "probabilities", "probabilities_exact", "log_z_exact")
        return {**{k: getattr(self, k) for k in keys}, **self.info}


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

    A step draws ``batch_size`` samples, evaluates the self-reparametrized KL with the penalty
    (paper Eqs. 11, 18), back-propagates and updates the flow and the breaking parameters with
    (fused) Adam; the schedule is the paper's plateau rule or a cosine anneal (``lr_schedule``).
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

    @property
    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def loss(self) -> Tensor:
        """The objective on one fresh batch (scalar, with graph)."""
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


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


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
        model: a :class:`~sesamo_bench.methods.Method` (on its device and dtype).
        target: the target it samples.
        settings: the training hyperparameters (a :class:`~sesamo_bench.config.RunConfig`; see
            :func:`sesamo_bench.preset`).
        callbacks: called with each history row (``step``, ``loss``, ``ess``, ``log_z``, ``lr``,
            ``wall_s``, ``breaking_ratio`` where defined), every ``eval_every`` steps.
        progress: called after every step with ``(step, loss)``.
        should_stop: polled every step; when it returns True a checkpoint is written and
            :class:`Interrupted` is raised.
        checkpoint: file for the training state (written every ``checkpoint_every`` steps, on
            interruption and at the end); ``None`` disables checkpoints.
        state: a checkpoint's contents to continue from.

    Returns:
        A :class:`Fit`.

    Raises:
        DivergedError: NaN/Inf in the loss, the weights or the evaluation's log-weights.
    """
    cfg = settings
    device = next(model.parameters()).device
    trainer = Trainer(cfg, model, target, device)
    history: list[dict[str, float]] = []
    start_step, wall_before = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        trainer.load_state_dict(state)
        history = state["history"]
        start_step, wall_before = state["step"], state["wall_s"]
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def snapshot(step: int, wall: float) -> dict[str, Any]:
        return {"model": model.state_dict(), **trainer.state_dict(), "history": history, "step": step,
                "wall_s": wall, "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "config": cfg.to_dict()}

    t0 = time.perf_counter() - wall_before
    step = start_step
    for step in range(start_step + 1, cfg.steps + 1):
        lv = trainer.step(step)
        if progress is not None:
            progress(step, lv)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            for p in model.parameters():
                if not bool(torch.isfinite(p).all()):
                    raise DivergedError(step, "weights")
            ev = evaluate(model, target, cfg.eval_samples)
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
        if checkpoint is not None and step % cfg.checkpoint_every == 0:
            _save_checkpoint(checkpoint, snapshot(step, time.perf_counter() - t0))
        if should_stop is not None and should_stop():
            if checkpoint is not None:
                _save_checkpoint(checkpoint, snapshot(step, time.perf_counter() - t0))
            raise Interrupted(step)
    train_wall = time.perf_counter() - t0
    if checkpoint is not None:
        _save_checkpoint(checkpoint, snapshot(step, train_wall))
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
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _seed_all(cfg.seed)
    target, model, device, dtype = build(cfg)
    if device.type == "cpu":
        kernels.keep_freed_memory()
    state = None
    if resume and checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
    done = fit(model, target, cfg, callbacks=[callback] if callback is not None else [], progress=progress,
               should_stop=should_stop, checkpoint=checkpoint, state=state)
    ev = evaluate(model, target, cfg.final_samples, keep=cfg.save_samples)
    if not math.isfinite(ev.ess):
        raise DivergedError(done.steps, "log-weights")
    return Result(
        config=cfg, status="finished", steps=done.steps, wall_s=done.wall_s,
        ess=ev.ess, log_z=ev.log_z, log_z_err=ev.log_z_err, ess_path=ev.ess_path, outside_cell=ev.outside_cell,
        breaking_ratio=model.breaking_ratio(),
        breaking_ratio_exact=target.breaking_ratio(),
        probabilities=model.probabilities(),
        probabilities_exact=target.mode_probabilities() if model.probabilities() is not None else None,
        log_z_exact=target.log_z(), device=str(device), dtype=str(dtype).replace("torch.", ""),
        history=done.history, samples=ev.x, sample_log_w=ev.log_w, info=model.info(),
    )
