r"""Importance-sampling metrics, computed in float64 from log-weights (no overflow)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def ess(log_w: Tensor) -> float:
    r"""Normalised effective sample size (sum w)^2 / (N sum w^2), in (0, 1]."""
    lw = log_w.detach().double()
    lw = lw[torch.isfinite(lw)] if bool(torch.isneginf(lw).any()) else lw
    n = log_w.shape[0]
    return float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)) / n)


def log_z(log_w: Tensor) -> tuple[float, float]:
    r"""ln Z-hat = logmeanexp(ln w) and its standard error sqrt((1/ESS - 1)/N) (delta method)."""
    lw = log_w.detach().double()
    n = lw.shape[0]
    est = float(torch.logsumexp(lw, 0) - math.log(n))
    e = ess(lw)
    err = math.sqrt(max(1.0 / e - 1.0, 0.0) / n) if e > 0 else math.inf
    return est, err


def sample_breaking_ratio(u: Tensor, probs_nonflip: list[int]) -> float:
    """Eq. (39) by counting: (N_+ - N_-)/(N_+ + N_-) with N_+ the draws in ``probs_nonflip``."""
    plus = torch.isin(u, torch.tensor(probs_nonflip, device=u.device)).double().mean()
    return float(2 * plus - 1)
