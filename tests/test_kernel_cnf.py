"""``kernel-cnf``: E(D) x S_N equivariance, the closed-form divergence, the log-determinant.

Independent references: explicit permutations and orthogonal matrices of the positions, autograd
traces and Jacobians (float64), a tight adaptive solver against the default fixed-step one.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sesamo_bench.core.architecture import Domain, FlowSpec
from sesamo_bench.errors import ConfigError, IncompatibleError
from sesamo_bench.core.particles import to_positions, to_reduced

from .helpers import randomise

#: (n, d): DW-4's 4 particles in 2-D, 3 and 5 particles in 3-D
SYSTEMS = [(4, 2), (3, 3), (5, 3)]


def _domain(n: int, d: int) -> Domain:
    return Domain(((n - 1) * d,), particles=(n, d))


def _flow(n: int, d: int, *, scale: float = 0.3, seed: int = 0, name: str = "kernel-cnf", **params):
    f = FlowSpec(name, params).build(_domain(n, d)).double()
    return randomise(f, scale=scale, seed=seed)


def _group_element(n: int, d: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random permutation of the particles and a random orthogonal matrix (a reflection half the time)."""
    perm = torch.randperm(n, generator=gen)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return perm, q * torch.sign(torch.diagonal(r))


def _act(y: torch.Tensor, n: int, d: int, perm: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """T y in reduced coordinates: (T x)_i = M x_{perm(i)} on the mean-free positions."""
    x = to_positions(y, n, d)
    return to_reduced(x[:, perm] @ m.T)


@pytest.mark.parametrize("n,d", SYSTEMS)
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_flow_commutes_with_permutations_rotations_and_reflections(n, d, seed):
    gen = torch.Generator().manual_seed(seed)
    flow = _flow(n, d, seed=seed)
    perm, m = _group_element(n, d, gen)
    z = torch.randn(8, (n - 1) * d, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        gz, ladj = flow(z)
        gtz, ladj_t = flow(_act(z, n, d, perm, m))
        # every solver stage is equivariant, so the discrete map is too (up to rounding)
        torch.testing.assert_close(gtz, _act(gz, n, d, perm, m), atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(ladj_t, ladj, atol=1e-10, rtol=1e-10)
        # density of the flow from N(0, 1): invariant (the action is orthogonal on y)
        x = 1.5 * z
        zi, li = flow.inverse(x)
        zt, lt = flow.inverse(_act(x, n, d, perm, m))
        logq = -0.5 * (zi**2).sum(-1) + li
        torch.testing.assert_close(-0.5 * (zt**2).sum(-1) + lt, logq, atol=1e-10, rtol=1e-10)
        assert float(logq.std()) > 1e-3  # not a constant


def test_equivariance_check_can_fail():
    """The same check on realnvp (no declared equivariance) fails: the test is not vacuous."""
    gen = torch.Generator().manual_seed(0)
    flow = _flow(4, 2, name="realnvp", scale=0.3)
    perm, m = _group_element(4, 2, gen)
    z = torch.randn(8, 6, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        assert not torch.allclose(flow(_act(z, 4, 2, perm, m))[0], _act(flow(z)[0], 4, 2, perm, m), atol=1e-6)


def test_centre_of_mass_stays_fixed_and_velocity_is_equivariant():
    flow = _flow(5, 3, seed=2)
    dyn = flow.dynamics
    x = to_positions(torch.randn(6, 12, dtype=torch.float64), 5, 3)
    v, _ = dyn(torch.tensor(0.3, dtype=torch.float64), x)
    torch.testing.assert_close(v.sum(1), torch.zeros(6, 3, dtype=torch.float64), atol=1e-12, rtol=0)
    # v does not depend on the centre of mass: shifting x leaves it unchanged
    v2, _ = dyn(torch.tensor(0.3, dtype=torch.float64), x + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(v2, v, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("n,d", SYSTEMS)
def test_closed_form_divergence_is_the_autograd_trace(n, d):
    """div v = sum_{i != j} [D phi + r phi'] against the trace of autograd's Jacobian of v on
    R^{n d} and on the reduced coordinates (u(y) = H v(H^T y)): the three agree."""
    flow = _flow(n, d, scale=0.5, seed=n)
    dyn = flow.dynamics
    y = torch.randn(4, (n - 1) * d, dtype=torch.float64)
    x = to_positions(y, n, d)
    for t in (0.0, 0.4, 1.0):
        tt = torch.tensor(t, dtype=torch.float64)
        _, div = dyn(tt, x)
        for b in range(4):
            full = torch.autograd.functional.jacobian(lambda p, tt=tt: dyn(tt, p.reshape(1, n, d))[0].reshape(-1),
                                                      x[b].reshape(-1))
            reduced = torch.autograd.functional.jacobian(
                lambda q, tt=tt: to_reduced(dyn(tt, to_positions(q.unsqueeze(0), n, d))[0])[0], y[b])
            torch.testing.assert_close(div[b], torch.trace(full), atol=1e-10, rtol=1e-10)
            torch.testing.assert_close(div[b], torch.trace(reduced), atol=1e-10, rtol=1e-10)
        assert float(div.detach().abs().max()) > 1e-2


@pytest.mark.parametrize("n,d", SYSTEMS)
def test_ladj_is_the_log_determinant_of_the_map(n, d):
    """With a tight adaptive solver the integrated divergence is ln|det| of the flow map (autograd
    Jacobian on the reduced coordinates) and the inverse undoes the forward map."""
    flow = _flow(n, d, scale=0.3, seed=7, solver="dopri5", rtol=1e-11, atol=1e-12)
    z = torch.randn(3, (n - 1) * d, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    x, ladj = flow(z)
    assert float(ladj.detach().abs().max()) > 0.1  # a non-trivial map
    for b in range(3):
        jac = torch.autograd.functional.jacobian(lambda q: flow(q.unsqueeze(0))[0][0], z[b])
        torch.testing.assert_close(torch.linalg.slogdet(jac)[1], ladj[b], atol=1e-7, rtol=0)
    zb, ladj_inv = flow.inverse(x)
    torch.testing.assert_close(zb, z, atol=1e-8, rtol=0)
    torch.testing.assert_close(ladj_inv, -ladj, atol=1e-8, rtol=0)


def test_default_solver_error_against_a_tight_one():
    """The fixed-step rk4 against dopri5 at tolerance 1e-11 on a field that moves the particles by
    O(1): fourth-order convergence in the step, and the default's ladj error (what ESS and ln Z
    carry, module docstring) small against the spread of ladj."""
    tight = _flow(4, 2, scale=0.3, seed=1, solver="dopri5", rtol=1e-11, atol=1e-12)
    z = torch.randn(256, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        xt, ladj_t = tight(z)
    assert float((xt - z).abs().max()) > 0.3
    err = {}
    for steps in (8, 16):
        fixed = FlowSpec("kernel-cnf", {"steps": steps}).build(_domain(4, 2)).double()
        fixed.load_state_dict(tight.state_dict())
        with torch.no_grad():
            x, ladj = fixed(z)
        err[steps] = float((ladj - ladj_t).pow(2).mean().sqrt()), float((x - xt).abs().max())
    assert err[8][0] > 8 * err[16][0] and err[8][1] > 8 * err[16][1]  # O(h^4): 16 in the limit
    default = FlowSpec("kernel-cnf", {}).build(_domain(4, 2)).steps
    assert err[default][0] < 0.02 * float(ladj_t.std())


def test_fresh_flow_is_the_identity_and_bad_options_are_refused():
    flow = FlowSpec("kernel-cnf", {}).build(_domain(4, 2))
    z = torch.randn(5, 6)
    x, ladj = flow(z)
    assert float((x - z).abs().max()) < 1e-6 and float(ladj.abs().max()) == 0.0
    with pytest.raises(ConfigError, match="'solver' must be one of rk4, midpoint, euler, dopri5"):
        FlowSpec("kernel-cnf", {"solver": "rk45"}).build(_domain(4, 2))
    with pytest.raises(ConfigError, match="'steps' must be an integer >= 1, got 0"):
        FlowSpec("kernel-cnf", {"steps": 0}).build(_domain(4, 2))
    with pytest.raises(IncompatibleError, match="architecture 'kernel-cnf' acts on particles domains"):
        FlowSpec("kernel-cnf", {}).build(Domain((6,)))


def test_float32_flow_keeps_the_dtype():
    flow = FlowSpec("kernel-cnf", {}).build(_domain(3, 3)).float()
    randomise(flow, scale=0.1)
    z = torch.randn(4, 6, dtype=torch.float32)
    x, ladj = flow(z)
    assert x.dtype == ladj.dtype == torch.float32 and math.isfinite(float(ladj.sum()))
