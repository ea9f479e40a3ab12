r"""Unbiased estimates of observables with errors: reweighting and Markov chains (the Gamma method).

A target declares its observables (:meth:`sesamo_bench.core.target.Target.observables`): *primary*
ones, a number (or a vector) per configuration, and *derived* ones, functions of the primary
expectation values (a susceptibility V (<m^2> - <m>^2), an effective mass). This module turns
samples into estimates of both:

- :func:`reweighted`: self-normalised importance sampling from independent draws of a flow,
  <O> = sum_i w_i O_i / sum_i w_i with w = p/q, its error by linear error propagation of the
  ratio of the two means;
- :func:`from_chain`: a Markov chain (neural MCMC, HMC), its error and integrated
  autocorrelation time tau_int from the Gamma method with automatic windowing (for a primary
  observable below 1/2 where the chain is anticorrelated, :func:`_anticorrelated`); for several
  chains also R-hat, and where it shows that they have not mixed (:data:`RHAT_MAX`) the error of
  a primary observable is the spread of the chain means instead (the errors of derived
  observables then remain the Gamma method's, too small).

Both use pyerrors (Joswig, Kuberski, Kuhlmann, Neuendorf, Comput. Phys. Commun. 288 (2023)
108750), which implements the Gamma method of Wolff (Comput. Phys. Commun. 156 (2004) 143) and
propagates errors through derived quantities exactly to first order (automatic differentiation),
so errors of ratios and of derived observables account for every correlation.

Every estimate also carries the effective number of samples for that observable,
``n_eff = Var_p(O) / error^2`` (``N / (2 tau_int)`` for a chain; about ``ESS x N`` for reweighting),
from which the cost per effective sample follows (:mod:`sesamo_bench.harness.measure`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

Derived = Callable[[dict[str, Any]], dict[str, Any]]

#: chains whose R-hat exceeds this have not mixed: the Gamma method, which sees only the
#: fluctuations within each chain, then underestimates the error (16 chains stuck in 16 modes give
#: error 0); :func:`from_chain` uses the standard error of the chain means instead (Gelman & Rubin,
#: Stat. Sci. 7 (1992) 457; 1.1 is their threshold)
RHAT_MAX = 1.1


@dataclass
class Estimate:
    """One observable's estimate.

    Attributes:
        value: the estimate.
        error: its standard error.
        tau_int: integrated autocorrelation time (0.5 for independent samples), ``None`` for
            derived observables.
        n_eff: effective number of samples, Var(O) / error^2 (``None`` for derived observables).
        rhat: Gelman-Rubin R-hat over the chains (``None`` for one chain, reweighting and derived
            observables); above :data:`RHAT_MAX` the error is the spread of the chain means.
    """

    value: float
    error: float
    tau_int: float | None = None
    n_eff: float | None = None
    rhat: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pe():
    with warnings.catch_warnings():  # pyerrors' fitting module imports a deprecated scipy module
        warnings.simplefilter("ignore", DeprecationWarning)
        import pyerrors as pe
    return pe


def _gamma(obs: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obs.gamma_method()


def _flatten(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Vector observables ``(N, k)`` become ``name[0]`` ... ``name[k-1]``."""
    out: dict[str, np.ndarray] = {}
    for name, v in values.items():
        v = np.asarray(v, dtype=np.float64)
        if v.ndim == 1:
            out[name] = v
        else:
            for j in range(v.shape[1]):
                out[f"{name}[{j}]"] = v[:, j]
    return out


