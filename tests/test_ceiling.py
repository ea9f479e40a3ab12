"""The ESS ceiling of exactly symmetric models (``sesamo_bench.analysis.ceiling``) against quadrature.

Independent reference: a one-site "field" whose unbroken density p0 is a standard normal on R
(Z2) or on R^2 = C (U(1)), broken by alpha x (resp. alpha Re x). The three invariant models are
written out as densities and their ESS = 1 / int p^2 / q integrated numerically (and
ESS(p0) = e^{-alpha^2} in closed form); the module only sees exact draws of |M| from p0.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate

from sesamo_bench.analysis.ceiling import ceilings, unbroken_abs_m


def gauss(r):
    return np.exp(-r * r / 2.0)


L = 9.0  # the integration range: exp(-L^2 / 2) is far below every integrand that matters


def _ess(p, q):
    return 1.0 / integrate.quad(lambda x: p(x) ** 2 / q(x), -L, L, limit=400)[0]


def _check(got, exact):
    for key, value in exact.items():
        e = getattr(got, key)
        assert abs(e.mean - value) < 4 * e.err + 1e-4, (key, e, value)


def test_z2_ceiling_against_quadrature():
    """p0 = N(0, 1) on R, broken by alpha x: p = N(-alpha, 1); ESS(p0) = e^{-alpha^2} in closed form."""
    alpha = 1.0
    z0 = integrate.quad(gauss, -L, L)[0]
    z = integrate.quad(lambda x: gauss(x) * math.exp(-alpha * x), -L, L)[0]

    def p(x):
        return gauss(x) * math.exp(-alpha * x) / z

    def a(x):
        return math.sqrt(0.5 * (p(x) ** 2 + p(-x) ** 2))

    a_norm = integrate.quad(a, -L, L)[0]
    exact = {"ceiling": _ess(p, lambda x: a(x) / a_norm), "symmetrised": _ess(p, lambda x: 0.5 * (p(x) + p(-x))),
             "unbroken": _ess(p, lambda x: gauss(x) / z0)}
    assert exact["unbroken"] == pytest.approx(math.exp(-alpha ** 2), rel=1e-8)
    # the three models differ by more than the estimator's errors (~1e-3 here)
    assert exact["ceiling"] > exact["symmetrised"] + 0.005 and exact["symmetrised"] > exact["unbroken"] + 0.2
    draws = np.abs(np.random.default_rng(1).standard_normal(1_000_000))
    _check(ceilings(draws, alpha, "z2"), exact)


def test_u1_ceiling_against_quadrature():
    """p0 = N(0, 1_2) on R^2 = C, broken by alpha Re x; orbit averages by quadrature over the phase
    (the module uses Bessel functions)."""
    alpha = 1.0

    def dens(r, t):
        return gauss(r) * math.exp(-alpha * r * math.cos(t))

    def polar(f):
        return integrate.dblquad(lambda t, r: f(r, t) * r, 0, L, 0, 2 * math.pi, epsabs=1e-11)[0]

    z = polar(dens)

    def orbit(r, k):  # <p(g x)^k>_G
        return integrate.quad(lambda t: (dens(r, t) / z) ** k, 0, 2 * math.pi)[0] / (2 * math.pi)

    a_norm = polar(lambda r, t: math.sqrt(orbit(r, 2)))
    exact = {"ceiling": 1 / polar(lambda r, t: (dens(r, t) / z) ** 2 * a_norm / math.sqrt(orbit(r, 2))),
             "symmetrised": 1 / polar(lambda r, t: (dens(r, t) / z) ** 2 / orbit(r, 1)),
             "unbroken": 1 / polar(lambda r, t: (dens(r, t) / z) ** 2 * 2 * math.pi / gauss(r))}
    assert exact["unbroken"] == pytest.approx(math.exp(-alpha ** 2), rel=1e-6)
    assert exact["ceiling"] > exact["symmetrised"] + 0.005 and exact["symmetrised"] > exact["unbroken"] + 0.15
    draws = np.hypot(*np.random.default_rng(2).standard_normal((2, 1_000_000)))
    _check(ceilings(draws, alpha, "u1"), exact)


def test_unknown_group_is_refused():
    with pytest.raises(ValueError, match="Allowed: z2, u1"):
        ceilings(np.ones(4), 0.1, "zm")


@pytest.mark.parametrize("name", ["phi4-real", "phi4-complex"])
def test_hmc_path_on_a_small_lattice(name):
    from sesamo_bench import plugins
    from sesamo_bench.analysis.ceiling import ceiling_for

    tgt = plugins.targets.create(name, {"shape": [3, 2], "alpha": 0.3})
    m = unbroken_abs_m(tgt, chains=4, samples=50, burn_in=30, seed=3)
    assert m.shape == (4, 50) and (m >= 0).all()
    c = ceiling_for(tgt, chains=4, samples=50, burn_in=30, seed=3)
    assert 0 < c.unbroken.mean <= c.ceiling.mean <= 1 and 0 < c.symmetrised.mean <= c.ceiling.mean + 1e-12
