"""``polar-zm``: exact Z_M equivariance, an invariant normalised density, the group order from the
symmetry, and a safe origin (the generic contract tests run in ``tests/test_architectures.py``).

Independent references: explicit rotation matrices and a Cartesian quadrature of exp(ln q).
"""

from __future__ import annotations

import math

import pytest
import torch

from sesamo_bench.core.architecture import Domain, FlowSpec
from sesamo_bench.core.methods import METHODS
from sesamo_bench.errors import IncompatibleError

from .helpers import bound, randomise


def _rot(phi: float) -> torch.Tensor:
    """``x @ _rot(phi)`` rotates the rows of ``x`` by ``phi``."""
    c, s = math.cos(phi), math.sin(phi)
    return torch.tensor([[c, s], [-s, c]], dtype=torch.float64)


def _model(m: int, *, scale: float, seed: int = 0, params: dict | None = None):
    sym = bound("zm", {"m": m}, (2,))
    model = METHODS["equivariant"]((2,), sym, flow=FlowSpec("polar-zm", dict(params or {}))).double()
    randomise(model.flow, scale=scale, seed=seed)
    return model


@pytest.mark.parametrize("m", [2, 3, 8])
@pytest.mark.parametrize("seed", [0, 1])
def test_flow_commutes_with_the_rotations_of_z_m_and_no_others(m, seed):
    model = _model(m, scale=0.3, seed=seed)
    flow = model.flow
    z = 1.5 * torch.randn(64, 2, generator=torch.Generator().manual_seed(seed))
    x, ladj = flow(z)
    for k in range(1, m):
        r = _rot(2 * math.pi * k / m)
        xr, ladj_r = flow(z @ r)
        torch.testing.assert_close(xr, x @ r, atol=1e-9, rtol=1e-9)  # g(R z) = R g(z)
        torch.testing.assert_close(ladj_r, ladj, atol=1e-9, rtol=1e-9)
        # the spline inverse (zuko's closed form) is accurate to ~1e-7 in float64
        torch.testing.assert_close(flow.inverse(x @ r)[0], z @ r, atol=1e-6, rtol=1e-6)
    # a generic flow does not commute with a rotation outside Z_M (here by half the angle)
    assert not torch.allclose(flow(z @ _rot(math.pi / m))[0], x @ _rot(math.pi / m), atol=1e-3)


def test_log_q_is_invariant_under_z8_and_not_constant():
    model = _model(8, scale=0.3, seed=4)
    x = 4.0 * torch.randn(256, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        lq = model.log_prob(x)
        for k in range(1, 8):
            torch.testing.assert_close(model.log_prob(x @ _rot(2 * math.pi * k / 8)), lq, atol=1e-9, rtol=1e-9)
        assert float((model.log_prob(x @ _rot(0.2)) - lq).abs().max()) > 1e-3
        s = model.sample(256)
        torch.testing.assert_close(model.log_prob(s.x), s.log_q, atol=1e-6, rtol=1e-6)  # spline inverse


def _quadrature(model, *, s_range: tuple[float, float], n_s: int, n_theta: int) -> float:
    """The integral of exp(ln q) over R^2 in polar coordinates with s = ln r (dx = e^{2s} ds dtheta),
    midpoint rule on s in ``s_range`` and theta in [0, 2 pi): heavy or narrow randomised flows
    stay inside the grid, which a Cartesian box would cut."""
    lo, hi = s_range
    hs, ht = (hi - lo) / n_s, 2 * math.pi / n_theta
    s = lo + hs * (torch.arange(n_s, dtype=torch.float64) + 0.5)
    theta = ht * (torch.arange(n_theta, dtype=torch.float64) + 0.5)
    total = 0.0
    with torch.no_grad():
        for rows in s.split(100):
            ss, tt = torch.meshgrid(rows, theta, indexing="ij")
            x = torch.stack([torch.exp(ss) * torch.cos(tt), torch.exp(ss) * torch.sin(tt)], -1).reshape(-1, 2)
            total += float((torch.exp(model.log_prob(x)) * torch.exp(2 * ss).reshape(-1)).sum()) * hs * ht
    return total


@pytest.mark.parametrize("scale,seed", [(0.0, 0), (0.1, 1), (0.1, 2)])
def test_density_integrates_to_one_by_quadrature(scale, seed):
    """Untrained (the prior itself) and randomly perturbed flows: q integrates to 1 on R^2."""
    model = _model(8, scale=scale, seed=seed)
    with torch.no_grad():  # the model's samples lie well inside the grid (|s| < 20)
        s = torch.log(torch.linalg.vector_norm(model.sample(200_000).x, dim=1))
    assert float(s.min()) > -18 and float(s.max()) < 18
    assert _quadrature(model, s_range=(-25.0, 25.0), n_s=2000, n_theta=720) == pytest.approx(1.0, abs=2e-3)


def test_order_comes_from_the_symmetry_and_a_mismatch_is_refused():
    assert _model(3, scale=0.0).flow.inner.order == 3
    assert _model(3, scale=0.0, params={"order": 6}).flow.inner.order == 6  # Z_6 contains Z_3
    with pytest.raises(IncompatibleError, match=r"order=4 does not commute with the rotations by 2 pi/3"):
        _model(3, scale=0.0, params={"order": 4})
    # a method that does not rely on equivariance keeps the architecture's own order
    canon = METHODS["canonicalization"]((2,), bound("zm", {"m": 3}, (2,)), flow=FlowSpec("polar-zm", {}))
    assert canon.flow.inner.order == 8


def test_accepts_only_one_flat_2_vector():
    cls = FlowSpec("polar-zm").cls
    assert cls.accepts(Domain((2,))) is None
    assert "acts on R^2" in cls.accepts(Domain((3,)))
    assert cls.accepts(Domain((2,), lattice=1)) is not None
    with pytest.raises(IncompatibleError, match="architecture 'polar-zm'"):
        FlowSpec("polar-zm").build(Domain((4, 2), lattice=2))


def test_origin_is_safe():
    model = _model(8, scale=0.3, seed=6)
    zero = torch.zeros(3, 2)
    with torch.no_grad():
        x, ladj = model.flow(zero)
        z, ladj_inv = model.flow.inverse(zero)
        assert torch.equal(x, zero) and torch.equal(z, zero)
        assert torch.isfinite(ladj).all() and torch.isfinite(ladj_inv).all()
        assert torch.isfinite(model.log_prob(zero)).all()
        tiny = torch.tensor([[1e-300, 0.0], [0.0, -1e-12], [3e-8, 4e-8]])
        assert torch.isfinite(model.flow(tiny)[1]).all() and torch.isfinite(model.log_prob(tiny)).all()
