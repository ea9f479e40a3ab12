r"""Importance-sampling metrics, computed in float64 from log-weights (no overflow)."""

from __future__ import annotations

import math

import numpy as np
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


#: the smallest ESS x N at which the standard error of an importance-sampling estimate is printed
#: as a number: below about 100 effective samples the error estimate is itself unreliable (its
#: relative error is >= 1/sqrt(2 ESS N) = 7 % already for Gaussian data and far larger for the
#: heavy-tailed weights that make ESS small). The number follows the rule of Vehtari, Gelman,
#: Simpson, Carpenter, Buerkner, "Rank-normalization, folding, and localization: an improved
#: R-hat" (Bayesian Analysis 16, 2021), Sec. 4: trust Monte Carlo standard errors only from an
#: effective sample size of at least 100 (per chain).
MIN_EFFECTIVE_SAMPLES = 100


def effective_samples(log_w: Tensor) -> float:
    r"""ESS x N: the number of effective samples behind an importance-sampling estimate."""
    return ess(log_w) * log_w.shape[0]


def error_reliable(n_eff: float | None, threshold: float = MIN_EFFECTIVE_SAMPLES) -> bool | None:
    r"""Whether a standard error from ``n_eff`` = ESS x N effective samples means anything
    (``n_eff >= threshold``, see :data:`MIN_EFFECTIVE_SAMPLES`); ``None`` when unknown."""
    if n_eff is None or not math.isfinite(n_eff):
        return None
    return bool(n_eff >= threshold)


def missing_support(log_q_ref: Tensor) -> tuple[float, float, int]:
    r"""The target mass where q has no support, from reference samples of p.

    Importance sampling from q is unbiased wherever q covers p, and the ESS of q's own samples
    cannot see where q = 0; this is the fraction of samples x ~ p with ln q(x) = -inf.

    Arguments:
        log_q_ref: ln q at ``N`` (independent) samples of the target p, ``(N,)``.

    Returns:
        ``(mass, err, count)``: the fraction, its binomial standard error sqrt(m (1 - m) / N) and
        the number of samples without support. With ``count = 0`` the 95 % upper bound is 3/N
        (the rule of three).
    """
    miss = torch.isneginf(log_q_ref.detach())
    n = miss.shape[0]
    count = int(miss.sum())
    m = count / n
    return m, math.sqrt(m * (1 - m) / n), count


def weighted_breaking_ratio(log_w: Tensor, sign: Tensor) -> tuple[float, float]:
    r"""Self-normalised importance-sampling estimate of a breaking ratio R = E_p[sign].

    R-hat = sum_i w_i s_i / sum_i w_i with s_i = +1 (-1) for samples of q in a cell whose
    element counts as unbroken (broken) in paper Eq. (39); its standard error is the delta-method
    sqrt(sum_i w_i^2 (s_i - R-hat)^2) / sum_i w_i (Owen, Monte Carlo theory, methods and examples,
    Eq. 9.9). Unlike the learned R of the modulation it does not assume that the flow puts the
    right mass into each cell.

    Arguments:
        log_w: ln p~(x_i) - ln q(x_i) of samples x_i ~ q, ``(N,)``.
        sign: +-1 per sample, ``(N,)``.

    Returns:
        ``(R-hat, standard error)``.
    """
    lw = log_w.detach().double()
    w = torch.exp(lw - lw.max())
    s = sign.detach().double().to(w.device)
    tot = w.sum()
    r = float((w * s).sum() / tot)
    err = float(torch.sqrt((w * w * (s - r) ** 2).sum()) / tot)
    return r, err


def wasserstein_1d(a: np.ndarray, b: np.ndarray, *, p: int = 2) -> float:
    r"""The p-Wasserstein distance of two 1-D empirical distributions through their quantile functions,

        W_p(A, B) = ( int_0^1 |F_A^{-1}(t) - F_B^{-1}(t)|^p dt )^{1/p},

    exact for the step quantile functions of the samples (the integral over the merged breakpoints);
    p = 1 agrees with ``scipy.stats.wasserstein_distance``.

    Example:
        >>> import numpy as np
        >>> round(wasserstein_1d(np.array([0.0, 1.0]), np.array([2.0, 3.0])), 12)
        2.0
    """
    a, b = np.sort(np.asarray(a, dtype=float)), np.sort(np.asarray(b, dtype=float))
    ta, tb = np.arange(1, len(a) + 1) / len(a), np.arange(1, len(b) + 1) / len(b)
    t = np.unique(np.concatenate([ta, tb]))
    dt = np.diff(np.concatenate([[0.0], t]))
    qa = a[np.minimum(np.searchsorted(ta, t, side="left"), len(a) - 1)]
    qb = b[np.minimum(np.searchsorted(tb, t, side="left"), len(b) - 1)]
    return float((dt * np.abs(qa - qb) ** p).sum() ** (1.0 / p))


def assignment_w2(cost: np.ndarray) -> float:
    r"""The 2-Wasserstein distance of two equal-size point sets from their ``(k, k)`` matrix of squared
    distances: sqrt(min_sigma (1/k) sum_i cost[i, sigma(i)]), the optimal transport between two
    uniform empirical measures of k points each, which is an assignment (Birkhoff-von Neumann;
    solved exactly by ``scipy.optimize.linear_sum_assignment``).

    Example:
        >>> import numpy as np
        >>> a = np.array([[0.0], [1.0]]); b = np.array([[1.5], [0.5]])
        >>> round(assignment_w2(((a[:, None] - b[None]) ** 2).sum(-1)), 12)
        0.5
    """
    from scipy.optimize import linear_sum_assignment

    c = np.asarray(cost, dtype=float)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] == 0:
        raise ValueError(f"assignment_w2: cost must be a non-empty square matrix, got shape {c.shape}")
    rows, cols = linear_sum_assignment(c)
    return float(np.sqrt(max(c[rows, cols].mean(), 0.0)))
