"""Group laws, canonical cells, penalties and modulation bijectivity for every symmetry plugin.

Parametrised over the registry, so a symmetry file dropped into ``symmetries/`` is tested
without writing a test: on the examples it declares (``Symmetry.examples``) or, without them, on
the first shape of ``sesamo_bench.core.symmetry.EXAMPLE_SHAPES`` it acts on, exact and broken.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sesamo_bench import plugins
from sesamo_bench.core.symmetry import examples
from sesamo_bench.errors import ConfigError, IncompatibleError, UnknownNameError

from .helpers import bound, example_id, symmetry_examples

NAMES = plugins.symmetries.names()


def test_builtins_discovered():
    assert {"z2", "zm", "z2xz2", "u1", "particles"} <= set(NAMES)
    ours = ("z2", "zm", "z2xz2", "u1", "particles")
    assert not [e for e in plugins.symmetries.errors.values() if e.split(".py")[0] in ours]


def test_unknown_symmetry_names_alternatives():
    with pytest.raises(UnknownNameError, match=r"Unknown symmetry 'z3'. Available: .*u1.*z2"):
        plugins.symmetries.get("z3")


def _same(a, b, sym):
    """Group elements equal (angles modulo 2 pi for continuous groups; the plugin's encoding)."""
    return sym.same_elements(a, b)


@pytest.mark.parametrize("name", NAMES)
@given(seed=st.integers(0, 2**31 - 1))
def test_group_laws(name, seed):
    torch.manual_seed(seed)
    sym = bound(name)
    x = torch.randn(16, *sym.shape)
    u, v, w = (sym.random_elements(16, x) for _ in range(3))
    e = sym.identity(16, x)
    # identity
    torch.testing.assert_close(sym.act(x, e), x)
    # inverse
    torch.testing.assert_close(sym.act(sym.act(x, u), sym.inverse(u)), x)
    assert _same(sym.compose(u, sym.inverse(u)), e, sym)
    # closure / homomorphism: T_u T_v = T_{u v}
    torch.testing.assert_close(sym.act(sym.act(x, v), u), sym.act(x, sym.compose(u, v)))
    # associativity of compose
    assert _same(sym.compose(sym.compose(u, v), w), sym.compose(u, sym.compose(v, w)), sym)


@pytest.mark.parametrize("name", NAMES)
@given(seed=st.integers(0, 2**31 - 1))
def test_canonicalize_lands_in_cell(name, seed):
    torch.manual_seed(seed)
    sym = bound(name)
    z = torch.randn(64, *sym.shape)
    zc, u = sym.canonicalize(z)
    assert bool((sym.penalty_fn(zc) <= 1e-9).all())
    torch.testing.assert_close(sym.act(zc, u), z)


@pytest.mark.parametrize("name,shape,params", symmetry_examples(), ids=[example_id(c) for c in symmetry_examples()])
@given(seed=st.integers(0, 2**31 - 1))
def test_modulation_is_bijective_on_the_cell(name, shape, params, seed):
    """Points inside the cell sent by different group elements land in disjoint cells: the only
    element u with T_u^{-1} x back in the cell is the one that produced x."""
    torch.manual_seed(seed)
    sym = bound(name, params, shape)
    y, _ = sym.canonicalize(torch.randn(64, *sym.shape))
    keep = sym.penalty_fn(y) < -1e-6  # strictly inside
    y = y[keep]
    if sym.finite:
        for g in range(sym.order):
            x = sym.act(y, torch.full((len(y),), g))
            for h in range(sym.order):
                back = sym.act(x, sym.inverse(torch.full((len(y),), h)))
                inside = sym.penalty_fn(back) < 0
                assert bool(inside.all()) if h == g else not bool(inside.any())
    else:
        theta = sym.random_elements(len(y), y)
        x = sym.act(y, theta)
        yc, th = sym.canonicalize(x)
        torch.testing.assert_close(yc, y)
        assert _same(th, theta, sym)


@pytest.mark.parametrize("name", NAMES)
def test_penalty_sign_convention(name):
    """lambda < 0 strictly inside, > 0 outside, and the Lambda penalty is zero exactly inside."""
    from sesamo_bench.core.loss import penalty

    sym = bound(name)
    y, _ = sym.canonicalize(torch.randn(256, *sym.shape))
    lam = sym.penalty_fn(y)
    assert bool((lam <= 0).all())
    assert bool((penalty(lam) == 0).all())
    if sym.finite:
        for g in range(1, sym.order):
            x = sym.act(y, torch.full((len(y),), g))
            inside = lam < -1e-6
            assert bool((sym.penalty_fn(x)[inside] > 0).all())
            assert bool((penalty(sym.penalty_fn(x)[inside]) > 0).all())


@pytest.mark.parametrize("name", [n for n in NAMES if plugins.symmetries.get(n).finite])
def test_modulation_probabilities_normalised(name):
    for shape, params in examples(plugins.symmetries.get(name)):
        sym = bound(name, params, shape)
        p = torch.tensor(sym.probabilities())
        assert len(p) == sym.order
        torch.testing.assert_close(p.sum(), torch.tensor(1.0))
        u = torch.arange(sym.order)
        torch.testing.assert_close(sym.modulation.log_prob(u).exp().double(), p)


def test_bad_symmetry_parameters():
    with pytest.raises(ConfigError, match="'m' must be an integer >= 2"):
        plugins.symmetries.create("zm", {"m": 1})
    with pytest.raises(ConfigError, match="unknown key 'q'"):
        plugins.symmetries.create("z2", {"q": 1})
    with pytest.raises(IncompatibleError, match="last axis"):
        plugins.symmetries.create("zm", {}).bind((3,))
    with pytest.raises(IncompatibleError, match="proper non-empty subset"):
        plugins.symmetries.create("z2xz2", {"flip": [0, 1]}).bind((2,))


def test_zm_wedge_is_exact():
    """Reference notes: the cell is |angle| <= pi/M, not the wider wedge of paper Eq. (35)."""
    sym = bound("zm", {"m": 8})
    for deg, inside in [(22.0, True), (-22.0, True), (23.0, False), (25.0, False), (0.0, True)]:
        a = math.radians(deg)
        x = torch.tensor([[math.cos(a), math.sin(a)]]) * 5
        assert bool(sym.penalty_fn(x)[0] < 0) == inside


def test_u1_jacobian_is_magnetisation():
    """|det d x / d(a, b', theta)| = |M(x)| for the bijective U(1) construction (autograd)."""
    sym = bound("u1", {}, (3, 2))
    torch.manual_seed(1)
    y = torch.randn(5)
    for theta in [0.3, 2.0, 5.5]:
        def f(v):
            yy = sym.embed(v[:5].unsqueeze(0), (3, 2))
            return sym.act(yy, v[5:]).reshape(-1)

        v = torch.cat([y, torch.tensor([theta])])
        jac = torch.autograd.functional.jacobian(f, v)
        m = sym.embed(y.unsqueeze(0), (3, 2))
        torch.testing.assert_close(torch.linalg.slogdet(jac)[1], sym.modulation_ladj(m)[0])
