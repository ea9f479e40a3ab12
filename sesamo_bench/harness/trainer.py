r"""One optimisation step of a run and its state: the objective, Adam and the schedule.

Training minimises the self-reparametrized KL (paper Eq. 18) with Adam and, by default, the
paper's plateau rule (App. I; ``lr_schedule = "cosine"`` anneals instead, for short budgets):
every step the standard deviation of the last ``lr_window`` losses is fed to
:class:`torch.optim.lr_scheduler.ReduceLROnPlateau`, which multiplies the learning rate by
``lr_factor`` when it has not improved for ``lr_patience`` steps (floor ``lr_min``).
"""

from __future__ import annotations

import collections
from typing import Any

import torch
from torch import Tensor

from .build import training_rows
from .config import RunConfig
from ..errors import DivergedError
from ..core.loss import log_weights, negative_log_likelihood, penalty, self_reparametrized_kl
from ..core.methods import Method
from ..core.target import Target


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
    :func:`~sesamo_bench.harness.train.fit` loops over :meth:`step`; the performance benchmark times it.
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
