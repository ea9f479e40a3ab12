r"""Evaluating a model: ESS and ln Z under ``no_grad`` from the exact density
(:meth:`~sesamo_bench.core.methods.Method.log_prob`), the held-out NLL, the missing support and
the importance-weighted breaking ratio (every ``eval_every`` steps, and once more at the end on
``final_samples``)."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ..core import metrics
from .. import plugins
from .config import RunConfig
from .record import Values
from ..errors import ConfigError, IncompatibleError
from ..core.loss import log_weights
from ..core.methods import Method
from ..core.target import Target


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
class EvaluationStopped(Exception):
    """:func:`evaluate` saw ``should_stop`` return True between two chunks."""


class Evaluation(Values):
    r"""What :func:`evaluate` measured: ``x`` and ``log_w`` (the kept samples ``(keep, *shape)`` and
    their log-weights), and its numbers as attributes (declared once, on
    :class:`~sesamo_bench.harness.record.RunRecord`): ``ess``, ``log_z``, ``log_z_err``, ``ess_path``,
    ``outside_cell``, ``ess_n`` and ``log_z_err_reliable`` (ESS x N and whether it is large enough for
    ``log_z_err``, metrics.MIN_EFFECTIVE_SAMPLES), ``breaking_ratio_is`` and ``breaking_ratio_is_err``
    (the importance-weighted breaking ratio, where ``sign_fn`` is given), ``underflow`` (the fraction
    of samples whose density an architecture's guard made finite but wrong)."""

    def __init__(self, *, x: Tensor | None = None, log_w: Tensor | None = None, **values: Any):
        self.x, self.log_w = x, log_w
        self.values = self.check(values, "Evaluation")

    def __repr__(self) -> str:
        return f"Evaluation({', '.join(f'{k}={v!r}' for k, v in self.values.items())})"


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
    return Evaluation(ess=metrics.ess(log_w), log_z=lz, log_z_err=lz_err,
                      ess_path=metrics.ess(torch.cat(lw_path).cpu()), outside_cell=outside / n,
                      x=x, log_w=log_w[:keep] if keep else None, ess_n=n_eff,
                      log_z_err_reliable=metrics.error_reliable(n_eff), breaking_ratio_is=r_is[0],
                      breaking_ratio_is_err=r_is[1], underflow=under / n)


@torch.no_grad()
def heldout_nll(model: Method, target: Target, *, chunk: int = 4096) -> dict[str, float]:
    r"""The mean of -ln q(x) over the target's held-out samples (``training_data("test")``, never used
    in training), its standard error, and per dimension of the field (for particles: per reduced
    coordinate, the (n - 1) d Helmert coordinates; the centre-of-mass-free subspace, on which the
    Helmert map is an isometry). Non-finite -ln q (a sample outside the model's support) gives inf."""
    x = target.training_data("test")
    nll = -_log_q(model, x, chunk).double()
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
    ``support_reference_n``; all ``None`` where the target has no reference samples. Where the
    target's reference samples are approximate and it has an exact reference
    (``exact_reference``, DW-4), also ``support_missing_exact`` and its error over every row of it,
    and ``exact_reference_n``.
    ``should_stop`` is polled before every chunk (:class:`EvaluationStopped`, as in :func:`evaluate`).
    """
    gen = torch.Generator().manual_seed(10007 * seed + 1)
    ref = target.reference_samples(n, generator=gen)
    if ref is None:
        return dict.fromkeys(("support_missing", "support_missing_err", "support_missing_count",
                              "support_reference_n"))
    mass, err, count = metrics.missing_support(_log_q(model, ref, chunk, should_stop))
    out = {"support_missing": mass, "support_missing_err": err, "support_missing_count": count,
           "support_reference_n": int(ref.shape[0])}
    exact = target.exact_reference() if hasattr(target, "exact_reference") else None
    if exact is not None:  # every row of the exact reference once (no draws with replacement)
        mass, err, _ = metrics.missing_support(_log_q(model, exact, chunk, should_stop))
        out.update(support_missing_exact=mass, support_missing_exact_err=err, exact_reference_n=int(exact.shape[0]))
    return out


def _log_q(model: Method, x: Tensor, chunk: int, should_stop: Callable[[], bool] | None = None) -> Tensor:
    """``model.log_prob`` of the rows of ``x`` in eval mode, ``chunk`` rows at a time (on the CPU);
    ``should_stop`` is polled before every chunk (:class:`EvaluationStopped`)."""
    p = next(model.parameters())
    was = model.training
    model.eval()
    parts = []
    try:
        for i in range(0, x.shape[0], chunk):
            if should_stop is not None and should_stop():
                raise EvaluationStopped()
            parts.append(model.log_prob(x[i:i + chunk].to(device=p.device, dtype=p.dtype)).cpu())
    finally:
        model.train(was)
    return torch.cat(parts)


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
