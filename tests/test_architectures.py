"""The architecture contract, over every registered architecture (a dropped-in plugin file is
tested here without a test edit), and every method combined with every architecture it accepts.

Independent references: autograd Jacobians (float64), importance-sampling integrals of q against
a broad Gaussian, explicit lattice shifts and phase rotations.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sesamo_bench import plugins
from sesamo_bench.core.architecture import Domain, FlowSpec, schema
from sesamo_bench.errors import IncompatibleError, InputOutsideDomain
from sesamo_bench.core.methods import METHODS

from .helpers import bound, importance_integral, randomise

ARCHS = plugins.architectures.names()
#: small domains; each architecture is tested on those it accepts
DOMAINS = [Domain((3,)), Domain((2,)), Domain((4, 2), lattice=2), Domain((4, 2, 2), lattice=2),
           Domain((2, 2, 2), lattice=2), Domain((4,), lattice=1), Domain((6,), particles=(4, 2)),
           Domain((6,), particles=(3, 3))]


def _fits(name: str) -> list[Domain]:
    cls = plugins.architectures.get(name)
    return [d for d in DOMAINS if cls.accepts(d) is None]


PAIRS = [(a, d) for a in ARCHS for d in _fits(a)]
IDS = [f"{a}-{'x'.join(map(str, d.shape))}{'L' if d.lattice else ''}"
       f"{'P{}x{}'.format(*d.particles) if d.particles else ''}" for a, d in PAIRS]


def _flow(name: str, domain: Domain, *, scale: float = 0.05, seed: int = 0):
    f = FlowSpec(name, {}).build(domain).double()
    return randomise(f, scale=scale, seed=seed)


def test_every_architecture_fits_some_test_domain():
    assert {"realnvp", "spline", "lattice-affine", "lattice-spline", "lattice-u1"} <= set(ARCHS)
    for name in ARCHS:
        assert _fits(name), f"architecture {name} accepts none of the test domains"


@pytest.mark.parametrize("name,domain", PAIRS, ids=IDS)
@settings(max_examples=2)
@given(seed=st.integers(0, 2**16))
def test_inverse_and_ladj_match_autograd(name, domain, seed):
    flow = _flow(name, domain, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(5, domain.dim, generator=gen, dtype=torch.float64)
    x, ladj = flow(z)
    assert x.shape == z.shape and ladj.shape == (5,) and x.dtype == ladj.dtype == torch.float64
    z2, ladj_inv = flow.inverse(x)
    tol = type(flow).tolerance  # a discretised (ODE) flow declares its solver error
    torch.testing.assert_close(z2, z, atol=tol or 1e-9, rtol=0 if tol else 1e-9)
    torch.testing.assert_close(ladj_inv, -ladj, atol=tol or 1e-9, rtol=0 if tol else 1e-9)
    for i in range(2):
        jac = torch.autograd.functional.jacobian(lambda t: flow(t.unsqueeze(0))[0][0], z[i])
        torch.testing.assert_close(torch.linalg.slogdet(jac)[1], ladj[i], atol=tol or 1e-8, rtol=0 if tol else 1e-8)


@pytest.mark.parametrize("name,domain", PAIRS, ids=IDS)
def test_fresh_flow_is_identity_where_declared(name, domain):
    flow = FlowSpec(name, {}).build(domain).double()
    if not type(flow).near_identity:
        pytest.skip(f"{name} does not declare near_identity")
    z = torch.randn(7, domain.dim)
    x, ladj = flow(z)
    torch.testing.assert_close(x, z, atol=1e-12, rtol=0)
    torch.testing.assert_close(ladj, torch.zeros(7), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name,domain", PAIRS, ids=IDS)
def test_rejects_wrong_input_shape(name, domain):
    flow = FlowSpec(name, {}).build(domain)
    shapes = rf"Expected input shape \(N, {domain.dim}\); got \(2, {domain.dim + 1}\)"
    with pytest.raises(InputOutsideDomain, match=shapes):
        flow(torch.zeros(2, domain.dim + 1))


def _shifts(domain: Domain) -> list[tuple[int, ...]]:
    """Lattice shifts that keep the checkerboard (an even total number of sites)."""
    n = len(domain.sites)
    out = [tuple(2 if i == 0 else 0 for i in range(n))]
    if n >= 2:
        out.append(tuple(1 if i < 2 else 0 for i in range(n)))
    return out


@pytest.mark.parametrize("name,domain", [p for p in PAIRS if p[1].lattice], ids=[i for p, i in zip(PAIRS, IDS)
                                                                               if p[1].lattice])
def test_translation_equivariance(name, domain):
    cls = plugins.architectures.get(name)
    if "translation" not in cls.equivariance:
        pytest.skip(f"{name} does not declare translation equivariance")
    flow = _flow(name, domain, scale=0.2, seed=3)
    z = torch.randn(6, *domain.shape)
    axes = tuple(range(1, 1 + domain.lattice))
    for shift in _shifts(domain):
        roll = lambda t, shift=shift: torch.roll(t.reshape(6, *domain.shape), shift, axes).reshape(6, -1)  # noqa: E731
        x_of_shifted = flow(roll(z.reshape(6, -1)))[0]
        torch.testing.assert_close(x_of_shifted, roll(flow(z.reshape(6, -1))[0]))
    # and a shift that breaks the checkerboard is not a symmetry of a trained-looking flow
    odd = tuple(1 if i == 0 else 0 for i in range(domain.lattice))
    roll = lambda t: torch.roll(t.reshape(6, *domain.shape), odd, axes).reshape(6, -1)  # noqa: E731
    assert not torch.allclose(flow(roll(z.reshape(6, -1)))[0], roll(flow(z.reshape(6, -1))[0]))


def _rotate(x: torch.Tensor, phi: float) -> torch.Tensor:
    f = x.reshape(x.shape[0], -1, 2)
    c, s = math.cos(phi), math.sin(phi)
    return torch.stack([c * f[..., 0] - s * f[..., 1], s * f[..., 0] + c * f[..., 1]], -1).reshape(x.shape)


@pytest.mark.parametrize("name,domain", [p for p in PAIRS if p[1].channels == 2], ids=[
    i for p, i in zip(PAIRS, IDS) if p[1].channels == 2])
def test_u1_equivariance_where_declared(name, domain):
    cls = plugins.architectures.get(name)
    flow = _flow(name, domain, scale=0.2, seed=4)
    z = torch.randn(6, domain.dim)
    same = [torch.allclose(flow(_rotate(z, phi))[0], _rotate(flow(z)[0], phi), atol=1e-10) for phi in (0.7, 2.9)]
    if "u1" in cls.equivariance:
        assert all(same)
    else:
        assert not any(same), f"{name} commutes with phase rotations: declare equivariance 'u1'"


def test_lattice_architectures_refuse_flat_domains_at_construction():
    for name in ARCHS:
        cls = plugins.architectures.get(name)
        if "flat" not in cls.domains:
            with pytest.raises(IncompatibleError, match=f"architecture '{name}'"):
                FlowSpec(name, {}).build(Domain((5,)))


def test_schema_is_keyword_only_arguments():
    assert schema(plugins.architectures.get("lattice-affine"))["width"] == 16
    assert "kernels" not in schema(plugins.architectures.get("realnvp"))


# --- every method x every architecture it accepts: a normalised density -----------------------
#: (method, symmetry, symmetry params, field shape, lattice axes or (n, d) of a particle field)
PROBLEMS = [
    ("realnvp", None, {}, (2, 2), 2),
    ("realnvp", None, {}, (2, 2, 2), 2),
    ("canonicalization", "z2", {}, (2, 2), 2),
    ("sesamo", "z2", {"broken": True}, (2, 2), 2),
    ("sesamo", "u1", {}, (2, 2, 2), 2),
    ("sesamo", "u1", {"broken": True, "bins": 4}, (2, 2, 2), 2),
    ("equivariant", "z2", {}, (2, 2), 2),
    ("equivariant", "u1", {}, (2, 2, 2), 2),
    ("vmonf", None, {}, (2, 2), 2),
    ("realnvp", None, {}, (6,), (4, 2)),
    ("equivariant", "particles", {}, (6,), (4, 2)),
    ("equivariant", "zm", {"m": 8}, (2,), 0),
    ("sesamo", "zm", {"m": 8}, (2,), 0),
]


def _method(method, sym_name, params, shape, lattice, arch, seed=1):
    sym = bound(sym_name, params, shape) if sym_name else None
    if sym is not None and sym.broken:
        randomise(sym.modulation, scale=0.8, seed=3)
    small = {"couplings": 2} if "couplings" in schema(plugins.architectures.get(arch)) else {}
    where = {"particles": lattice} if isinstance(lattice, tuple) else {"lattice": lattice}
    m = METHODS[method](shape, sym, flow=FlowSpec(arch, small), **where).double()
    randomise(m.flow, scale=0.05, seed=seed)
    return m, sym


COMBOS = []
for _arch in ARCHS:
    for _p in PROBLEMS:
        try:
            _method(*_p, _arch)
        except IncompatibleError:
            continue
        COMBOS.append((*_p, _arch))


def test_every_method_accepts_some_architecture_on_every_problem():
    for p in PROBLEMS:
        assert any(c[:5] == p for c in COMBOS), p
    # the lattice constructions are among them
    assert ("sesamo", "u1", {}, (2, 2, 2), 2, "lattice-u1") in COMBOS
    assert ("sesamo", "z2", {"broken": True}, (2, 2), 2, "lattice-affine") in COMBOS
    assert ("equivariant", "particles", {}, (6,), (4, 2), "kernel-cnf") in COMBOS
    assert ("equivariant", "zm", {"m": 8}, (2,), 0, "polar-zm") in COMBOS
    assert ("sesamo", "zm", {"m": 8}, (2,), 0, "polar-zm") in COMBOS


@pytest.mark.parametrize("method,sym_name,params,shape,lattice,arch", COMBOS,
                         ids=[f"{c[0]}-{c[1]}{'-broken' if c[2].get('broken') else ''}-{'x'.join(map(str, c[3]))}"
                              f"-{c[5]}" for c in COMBOS])
def test_density_integrates_to_one(method, sym_name, params, shape, lattice, arch):
    """E_r[q(x)/r(x)] = 1 with r a broad Gaussian on the whole field space."""
    m, _ = _method(method, sym_name, params, shape, lattice, arch)
    est, err = importance_integral(m, shape, n=100_000, sigma=2.5)
    assert abs(est - 1.0) < 5 * err + 3e-3, (est, err)


# --- SESaMo U(1) with an equivariant lattice flow ---------------------------------------------
def _u1_sesamo(broken: bool):
    return _method("sesamo", "u1", {"broken": True, "bins": 4} if broken else {}, (2, 2, 2), 2, "lattice-u1", seed=5)


def test_sesamo_u1_equivariant_flow_acts_on_the_whole_field():
    m, _ = _u1_sesamo(False)
    assert m.equivariant and m.flow.inner.domain == Domain((2, 2, 2), lattice=2)


def test_sesamo_u1_exact_density_is_phase_invariant():
    m, sym = _u1_sesamo(False)
    with torch.no_grad():
        x = m.sample(512).x
        for phi in (0.4, 1.7, math.pi, 5.9):
            rot = sym.act(x, torch.full((512,), phi))
            torch.testing.assert_close(m.log_prob(rot), m.log_prob(x), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("broken", [False, True])
def test_sesamo_u1_path_log_q_equals_exact_density(broken):
    m, _ = _u1_sesamo(broken)
    with torch.no_grad():
        s = m.sample(1000)
        torch.testing.assert_close(m.log_prob(s.x), s.log_q, atol=1e-8, rtol=1e-8)


def test_sesamo_u1_phase_replacement_jacobian():
    """The key step of the derivation: replacing the global phase phi of y by 2 pi h(phi / 2 pi)
    has ln|det| = ln h'(phi / 2 pi) on R^(2V) (autograd), with h the learned spline."""
    m, sym = _u1_sesamo(True)
    h = sym.modulation.h
    two_pi = 2 * math.pi

    def replace(y):
        f = y.reshape(1, 2, 2, 2)
        phi = torch.remainder(torch.atan2(f[..., 1].sum(), f[..., 0].sum()), two_pi)
        new = two_pi * h(phi / two_pi)[0]
        return sym.act(f, (new - phi).reshape(1))[0].reshape(-1)

    for i in range(4):
        y = torch.randn(8, generator=torch.Generator().manual_seed(i))
        jac = torch.autograd.functional.jacobian(replace, y)
        f = y.reshape(2, 2, 2)
        phi = torch.remainder(torch.atan2(f[..., 1].sum(), f[..., 0].sum()), two_pi)
        torch.testing.assert_close(torch.linalg.slogdet(jac)[1], h(phi / two_pi)[1], atol=1e-9, rtol=1e-9)


