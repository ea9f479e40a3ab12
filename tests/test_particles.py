"""Particle targets (dw4, lj13) and the particles symmetry: energies against independent
evaluations, invariances in position space, the virial identity on the shipped samples, the
symmetry's action against the Helmert formula H P H^T, its Jacobian against autograd and the
SESaMo density's normalisation in 3-D."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sesamo_bench import plugins
from sesamo_bench.core.metrics import wasserstein_1d
from tests.test_reliability2 import invoke
from sesamo_bench.core.particles import helmert, to_positions, to_reduced

from .helpers import bound, importance_integral, make_method


def _dw_numpy(x: np.ndarray, a=0.0, b=-4.0, c=0.9, d0=4.0) -> np.ndarray:
    """The DW energy by explicit loops over pairs (independent of the target's vectorised code)."""
    out = np.zeros(len(x))
    for k, conf in enumerate(x):
        for i, j in itertools.combinations(range(len(conf)), 2):
            s = np.linalg.norm(conf[i] - conf[j]) - d0
            out[k] += a * s + b * s**2 + c * s**4
    return out


def _lj_numpy(x: np.ndarray, k: float, osc: float = 1.0) -> np.ndarray:
    out = np.zeros(len(x))
    for m, conf in enumerate(x):
        for i in range(len(conf)):
            for j in range(len(conf)):
                if i < j or (k == 2 and i != j and i > j):
                    r = np.linalg.norm(conf[i] - conf[j])
                    out[m] += r**-12 - 2 * r**-6
        out[m] += 0.5 * osc * ((conf - conf.mean(0)) ** 2).sum()
    return out


# --- energies ------------------------------------------------------------------------------
def test_dw_pair_at_d0_is_zero_and_matches_loops():
    t = plugins.targets.create("dw4", {"n_particles": 2})
    x = torch.tensor([[[0.0, 0.0], [4.0, 0.0]], [[1.0, 1.0], [1.0, 3.0]]])
    e = t.energy(x)
    assert float(e[0]) == 0.0
    assert float(e[1]) == pytest.approx(-4 * 4 + 0.9 * 16)  # d = 2: s = -2
    t4 = plugins.targets.create("dw4")
    xs = np.random.default_rng(0).normal(size=(8, 4, 2)) * 3
    np.testing.assert_allclose(t4.energy(torch.tensor(xs)).numpy(), _dw_numpy(xs), rtol=1e-12)


@pytest.mark.parametrize("pair_count,k", [("ordered", 2), ("unordered", 1)])
def test_lj_pair_at_rm_is_minus_epsilon_times_pair_count(pair_count, k):
    t = plugins.targets.create("lj13", {"n_particles": 2, "oscillator": 0.0, "pair_count": pair_count, "epsilon": 1.5})
    x = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    assert float(t.energy(x)[0]) == pytest.approx(-1.5 * k)
    t13 = plugins.targets.create("lj13", {"pair_count": pair_count})
    xs = np.random.default_rng(1).normal(size=(4, 13, 3)) * 1.5
    np.testing.assert_allclose(t13.energy(torch.tensor(xs)).numpy(), _lj_numpy(xs, k), rtol=1e-10)


def test_lj_overlap_is_finite_in_float32():
    t = plugins.targets.create("lj13")
    y = torch.zeros(3, *t.shape, dtype=torch.float32, requires_grad=True)
    f = t.action(y)
    (g,) = torch.autograd.grad(f.sum(), y)
    assert bool(torch.isfinite(f).all()) and bool(torch.isfinite(g).all()) and float(f[0].detach()) > 1e20


def _random_orthogonal(d: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


@pytest.mark.parametrize("name,params", [("dw4", {}), ("lj13", {}), ("lj13", {"pair_count": "unordered"}),
                                         ("dw4", {"n_particles": 5, "dim": 3})])
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_energy_invariant_under_permutation_rotation_reflection_translation(name, params, seed):
    t = plugins.targets.create(name, params)
    n, d = t.particles
    gen = torch.Generator().manual_seed(seed)
    x = 1.5 * torch.randn(6, n, d, generator=gen, dtype=torch.float64)
    m = _random_orthogonal(d, gen)  # det +-1: rotations and reflections
    perm = torch.randperm(n, generator=gen)
    shift = 5 * torch.randn(1, 1, d, generator=gen, dtype=torch.float64)
    moved = x[:, perm] @ m.T + shift
    e = t.energy(x)
    torch.testing.assert_close(t.energy(moved), e, rtol=1e-10, atol=1e-9 * (1 + float(e.abs().max())))
    # and the action on reduced coordinates sees the same energy (centre of mass removed)
    torch.testing.assert_close(t.action(to_reduced(moved)), e / t.temperature, rtol=1e-10, atol=1e-8)


# --- the shipped reference samples ----------------------------------------------------------
def _virial(t, y):
    y = y.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(t.action(y).sum(), y)
    v = (y * g).sum(-1).detach()
    return float(v.mean()), float(v.std() / math.sqrt(len(v)))


def test_lj13_virial_on_reference_samples_selects_the_ordered_convention():
    """<y . grad S> = (N - 1) D = 36 for p ∝ exp(-S) on R^36; the samples follow k = 2, not k = 1."""
    t = plugins.targets.create("lj13")
    y = t.reduced(t.reference_positions())
    mean, err = _virial(t, y)
    assert abs(mean - 36) < 4 * err + 0.5, (mean, err)
    single, _ = _virial(plugins.targets.create("lj13", {"pair_count": "unordered"}), y)
    assert abs(single - 36) > 5, single


def test_reference_files_match_their_documented_statistics():
    dw = plugins.targets.create("dw4")
    e = dw.energy(dw.reference_positions()).numpy()
    assert e.mean() == pytest.approx(-22.47, abs=0.01) and e.std() == pytest.approx(1.90, abs=0.01)
    lj = plugins.targets.create("lj13")
    assert lj.energy(lj.reference_positions()).numpy().mean() == pytest.approx(-43.0, abs=0.1)
    assert plugins.targets.create("dw4", {"d0": 3.0}).reference_positions() is None  # other parameters: none


def test_wasserstein_matches_scipy_and_the_gaussian_shift():
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(2)
    a, b = rng.normal(size=3000), rng.normal(size=2000) * 1.3 + 0.5
    assert wasserstein_1d(a, b, p=1) == pytest.approx(wasserstein_distance(a, b), rel=1e-10)
    # W2 of N(0, 1) and N(mu, s^2) is sqrt(mu^2 + (1 - s)^2)
    big_a, big_b = rng.normal(size=200000), rng.normal(size=200000) * 1.3 + 0.5
    assert wasserstein_1d(big_a, big_b, p=2) == pytest.approx(math.sqrt(0.25 + 0.09), abs=0.01)


def test_reference_metrics_are_small_for_reference_samples_and_large_for_noise():
    t = plugins.targets.create("dw4")
    gen = torch.Generator().manual_seed(3)
    ref = t.reference_samples(5000, generator=gen)
    good = t.reference_metrics(ref)
    bad = t.reference_metrics(2.0 * torch.randn(5000, *t.shape, generator=gen, dtype=torch.float64))
    assert good["energy_w2"] < 0.2 and good["distance_w2"] < 0.05
    assert bad["energy_w2"] > 3 and bad["distance_w2"] > 0.3


def test_short_hmc_reference_agrees_with_the_shipped_samples():
    from sesamo_bench.analysis.particle_reference import mcmc_check

    rep = mcmc_check(plugins.targets.create("dw4"), chains=32, samples=60, burn_in=100, seed=1, max_thin=2)
    e, ref = rep["energy"], rep["reference"]
    assert abs(e["mean"] - ref["energy_mean"]) < 5 * math.hypot(e["err"], 3 * ref["energy_err_iid"]) + 0.05
    assert abs(rep["virial"]["mean"] - 6) < 5 * rep["virial"]["err"] + 0.2


def test_lj13_hmc_starts_from_relaxed_clouds_and_reaches_the_shipped_energy():
    """A random cloud of 13 particles has overlapping pairs (E up to ~1e10 and more); the chains
    start from it relaxed (no overlaps, E < 0), and a short HMC then agrees with the shipped LJ-13
    samples (an independent reference) and with the virial identity, 36 = (n - 1) D."""
    from sesamo_bench.analysis.particle_reference import mcmc_check

    target = plugins.targets.create("lj13")
    gen = torch.Generator().manual_seed(0)
    cloud = torch.randn(16, 13, 3, dtype=torch.float64, generator=gen)
    assert float(target.energy(cloud).max()) > 1e6  # what the chains would otherwise start from
    x0 = target.initial_positions(16, generator=torch.Generator().manual_seed(0))
    assert float(target.energy(x0).max()) < 0 and float(torch.cdist(x0, x0).add(torch.eye(13) * 9).min()) > 0.8
    rep = mcmc_check(target, chains=16, samples=60, burn_in=150, seed=1, max_thin=2)
    e, ref = rep["energy"], rep["reference"]
    assert rep["acceptance"] > 0.5 and rep["eps"] > 0.005
    assert abs(e["mean"] - ref["energy_mean"]) < 5 * math.hypot(e["err"], 3 * ref["energy_err_iid"]) + 0.3
    assert abs(rep["virial"]["mean"] - 36) < 5 * rep["virial"]["err"] + 0.5


def test_reference_check_enforces_the_rhat_rule(monkeypatch):
    """Chains recorded from their (2x spread) start without burn-in have not mixed: R-hat >= 1.01,
    the check says so, and the CLI exits 1 after printing it; with the rule on, the same chains
    record again further apart until R-hat < 1.01 (or say they did not get there)."""
    from sesamo_bench.analysis.particle_reference import mcmc_check

    t = plugins.targets.create("dw4")
    rep = mcmc_check(t, chains=16, samples=20, burn_in=0, seed=0, max_thin=2)
    assert rep["energy"]["rhat"] >= 1.01 and rep["converged"] is False and rep["burn_in"] == 0
    rep = mcmc_check(t, chains=8, samples=40, burn_in=0, seed=0, max_thin=32)
    assert rep["converged"] == (rep["energy"]["rhat"] < 1.01) and rep["thin"] > 2
    assert rep["burn_in"] == sum(40 * th for th in (2, 4, 8, 16, 32) if th < rep["thin"])
    from sesamo_bench.analysis import samples

    monkeypatch.setattr(samples, "RHAT_MAX", 0.0)  # chains that never pass: the command fails after its report
    res = invoke("reference", "dw4", "--chains", "8", "--samples", "4", "--burn-in", "0", "--seed", "0")
    assert res.exit_code == 1 and "NOT converged" in res.stdout
    [line] = res.stderr.strip().splitlines()
    assert line.startswith("error: reference dw4: the HMC chains did not converge") and "R-hat" in line


# --- the particles symmetry -----------------------------------------------------------------
@pytest.mark.parametrize("n,d", [(3, 2), (4, 2), (4, 3), (5, 3)])
def test_action_is_helmert_permutation_then_rotation(n, d):
    """T_(sigma, M) y = (H P H^T) y rotated by M, the formula of sesamo_bench.core.particles, with P
    the permutation matrix of x_i -> x_sigma(i)."""
    sym = bound("particles", {"n_particles": n, "dim": d}, ((n - 1) * d,))
    y = torch.randn(5, (n - 1) * d)
    u = sym.random_elements(5, y)
    h = helmert(n)
    for b in range(5):
        sigma = u[b, :n].round().long()
        m = u[b, n:].reshape(d, d)
        p = torch.zeros(n, n)
        p[torch.arange(n), sigma] = 1.0
        yb = y[b].reshape(n - 1, d)
        expect = (h @ p @ h.T @ yb) @ m.T
        torch.testing.assert_close(sym.act(y[b:b + 1], u[b:b + 1])[0], expect.reshape(-1))


@pytest.mark.parametrize("params,shape", [({"n_particles": 3, "dim": 2}, (4,)), ({"n_particles": 4, "dim": 3}, (9,)),
                                          ({"n_particles": 3, "dim": 3, "reflections": False}, (6,)),
                                          ({"n_particles": 5, "dim": 3}, (12,))])
def test_modulation_jacobian_matches_autograd(params, shape):
    """ln|det d x / d(f, M)| in exponential coordinates of SO(D) at M (density 1 there in the
    normalisation V_2 = 2 pi, V_3 = 8 pi^2) equals modulation_ladj."""
    sym = bound("particles", params, shape)
    fd, d = sym.flow_dim(shape[0]), sym.dim
    gen = torch.Generator().manual_seed(4)
    iu = torch.triu_indices(d, d, 1)
    for _ in range(3):
        f = torch.randn(1, fd, generator=gen)
        m0 = _random_orthogonal(d, gen)
        perm = torch.randperm(sym.n_particles, generator=gen).double()

        def fn(v, m0=m0, perm=perm):
            a = torch.zeros(d, d)
            a[iu[0], iu[1]] = v[fd:]
            m = m0 @ torch.linalg.matrix_exp(a - a.T)
            u = torch.cat([perm, m.reshape(-1)]).unsqueeze(0)
            return sym.act(sym.embed(v[:fd].unsqueeze(0), shape), u).reshape(-1)

        jac = torch.autograd.functional.jacobian(fn, torch.cat([f[0], torch.zeros(len(iu[0]))]))
        torch.testing.assert_close(torch.linalg.slogdet(jac)[1], sym.modulation_ladj(sym.embed(f, shape))[0])


def test_rotation_group_volume():
    from symmetries.particles import rotation_group_volume

    assert rotation_group_volume(1) == 1.0
    assert rotation_group_volume(2) == pytest.approx(2 * math.pi)
    assert rotation_group_volume(3) == pytest.approx(8 * math.pi**2)


def test_sesamo_density_integrates_to_one_2d():
    """The 2-D polar Jacobian |a| and the S_3 x O(2) preimage sum (24 terms), by importance
    sampling from a broad Gaussian (E_r[q / r] = 1)."""
    sym = bound("particles", {"n_particles": 3, "dim": 2}, (4,))
    m = make_method("sesamo", sym, (4,), seed=2)
    est, err = importance_integral(m, (4,), n=400_000, sigma=2.0, generator=torch.Generator().manual_seed(5))
    assert abs(est - 1.0) < 5 * err + 3e-3, (est, err)


def test_sesamo_density_integrates_to_one_3d():
    """The 3-D frame Jacobian a^2 |b_2| and V_3 = 8 pi^2. In 3-D q ~ 1 / a^2 near a = 0, so
    E_r[q^2 / r^2] diverges for a Gaussian r and the forward estimate has no error bar; the reverse
    one, E_q[r / q] = int r = 1 with draws of the model's sampler (which uses neither the Jacobian
    nor the preimages) and a Gaussian r narrower than q, has a finite variance."""
    shape = (6,)
    sym = bound("particles", {"n_particles": 3, "dim": 3, "reflections": False, "permutations": False}, shape)
    m = make_method("sesamo", sym, shape, seed=2)
    n, sigma = 200_000, 0.8
    torch.manual_seed(6)
    with torch.no_grad():
        x = m.sample(n).x
        log_r = -0.5 * (x**2).sum(-1) / sigma**2 - 0.5 * 6 * math.log(2 * math.pi * sigma**2)
        w = torch.exp(log_r - m.log_prob(x))
    est, err = float(w.mean()), float(w.std() / math.sqrt(n))
    assert err < 0.02 and abs(est - 1.0) < 5 * err, (est, err)


def test_sesamo_density_is_invariant_and_single_permutation_is_a_lower_bound():
    shape = (9,)
    full = bound("particles", {"n_particles": 4, "dim": 3}, shape)
    one = bound("particles", {"n_particles": 4, "dim": 3, "enumerate_max": 1}, shape)
    m = make_method("sesamo", full, shape, seed=3)
    with torch.no_grad():
        x = m.sample(256).x
        lq = m.log_prob(x)
        torch.testing.assert_close(m.log_prob(full.act(x, full.random_elements(256, x))), lq, atol=1e-8, rtol=1e-8)
        m.symmetry = one
        lq1 = m.log_prob(x)
    assert bool((lq1 <= lq + 1e-9).all()) and bool((lq1 < lq - 1e-3).any())


def test_canonicalization_refuses_the_continuous_group_in_one_line():
    from sesamo_bench.errors import IncompatibleError

    with pytest.raises(IncompatibleError, match="finite symmetry group, got the continuous symmetry 'particles'"):
        make_method("canonicalization", bound("particles"), (6,))


def test_symmetry_parameters_are_checked():
    from sesamo_bench.errors import ConfigError, IncompatibleError

    with pytest.raises(ConfigError, match="'broken' must be false"):
        plugins.symmetries.create("particles", {"broken": True})
    with pytest.raises(ConfigError, match="n_particles >= 4"):
        plugins.symmetries.create("particles", {"n_particles": 3, "dim": 3})
    with pytest.raises(IncompatibleError, match=r"shape \(6,\), got shape \(4,\)"):
        plugins.symmetries.create("particles", {}).bind((4,))


def test_positions_roundtrip():
    x = torch.randn(3, 5, 3)
    torch.testing.assert_close(to_positions(to_reduced(x), 5, 3), x - x.mean(1, keepdim=True))


@pytest.mark.parametrize("reflections", [True, False])
def test_aligned_distances_against_brute_force(reflections):
    """aligned_sq_distances (its 2-D closed form) against every permutation with procrustes_sq."""
    from sesamo_bench.core.particles import aligned_sq_distances, procrustes_sq

    g = torch.Generator().manual_seed(7)
    a, b = (torch.randn(k, 4, 2, generator=g, dtype=torch.float64) for k in (6, 5))
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    got = aligned_sq_distances(a, b, reflections=reflections)
    for i in range(6):
        for j in range(5):
            want = min(float(procrustes_sq(a[i], b[j][list(p)], reflections=reflections))
                       for p in itertools.permutations(range(4)))
            assert math.isclose(float(got[i, j]), want, rel_tol=1e-10, abs_tol=1e-10)


def test_coordinate_w2_is_recorded_for_dw4_and_sees_what_pair_distances_do_not():
    """The literature's x-W2 of DW-4 samples: invariant under relabelling and rotating the samples,
    small for reference draws, large for a broad Gaussian; None for LJ-13 (13! permutations)."""
    t = plugins.targets.create("dw4")
    gen = torch.Generator().manual_seed(3)
    ref = t.reference_samples(2000, generator=gen)
    good = t.reference_metrics(ref)["coordinate_w2"]
    x = t.positions(ref)[:, [3, 1, 0, 2]] @ torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    moved = t.reference_metrics(t.reduced(x))["coordinate_w2"]
    bad = t.reference_metrics(2.0 * torch.randn(2000, *t.shape, generator=gen, dtype=torch.float64))["coordinate_w2"]
    assert math.isclose(good, moved, rel_tol=1e-9) and good < 0.5 < 1.5 < bad
    lj = plugins.targets.create("lj13")
    assert lj.reference_metrics(lj.reference_samples(50, generator=gen))["coordinate_w2"] is None
