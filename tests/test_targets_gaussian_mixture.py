"""Gaussian mixture target (paper Eq. 19): action, ln Z and mode weights against quadrature."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.special import logsumexp

from sesamo_bench import plugins


def make(**params):
    return plugins.targets.create("gaussian-mixture", params)


def reference_action(x: np.ndarray, n: int, radius: float, b: float) -> np.ndarray:
    """-ln[1/(2 pi N) sum_k exp(-|x - mu_k|^2 / 2)] + b (x1 + x2), written out with numpy."""
    out = []
    for p in x:
        logs = []
        for k in range(n):
            mu = (radius * math.cos(2 * math.pi * k / n), radius * math.sin(2 * math.pi * k / n))
            logs.append(-((p[0] - mu[0]) ** 2 + (p[1] - mu[1]) ** 2) / 2)
        out.append(-(logsumexp(logs) - math.log(2 * math.pi * n)) + b * (p[0] + p[1]))
    return np.array(out)


@pytest.mark.parametrize("params", [{}, {"n": 3, "radius": 2.0}, {"b": 0.7}, {"n": 5, "b": -0.2}])
def test_action_matches_reference(params):
    t = make(**params)
    x = np.random.default_rng(0).normal(size=(50, 2)) * 10
    f = t.action(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(f, reference_action(x, t.n, t.radius, t.b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("params", [{}, {"b": 0.7}])
def test_action_gradient_against_finite_differences(params):
    """The action's backward (the max it subtracts carries no gradient) against central differences."""
    t = make(**params)
    x = torch.tensor([[12.0, 0.1], [6.0, 6.0], [0.3, -0.2], [-30.0, 4.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(t.action, (x,))


def _log_z_quadrature(t) -> float:
    """ln of int exp(-f) dx over R^2 by scipy dblquad in polar coordinates (numpy integrand of
    Eq. 19 plus the tilt, rescaled by its value at the peak)."""
    mu1, mu2 = t.means[:, 0], t.means[:, 1]
    shift = max(-reference_action(t.means, t.n, t.radius, t.b))  # ~ max of -f (at a mode)

    def integrand(r: float, th: float) -> float:
        x, y = r * math.cos(th), r * math.sin(th)
        s = np.exp(-0.5 * ((x - mu1) ** 2 + (y - mu2) ** 2)).sum() / (2 * math.pi * t.n)
        return r * s * math.exp(-t.b * (x + y) - shift)

    rmax = t.radius + 12 + 3 * abs(t.b)  # 12 standard deviations beyond the shifted modes
    val, _ = integrate.dblquad(integrand, 0, 2 * math.pi, 0, rmax, epsabs=0, epsrel=1e-10)
    return math.log(val) + shift


@pytest.mark.parametrize("params", [{}, {"b": 0.3}, {"n": 4, "radius": 6.0, "b": -0.5}])
def test_log_z_against_quadrature(params):
    t = make(**params)
    if t.b == 0:
        assert t.log_z() == 0.0
    # the closed form b^2 + logsumexp_k(-b (mu_k1 + mu_k2)) - ln N
    tilt = -t.b * t.means.sum(-1)
    assert t.log_z() == pytest.approx(t.b**2 + logsumexp(tilt) - math.log(t.n), abs=1e-14)
    assert t.log_z() == pytest.approx(_log_z_quadrature(t), abs=1e-7)


def _wedge_masses(t, nodes: int = 120) -> np.ndarray:
    """Mass of exp(-f)/Z in each zm cell (wedge |angle - 2 pi k / N| <= pi / N), Gauss-Legendre in
    polar coordinates."""
    rx, rw = np.polynomial.legendre.leggauss(nodes)
    rmax = t.radius + 14
    r, wr = (rx + 1) * rmax / 2, rw * rmax / 2
    tx, tw = np.polynomial.legendre.leggauss(nodes)
    out = []
    for k in range(t.n):
        c = 2 * math.pi * k / t.n
        th, wt = c + tx * math.pi / t.n, tw * math.pi / t.n
        rr, tt = np.meshgrid(r, th, indexing="ij")
        x = torch.as_tensor(np.stack([rr * np.cos(tt), rr * np.sin(tt)], -1).reshape(-1, 2))
        dens = np.exp(-t.action(x).numpy() - t.log_z()).reshape(rr.shape) * rr
        out.append(float(wr @ dens @ wt))
    return np.array(out)


@pytest.mark.parametrize("b", [0.0, 0.1, 0.5, 1.0])
def test_mode_probabilities_are_zm_cell_masses(b):
    t = make(b=b)
    p = np.array(t.mode_probabilities())
    assert p.shape == (8,) and p.sum() == pytest.approx(1, abs=1e-14)
    masses = _wedge_masses(t)
    assert masses.sum() == pytest.approx(1, abs=1e-9)
    np.testing.assert_allclose(p, masses, atol=1e-6)
    if b == 0:
        np.testing.assert_allclose(p, 1 / 8, atol=1e-15)


def test_modes_are_ordered_as_zm_elements():
    t = make(n=8)
    sym = plugins.symmetries.create(*t.symmetry()).bind(t.shape)
    mu = torch.as_tensor(t.means)
    _, u = sym.canonicalize(mu)
    assert u.tolist() == list(range(8))
    assert sym.penalty_fn(mu[:1]).item() < 0  # mode 0 inside the canonical wedge
    # element k rotates mode 0 onto mode k
    rotated = sym.act(mu[:1].expand(8, 2), torch.arange(8))
    torch.testing.assert_close(rotated, mu, atol=1e-12, rtol=0)


def test_symmetry_declarations():
    assert make().symmetry() == ("zm", {"m": 8, "broken": False})
    assert make(b=0.2, n=6).symmetry() == ("zm", {"m": 6, "broken": True})
    assert make(b=0.2).exact_symmetries() == []
    assert make().breaking_ratio() is None
