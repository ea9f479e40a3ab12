"""Hubbard target (paper Eqs. 49-52): fermion matrix, action and the exact V = 2 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy import integrate

from sesamo_bench import plugins
from sesamo_bench.errors import ConfigError


def make(**params):
    return plugins.targets.create("hubbard", params)


def explicit_fermion_matrix(x: np.ndarray, sites: int, nt: int, kappa_t: float) -> np.ndarray:
    """Eq. (50) entry by entry: M_{(t',j'),(t,j)} = d_{j'j} d_{t't} - [e^h]_{j'j} e^{x_{jt}} B_{t'} d_{t',t+1},
    with B_0 = -1 (anti-periodic), B_{t'} = 1 otherwise, and x_{jt} = x[t * sites + j]."""
    adj = np.zeros((sites, sites))
    bonds = [(0, 1)] if sites == 2 else [(j, (j + 1) % sites) for j in range(sites)]
    for a, b in bonds:
        adj[a, b] = adj[b, a] = 1.0
    eh = scipy.linalg.expm(kappa_t * adj)
    n = sites * nt
    m = np.zeros((n, n))
    for tp in range(nt):
        for jp in range(sites):
            for t in range(nt):
                for j in range(sites):
                    val = 1.0 if (tp, jp) == (t, j) else 0.0
                    if tp == (t + 1) % nt:
                        bound = -1.0 if tp == 0 else 1.0
                        val -= eh[jp, j] * math.exp(x[t * sites + j]) * bound
                    m[tp * sites + jp, t * sites + j] = val
    return m


def explicit_action(x: np.ndarray, t) -> float:
    dp = np.linalg.det(explicit_fermion_matrix(x, t.sites, t.nt, t.kappa_tilde))
    dm = np.linalg.det(explicit_fermion_matrix(-x, t.sites, t.nt, t.kappa_tilde))
    assert dp * dm > 0
    return float((x**2).sum() / (2 * t.u_tilde) - math.log(dp * dm))


def closed_form_action(x: np.ndarray, u_t: float, kappa_t: float) -> np.ndarray:
    """-ln[4 h^2 exp(-(x1^2 + x2^2) / (2 U~))], h of paper Eq. (52) (V = 2, nt = 1)."""
    x1, x2 = x[..., 0], x[..., 1]
    h = np.cosh((x1 + x2) / 2) + np.cosh((x1 - x2) / 2) * np.cosh(kappa_t)
    return -(np.log(4 * h**2) - (x1**2 + x2**2) / (2 * u_t))


CASES = [
    {}, {"beta": 2.5, "kappa": 0.7}, {"nt": 2}, {"nt": 3, "beta": 4.0}, {"sites": 4, "nt": 2},
    {"sites": 3}, {"sites": 4, "nt": 3, "u": 4.0}, {"kappa": 0.0, "nt": 2},
]


@pytest.mark.parametrize("params", CASES)
def test_action_matches_explicit_determinant(params):
    t = make(**params)
    assert t.shape == (t.sites * t.nt,)
    x = np.random.default_rng(3).normal(size=(8, *t.shape)) * 3
    f = t.action(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(f, [explicit_action(c, t) for c in x], rtol=1e-11, atol=1e-10)
    m = t.fermion_matrix(torch.as_tensor(x[:2])).numpy()
    np.testing.assert_allclose(m[1], explicit_fermion_matrix(x[1], t.sites, t.nt, t.kappa_tilde), atol=1e-12)


@pytest.mark.parametrize("beta", [1.0, 2.0, 4.0])
def test_action_matches_closed_form(beta):
    t = make(beta=beta)
    x = np.random.default_rng(4).normal(size=(200, 2)) * 20
    f = t.action(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(f, closed_form_action(x, t.u_tilde, t.kappa_tilde), rtol=1e-12, atol=1e-10)
    assert t.u_tilde == 18.0 * beta and t.kappa_tilde == beta
    # nt = 1 fermion matrix of the reference notes: 1 + expm(kappa~ sigma_x) diag(e^x)
    sx = np.array([[0.0, 1.0], [1.0, 0.0]])
    ref = np.eye(2) + scipy.linalg.expm(beta * sx) @ np.diag(np.exp(x[0]))
    np.testing.assert_allclose(t.fermion_matrix(torch.as_tensor(x[:1]))[0].numpy(), ref, rtol=1e-11)


@pytest.mark.parametrize("params", [{"nt": 2}, {"nt": 3}, {"sites": 4, "nt": 2}, {"sites": 4, "nt": 4}])
def test_determinant_signs(params):
    """ln|det| is used: det M[x] det M[-x] > 0 (particle-hole, det M[-x] = e^{-sum x} det M[x])
    though a single det M[x] may be negative for nt > 1."""
    t = make(**params)
    x = torch.randn(2000, *t.shape, dtype=torch.float64) * 3
    m_plus, m_minus = t.fermion_matrix(x), t.fermion_matrix(-x)
    d_plus, d_minus = torch.linalg.det(m_plus), torch.linalg.det(m_minus)
    assert (d_plus * d_minus > 0).all()
    torch.testing.assert_close(d_minus, torch.exp(-x.sum(-1)) * d_plus, rtol=1e-8, atol=0)
    sign, _ = t.log_det_pair(x)
    assert (sign == 1).all()
    # det M = det(1 + A_{nt-1} ... A_0), A_t = e^h diag(e^{x_t})
    k = torch.linalg.matrix_exp(torch.as_tensor(t.kappa_tilde * _adj(t.sites)))
    prod = torch.eye(t.sites, dtype=torch.float64).expand(x.shape[0], -1, -1)
    for s in range(t.nt):
        prod = (k * torch.exp(x[:, s * t.sites:(s + 1) * t.sites])[:, None, :]) @ prod
    torch.testing.assert_close(torch.linalg.det(torch.eye(t.sites, dtype=torch.float64) + prod), d_plus,
                               rtol=1e-8, atol=1e-8)


def _adj(sites: int) -> np.ndarray:
    a = np.zeros((sites, sites))
    for j in range(sites if sites > 2 else 1):
        a[j, (j + 1) % sites] = a[(j + 1) % sites, j] = 1.0
    return a


def test_odd_ring_with_time_slices_is_refused_and_nt1_works():
    assert make(sites=3).action(torch.randn(4, 3, dtype=torch.float64)).shape == (4,)
    with pytest.raises(ConfigError, match="even"):
        make(sites=5, nt=2)


# -- exact references for V = 2, nt = 1 --------------------------------------------------------
QUADRANTS = [(1, 1), (-1, -1), (-1, 1), (1, -1)]  # z2xz2 element order u = 2 s + g


def quadrant_masses_dblquad(u_t: float, kappa_t: float) -> tuple[np.ndarray, float]:
    """Masses of the four quadrants by scipy dblquad of the closed form, rescaled by exp(-f_min).

    Box: the modes sit near |x_i| ~ U~ with width ~ sqrt(U~); the density falls like a Gaussian of
    variance U~ beyond them, so |x_i| <= U~ + 12 sqrt(U~) + 10 leaves < e^-72 of the mass out.
    """
    grid = np.linspace(-2 * u_t, 2 * u_t, 801)
    xx = np.stack(np.meshgrid(grid, grid), -1)
    shift = -closed_form_action(xx, u_t, kappa_t).min()  # ~ max of -f
    lim = u_t + 12 * math.sqrt(u_t) + 10
    out = []
    for s1, s2 in QUADRANTS:
        def fun(y: float, x: float, s1=s1, s2=s2) -> float:
            return math.exp(-closed_form_action(np.array([s1 * x, s2 * y]), u_t, kappa_t) - shift)

        out.append(integrate.dblquad(fun, 0, lim, 0, lim, epsabs=0, epsrel=1e-11)[0])
    return np.array(out), shift


def log_z_grid(t, nodes: int = 120) -> float:
    """ln Z by Gauss-Legendre on [-L, L]^2 of the torch action itself (split at 0 per axis)."""
    lim = t.u_tilde + 12 * math.sqrt(t.u_tilde) + 10
    gx, gw = np.polynomial.legendre.leggauss(nodes)
    x = np.concatenate([(gx - 1) * lim / 2, (gx + 1) * lim / 2])
    w = np.concatenate([gw, gw]) * lim / 2
    xx = torch.as_tensor(np.stack(np.meshgrid(x, x, indexing="ij"), -1).reshape(-1, 2))
    logp = -t.action(xx).numpy().reshape(len(x), len(x))
    top = logp.max()
    return float(math.log(w @ np.exp(logp - top) @ w) + top)


@pytest.mark.parametrize("beta", [1.0, 2.0, 4.0])
def test_references_against_independent_integrals(beta):
    t = make(beta=beta)
    u_t, c = t.u_tilde, math.cosh(t.kappa_tilde)
    # full plane in closed form: Z = 4 pi U~ [(1 + c^2)(1 + e^U~) + 4 c e^{U~/2}]
    log_z_closed = math.log(4 * math.pi * u_t) + u_t + math.log((1 + c * c) * (1 + math.exp(-u_t))
                                                                + 4 * c * math.exp(-u_t / 2))
    assert t.log_z() == pytest.approx(log_z_closed, abs=1e-11)
    assert t.log_z() == pytest.approx(log_z_grid(t), abs=1e-9)
    if beta != 2.0:  # dblquad is the slowest check; two temperatures suffice
        masses, shift = quadrant_masses_dblquad(u_t, t.kappa_tilde)
        assert t.log_z() == pytest.approx(math.log(masses.sum()) + shift, abs=1e-9)
        np.testing.assert_allclose(t.mode_probabilities(), masses / masses.sum(), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("beta", [1.0, 2.0, 3.0, 4.0])
def test_mode_probabilities_and_breaking_ratio(beta):
    t = make(beta=beta)
    p = t.mode_probabilities()
    assert len(p) == 4 and sum(p) == pytest.approx(1.0, abs=1e-14)
    assert p[0] == pytest.approx(p[1], rel=1e-12) and p[2] == pytest.approx(p[3], rel=1e-12)
    r = t.breaking_ratio()
    assert -1 < r < 1
    assert r == pytest.approx(1 - 2 * (p[2] + p[3]), abs=1e-14)  # = 1 - 2 e^b of paper Eq. (39)
    # equal-sign minus opposite-sign mass: (1 - cosh^2 kappa~) (G(1) - G(-1))^2 / 4 < 0
    assert r < 0


def test_reference_numbers():
    assert make().log_z() == pytest.approx(24.639821747133, abs=1e-9)
    assert make().breaking_ratio() == pytest.approx(-0.408366100974, abs=1e-9)
    assert make(beta=4.0).breaking_ratio() == pytest.approx(-0.997321690115, abs=1e-9)
    assert make(nt=2).log_z() is None and make(nt=2).breaking_ratio() is None
    assert make(sites=4).mode_probabilities() is None


def test_cells_are_ordered_as_z2xz2_elements():
    t = make()
    sym = plugins.symmetries.create(*t.symmetry()).bind(t.shape)
    reps = torch.tensor([[s1 * 18.0, s2 * 17.0] for s1, s2 in QUADRANTS], dtype=torch.float64)
    _, u = sym.canonicalize(reps)
    assert u.tolist() == [0, 1, 2, 3]
    assert t.symmetry() == ("z2xz2", {"broken": True, "flip": [0]})
    assert make(sites=4, nt=2).symmetry() == ("z2xz2", {"broken": True, "flip": [0, 4]})
    assert t.exact_symmetries() == [("z2", {"broken": False})]
    assert t.dtype is torch.float64
