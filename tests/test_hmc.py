"""HMC (sesamo_bench.analysis.hmc) and the Gamma method (sesamo_bench.analysis.autocorr) against exact results."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from sesamo_bench.analysis import autocorr
from sesamo_bench import plugins
from sesamo_bench.analysis.hmc import HMC, always_flip, autograd_force, global_flip, leapfrog, random_phase
from sesamo_bench.analysis.phi4_reference import reweighted_ratio


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- a free field with an exact covariance: S = x^T A x / 2 on a ring of 6 sites ---------------
N_SITES, MASS2 = 6, 0.5
A = torch.diag(torch.full((N_SITES,), 2.0 + MASS2, dtype=torch.float64))
for j in range(N_SITES):
    A[j, (j + 1) % N_SITES] = A[(j + 1) % N_SITES, j] = -1.0
COV = torch.linalg.inv(A)


def free_action(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.einsum("ni,ij,nj->n", x, A.to(x), x)


def free_samples(n: int, g: torch.Generator) -> torch.Tensor:
    chol = torch.linalg.cholesky(COV)
    return torch.randn(n, N_SITES, dtype=torch.float64, generator=g) @ chol.T


def test_leapfrog_is_reversible():
    t = plugins.targets.create("phi4-real", {"shape": [3, 4]})
    g = gen(1)
    x = torch.randn(8, 3, 4, dtype=torch.float64, generator=g)
    p = torch.randn(8, 3, 4, dtype=torch.float64, generator=g)
    force = autograd_force(t.action)
    x1, p1, _ = leapfrog(x, p, force, 0.1, 25)
    x2, p2, _ = leapfrog(x1, -p1, force, 0.1, 25)
    assert torch.allclose(x2, x, atol=1e-11) and torch.allclose(-p2, p, atol=1e-11)
    assert not torch.allclose(x1, x, atol=1e-3)


def test_leapfrog_energy_error_is_second_order():
    t = plugins.targets.create("phi4-real", {"shape": [3, 4]})
    g = gen(2)
    x = 1.5 + 0.3 * torch.randn(16, 3, 4, dtype=torch.float64, generator=g)
    p = torch.randn(16, 3, 4, dtype=torch.float64, generator=g)
    force = autograd_force(t.action)

    def dh(eps: float) -> float:
        n = int(round(0.8 / eps))  # fixed trajectory length 0.8
        xn, pn, _ = leapfrog(x, p, force, eps, n)
        h0 = t.action(x) + 0.5 * (p * p).sum((1, 2))
        h1 = t.action(xn) + 0.5 * (pn * pn).sum((1, 2))
        return float((h1 - h0).abs().max())

    e = [dh(eps) for eps in (0.04, 0.02, 0.01)]
    assert e[2] < 1e-3
    for a, b in zip(e, e[1:]):
        assert 3.0 < a / b < 5.0  # O(eps^2)


def test_mean_exp_minus_dh_is_one_in_equilibrium():
    """<exp(-dH)> = 1 for states drawn exactly from p (free field), whatever the step size."""
    g = gen(3)
    x = free_samples(20000, g)
    hmc = HMC(free_action, eps=0.45, n_leapfrog=6)
    _, _, acc, dh = hmc.trajectory(x, free_action(x), 0.45, g)
    w = torch.exp(-dh)
    assert 0.2 < float(acc.double().mean()) < 0.95  # a step size where dH is not small
    assert abs(float(w.mean()) - 1) < 5 * float(w.std()) / math.sqrt(w.shape[0])


def test_hmc_reproduces_the_free_field_covariance():
    hmc = HMC(free_action, eps=0.3, n_leapfrog=8, target_accept=0.8, grad=lambda x: x @ A)
    run = hmc.run(torch.zeros(32, N_SITES, dtype=torch.float64), n_samples=400, burn_in=200, generator=gen(4))
    assert 0.65 < run.acceptance < 0.95
    assert abs(run.mean_exp_minus_dh - 1) < 0.05
    s = run.samples.numpy()  # (N, C, V)
    for i, j in ((0, 0), (0, 1), (0, 3)):
        est = autocorr.gamma_method((s[:, :, i] * s[:, :, j]).T)
        assert abs(est.mean - float(COV[i, j])) < 5 * est.err, (i, j, est, float(COV[i, j]))


def double_well(alpha: float):
    """S(x) = 2 (x^2 - 4)^2 + alpha x: barrier 32, HMC alone never crosses it."""
    return lambda x: (2 * (x[:, 0] ** 2 - 4) ** 2 + alpha * x[:, 0])


def well_grad(alpha: float):
    return lambda x: 8 * x * (x * x - 4) + alpha


def test_global_flip_crosses_the_barrier_and_stays_exact_when_broken():
    # exact Z2: the flip is always accepted and balances the wells
    x0 = torch.full((64, 1), 2.0, dtype=torch.float64)
    stuck = HMC(double_well(0.0), eps=0.05, n_leapfrog=10, grad=well_grad(0.0)).run(
        x0, n_samples=200, burn_in=50, generator=gen(5))
    assert bool((stuck.samples > 0).all())
    run = HMC(double_well(0.0), eps=0.05, n_leapfrog=10, global_moves=[global_flip], grad=well_grad(0.0)).run(
        x0, n_samples=200, burn_in=50, generator=gen(5))
    assert run.global_acceptance == 1.0
    assert abs(float((run.samples > 0).double().mean()) - 0.5) < 0.05
    # broken Z2: flips as Metropolis proposals give the right mass ratio (quadrature)
    alpha = 0.6
    f = lambda x: math.exp(-(2 * (x * x - 4) ** 2 + alpha * x))  # noqa: E731
    plus = integrate.quad(f, 0, 10, epsabs=0, epsrel=1e-12)[0]
    minus = integrate.quad(f, -10, 0, epsabs=0, epsrel=1e-12)[0]
    exact = (plus - minus) / (plus + minus)
    for move in (global_flip, always_flip):
        run = HMC(double_well(alpha), eps=0.05, n_leapfrog=10, global_moves=[move], grad=well_grad(alpha)).run(
            x0, n_samples=1500, burn_in=100, generator=gen(6))
        est = autocorr.gamma_method(torch.sign(run.samples[..., 0]).T.numpy())
        assert 0 < run.global_acceptance < 1
        assert abs(est.mean - exact) < 5 * est.err, (move.__name__, est, exact)


def test_random_phase_is_a_rotation():
    x = torch.randn(5, 2, 3, 2, dtype=torch.float64)
    y = random_phase(x, gen(7))
    assert torch.allclose((y * y).sum(-1), (x * x).sum(-1))
    t = plugins.targets.create("phi4-complex", {"shape": [2, 3]})
    assert torch.allclose(t.action(y), t.action(x))


def test_reweighting_over_alpha_matches_quadrature_on_two_sites():
    """R(alpha) = -<sinh(alpha V |m|)>/<cosh(alpha V |m|)> from alpha = 0 HMC samples against a 2-D
    Gauss-Legendre quadrature of exp(-S) of real phi^4 on a 1 x 2 lattice (broken phase: kappa 0.3,
    lam 0.1), in the coordinates u = (x1 + x2) / sqrt 2 (split at u = 0) and v = (x1 - x2) / sqrt 2."""
    params = {"shape": [1, 2], "kappa": 0.3, "lam": 0.1}
    t0 = plugins.targets.create("phi4-real", params)
    hmc = HMC(t0.action, eps=0.3, n_leapfrog=8, global_moves=[global_flip])
    x0 = torch.randn(64, 1, 2, dtype=torch.float64, generator=gen(8))
    run = hmc.run(x0, n_samples=600, burn_in=100, keep=False, observe=lambda x: x.mean((1, 2)).abs(),
                  generator=gen(9))
    m_abs = run.observables.T.numpy()
    nodes, weights = np.polynomial.legendre.leggauss(160)
    lim = 8.0
    u, wu = 0.5 * lim * (nodes + 1), 0.5 * lim * weights  # [0, lim]
    v, wv = lim * nodes, lim * weights  # [-lim, lim]
    uu, vv = np.meshgrid(u, v, indexing="ij")
    w2 = np.outer(wu, wv)
    for alpha in (0.05, 0.2, 0.5):
        ta = plugins.targets.create("phi4-real", {**params, "alpha": alpha})
        mass = []
        for sign in (1.0, -1.0):
            x1, x2 = (sign * uu + vv) / math.sqrt(2), (sign * uu - vv) / math.sqrt(2)
            x = torch.as_tensor(np.stack([x1.ravel(), x2.ravel()], -1)).reshape(-1, 1, 2)
            mass.append(float((w2.ravel() * np.exp(-ta.action(x).numpy())).sum()))
        exact = (mass[0] - mass[1]) / (mass[0] + mass[1])
        est = reweighted_ratio(m_abs, alpha, 2)
        assert 0.02 < abs(exact) < 0.99
        assert abs(est.mean - exact) < 5 * est.err, (alpha, est, exact)


# -- Gamma method ---------------------------------------------------------------------------------
def ar1(rho: float, chains: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(chains, n))
    x = np.empty_like(e)
    x[:, 0] = e[:, 0] / math.sqrt(1 - rho * rho)  # stationary start
    for i in range(1, n):
        x[:, i] = rho * x[:, i - 1] + e[:, i]
    return x


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9, -0.4])
def test_gamma_method_on_ar1(rho):
    """AR(1): tau_int = (1 + rho) / (2 (1 - rho)) (below 1/2 for rho < 0), var = 1 / (1 - rho^2)."""
    x = ar1(rho, 8, 20000, seed=int(10 * rho) + 20)
    est = autocorr.gamma_method(x)
    tau = (1 + rho) / (2 * (1 - rho))
    assert abs(est.tau_int - tau) < 5 * est.tau_err + 0.02, (est, tau)
    err = math.sqrt(2 * tau / (1 - rho * rho) / x.size)
    assert est.err == pytest.approx(err, rel=0.15)
    assert abs(est.mean) < 5 * est.err


def test_gamma_method_oscillating_autocorrelation():
    """x_t = -0.5 x_{t-1} + y_t with y a slow AR(1): Gamma(1) < 0 but a positive tail; the error must
    still match the spread of independent repetitions."""
    rng = np.random.default_rng(3)
    means, errs = [], []
    for _ in range(40):
        y = ar1(0.95, 1, 4000, seed=int(rng.integers(1 << 30)))[0] * 0.3
        e = rng.normal(size=4000)
        x = np.empty(4000)
        x[0] = e[0]
        for i in range(1, 4000):
            x[i] = -0.7 * x[i - 1] + e[i]
        z = x + y
        est = autocorr.gamma_method(z)
        means.append(est.mean)
        errs.append(est.err)
    assert np.mean(errs) == pytest.approx(np.std(means, ddof=1), rel=0.3)


def test_ratio_error_matches_repetitions():
    rng = np.random.default_rng(4)
    vals, errs = [], []
    for _ in range(60):
        a = ar1(0.6, 2, 2000, seed=int(rng.integers(1 << 30))) + 3.0
        b = np.exp(0.3 * a)
        est = autocorr.ratio(-np.sinh(0.3 * a), b)
        vals.append(est.mean)
        errs.append(est.err)
    assert np.mean(errs) == pytest.approx(np.std(vals, ddof=1), rel=0.3)


def test_gamma_method_input_validation():
    with pytest.raises(ValueError, match="expected data of shape"):
        autocorr.gamma_method(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="must be an integer"):
        HMC(free_action, n_leapfrog=0)
    assert autocorr.gamma_method(np.ones(10)).err == 0.0
