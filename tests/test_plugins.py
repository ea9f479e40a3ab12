"""Plugin discovery and the contract every discovered target must satisfy.

Contract tests are parametrised over the registry (as in sbibm/benchopt), so a target file
dropped into ``targets/`` is tested without writing a test.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from sesamo_bench import plugins
from sesamo_bench.harness.config import PRESETS, resolve
from sesamo_bench.errors import PluginError, UnknownNameError
from sesamo_bench.registry import Registry
from sesamo_bench.core.symmetry import Symmetry
from sesamo_bench.core.target import Target
from sesamo_bench.harness.train import build, check_exact

TARGETS = plugins.targets.names()


def test_builtin_targets_discovered():
    assert {"gaussian-mixture", "phi4-real", "phi4-complex", "hubbard"} <= set(TARGETS)


def test_dropped_in_file_is_found_and_broken_file_is_reported(tmp_path, monkeypatch):
    (tmp_path / "symmetries").mkdir()
    (tmp_path / "symmetries" / "mirror.py").write_text(textwrap.dedent('''
        from sesamo_bench.core.symmetry import Symmetry
        class Mirror(Symmetry):
            name = "mirror-test"
    '''))
    (tmp_path / "symmetries" / "broken.py").write_text("def oops(:\n")
    monkeypatch.setenv("SESAMO_BENCH_PLUGINS", str(tmp_path))
    reg = Registry("symmetry", Symmetry, folder="symmetries", group="sesamo_bench.symmetries")
    assert "mirror-test" in reg.names()
    assert {"z2", "zm", "z2xz2", "u1"} <= set(reg.names())  # the others still work
    (msg,) = [m for m in reg.errors.values() if "broken.py" in m]
    assert "SyntaxError" in msg and "line 1" in msg
    with pytest.raises(PluginError, match="broken.py"):
        reg.get("broken")
    with pytest.raises(UnknownNameError, match="Available: .*mirror-test"):
        reg.get("nothing")


def test_entry_point_plugins(monkeypatch):
    import sesamo_bench.registry as registry

    class EP:
        name = "ep-target"

        def load(self):
            class T(Target):
                name = "ep-target"
            return T

    monkeypatch.setattr(registry, "entry_points", lambda group: [EP()] if group == "sesamo_bench.targets" else [])
    reg = Registry("target", Target, folder="targets", group="sesamo_bench.targets")
    assert "ep-target" in reg.names()


@pytest.mark.parametrize("name", TARGETS)
def test_target_contract(name):
    target = plugins.targets.create(name, {})
    x = torch.randn(7, *target.shape, dtype=torch.float64)
    f = target.action(x)
    assert f.shape == (7,) and f.dtype == torch.float64 and bool(torch.isfinite(f).all())
    f32 = target.action(x.float())
    assert f32.dtype == torch.float32
    assert set(PRESETS) <= set(target.presets), f"{name} must define presets {PRESETS}"
    sym_name, sym_params = target.symmetry()
    sym = plugins.symmetries.create(sym_name, sym_params).bind(target.shape)
    check_exact(sym, target)
    for ex_name, ex_params in target.exact_symmetries():
        ex = plugins.symmetries.create(ex_name, ex_params).bind(target.shape)
        check_exact(ex, target)
    assert target.params() and all(hasattr(target, k) for k in target.params())


@pytest.mark.parametrize("name", TARGETS)
@pytest.mark.parametrize("method", ["realnvp", "canonicalization", "sesamo"])
def test_every_preset_builds(name, method):
    target = plugins.targets.create(name, {})
    sym = plugins.symmetries.create(*target.symmetry())
    if method == "canonicalization" and not sym.finite:
        pytest.skip("canonicalization needs a finite group")
    for preset in PRESETS:
        cfg = resolve(name, method, preset=preset, overrides={"device": "cpu"})
        _, model, _, _ = build(cfg)
        with torch.no_grad():
            s = model.sample(4)
        assert s.x.shape == (4, *target.shape)


SWAP = '''
import torch
from sesamo_bench.core.symmetry import Bernoulli, Symmetry


class Swap(Symmetry):
    """Z2 exchanging the two components of a 2-vector; cell x1 >= x2."""

    name = "swap-test"

    def __init__(self, *, broken: bool = False):
        super().__init__()
        self.broken = bool(broken)
        self.modulation = Bernoulli(learnable=self.broken)

    @property
    def order(self):
        return 2

    def act(self, x, u):
        return torch.where(u.bool()[:, None], x.flip(-1), x)

    def compose(self, u, v):
        return u ^ v

    def inverse(self, u):
        return u

    def penalty_fn(self, x):
        return x[:, 1] - x[:, 0]

    def canonicalize(self, z):
        u = (self.penalty_fn(z) > 0).long()
        return self.act(z, u), u
'''

#: the same plugin with a bug a contract test must catch: it forgets one preimage of x
FORGETFUL = SWAP.replace('name = "swap-test"', 'name = "forgetful-test"') + '''
    def preimages(self, x):
        return super().preimages(x)[:1]
'''


def _pytest_on_plugin(tmp_path, source: str, name: str) -> tuple[int, str]:
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "symmetries").mkdir()
    (tmp_path / "symmetries" / f"{name}.py").write_text(source)
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "SESAMO_BENCH_PLUGINS": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-k", name,
         str(tests / "test_symmetries.py"), str(tests / "test_methods.py")],
        cwd=tests.parent, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout


def test_dropped_in_symmetry_gets_bijectivity_and_normalisation_tests(tmp_path):
    """A symmetry file no test names is covered by the group-law, cell, bijectivity and
    normalisation contracts of every method (examples derived from the plugin)."""
    code, out = _pytest_on_plugin(tmp_path, SWAP, "swap-test")
    assert code == 0, out
    for test in ("test_group_laws[swap-test]", "test_modulation_is_bijective_on_the_cell[swap-test-(2,)",
                 "test_density_integrates_to_one[sesamo-swap-test", "test_density_integrates_to_one[canonicalization"
                 "-swap-test"):
        assert f"PASSED tests/test_{'methods' if 'density' in test else 'symmetries'}.py::{test}" in out, test


def test_contract_tests_catch_a_broken_dropped_in_symmetry(tmp_path):
    code, out = _pytest_on_plugin(tmp_path, FORGETFUL, "forgetful-test")
    assert code == 1
    assert "FAILED tests/test_methods.py::test_density_integrates_to_one[sesamo-forgetful-test" in out
