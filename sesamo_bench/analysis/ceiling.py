r"""The ESS an exactly symmetric model can reach on a target whose symmetry is broken.

A model whose density is invariant under the group G (an equivariant flow with an invariant
prior, Koehler et al. 2020) cannot represent a target p = p0 e^{-B} / Z whose breaking term B is
not invariant (p0 invariant). How far it falls short follows from the breaking term alone. With
the normalised ESS = 1 / E_p[p / q] and orbit averages <.>_G (uniform over a finite G, Haar
measure for U(1)), over all invariant densities q:

- **ceiling** (the best invariant q): minimising E_p[p / q] = int p^2 / q orbit by orbit gives
  q* proportional to A = sqrt(<p(g x)^2>_G), and ESS* = 1 / (int A)^2;
- **symmetrised target** p-bar = <p(g x)>_G: ESS = 1 / int p^2 / p-bar;
- **unbroken theory** p0 (what reverse KL converges to among invariant q: for invariant q,
  E_q[ln p] = E_q[<ln p(g x)>_G] and <B(g x)>_G = 0 for a linear breaking term):
  ESS = 1 / (E_p[e^{B}] E_p[e^{-B}]).

Written as averages over the unbroken ensemble p0 (alpha = 0) with c_k(x) = <e^{-k B(g x)}>_G,
which depends on |M| only for the two lattice theories (B = alpha M with M = sum_j x_j for real
phi^4 under Z2; B = alpha Re M, M = sum_j x_j complex, for complex phi^4 under U(1)):

    ESS*       = <c_1>_0^2 / <sqrt(c_2)>_0^2,
    ESS(p-bar) = <c_1>_0 / <c_2 / c_1>_0,
    ESS(p0)    = <c_1>_0^2 / <c_2>_0,

with c_k = cosh(k alpha |M|) for Z2 and I_0(k alpha |M|) for U(1). By Cauchy-Schwarz
ESS* >= both others.

**SESaMo's family has a ceiling too**, only much higher. Its density factorises in orbit
coordinates (y the canonical representative, u the group element; :class:`~sesamo_bench.methods.sesamo.SESaMo`)
as q = q_c(y) p_S(u), with a modulation p_S (Bernoulli(e^b) for Z2, theta = 2 pi h(v) for U(1))
that does not depend on y. The target's conditional p(u | y) ~ e^{-alpha |M(y)| beta(u)}
(beta = +-1 for Z2, cos theta for U(1)) does, through |M|, which fluctuates from state to state, so
ESS 1 is not in the family unless |M| is fixed. Minimising E_p[p / q] over q_c orbit by orbit
(as above) gives q_c ~ sqrt(A_f) with A_f(|M|) = <e^{-2 alpha |M| beta(g)} / f(g)>_G, f = p_S / p_Haar, and

    ESS(SESaMo) = <c_1>_0^2 / min_f <sqrt(A_f)>_0^2,    <f>_G = 1,

a convex problem in f (sqrt(<c / f>) is a negative power mean of f), solved numerically
(:func:`sesamo_ceiling`: L-BFGS over ln f; U(1) on a trapezoid grid of theta, f even in theta).
f = 1 gives ESS*. With 64 x 2000 states at alpha = 0: 0.99879 (real phi^4 16 x 8, alpha = 0.005),
0.99961 (alpha = 0.01), 0.99863 (complex phi^4 8 x 8, alpha = 0.005), 0.99618 (alpha = 0.01). This
is the supremum over every flow q_c and every p_S; an 8-bin spline h and reverse-KL training (whose
optimum in the family is not the ESS optimum) can only stay below it.

The averages come from the suite's HMC of the alpha = 0 theory with the exact global move, their
errors from the Gamma method of the linearised estimators.

Run::

    sesamo-bench ceiling --target phi4-real --set alpha=0.005
    python -m sesamo_bench.analysis.ceiling phi4-complex 0.005
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from scipy import special

from . import autocorr
from .hmc import HMC, global_flip, random_phase

#: the symmetries whose breaking term alpha * (linear in M) has a closed-form orbit average
GROUPS = ("z2", "u1")


def orbit_means(abs_m: np.ndarray, k_alpha: float, group: str) -> np.ndarray:
    r"""c(x) = <e^{-k alpha B(g x)}>_G per state from |M|: cosh(k alpha |M|) (Z2), I_0(k alpha |M|) (U(1))."""
    if group == "z2":
        return np.cosh(k_alpha * abs_m)
    if group == "u1":
        return special.i0(k_alpha * abs_m)
    raise ValueError(f"ceiling: no closed-form orbit average for group {group!r}. Allowed: {', '.join(GROUPS)}")


@dataclass(frozen=True)
class Ceiling:
    """The ESS values of :mod:`this module <sesamo_bench.analysis.ceiling>` with their errors."""

    alpha: float
    group: str
    ceiling: autocorr.Estimate
    symmetrised: autocorr.Estimate
    unbroken: autocorr.Estimate
    abs_m: autocorr.Estimate
    #: the best ESS of SESaMo's family (a y-independent modulation, :func:`sesamo_ceiling`)
    sesamo: autocorr.Estimate | None = None

    def as_dict(self) -> dict[str, Any]:
        def pair(e: autocorr.Estimate) -> dict[str, float]:
            return {"value": e.mean, "err": e.err}
        out = {"alpha": self.alpha, "group": self.group, "ceiling": pair(self.ceiling),
               "symmetrised": pair(self.symmetrised), "unbroken": pair(self.unbroken), "abs_M": pair(self.abs_m)}
        if self.sesamo is not None:
            out["sesamo"] = pair(self.sesamo)
        return out


def _derived(value: float, series: list[np.ndarray], grads: list[float]) -> autocorr.Estimate:
    """f(<a_1>, ..., <a_n>) with its Gamma-method error from the linearised series sum_i df/da_i a_i."""
    proj = sum(g * s for g, s in zip(grads, series))
    e = autocorr.gamma_method(proj)
    return autocorr.Estimate(float(value), e.err, e.tau_int, e.tau_err, e.window, e.n)


def ceilings(abs_m: np.ndarray, alpha: float, group: str) -> Ceiling:
    r"""The ESS ceiling of invariant models from |M| of an unbroken (alpha = 0) ensemble.

    Arguments:
        abs_m: |M| (the magnitude of the summed field, not per site) per state, ``(N,)`` or
            ``(chains, N)`` (a chain's states in order, for the autocorrelation).
        alpha: the breaking parameter.
        group: ``z2`` or ``u1``.

    Example (|M| fixed: every invariant model is the same on each orbit):
        >>> import math
        >>> c = ceilings(np.full((2, 50), 3.0), 0.2, "z2")
        >>> round(c.ceiling.mean, 6) == round(c.unbroken.mean, 6) == round(math.cosh(0.6) ** 2 / math.cosh(1.2), 6)
        True
    """
    a = np.asarray(abs_m, dtype=np.float64)
    c1, c2 = orbit_means(a, alpha, group), orbit_means(a, 2 * alpha, group)
    s2, r = np.sqrt(c2), c2 / c1
    m1, ms, mr, m2 = c1.mean(), s2.mean(), r.mean(), c2.mean()
    best = _derived(m1 ** 2 / ms ** 2, [c1, s2], [2 * m1 / ms ** 2, -2 * m1 ** 2 / ms ** 3])
    sym = _derived(m1 / mr, [c1, r], [1 / mr, -m1 / mr ** 2])
    unb = _derived(m1 ** 2 / m2, [c1, c2], [2 * m1 / m2, -m1 ** 2 / m2 ** 2])
    return Ceiling(alpha, group, best, sym, unb, autocorr.gamma_method(a), sesamo_ceiling(a, alpha, group))


def _group_nodes(group: str, half: int = 32) -> tuple[np.ndarray, np.ndarray]:
    r"""beta(g) and the weights of <.>_G: Z2 exactly (beta = +-1); U(1) the periodic trapezoid rule with
    2 ``half`` nodes, folded onto theta in [0, pi] (beta = cos theta; the optimal f is even in theta)."""
    if group == "z2":
        return np.array([1.0, -1.0]), np.array([0.5, 0.5])
    if group == "u1":
        w = np.full(half + 1, 1.0 / half)
        w[[0, -1]] = 0.5 / half
        return np.cos(np.pi * np.arange(half + 1) / half), w
    raise ValueError(f"ceiling: no closed-form orbit average for group {group!r}. Allowed: {', '.join(GROUPS)}")


def optimal_modulation(abs_m: np.ndarray, alpha: float, group: str, *, grid: int = 2049
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""The modulation f = p_S / p_Haar that minimises <sqrt(A_f)>_0 (see the module docstring).

    Returns ``(beta, weights, f)`` on the nodes of :func:`_group_nodes` (Z2: f of the identity and of
    the flip, f / 2 their probabilities). The objective is the mean over the states of a smooth
    function of alpha |M|; it is minimised on a histogram of alpha |M| with linear (cloud-in-cell)
    weights on ``grid`` points, so any number of states costs the same.
    """
    from scipy import optimize

    beta, w = _group_nodes(group)
    a = alpha * np.asarray(abs_m, dtype=np.float64).ravel()
    lo, hi = float(a.min()), float(a.max())
    if hi - lo < 1e-12 * max(hi, 1.0):
        pts, cnt = np.array([lo]), np.array([1.0])
    else:
        pts = np.linspace(lo, hi, grid)
        t = (a - lo) / (pts[1] - pts[0])
        j = np.minimum(t.astype(np.int64), grid - 2)
        frac = t - j
        cnt = (np.bincount(j, 1 - frac, grid) + np.bincount(j + 1, frac, grid)) / a.size
    e = np.exp(-2 * pts[:, None] * beta[None, :])

    def objective(g: np.ndarray) -> tuple[float, np.ndarray]:
        f = np.exp(g - g.max())
        f /= w @ f
        s = np.sqrt(e @ (w / f))
        dfk = -0.5 * (cnt / s) @ e * w / f ** 2  # d<sqrt(A_f)> / df_k
        return float(cnt @ s), dfk * f - w * f * (dfk @ f)  # through f = e^g / <e^g>_G

    res = optimize.minimize(objective, np.zeros(len(w)), jac=True, method="L-BFGS-B",
                            options={"maxiter": 5000, "gtol": 1e-13, "ftol": 1e-15})
    f = np.exp(res.x - res.x.max())
    return beta, w, f / (w @ f)


def sesamo_ceiling(abs_m: np.ndarray, alpha: float, group: str) -> autocorr.Estimate:
    r"""ESS(SESaMo) = <c_1>_0^2 / <sqrt(A_f)>_0^2 at the optimal modulation (:func:`optimal_modulation`),
    with the Gamma-method error of the linearised estimator (f held at its optimum: the first-order
    change of the minimum with f vanishes there).

    Example (|M| fixed: the modulation can match the conditional p(u | y) exactly):
        >>> round(sesamo_ceiling(np.full((2, 50), 3.0), 0.2, "z2").mean, 8)
        1.0
    """
    a = np.asarray(abs_m, dtype=np.float64)
    beta, w, f = optimal_modulation(a, alpha, group)
    c1 = orbit_means(a, alpha, group)
    flat = alpha * a.reshape(-1)
    s = np.concatenate([np.sqrt(np.exp(-2 * flat[i:i + 65536, None] * beta[None, :]) @ (w / f))
                        for i in range(0, flat.size, 65536)]).reshape(a.shape)
    m1, ms = c1.mean(), s.mean()
    return _derived(m1 ** 2 / ms ** 2, [c1, s], [2 * m1 / ms ** 2, -2 * m1 ** 2 / ms ** 3])


def _abs_m_real(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(-1).abs()


def _abs_m_complex(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x.flatten(1, -2).sum(1), dim=-1)  # |sum_j (re_j, im_j)|


#: target name -> (group, |M| of states (C, *shape) -> (C,), global move, HMC step size)
TARGETS: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor], Any, float]] = {
    "phi4-real": ("z2", _abs_m_real, global_flip, 0.25),
    "phi4-complex": ("u1", _abs_m_complex, random_phase, 0.2),
}