def test_sesamo_u1_with_non_equivariant_lattice_flow_is_refused():
    with pytest.raises(IncompatibleError, match="lattice-affine"):
        _method("sesamo", "u1", {}, (2, 2, 2), 2, "lattice-affine")


# --- a dropped-in architecture file is tested without a test edit -----------------------------
TOY = '''
import torch
from sesamo_bench.core.architecture import Architecture


class Toy(Architecture):
    """x = z e^a + b per component (learned a, b)."""

    name = "toy-scale"

    def __init__(self, domain, *, init: float = 0.0):
        super().__init__()
        self.domain, self.dim = domain, domain.dim
        self.a = torch.nn.Parameter(torch.full((domain.dim,), init))
        self.b = torch.nn.Parameter(torch.zeros(domain.dim))

    def forward(self, z):
        self.check_input(z)
        return z * self.a.exp() + self.b, self.a.sum().expand(z.shape[0])

    def inverse(self, x):
        self.check_input(x)
        return (x - self.b) * (-self.a).exp(), (-self.a.sum()).expand(x.shape[0])
'''


@pytest.mark.skipif(os.environ.get("SESAMO_BENCH_PLUGINS") is not None, reason="already inside the plugin run")
def test_dropped_in_architecture_gets_the_contract_tests(tmp_path: Path):
    (tmp_path / "architectures").mkdir()
    (tmp_path / "architectures" / "toy.py").write_text(textwrap.dedent(TOY))
    env = {**os.environ, "SESAMO_BENCH_PLUGINS": str(tmp_path)}
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider",
                          "-k", "toy-scale", str(root / "tests" / "test_architectures.py")],
                         capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = next(line for line in reversed(out.stdout.splitlines()) if " passed" in line)
    passed = int(summary.split(" passed")[0].split()[-1])
    assert passed >= 8, out.stdout[-2000:]  # inverse/ladj, identity, shape, and one density per method


