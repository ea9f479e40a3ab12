"""Real and complex phi^4 targets (paper Eqs. 20/48, 53-57): actions and the breaking ratio."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from sesamo_bench.analysis import phi4_reference
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
    """The paper's approximation, Eq. (56), is implemented as the paper writes it."""
    t = plugins.targets.create("phi4-real", {"alpha": alpha})
    assert t.breaking_ratio_approximation() == pytest.approx(ratio_by_quadrature(alpha), abs=1e-10)


def test_breaking_ratio_reference_values_and_domain():
    r = [plugins.targets.create("phi4-real", {"alpha": a}).breaking_ratio() for a in (0.0, 0.001, 0.005, 0.01)]
    assert r[0] == 0.0  # sinh(0) = 0: exactly symmetric
    assert all(a > b for a, b in zip(r, r[1:])) and all(-1 < v <= 0 for v in r)
    t = plugins.targets.create("phi4-real", {"alpha": 0.005})
    err = t.breaking_ratio_error()
    assert 0 < err < 1e-4
    p = t.mode_probabilities()
    assert sum(p) == pytest.approx(1.0) and p[0] - p[1] == pytest.approx(r[2])
    # the reference differs from the paper's approximation by far more than its error
    assert abs(r[2] - t.breaking_ratio_approximation()) > 100 * err
    # outside the cached grid, or another setup: no reference
    assert plugins.targets.create("phi4-real", {"alpha": 1.0}).breaking_ratio() is None
    assert plugins.targets.create("phi4-real", {"shape": [8, 8]}).breaking_ratio() is None
    assert plugins.targets.create("phi4-real", {"kappa": 0.25}).breaking_ratio() is None
    assert plugins.targets.create("phi4-real", {"kappa": 0.25}).mode_probabilities() is None
    assert plugins.targets.create("phi4-real", {"kappa": 0.25}).breaking_ratio_error() is None


def test_cached_reference_records_how_it_was_made():
    rec = phi4_reference.load()
    assert rec["setup"] == {"shape": [16, 8], "kappa": 0.3, "lam": 0.022, "volume": 128}
    assert rec["provenance"]["command"].startswith("nice -n 10 sesamo-bench reference phi4-real")
    assert len(rec["alpha"]) == len(rec["R"]) == len(rec["R_err"]) and rec["alpha"][0] == 0.0
    assert all(e >= 0 for e in rec["R_err"])


def test_cached_reference_agrees_with_an_independent_short_hmc_run():
    """A fresh short HMC chain (another seed, direct at alpha = 0.005 with Metropolis-tested flips)
    must agree with the shipped curve within the combined errors."""
    from sesamo_bench.analysis import autocorr
    from sesamo_bench.analysis.hmc import HMC, global_flip

    alpha = 0.005
    t = plugins.targets.create("phi4-real", {"alpha": alpha})
    ref, ref_err = t.breaking_ratio(), t.breaking_ratio_error()
    g = torch.Generator().manual_seed(99)
    x0 = 2.0 + 0.3 * torch.randn(64, 16, 8, dtype=torch.float64, generator=g)
    run = HMC(t.action, eps=0.25, n_leapfrog=10, global_moves=[global_flip]).run(
        x0, n_samples=250, burn_in=100, keep=False, observe=lambda x: x.mean((1, 2)), generator=g)
    m = run.observables.T.numpy()
    # the conditional mean of sign(m) given |m| (Rao-Blackwell): far smaller error than sign(m) itself
    est = autocorr.gamma_method(-np.tanh(alpha * 128 * np.abs(m)))
    assert abs(est.mean - ref) < 5 * math.hypot(est.err, ref_err), (est, ref, ref_err)
    direct = autocorr.gamma_method(np.sign(m))
    assert abs(direct.mean - ref) < 5 * math.hypot(direct.err, ref_err), (direct, ref)