def _group(flat: dict[str, Any], names: dict[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of :func:`_flatten` for the objects that stand for the observables (lists for vectors)."""
    out: dict[str, Any] = {}
    for name, v in names.items():
        v = np.asarray(v)
        out[name] = flat[name] if v.ndim == 1 else [flat[f"{name}[{j}]"] for j in range(v.shape[1])]
    return out


def _estimates(primary: dict[str, Any], flat_values: dict[str, np.ndarray], weights: np.ndarray | None,
               derived: Derived | None, values: dict[str, np.ndarray]) -> dict[str, Estimate]:
    out: dict[str, Estimate] = {}
    for name, obs in primary.items():
        _gamma(obs)
        x = flat_values[name]
        if weights is None:
            var = float(np.var(x))
        else:
            mean = float(np.sum(weights * x) / np.sum(weights))
            var = float(np.sum(weights * (x - mean) ** 2) / np.sum(weights))
        err = float(obs.dvalue)
        tau = next(iter(obs.e_tauint.values())) if obs.e_tauint else None
        out[name] = Estimate(float(obs.value), err, None if tau is None else float(tau),
                             var / err**2 if err > 0 else None)
    if derived is not None:
        with warnings.catch_warnings():  # e.g. the log of a noisy negative correlator: nan, not an error
            warnings.simplefilter("ignore", RuntimeWarning)
            derived_values = flatten(derived(_group(primary, values)))
        for name, obs in derived_values.items():
            if hasattr(obs, "gamma_method"):
                _gamma(obs)
                out[name] = Estimate(float(obs.value), float(obs.dvalue))
            else:
                out[name] = Estimate(float(obs), 0.0)
    return out


def flatten(d: dict[str, Any]) -> dict[str, Any]:
    """``{name: value or list}`` -> ``{name or name[j]: value}`` (the names estimates carry)."""
    out: dict[str, Any] = {}
    for name, v in d.items():
        if isinstance(v, (list, tuple)):
            for j, o in enumerate(v):
                out[f"{name}[{j}]"] = o
        else:
            out[name] = v
    return out


def reweighted(values: dict[str, np.ndarray], log_w: np.ndarray, *, derived: Derived | None = None,
               ensemble: str = "flow") -> dict[str, Estimate]:
    r"""Self-normalised importance-sampling estimates from independent draws of q.

    Arguments:
        values: per-sample primary observables, each ``(N,)`` or ``(N, k)``.
        log_w: ln p(x) - ln q(x) up to a constant, ``(N,)``.
        derived: maps the primary estimates (pyerrors objects; lists for vectors) to derived
            ones, with arithmetic only (``V * (m2 - m**2)``).
        ensemble: a name for the sample (pyerrors' ensemble label).

    Returns:
        ``{name: Estimate}`` for every primary (vector components as ``name[j]``) and derived
        observable.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=20000) * 2.0                    # q = N(0, 4)
        >>> log_w = -x**2 / 2 + x**2 / 8                        # p = N(0, 1), up to a constant
        >>> est = reweighted({"x2": x**2}, log_w)
        >>> abs(est["x2"].value - 1.0) < 4 * est["x2"].error
        True
    """
    pe = _pe()
    lw = np.asarray(log_w, dtype=np.float64)
    w = np.exp(lw - lw.max())
    flat = _flatten(values)
    den = pe.Obs([w], [ensemble])
    primary = {name: pe.Obs([w * x], [ensemble]) / den for name, x in flat.items()}
    return _estimates(primary, flat, w, derived, values)


def from_chain(values: dict[str, np.ndarray], *, derived: Derived | None = None, ensemble: str = "chain",
               chains: int = 1) -> dict[str, Estimate]:
    r"""Estimates from Markov chains, errors and tau_int by the Gamma method.

    Arguments:
        values: per-state primary observables, each ``(T * chains,)`` or ``(T * chains, k)``, rows
            in the order ``(T, chains)`` (step-major: state t of chain c is row ``t * chains + c``).
        derived: as in :func:`reweighted`.
        ensemble: pyerrors' ensemble label.
        chains: number of independent chains, treated as replicas of one ensemble.

    Example:
        >>> rng = np.random.default_rng(1)
        >>> x = np.zeros(20000)
        >>> for i in range(1, len(x)):
        ...     x[i] = 0.8 * x[i - 1] + rng.normal()             # AR(1): tau_int = 4.5
        >>> est = from_chain({"x": x})["x"]
        >>> 3.0 < est.tau_int < 6.5
        True
    """
    pe = _pe()
    flat = _flatten(values)
    names = [ensemble] if chains == 1 else [f"{ensemble}|r{c}" for c in range(chains)]
    primary = {name: pe.Obs([x.reshape(-1, chains)[:, c] for c in range(chains)], names)
               for name, x in flat.items()}
    out = _estimates(primary, flat, None, derived, values)
    for name, x in flat.items():
        _anticorrelated(out[name], x.reshape(-1, chains).T)
    if chains >= 2:
        for name, x in flat.items():
            _between_chains(out[name], x.reshape(-1, chains).T)
    return out


def rhat(chains: np.ndarray) -> float:
    r"""Gelman-Rubin R-hat of ``(C, T)`` chains: sqrt(((T - 1) / T W + B / T) / W), W the mean
    within-chain variance, B / T the variance of the chain means; inf where W = 0 < B.

    Example:
        >>> round(rhat(np.random.default_rng(0).normal(size=(8, 4000))), 2)
        1.0
        >>> rhat(np.array([[0.0, 0.0], [1.0, 1.0]]))
        inf
    """
    t = chains.shape[1]
    w = float(chains.var(axis=1, ddof=1).mean())
    b_over_t = float(chains.mean(axis=1).var(ddof=1))
    if w <= 0:
        return math.inf if b_over_t > 0 else 1.0
    return math.sqrt(((t - 1) / t * w + b_over_t) / w)


def _anticorrelated(est: Estimate, chains: np.ndarray) -> None:
    """pyerrors floors every partial sum of tau_int at 1/2, which overstates the error of an
    anticorrelated observable (and its cost per effective sample, through n_eff); where
    :func:`sesamo_bench.analysis.autocorr.gamma_method` (no floor) finds tau_int < 1/2, its error,
    tau_int and the n_eff they imply replace pyerrors'. Derived observables keep pyerrors' errors."""
    from .autocorr import gamma_method

    g = gamma_method(chains)
    if g.tau_int < 0.5 and g.err > 0:
        est.error, est.tau_int = g.err, g.tau_int
        est.n_eff = float(np.var(chains)) / g.err**2


def _between_chains(est: Estimate, chains: np.ndarray) -> None:
    """Record R-hat; where the chains have not mixed, take the error from the spread of their means,
    and the n_eff and tau_int that error implies (error^2 = 2 tau_int Var / N): within each chain
    the Gamma method may see fast decorrelation (tau_int 0.5 for chains stuck in one vacuum each),
    which says nothing about how long the chains take to reach each other."""
    est.rhat = rhat(chains)
    if est.rhat > RHAT_MAX:
        between = float(chains.mean(axis=1).std(ddof=1) / math.sqrt(chains.shape[0]))
        if between > est.error:
            var = float(np.var(chains))
            est.error = between
            est.n_eff = var / between**2 if between > 0 else None
            if var > 0:
                est.tau_int = chains.size * between**2 / (2 * var)

