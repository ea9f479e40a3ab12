"""Real and complex phi^4 targets (paper Eqs. 20/48, 53-57): actions and the breaking ratio."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from sesamo_bench import plugins


def loop_action_real(x: np.ndarray, kappa: float, lam: float, alpha: float) -> float:
    """Eq. (53) for one configuration ``(L1, L2)``, site by site."""
    l1, l2 = x.shape
    f = 0.0
    for i in range(l1):
        for j in range(l2):
            v = x[i, j]
            f += -2 * kappa * (v * x[(i + 1) % l1, j] + v * x[i, (j + 1) % l2])
            f += (1 - 2 * lam) * v**2 + lam * v**4 + alpha * v
    return f


def loop_action_complex(x: np.ndarray, kappa: float, lam: float, alpha: float) -> float:
    """Eq. (20) for one configuration ``(L1, L2, 2)`` using Python complex numbers."""
    l1, l2, _ = x.shape
    z = [[complex(x[i, j, 0], x[i, j, 1]) for j in range(l2)] for i in range(l1)]
    f = 0.0
    for i in range(l1):
        for j in range(l2):
            v = z[i][j]
            hop = v.conjugate() * z[(i + 1) % l1][j] + v.conjugate() * z[i][(j + 1) % l2]
            f += -2 * kappa * hop.real + (1 - 2 * lam) * abs(v) ** 2 + lam * abs(v) ** 4 + alpha * v.real
    return f


SHAPES = [[3, 4], [1, 1], [2, 2], [1, 5], [4, 3]]
COUPLINGS = [(0.3, 0.022, 0.0), (0.3, 0.022, 0.01), (-0.2, 1.3, 0.7)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kappa,lam,alpha", COUPLINGS)
def test_real_action_matches_site_loop(shape, kappa, lam, alpha):
    t = plugins.targets.create("phi4-real", {"shape": shape, "kappa": kappa, "lam": lam, "alpha": alpha})
    assert t.shape == tuple(shape)
    x = np.random.default_rng(1).normal(size=(6, *shape)) * 2
    f = t.action(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(f, [loop_action_real(c, kappa, lam, alpha) for c in x], rtol=1e-12, atol=1e-11)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kappa,lam,alpha", COUPLINGS)
def test_complex_action_matches_site_loop(shape, kappa, lam, alpha):
    t = plugins.targets.create("phi4-complex", {"shape": shape, "kappa": kappa, "lam": lam, "alpha": alpha})
    assert t.shape == (*shape, 2)
    x = np.random.default_rng(2).normal(size=(6, *shape, 2)) * 2
    f = t.action(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(f, [loop_action_complex(c, kappa, lam, alpha) for c in x], rtol=1e-12, atol=1e-11)


def test_complex_action_on_real_fields_is_real_action():
    real = plugins.targets.create("phi4-real", {"shape": [3, 4], "alpha": 0.1})
    cplx = plugins.targets.create("phi4-complex", {"shape": [3, 4], "alpha": 0.1})
    x = torch.randn(8, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(cplx.action(torch.stack([x, torch.zeros_like(x)], -1)), real.action(x))


def test_symmetry_declarations():
    real = plugins.targets.create("phi4-real")
    assert real.shape == (16, 8) and real.params()["shape"] == [16, 8]
    assert real.symmetry() == ("z2", {"broken": False})
    assert plugins.targets.create("phi4-real", {"alpha": 0.005}).symmetry() == ("z2", {"broken": True})
    assert plugins.targets.create("phi4-real", {"alpha": 0.005}).exact_symmetries() == []
    cplx = plugins.targets.create("phi4-complex")
    assert cplx.shape == (8, 8, 2) and cplx.params()["shape"] == [8, 8]
    assert cplx.symmetry() == ("u1", {"broken": False})
    assert cplx.exact_symmetries() == [("u1", {"broken": False})]
    assert plugins.targets.create("phi4-complex", {"alpha": 0.005}).symmetry() == ("u1", {"broken": True})
    assert cplx.breaking_ratio() is None and cplx.log_z() is None


# -- breaking ratio, Eqs. (54)-(57) ------------------------------------------------------------
A, MU, SIGMA, V = 0.499, 2.126, 0.629, 128


def ratio_by_quadrature(alpha: float) -> float:
    """(N+ - N-)/(N+ + N-) with N+- the integrals of Eq. (54) over x > 0 and x < 0."""

    def dens(x: float) -> float:
        gauss = math.exp(-((x - MU) ** 2) / (2 * SIGMA**2)) + math.exp(-((x + MU) ** 2) / (2 * SIGMA**2))
        return A * gauss * math.exp(-alpha * V * x)

    lim = MU + 20 * SIGMA
    n_plus = integrate.quad(dens, 0, lim, epsabs=0, epsrel=1e-12, limit=200)[0]
    n_minus = integrate.quad(dens, -lim, 0, epsabs=0, epsrel=1e-12, limit=200)[0]
    return (n_plus - n_minus) / (n_plus + n_minus)


@pytest.mark.parametrize("alpha", [0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.03])
def test_breaking_ratio_eq56_matches_integral_of_eq54(alpha):
    t = plugins.targets.create("phi4-real", {"alpha": alpha})
    assert t.breaking_ratio() == pytest.approx(ratio_by_quadrature(alpha), abs=1e-10)


def test_breaking_ratio_values_and_domain():
    r = [plugins.targets.create("phi4-real", {"alpha": a}).breaking_ratio() for a in (0.0, 0.001, 0.005, 0.01)]
    assert r[0] == 0.0
    assert r == pytest.approx([0.0, -0.265618, -0.876575, -0.991395], abs=1e-6)
    assert all(a > b for a, b in zip(r, r[1:]))
    assert plugins.targets.create("phi4-real", {"alpha": 1.0}).breaking_ratio() == pytest.approx(-1.0)
    p = plugins.targets.create("phi4-real", {"alpha": 0.005}).mode_probabilities()
    assert sum(p) == pytest.approx(1.0) and p[0] - p[1] == pytest.approx(r[2])
    # the fit only describes the paper's setup
    assert plugins.targets.create("phi4-real", {"shape": [8, 8]}).breaking_ratio() is None
    assert plugins.targets.create("phi4-real", {"kappa": 0.25}).breaking_ratio() is None
    assert plugins.targets.create("phi4-real", {"kappa": 0.25}).mode_probabilities() is None
