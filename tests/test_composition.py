"""Flows compose (issue 28, the flow side): a Chain of bijections whose ladjs add, the shared
affine layers and magnetisation frame, architectures assembled from them with the numbers of the
code they replaced, and methods that take a flow object built outside the registry."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

import sesamo_bench as sb
from sesamo_bench.core.architecture import Architecture, Domain, FlowSpec
from sesamo_bench.core.bijections import Chain, ElementwiseAffine, TriangularAffine
from sesamo_bench.core.flows import RealNVP
from sesamo_bench.errors import ConfigError, IncompatibleError, InputOutsideDomain
from tests.helpers import importance_integral, randomise

ROOT = Path(__file__).resolve().parents[1]
#: the last commit before the architectures were assembled from shared parts: the reference code
BEFORE = "ac11d2e"


def _chain(dim: int = 4) -> Chain:
    return Chain(RealNVP(dim, couplings=2, hidden_layers=1, width=8, activation="tanh"), ElementwiseAffine(dim),
                 TriangularAffine(dim)).double()


def _jacobian_ladj(f, z: torch.Tensor) -> torch.Tensor:
    out = []
    for row in z:
        jac = torch.autograd.functional.jacobian(lambda v: f(v[None])[0][0], row)
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


# --- Chain ------------------------------------------------------------------------------------------------

def test_chain_ladj_is_the_autograd_log_determinant():
    torch.manual_seed(0)
    f = randomise(_chain(), scale=0.3, seed=1)
    z = torch.randn(5, 4, dtype=torch.float64)
    x, ladj = f(z)
    assert torch.allclose(ladj, _jacobian_ladj(f, z), atol=1e-10)
    zz, ladj_inv = f.inverse(x)
    assert torch.allclose(zz, z, atol=1e-12) and torch.allclose(ladj_inv, -ladj, atol=1e-12)
    assert torch.allclose(ladj_inv, _jacobian_ladj(f.inverse, x), atol=1e-10)


def test_chain_adds_the_parts_and_inverts_in_reverse_order():
    torch.manual_seed(0)
    f = randomise(_chain(), scale=0.3, seed=2)
    z = torch.randn(6, 4, dtype=torch.float64)
    y, total = z, torch.zeros(6, dtype=torch.float64)
    for part in f.parts:
        y, ld = part(y)
        total = total + ld
    x, ladj = f(z)
    assert torch.equal(x, y) and torch.allclose(ladj, total, atol=1e-14)
    w = x
    for part in reversed(list(f.parts)):
        w, _ = part.inverse(w)
    assert torch.equal(f.inverse(x)[0], w)


def test_fresh_parts_are_the_identity_and_bad_chains_are_refused():
    z = torch.randn(3, 5, dtype=torch.float64)
    for part in (ElementwiseAffine(5).double(), TriangularAffine(5).double(), _chain(5)):
        x, ladj = part(z)
        assert torch.equal(x, z) and not ladj.any()
    with pytest.raises(ConfigError, match="share one dimension"):
        Chain(ElementwiseAffine(3), ElementwiseAffine(4))
    with pytest.raises(ConfigError, match="at least one"):
        Chain()
    with pytest.raises(ConfigError, match="permutation"):
        Chain(ElementwiseAffine(3), ElementwiseAffine(3), order=(0, 0))
    with pytest.raises(InputOutsideDomain):
        _chain(4)(torch.zeros(2, 3, dtype=torch.float64))


def test_chain_order_changes_only_the_parameter_listing():
    torch.manual_seed(0)
    a = Chain(RealNVP(3, couplings=1, hidden_layers=1, width=4), ElementwiseAffine(3))
    torch.manual_seed(0)
    b = Chain(RealNVP(3, couplings=1, hidden_layers=1, width=4), ElementwiseAffine(3), order=(1, 0))
    assert [n for n, _ in b.named_parameters()][:2] == ["parts.1.log_scale", "parts.1.shift"]
    assert sorted(a.state_dict()) == sorted(b.state_dict())
    b.load_state_dict(randomise(a, seed=3).state_dict())
    z = torch.randn(4, 3)
    assert all(torch.equal(u, v) for u, v in zip(a(z), b(z)))


def test_chart_helpers_are_importable_from_the_old_place():
    from sesamo_bench.architectures import u1_fourier
    from sesamo_bench.core import magnetisation

    for name in ("chart", "chart_inverse", "chart_log_terms", "flag_underflow", "fourier_basis", "RHO_MAX"):
        assert getattr(u1_fourier, name) is getattr(magnetisation, name)


def test_architecture_plugins_do_not_import_each_other():
    import ast

    for path in sorted((ROOT / "architectures").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if isinstance(node, ast.ImportFrom) and node.level:
                names = ["sesamo_bench.architectures." + (node.module or "")]
            assert not any(n.startswith("sesamo_bench.architectures") for n in names), (path.name, names)


# --- the refactored architectures against the code they replaced ---------------------------------------

def _old_module(name: str, tmp_path: Path):
    """``architectures/<name>.py`` as of :data:`BEFORE`, imported from a temporary file."""
    try:
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{BEFORE}:architectures/{name}.py"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"the reference code (git commit {BEFORE}) is not available here")
    path = tmp_path / f"old_{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"_old_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CASES = [("affine_realnvp", "AffineRealNVP", Domain((3, 2), lattice=2), 4),
         ("affine_realnvp", "AffineRealNVP", Domain((5,)), 0),
         ("u1_fourier", "U1Fourier", Domain((2, 2, 2), lattice=2), 3),
         ("z2_fourier", "Z2Fourier", Domain((4, 2), lattice=2), 3),
         ("lattice_affine", "LatticeAffine", Domain((4, 4), lattice=2), 2),
         ("lattice_odd", "LatticeOdd", Domain((4, 4), lattice=2), 2)]


def _run(f: nn.Module, dim: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Outputs, inverse, ladjs and every gradient of one pass (a fresh randomisation, same seeds)."""
    gen = torch.Generator().manual_seed(4)
    randomise(f, scale=0.3, seed=3)
    z = torch.randn(6, dim, generator=gen, dtype=dtype).requires_grad_()
    x, ladj = f(z)
    zz, ladj_inv = f.inverse(x.detach())
    (x.square().sum() + ladj.sum() + ladj_inv.sum() + zz.sum()).backward()
    return [x, ladj, zz, ladj_inv, z.grad, *[p.grad for p in f.parameters()]]


