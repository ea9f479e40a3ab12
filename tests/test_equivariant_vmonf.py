"""The equivariant and VMONF methods: equivariance of the flow, invariance of ln q, normalisation.

Generated from the registries: every architecture that declares a group in its ``equivariance``
is tested with the ``equivariant`` method on the examples of that symmetry plugin (and on small
lattices where it is a lattice architecture).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sesamo_bench import plugins
from sesamo_bench.core.architecture import Domain, FlowSpec
from sesamo_bench.cli import app
from sesamo_bench.errors import IncompatibleError
from sesamo_bench.core.methods import METHODS
from sesamo_bench.core.symmetry import examples

from .helpers import importance_integral, randomise

LATTICE_SHAPES = {1: [((4, 4), 2)], 2: [((2, 2, 2), 2), ((4, 2, 2), 2)]}


def _pairs() -> list[tuple[str, str, dict, tuple[int, ...], int]]:
    """(architecture, symmetry, params, shape, lattice axes) for every declared equivariance."""
    out = []
    for arch in plugins.architectures.names():
        cls = plugins.architectures.get(arch)
        for group in cls.equivariance:
            if group not in plugins.symmetries.names():
                continue  # e.g. "translation", tested by the architecture contract
            cands = [(shape, 0) for shape, _ in examples(plugins.symmetries.get(group))]
            cands += [c for chans in LATTICE_SHAPES.values() for c in chans]
            for shape, lattice in dict.fromkeys(cands):
                if cls.accepts(Domain(shape, lattice=lattice)) is not None:
                    continue
                try:
                    plugins.symmetries.create(group, {}).bind(shape)
                except IncompatibleError:
                    continue
                out.append((arch, group, {}, shape, lattice))
            if "particles" in cls.domains:
                # a particle symmetry's examples give the particle count and dimension of the domain
                for shape, sparams in examples(plugins.symmetries.get(group)):
                    try:
                        sym = plugins.symmetries.create(group, sparams).bind(shape)
                    except IncompatibleError:
                        continue
                    n = getattr(sym, "n_particles", None)
                    if n and not sym.broken and cls.accepts(Domain(shape, particles=(n, sym.dim))) is None:
                        out.append((arch, group, sparams, shape, (n, sym.dim)))
    return out


PAIRS = _pairs()
IDS = [f"{a}-{g}-{'x'.join(map(str, s))}{'L' if isinstance(lat, int) and lat else ''}"
       f"{'P{}x{}'.format(*lat) if isinstance(lat, tuple) else ''}{''.join(f'-{k}={v}' for k, v in p.items())}"
       for a, g, p, s, lat in PAIRS]


def _model(arch, group, params, shape, lattice, seed=0, scale=0.3):
    """``lattice``: the number of lattice axes, or ``(n, d)`` for a particle domain."""
    sym = plugins.symmetries.create(group, params).bind(shape).double()
    where = {"particles": lattice} if isinstance(lattice, tuple) else {"lattice": lattice}
    m = METHODS["equivariant"](shape, sym, flow=FlowSpec(arch, {}), **where).double()
    randomise(m.flow, scale=scale, seed=seed)
    return m, sym


def test_equivariant_architectures_are_registered():
    assert {("odd-realnvp", "z2"), ("lattice-odd", "z2"), ("lattice-u1", "u1"), ("kernel-cnf", "particles"),
            ("polar-zm", "zm")} <= {(a, g) for a, g, *_ in PAIRS}


@pytest.mark.parametrize("arch,group,params,shape,lattice", PAIRS, ids=IDS)
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_flow_is_equivariant_and_density_invariant(arch, group, params, shape, lattice, seed):
    m, sym = _model(arch, group, params, shape, lattice, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(16, *shape, generator=gen, dtype=torch.float64)
    torch.manual_seed(seed)
    u = sym.random_elements(16, z)
    with torch.no_grad():
        gz = m.flow(z.reshape(16, -1))[0].reshape(16, *shape)
        gtz = m.flow(sym.act(z, u).reshape(16, -1))[0].reshape(16, *shape)
        torch.testing.assert_close(gtz, sym.act(gz, u), atol=1e-9, rtol=1e-9)  # g(T z) = T g(z)
        x = 2.0 * z
        torch.testing.assert_close(m.log_prob(sym.act(x, u)), m.log_prob(x), atol=1e-9, rtol=1e-9)
        assert float((m.log_prob(x) - m.log_prob(x.flip(0))).abs().max()) > 1e-6  # not a constant


def _small(p: tuple) -> bool:
    """Field of at most 8 components, not a particle field (the ODE flows are slow; ``equivariant`` on
    DW-4's particles is normalised in ``tests/test_architectures.py``)."""
    return math.prod(p[3]) <= 8 and not isinstance(p[4], tuple)


@pytest.mark.parametrize("arch,group,params,shape,lattice", [p for p in PAIRS if _small(p)],
                         ids=[i for p, i in zip(PAIRS, IDS) if _small(p)])
def test_equivariant_density_integrates_to_one(arch, group, params, shape, lattice):
    m, _ = _model(arch, group, params, shape, lattice, seed=1, scale=0.05)
    est, err = importance_integral(m, shape, n=400_000, sigma=2.5, generator=torch.Generator().manual_seed(2))
    assert abs(est - 1.0) < 5 * err + 3e-3, (est, err)


def _vmonf(shape=(2,), components=3, seed=0):
    m = METHODS["vmonf"](shape, None, components=components,
                         flow=FlowSpec("realnvp", {"couplings": 2, "hidden_layers": 1, "width": 8,
                                                   "activation": "tanh"})).double()
    randomise(m, scale=0.5, seed=seed)
    return m


def test_vmonf_density_is_normalised_and_a_mixture():
    m = _vmonf()
    n, sigma = 400_000, 3.0
    gen = torch.Generator().manual_seed(3)
    x = sigma * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    log_r = -0.5 * (x**2).sum(-1) / sigma**2 - math.log(2 * math.pi * sigma**2)
    with torch.no_grad():
        w = torch.exp(m.log_prob(x) - log_r)
        est, err = float(w.mean()), float(w.std() / math.sqrt(n))
        assert abs(est - 1.0) < 5 * err + 3e-3, (est, err)
        # q = sum_k pi_k q_k, each component an exact flow density
        pi = torch.softmax(m.logits, 0)
        comps = []
        for f in m.flows:
            z, ladj = f.inverse(x[:100])
            comps.append(m.prior.log_prob(z) + ladj)
        want = torch.log((pi[:, None] * torch.stack(comps).exp()).sum(0))
        torch.testing.assert_close(m.log_prob(x[:100]), want)


def test_vmonf_training_draw_is_weighted_and_eval_draw_is_exact():
    m = _vmonf()
    m.train()
    s = m.sample(999)
    assert s.log_v is not None and abs(float(s.log_v.detach().exp().mean()) - 1.0) < 1e-12
    torch.testing.assert_close(s.log_q, m.log_prob(s.x))
    # the weighted objective reaches the mixture weights
    loss = (s.log_v.exp() * s.log_q).mean()
    loss.backward()
    assert float(m.logits.grad.abs().sum()) > 0
    m.eval()
    e = m.sample(999)
    assert e.log_v is None
    torch.testing.assert_close(e.log_q, m.log_prob(e.x))


def test_method_selection_and_errors(tmp_path, monkeypatch):
    from sesamo_bench.harness.config import resolve
    from sesamo_bench.harness.train import build

    # Hubbard: the exact global flip (the single flip stays learnable), an odd MLP flow
    cfg = resolve("hubbard", "equivariant", preset="smoke")
    _, model, _, _ = build(cfg)
    assert cfg.flow == "odd-realnvp" and model.info() == {"enforced_symmetry": "z2", "target_respects_it": True}
    # complex phi^4: U(1) with the lattice-u1 flow; broken: the symmetric model, reported as such
    cfg = resolve("phi4-complex", "equivariant", preset="smoke", overrides={"shape": "4,4", "alpha": 0.005})
    _, model, _, _ = build(cfg)
    assert cfg.flow == "lattice-u1" and model.info() == {"enforced_symmetry": "u1", "target_respects_it": False}
    assert resolve("phi4-real", "equivariant", preset="smoke").flow == "lattice-odd"
    # particles: S_N x O(D) with the kernel CNF
    cfg = resolve("dw4", "equivariant", preset="smoke")
    _, model, _, _ = build(cfg)
    assert cfg.flow == "kernel-cnf" and model.info() == {"enforced_symmetry": "particles", "target_respects_it": True}
    assert model.flow.inner.domain == Domain((6,), particles=(4, 2))
    # --methods all includes it (canonicalization is skipped: the group is continuous)
    from sesamo_bench.harness import grid

    runs, notes = grid.plan(grid.GridRequest(target="dw4", methods=None, seeds=[0], preset="smoke"))
    assert ("equivariant", "kernel-cnf") in {(r.config.method, r.config.flow) for r in runs}
    assert any("skipping canonicalization" in n for n in notes)
    # the Gaussian mixture: Z_8 with the polar flow, its order taken from the symmetry
    cfg = resolve("gaussian-mixture", "equivariant", preset="smoke", overrides={"n": 5})
    _, model, _, _ = build(cfg)
    assert cfg.flow == "polar-zm" and model.flow.inner.order == 5
    assert model.info() == {"enforced_symmetry": "zm", "target_respects_it": True}
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["run", "--target", "gaussian-mixture", "--methods", "equivariant",
                                   "--preset", "smoke", "--set", "flow.order=6"])
    assert res.exit_code == 2 and "order=6 does not commute with the rotations by 2 pi/8" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "sesamo-runs").exists()
    res = CliRunner().invoke(app, ["run", "--target", "hubbard", "--methods", "equivariant", "--preset", "smoke",
                                   "--set", "flow=realnvp"])
    assert res.exit_code == 2 and "not z2-equivariant" in res.output and "flow=odd-realnvp" in res.output
    res = CliRunner().invoke(app, ["run", "--target", "dw4", "--methods", "equivariant", "--preset", "smoke",
                                   "--seeds", "0"])
    assert res.exit_code == 0 and "finished    dw4/equivariant/seed0" in res.output and "kernel-cnf" in res.output
