"""Contract tests run over every target plugin: registry, parameters, presets, symmetries."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sesamo_bench import plugins
from sesamo_bench.harness.config import resolve
from sesamo_bench.errors import ConfigError
from sesamo_bench.core.methods import METHODS

BUILTIN = ["gaussian-mixture", "hubbard", "phi4-complex", "phi4-real"]

#: every discovered target (a dropped-in file is tested without a test edit)
TARGETS = plugins.targets.names()
#: (name, parameters) of every target's examples (``Target.examples``, else its defaults)
EXAMPLES = [(n, p) for n in TARGETS for p in (plugins.targets.get(n).examples or [{}])]
IDS = [f"{n}-{p}".replace(" ", "") for n, p in EXAMPLES]


def test_registry_finds_all_targets():
    names = plugins.targets.names()
    for n in BUILTIN:
        assert n in names
    ours = {f"{n.replace('-', '_')}.py" for n in BUILTIN}
    assert not [e for e in plugins.targets.errors.values() if e.split(" ")[0].rstrip(":") in ours]


@pytest.mark.parametrize("name", TARGETS)
def test_params_roundtrip_and_repr(name):
    t = plugins.targets.create(name)
    again = plugins.targets.create(name, t.params())
    assert again.params() == t.params()
    assert again.shape == t.shape
    assert name != "" and type(t).__name__ in repr(t)


@pytest.mark.parametrize("name,params", EXAMPLES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_action_shape_dtype_and_gradient(name, params, dtype):
    t = plugins.targets.create(name, params)
    x = torch.randn(5, *t.shape, dtype=dtype, requires_grad=True)
    f = t.action(x)
    assert f.shape == (5,) and f.dtype == dtype and torch.isfinite(f).all()
    torch.testing.assert_close(t.log_prob(x), -f)
    (g,) = torch.autograd.grad(f.sum(), x)
    assert g.shape == x.shape and torch.isfinite(g).all()


def test_hubbard_gradcheck():
    t = plugins.targets.create("hubbard", {"sites": 4, "nt": 2})
    x = torch.randn(3, *t.shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(t.action, (x,))


@pytest.mark.parametrize("name,params", EXAMPLES, ids=IDS)
def test_symmetry_binds_to_shape(name, params):
    t = plugins.targets.create(name, params)
    sym_name, sym_params = t.symmetry()
    sym = plugins.symmetries.create(sym_name, sym_params).bind(t.shape)
    x = torch.randn(4, *t.shape, dtype=torch.float64)
    assert sym.act(x, sym.random_elements(4, x)).shape == x.shape
    for ex_name, ex_params in t.exact_symmetries():
        assert ex_params["broken"] is False
        plugins.symmetries.create(ex_name, ex_params).bind(t.shape)


@pytest.mark.parametrize("name,params", EXAMPLES, ids=IDS)
def test_unbroken_symmetry_is_declared_exact(name, params):
    t = plugins.targets.create(name, params)
    sym_name, sym_params = t.symmetry()
    if not sym_params.get("broken", False):
        assert sym_name in [n for n, _ in t.exact_symmetries()], f"{name} {params}"


@pytest.mark.parametrize("name,params", EXAMPLES, ids=IDS)
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.1, 8.0))
def test_exact_symmetries_leave_action_invariant(name, params, seed, scale):
    t = plugins.targets.create(name, params)
    gen = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(16, *t.shape, generator=gen, dtype=torch.float64)
    exact = t.exact_symmetries()
    for sym_name, sym_params in exact:
        sym = plugins.symmetries.create(sym_name, sym_params).bind(t.shape)
        torch.manual_seed(seed)
        u = sym.random_elements(16, x)
        f, fu = t.action(x), t.action(sym.act(x, u))
        torch.testing.assert_close(fu, f, rtol=1e-10, atol=1e-9 * (1 + f.abs().max().item()))


@pytest.mark.parametrize("name,params", [
    ("gaussian-mixture", {"b": 0.3}), ("phi4-real", {"shape": [3, 4], "alpha": 0.2}),
    ("phi4-complex", {"shape": [3, 4], "alpha": 0.2}), ("hubbard", {}),
])
def test_broken_symmetry_is_broken(name, params):
    """The symmetry() group moves the action when declared broken (and is then not in the exact list)."""
    t = plugins.targets.create(name, params)
    sym_name, sym_params = t.symmetry()
    assert sym_params["broken"] is True
    assert sym_name not in [n for n, _ in t.exact_symmetries()]
    sym = plugins.symmetries.create(sym_name, sym_params).bind(t.shape)
    x = torch.randn(64, *t.shape, dtype=torch.float64) * 3
    u = torch.ones(64, dtype=torch.long) if sym.finite else torch.full((64,), 1.0, dtype=torch.float64)
    if sym_name == "z2xz2":
        u = 2 * u  # the broken single flip
    assert (t.action(sym.act(x, u)) - t.action(x)).abs().max() > 1e-3


BAD = [
    ("gaussian-mixture", {"n": 1}, "'n'"),
    ("gaussian-mixture", {"radius": 0.0}, "'radius'"),
    ("gaussian-mixture", {"b": math.nan}, "'b'"),
    ("phi4-real", {"shape": [0, 4]}, "'shape'"),
    ("phi4-real", {"shape": [4]}, "'shape'"),
    ("phi4-real", {"shape": [2, 2, 2]}, "'shape'"),
    ("phi4-real", {"lam": -0.1}, "'lam'"),
    ("phi4-real", {"alpha": -0.1}, "'alpha'"),
    ("phi4-complex", {"shape": [8, 0]}, "'shape'"),
    ("phi4-complex", {"lam": -1.0}, "'lam'"),
    ("phi4-complex", {"alpha": -1.0}, "'alpha'"),
    ("hubbard", {"u": 0.0}, "'u'"),
    ("hubbard", {"u": -18.0}, "'u'"),
    ("hubbard", {"beta": 0.0}, "'beta'"),
    ("hubbard", {"beta": -1.0}, "'beta'"),
    ("hubbard", {"kappa": -1.0}, "'kappa'"),
    ("hubbard", {"nt": 0}, "'nt'"),
    ("hubbard", {"sites": 1}, "'sites'"),
    ("hubbard", {"sites": 3, "nt": 2}, "'sites'"),
    ("hubbard", {"nope": 1}, "nope"),
]


@pytest.mark.parametrize("name,params,key", BAD)
def test_bad_parameters_raise_config_error(name, params, key):
    with pytest.raises(ConfigError) as err:
        plugins.targets.create(name, params)
    msg = str(err.value)
    assert key in msg and "\n" not in msg


def test_bad_parameters_direct_constructor():
    with pytest.raises(ConfigError, match="hubbard: 'beta' must be a number > 0, got -1.0"):
        plugins.targets.get("hubbard")(beta=-1.0)
    with pytest.raises(ConfigError, match="got 1"):
        plugins.targets.get("gaussian-mixture")(n=1)


@pytest.mark.parametrize("name", TARGETS)
@pytest.mark.parametrize("preset", ["smoke", "quick", "paper"])
def test_presets_resolve_for_every_method(name, preset):
    cls = plugins.targets.get(name)
    assert preset in cls.presets
    for method in METHODS:
        cfg = resolve(name, method, preset=preset)
        assert cfg.steps >= 1 and cfg.batch_size >= 1
    if preset == "paper" and name in BUILTIN:
        cfg = resolve(name, "sesamo", preset="paper")
        assert (cfg.couplings, cfg.hidden_layers, cfg.batch_size, cfg.lr) == (6, 4, 8192, 5e-4)


@pytest.mark.parametrize("name,params", EXAMPLES, ids=IDS)
def test_exact_log_z_against_importance_sampling(name, params):
    """Where a target states an exact ln Z (small dimension), importance sampling of exp(-f) from
    a broad Gaussian reproduces it: an independent check of the closed form (or quadrature)."""
    t = plugins.targets.create(name, params)
    if t.log_z() is None or t.dim > 3:
        pytest.skip("no exact ln Z in a dimension importance sampling from a Gaussian can check")
    gen = torch.Generator().manual_seed(7)
    n, sigma = 1_000_000, 8.0
    x = sigma * torch.randn(n, *t.shape, generator=gen, dtype=torch.float64)
    log_r = -0.5 * (x.reshape(n, -1) ** 2).sum(-1) / sigma**2 - 0.5 * t.dim * math.log(2 * math.pi * sigma**2)
    w = torch.exp(t.log_prob(x) - log_r - t.log_z())
    est, err = float(w.mean()), float(w.std() / math.sqrt(n))
    assert err < 0.02 and abs(est - 1.0) < 5 * err, (est, err)