@pytest.mark.parametrize("module, cls, domain, couplings", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_refactored_architectures_give_the_numbers_of_the_old_code(module, cls, domain, couplings, dtype, tmp_path):
    old_cls = getattr(_old_module(module, tmp_path), cls)
    new_cls = getattr(importlib.import_module(f"sesamo_bench.architectures.{module}"), cls)
    kw = dict(couplings=couplings, hidden_layers=1, width=8, activation="tanh" if "lattice" in module else "relu")
    runs, params = [], []
    for c in (old_cls, new_cls):
        torch.manual_seed(7)
        f = c(domain, **kw).to(dtype)
        fresh = torch.randn(3, domain.dim, dtype=dtype)
        x, ladj = f(fresh)
        tol = 1e-5 if dtype == torch.float32 else 1e-12  # the frame of M is exact only up to rounding
        assert torch.allclose(x, fresh, atol=tol) and torch.allclose(ladj, torch.zeros_like(ladj), atol=tol)
        params.append([p.detach().clone() for p in f.parameters()])
        runs.append(_run(f, domain.dim, dtype))
    # same seed: the same initial weights in the same order (optimizer states, a mixture's noise)
    assert len(params[0]) == len(params[1]) and all(torch.equal(a, b) for a, b in zip(*params))
    assert len(runs[0]) == len(runs[1])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


CHAINS = CASES[:4]  # the architectures that became chains (their parameter names changed)


@pytest.mark.parametrize("module, cls, domain, couplings", CHAINS, ids=[f"{c[0]}-{c[3]}" for c in CHAINS])
def test_checkpoints_of_the_old_layout_still_load(module, cls, domain, couplings, tmp_path):
    old = getattr(_old_module(module, tmp_path), cls)(domain, couplings=couplings, width=8).double()
    new = getattr(importlib.import_module(f"sesamo_bench.architectures.{module}"), cls)(
        domain, couplings=couplings, width=8).double()
    randomise(old, seed=5)
    assert list(old.state_dict()) != list(new.state_dict())  # the names changed ...
    new.load_state_dict(old.state_dict())  # ... and the old ones are read as the new
    z = torch.randn(4, domain.dim, dtype=torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(old(z), new(z)))
    assert torch.equal(old.shift, new.shift)  # the old attributes are still there


# --- a method with a flow object ------------------------------------------------------------------------

class Plain(nn.Module):
    """A bijection defined in a notebook: no Architecture, no registry, x = z + b."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.b = nn.Parameter(torch.zeros(dim))

    def forward(self, z):
        return z + self.b, z.new_zeros(z.shape[0])

    def inverse(self, x):
        return x - self.b, x.new_zeros(x.shape[0])


@pytest.mark.parametrize("make", [lambda d: _chain(d).float(), Plain], ids=["chain", "plain-module"])
def test_a_method_with_a_flow_object_trains_and_is_normalised(make):
    torch.manual_seed(0)
    target = sb.create_target("gaussian-mixture")  # 2-D
    settings = sb.preset("gaussian-mixture", "realnvp", preset="smoke", steps=1, batch_size=64,
                         eval_every=1, eval_samples=256, final_samples=256, dtype="float64")
    g = make(2)
    model = sb.create_method("realnvp", target, settings=settings, flow=g)
    assert model.flow.inner is g and model.spec.module is g
    before = [p.detach().clone() for p in g.parameters()]
    done = sb.fit(model, target, settings)
    assert done.steps == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, g.parameters()))  # the object itself trained
    randomise(g, scale=0.2, seed=1)
    model.eval()
    mean, err = importance_integral(model, tuple(target.shape), n=200_000, sigma=4.0,
                                    generator=torch.Generator().manual_seed(2))
    assert abs(mean - 1.0) < max(5 * err, 0.02), (mean, err)


def test_a_registered_architecture_object_passes_through_a_method():
    from sesamo_bench.core.methods import method_class

    torch.manual_seed(0)
    f = sb.plugins.architectures.get("z2-fourier")(Domain((4, 2), lattice=2), couplings=2, width=8)
    m = method_class("realnvp")((4, 2), None, flow=f, lattice=2)
    assert m.flow.inner is f and m.spec.cls is type(f) and m.spec.label() == "z2-fourier(object)"
    x = torch.randn(3, 4, 2)
    assert torch.isfinite(m.log_prob(x)).all()


def test_a_flow_object_of_the_wrong_dimension_is_one_line():
    from sesamo_bench.core.methods import method_class

    with pytest.raises(IncompatibleError) as exc:
        method_class("realnvp")((2,), None, flow=ElementwiseAffine(3))
    assert "acts on R^3" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="no integer 'dim'"):
        FlowSpec.of(_NoDim())
    with pytest.raises(ConfigError, match="expected an architecture name"):
        FlowSpec.of(42)
    with pytest.raises(IncompatibleError, match="complex lattice fields"):  # an architecture's own accepts()
        FlowSpec.of(sb.plugins.architectures.get("u1-fourier")(Domain((2, 2, 2), lattice=2), couplings=1,
                                                                 width=4)).build(Domain((4, 2), lattice=2))


class _NoDim(nn.Module):
    def forward(self, z):
        return z, z.new_zeros(z.shape[0])

    def inverse(self, x):
        return x, x.new_zeros(x.shape[0])


def test_a_mixture_of_a_flow_object_copies_it():
    from sesamo_bench.core.methods import method_class

    torch.manual_seed(0)
    g = _chain(2).float()
    m = method_class("vmonf")((2,), None, flow=g, components=3)
    assert m.flows[0].inner is g and all(f.inner is not g for f in m.flows[1:])
    assert all(isinstance(f.inner, Chain) for f in m.flows)


def test_register_takes_an_architecture_defined_outside_the_package():
    class Shifted(Architecture):
        name = "test-composition-shifted"

        def __init__(self, domain, *, scale: float = 1.0):
            super().__init__()
            self.domain, self.dim = domain, domain.dim
            self.chain = Chain(ElementwiseAffine(domain.dim))

        def forward(self, z):
            return self.chain(z)

        def inverse(self, x):
            return self.chain.inverse(x)

    sb.register(Shifted)
    try:
        target = sb.create_target("gaussian-mixture")
        model = sb.create_method("realnvp", target, flow="test-composition-shifted")
        assert isinstance(model.flow.inner, Shifted)
        x = torch.randn(4, *target.shape)
        assert torch.allclose(model.log_prob(x), model.prior.log_prob(x.reshape(4, -1)), atol=1e-5)
    finally:
        sb.plugins.architectures.unregister("test-composition-shifted")
    assert "test-composition-shifted" not in sb.plugins.architectures.names()
