"""Plugin discovery and the contract every discovered target must satisfy.

Contract tests are parametrised over the registry (as in sbibm/benchopt), so a target file
dropped into ``targets/`` is tested without writing a test.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from sesamo_bench import plugins
from sesamo_bench.config import PRESETS, resolve
from sesamo_bench.errors import PluginError, UnknownNameError
from sesamo_bench.registry import Registry
from sesamo_bench.symmetry import Symmetry
from sesamo_bench.target import Target
from sesamo_bench.train import build, check_exact

TARGETS = plugins.targets.names()


def test_builtin_targets_discovered():
    assert {"gaussian-mixture", "phi4-real", "phi4-complex", "hubbard"} <= set(TARGETS)


def test_dropped_in_file_is_found_and_broken_file_is_reported(tmp_path, monkeypatch):
    (tmp_path / "symmetries").mkdir()
    (tmp_path / "symmetries" / "mirror.py").write_text(textwrap.dedent('''
        from sesamo_bench.symmetry import Symmetry
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
