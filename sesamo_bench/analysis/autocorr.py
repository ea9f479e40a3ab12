r"""Errors of Markov-chain averages: the Gamma method with automatic windowing (Wolff 2004).

For a primary observable a_t recorded along R independent chains (replica) of N steps each, the
autocorrelation function Gamma(t) is estimated from all chains together,

    Gamma(t) = 1 / (R (N - t)) sum_r sum_i (a_{r,i} - abar)(a_{r,i+t} - abar),

the integrated autocorrelation time is tau_int(W) = 1/2 + sum_{t=1}^{W} Gamma(t) / Gamma(0), and
the window W is the first one where the expected systematic error e^{-W/tau} falls below the
statistical one sqrt(W / (R N)) (Wolff's criterion with S = 1.5). The error of the mean is
sqrt(2 tau_int Gamma(0) / (R N)), and tau_int's own error is tau_int sqrt(2 (2 W + 1) / (R N))
(Madras-Sokal).

Wolff's criterion stops at the first lag where the partial sum tau_int(W) drops to 1/2, which
cuts off too early when Gamma oscillates: HMC trajectories close to half a period give a negative
Gamma(1) and a positive tail (|m| of real phi^4: rho(1) = -0.12, rho(2) = +0.09, ...), and the
estimate would stop at W = 1 with tau_int = 1/2. The estimate returned is therefore the larger of
Wolff's and Geyer's initial monotone sequence estimator (sums of adjacent pairs
rho(2k) + rho(2k + 1), positive and decreasing for a reversible chain, summed while positive),
which handles the oscillation.

tau_int is not floored at 1/2. An anticorrelated observable (an HMC trajectory near half a period
of a mode turns x into about -x, an over-relaxation) has tau_int < 1/2, and its mean is more
precise than that of as many independent draws: an AR(1) chain with coefficient phi = -0.5 has
tau_int = (1 + phi) / (2 (1 - phi)) = 1/6, and a floor at 1/2 would overstate its error by
sqrt(3) = 1.7 and its cost per effective sample by 3. Where Wolff's partial sum drops to 1/2 his
windowing does not apply (his tau is defined for tau_int > 1/2), and Geyer's estimator is used:
its pair sums rho(2k) + rho(2k + 1) stay positive for a reversible chain also when rho alternates
in sign, and their sum gives tau_int < 1/2 where the data say so. It stops at the first pair lost
in the noise and so underestimates a very small tau_int (AR(1) with phi = -0.9: 0.018 for 0.026
from 4 x 5000 states); the estimate returned there is the larger of it and a binning estimate
(:func:`binned_tau`), which approaches tau_int from above for alternating correlations.

A derived quantity f(<a>, <b>, ...) gets its error from the projected series
sum_k df/d<a_k> a_k (linear error propagation), e.g. :func:`ratio`.

References:
    U. Wolff, Monte Carlo errors with less errors, Comput. Phys. Commun. 156 (2004) 143,
    arXiv:hep-lat/0306017 (Eqs. 31-35, 42, 52).
    N. Madras, A. D. Sokal, J. Stat. Phys. 50 (1988) 109.
    C. J. Geyer, Practical Markov chain Monte Carlo, Statist. Sci. 7 (1992) 473, Sec. 3.3.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> est = gamma_method(rng.normal(size=(4, 5000)))
    >>> abs(est.mean) < 4 * est.err, round(est.tau_int, 1)
    (True, 0.5)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Wolff's S: tau ~ S / ln((2 tau_int + 1) / (2 tau_int - 1)); 1.5 is his default
S_WOLFF = 1.5
#: the smallest tau_int returned is this / (R N): an error of the mean of sqrt(Gamma(0)) / (R N), the
#: size of the boundary term that even a perfectly alternating sequence leaves
TAU_MIN_FACTOR = 0.5


@dataclass(frozen=True)
class Estimate:
    r"""A Markov-chain average with its error.

    Attributes:
        mean: the average over all chains and steps.
        err: its standard error (autocorrelations included).
        tau_int: integrated autocorrelation time, in recorded steps (1/2 for independent data).
        tau_err: the error of ``tau_int``.
        window: the summation window W.
        n: the number of recorded values (R N).
    """

    mean: float
    err: float
    tau_int: float
    tau_err: float
    window: int
    n: int


def _replicas(data: np.ndarray) -> np.ndarray:
    a = np.asarray(data, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] < 2:
        raise ValueError(f"expected data of shape (N,) or (chains, N) with N >= 2; got {a.shape}")
    return a


def autocorrelation(data: np.ndarray, max_lag: int | None = None) -> np.ndarray:
    r"""Gamma(t) for t = 0 .. max_lag, pooled over the chains (rows) of ``data`` ``(R, N)``."""
    a = _replicas(data)
    r, n = a.shape
    max_lag = n // 2 if max_lag is None else min(max_lag, n - 1)
    d = a - a.mean()
    # FFT per chain, zero-padded: sum_i d_i d_{i+t} for every t at once
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(d, size, axis=1)
    acf = np.fft.irfft(f * np.conj(f), size, axis=1)[:, : max_lag + 1].sum(0)
    return acf / (r * (n - np.arange(max_lag + 1)))


def gamma_method(data: np.ndarray, *, s: float = S_WOLFF) -> Estimate:
    r"""Mean, error and tau_int of a primary observable, data ``(N,)`` or ``(chains, N)``.

    Arguments:
        data: the recorded values, one row per independent chain (equal lengths).
        s: Wolff's S (the guess tau = S tau_int-like scale of the windowing).

    Returns:
        An :class:`Estimate`. Constant data gives ``err = 0``, ``tau_int = 0.5``.
    """
    a = _replicas(data)
    r, n = a.shape
    total = r * n
    mean = float(a.mean())
    gam = autocorrelation(a)
    if gam[0] <= 0:
        return Estimate(mean, 0.0, 0.5, 0.0, 0, total)
    rho = gam / gam[0]
    tau_sum = 0.5
    window = len(rho) - 1
    anticorrelated = False
    for w in range(1, len(rho)):
        tau_sum += rho[w]
        if tau_sum <= 0.5:  # Wolff's windowing needs tau_int > 1/2: leave it to Geyer's estimator
            window, anticorrelated = w, True
            break
        tau = s / math.log((2 * tau_sum + 1) / (2 * tau_sum - 1))
        if math.exp(-w / tau) - tau / math.sqrt(w * total) < 0:
            window = w
            break
    tau_int = 0.5 + float(rho[1: window + 1].sum())
    tau_geyer, w_geyer = _geyer(rho)
    if anticorrelated or tau_geyer > tau_int:
        tau_int, window = tau_geyer, w_geyer
    if tau_int < 0.5:  # anticorrelated: Geyer's sum stops at the first pair lost in the noise, which
        # underestimates a small tau_int; binning approaches it from above, so keep the larger one
        tau_int = max(tau_int, binned_tau(a, float(gam[0]), window))
    tau_int = max(tau_int, TAU_MIN_FACTOR / total)
    # bias correction of Gamma(0) for the estimated mean (Wolff Eq. 49)
    var = float(gam[0]) * (1 + (2 * window + 1) / total) if window else float(gam[0])
    err = math.sqrt(2 * tau_int * var / total)
    tau_err = tau_int * math.sqrt(2 * (2 * window + 1) / total)
    return Estimate(mean, err, tau_int, tau_err, window, total)


def binned_tau(data: np.ndarray, gamma0: float | None = None, window: int = 0, *, min_bins: int = 64) -> float:
    r"""tau_int from the variance of bin means, B Var(bin mean) / (2 Gamma(0)), bins of B states within
    each chain, B the power of 2 >= max(16, 4 (window + 1)), halved until there are ``min_bins``.

    For a chain with autocorrelation rho this is tau_int - sum_t t rho(t) / B + O(e^{-B / tau}): from
    above where the correlations alternate in sign (AR(1) with phi < 0: sum_t t rho(t) =
    phi / (1 - phi)^2 < 0). 0 where fewer than ``min_bins`` bins of 2 states fit.
    """
    a = _replicas(data)
    r, n = a.shape
    g0 = float(a.var()) if gamma0 is None else gamma0
    b = max(16, 1 << (4 * (window + 1) - 1).bit_length())
    while b > 2 and r * (n // b) < min_bins:
        b //= 2
    if r * (n // b) < min_bins or g0 <= 0:
        return 0.0
    bins = a[:, : (n // b) * b].reshape(r, n // b, b).mean(-1)
    return b * float(bins.var(ddof=1)) / (2 * g0)


def _geyer(rho: np.ndarray) -> tuple[float, int]:
    r"""Geyer's initial monotone sequence: tau_int = -1/2 + sum_k G_k, G_k = rho(2k) + rho(2k+1)."""
    total, prev, k = 0.0, math.inf, 0
    while 2 * k + 1 < len(rho):
        g = float(rho[2 * k] + rho[2 * k + 1])
        if g <= 0:
            break
        prev = min(prev, g)
        total += prev
        k += 1
    return total - 0.5, max(2 * k - 1, 0)


def ratio(num: np.ndarray, den: np.ndarray) -> Estimate:
    r"""<num> / <den> with its error from the projected series (num - ratio den) / <den>.

    Arguments:
        num, den: paired recordings of the same chains, each ``(N,)`` or ``(chains, N)``.
    """
    a, b = _replicas(num), _replicas(den)
    if a.shape != b.shape:
        raise ValueError(f"num and den must have the same shape; got {a.shape} and {b.shape}")
    mb = b.mean()
    q = a.mean() / mb
    proj = gamma_method((a - q * b) / mb)
    return Estimate(float(q), proj.err, proj.tau_int, proj.tau_err, proj.window, proj.n)
