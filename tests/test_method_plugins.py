"""Methods are the fourth plugin kind (issue 28): a method is one file in a ``methods/`` plugin
folder, discovered like the others, its label and colour declared on the class, the contract
tests found automatically; classes defined in a notebook register with ``sb.register`` and
train through ``sb.fit``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import sesamo_bench as sb
from sesamo_bench import plugins
from sesamo_bench.core.architecture import Architecture
from sesamo_bench.core.method import PlainFlow
from sesamo_bench.core.methods import METHODS, method_class
from sesamo_bench.errors import PluginError, UnknownNameError
from sesamo_bench.outputs.aggregate import method_colour, method_label, method_rank

from .test_reliability import _cli

MIRROR = '''
import torch
from sesamo_bench.core.method import PlainFlow, Sample


class Mirror(PlainFlow):
    """x = s g(z) with a fair random sign s: a Z2-symmetric mixture of the flow and its mirror image."""

    name = "toy-mirror"
    needs_symmetry = False
    description = "the flow and its mirror image, half each"
    label = "Mirror"
    colour = "tab:pink"
    order = 50

    def sample(self, n):
        z = self.prior.sample(n)
        y, ladj = self.flow(z)
        s = torch.where(torch.rand(n, 1, device=y.device) < 0.5, -1.0, 1.0).to(y.dtype)
        x = self._field(s * y)
        return Sample(x, self.log_prob(x))

    def log_prob(self, x):
        flat = x.reshape(x.shape[0], -1)
        terms = []
        for sign in (1.0, -1.0):
            z, ladj = self.flow.inverse(sign * flat)
            terms.append(self.prior.log_prob(z) + ladj)
        return torch.logsumexp(torch.stack(terms), 0) - torch.log(torch.tensor(2.0, dtype=flat.dtype))
'''


def test_built_in_methods_are_discovered_from_their_folder():
    assert list(METHODS) == ["realnvp", "canonicalization", "sesamo", "equivariant", "vmonf"]
    for name in METHODS:
        cls = method_class(name)
        assert cls.__module__ == f"sesamo_bench.methods.{name}" and name in plugins.methods.builtins
        assert cls.label and cls.colour and method_label(name) == cls.label and method_colour(name) == cls.colour
    assert [m for m in sorted(METHODS, key=method_rank)] == list(METHODS)
    assert method_label("not-installed") == "not-installed" and method_rank("not-installed")[0] > 100


def test_old_import_paths_of_the_method_classes_still_work():
    with pytest.warns(DeprecationWarning, match="methods.sesamo"):
        from sesamo_bench.core.methods import SESaMo
    assert SESaMo is method_class("sesamo")
    with pytest.warns(DeprecationWarning):
        from sesamo_bench.core.equivariant import Equivariant
    assert Equivariant is method_class("equivariant")
    with pytest.warns(DeprecationWarning):
        from sesamo_bench.methods import VMONF  # the flat module of 0.1
    assert VMONF is method_class("vmonf")


def test_register_refuses_what_is_not_a_plugin():
    with pytest.raises(PluginError, match="not a Target, Symmetry, Architecture or Method"):
        sb.register(int)

    class Nameless(PlainFlow):
        pass

    with pytest.raises(PluginError, match="sets no 'name'"):
        sb.register(Nameless)


def test_a_notebook_method_and_architecture_train_through_fit():
    """A method and an architecture defined here (as in a notebook), registered, trained with sb.fit;
    the trained density is checked against the exact Gaussian-mixture target's normalisation."""

    class Shift(Architecture):
        """x = z + b (learned b): volume preserving."""

        name = "nb-shift"

        def __init__(self, domain, *, init: float = 0.0):
            super().__init__()
            self.domain, self.dim = domain, domain.dim
            self.b = torch.nn.Parameter(torch.full((domain.dim,), init))

        def forward(self, z):
            return z + self.b, z.new_zeros(z.shape[0])

        def inverse(self, x):
            return x - self.b, x.new_zeros(x.shape[0])

    class Plain(PlainFlow):
        name = "nb-plain"
        needs_symmetry = False
        label = "Notebook"

    sb.register(Shift)
    sb.register(Plain)
    try:
        assert "nb-plain" in METHODS and method_label("nb-plain") == "Notebook"
        settings = sb.preset("gaussian-mixture", "nb-plain", preset="smoke", steps=30, flow="nb-shift")
        torch.manual_seed(0)
        target = sb.create_target("gaussian-mixture")
        model = sb.create_method("nb-plain", target, settings=settings)
        assert type(model) is Plain and type(model.flow.inner) is Shift
        before = model.flow.inner.b.detach().clone()
        done = sb.fit(model, target, settings)
        assert done.steps == 30 and not torch.equal(model.flow.inner.b.detach(), before)  # it trained
        # the trained density is the analytic one: N(b, prior_var I) in the prior's units (x = mean
        # + std (z/std... ) with the prior's mean 0), checked at fresh points
        x = torch.randn(64, 2, dtype=torch.float64) * 3
        std = settings.prior_var ** 0.5
        mean = std * model.flow.inner.b.detach().to(torch.float64)
        want = torch.distributions.Normal(mean, std).log_prob(x).sum(-1)
        got = model.log_prob(x.to(next(model.parameters()).dtype)).to(torch.float64)
        assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    finally:
        plugins.methods.unregister("nb-plain")
        plugins.architectures.unregister("nb-shift")
    with pytest.raises(UnknownNameError):
        method_class("nb-plain")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SESAMO_BENCH_PLUGINS") is not None, reason="already inside the plugin run")
def test_a_method_is_one_file(tmp_path: Path):
    """Dropped into ``<folder>/methods/``: listed, trained by ``run``, labelled in plots, and the
    generic contract tests (normalisation by quadrature) run on it without a test edit."""
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "mirror.py").write_text(textwrap.dedent(MIRROR))
    env = {**os.environ, "SESAMO_BENCH_PLUGINS": str(tmp_path)}
    listing = subprocess.run([*_cli(), "list", "methods"], capture_output=True, text=True, env=env, timeout=300)
    assert listing.returncode == 0 and "toy-mirror" in listing.stdout, listing.stdout + listing.stderr
    store = tmp_path / "r.sqlite"
    run = subprocess.run([*_cli(), "run", "--target", "gaussian-mixture", "--methods", "toy-mirror,realnvp",
                          "--seeds", "0", "--preset", "smoke", "--set", "steps=30", "--quiet", "--json",
                          "--workers", "1", "--store", str(store)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    recs = {r["method"]: r for r in json.loads(run.stdout)}
    assert recs["toy-mirror"]["status"] == "finished" and 0 < recs["toy-mirror"]["ess"] <= 1
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider",
                          "-k", "toy-mirror", str(root / "tests" / "test_methods.py")],
                         capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = next(line for line in reversed(out.stdout.splitlines()) if " passed" in line)
    assert int(summary.split(" passed")[0].split()[-1]) >= 1, out.stdout[-2000:]