def unbroken_abs_m(target: Any, *, chains: int = 64, samples: int = 2000, burn_in: int = 300, thin: int = 2,
                   seed: int = 20261202) -> np.ndarray:
    """|M| per state ``(chains, samples)`` of ``target`` at alpha = 0, by HMC with the exact global move."""
    if target.name not in TARGETS:
        raise ValueError(f"ceiling: target {target.name!r} has no closed-form ceiling. Allowed: {', '.join(TARGETS)}")
    _, abs_m, move, eps = TARGETS[target.name]
    unbroken = type(target)(**{**target.params(), "alpha": 0.0})
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(chains, *unbroken.shape, dtype=torch.float64, generator=gen)
    hmc = HMC(unbroken.action, eps=eps, n_leapfrog=10, global_moves=[move])
    run = hmc.run(x0, n_samples=samples, burn_in=burn_in, thin=thin, generator=gen,
                  observe=abs_m, keep=False)
    return run.observables.double().numpy().T  # (chains, samples)


def ceiling_for(target: Any, **kw: Any) -> Ceiling:
    """:func:`ceilings` of ``target`` (its ``alpha``) from a fresh HMC of its unbroken theory."""
    alpha = float(target.params()["alpha"])
    return ceilings(unbroken_abs_m(target, **kw), alpha, TARGETS[target.name][0])


def main(argv: list[str] | None = None) -> None:
    from .. import plugins

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("target", choices=sorted(TARGETS))
    ap.add_argument("alpha", type=float)
    ap.add_argument("--chains", type=int, default=64)
    ap.add_argument("--samples", type=int, default=2000)
    a = ap.parse_args(argv)
    c = ceiling_for(plugins.targets.create(a.target, {"alpha": a.alpha}), chains=a.chains, samples=a.samples)
    for k in ("ceiling", "symmetrised", "unbroken", "sesamo"):
        e = getattr(c, k)
        print(f"{k:12s} {e.mean:.5f} +- {e.err:.5f}")
    print(f"|M|          {c.abs_m.mean:.3f} +- {c.abs_m.err:.3f} (tau_int {c.abs_m.tau_int:.2f})")


if __name__ == "__main__":
    main()