def test_magnetisation_chart_is_a_bijection_with_exact_log_terms():
    """u1-fourier / z2-fourier: a_0 = h(rho) is e^rho up to RHO_MAX and linear beyond (no overflow);
    inverse, ln h and ln h' against autograd, and exactly the exponential chart below RHO_MAX."""
    from sesamo_bench.architectures.u1_fourier import chart, chart_inverse, chart_log_terms

    rho = torch.tensor([-3.0, 0.0, 5.0, 19.9, 20.0, 20.5, 100.0, 22515.0], dtype=torch.float64, requires_grad=True)
    a = chart(rho)
    assert torch.isfinite(a).all()
    assert torch.allclose(chart_inverse(torch.log(a)), rho, rtol=1e-12, atol=1e-9)
    (da,) = torch.autograd.grad(a.sum(), rho)
    assert torch.allclose(torch.log(da) - rho, chart_log_terms(rho, log_h=False), atol=1e-12)
    assert torch.allclose(torch.log(a) + torch.log(da) - 2 * rho, chart_log_terms(rho, log_h=True), atol=1e-12)
    low = torch.tensor([-2.0, 0.5, 2.7])
    assert torch.equal(chart(low), torch.exp(low)) and not chart_log_terms(low, log_h=True).any()


@pytest.mark.parametrize("name,shape", [("z2-fourier", (4, 2)), ("u1-fourier", (4, 2, 2))])
def test_fourier_flows_survive_a_field_with_magnetisation_exactly_zero(name, shape):
    """float32 sums of the prior's draws round to M = 0.0 for about one draw in 10^6-10^7 (it stopped
    a 16x8 run at step 3343 with ln q = NaN): the flows read it as the smallest |M| and stay finite,
    forward and inverse, through every method that uses them."""
    from sesamo_bench.core.architecture import Domain, FlowSpec

    flow = FlowSpec(name, {"couplings": 2, "width": 8}).build(Domain(shape, lattice=2))
    randomise(flow, scale=0.3, seed=3)
    z = torch.randn(4, flow.dim, generator=torch.Generator().manual_seed(0))
    if name == "z2-fourier":
        z[0] = torch.tensor([1.5, -0.5, 0.25, -1.25, 0.75, -0.75, 0.5, -0.5])  # sums to 0.0 exactly
    else:
        z[0] = torch.tensor([1.5, 0.5, -0.5, -0.25, 0.25, 0.75, -1.25, -1.0,
                             0.75, 0.0, -0.75, 0.5, 0.5, -0.25, -0.5, -0.25])  # Re M = Im M = 0.0
    assert float(z[0].view(-1, 1 if name == "z2-fourier" else 2).sum(0).abs().max()) == 0.0
    with torch.no_grad():
        x, ladj = flow(z)
        zb, ladj_b = flow.inverse(x)
        assert torch.isfinite(x).all() and torch.isfinite(ladj).all()
        assert torch.isfinite(zb).all() and torch.isfinite(ladj_b).all()
        torch.testing.assert_close(zb[1:], z[1:], atol=1e-4, rtol=1e-4)  # the other rows as before
