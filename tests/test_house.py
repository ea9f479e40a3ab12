"""Issue 28, the smaller items: the target contract's default exact symmetries, no zuko (and its
global patch of torch) on plugin discovery, a test run without the extras, the old import paths
of moved modules and names (CHANGELOG.md), and removed dead code."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import sesamo_bench
from sesamo_bench.core.target import Target

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)


# -- 1. exact_symmetries() follows from an unbroken symmetry() ---------------------------------------
class _EarlierContract(Target):
    """A target written to the earlier contract: an unbroken ``symmetry()``, no ``exact_symmetries()``."""

    shape = (3,)

    def __init__(self, *, broken: bool = False):
        self.broken = broken

    def action(self, x):
        return 0.5 * (x * x).sum(-1) + (0.3 * x.sum(-1) if self.broken else 0.0)

    def symmetry(self):
        return "z2", {"broken": self.broken}


def test_unbroken_symmetry_is_exact_by_default():
    assert _EarlierContract().exact_symmetries() == [("z2", {"broken": False})]
    assert _EarlierContract(broken=True).exact_symmetries() == []
    assert Target().exact_symmetries() == []  # no symmetry() declared at all


def test_earlier_contract_passes_the_contract_test(monkeypatch):
    from tests import test_targets_common as common
    from sesamo_bench import plugins

    monkeypatch.setattr(plugins.targets, "create", lambda name, params=None: _EarlierContract(**(params or {})))
    common.test_unbroken_symmetry_is_declared_exact("earlier-contract", {})
    common.test_symmetry_binds_to_shape("earlier-contract", {})
    x = torch.randn(8, 3, dtype=torch.float64)
    t = _EarlierContract()
    [(name, params)] = t.exact_symmetries()
    sym = plugins.symmetries.create(name, params).bind(t.shape)
    torch.testing.assert_close(t.action(sym.act(x, sym.random_elements(8, x))), t.action(x))


# -- 2. discovering the plugins leaves torch alone -----------------------------------------------------
def test_plugin_discovery_does_not_import_zuko():
    out = _python(
        "import sys, torch\n"
        "before = dict(vars(torch.distributions.Transform))\n"
        "import sesamo_bench, sesamo_bench.api, sesamo_bench.cli\n"
        "from sesamo_bench import plugins\n"
        "names = plugins.architectures.names(); plugins.targets.names(); plugins.symmetries.names()\n"
        "assert {'spline', 'lattice-spline', 'polar-zm'} <= set(names), names\n"
        "assert not plugins.architectures.errors, plugins.architectures.errors\n"
        "assert 'zuko' not in sys.modules, 'zuko imported by discovery'\n"
        "assert dict(vars(torch.distributions.Transform)) == before\n"
        "from sesamo_bench.core.architecture import Domain, FlowSpec\n"
        "f = FlowSpec('spline', {'couplings': 2, 'width': 8}).build(Domain((4,))).double()\n"
        "x, ladj = f(torch.randn(3, 4, dtype=torch.float64))\n"
        "assert 'zuko' in sys.modules and x.shape == (3, 4)  # imported where the spline is built\n"
    )
    assert out.returncode == 0, out.stderr[-3000:]


# -- 3. the package imports without the extras ------------------------------------------------------
def test_every_module_imports_without_the_extras():
    """What ``pytest --doctest-modules`` collects on ``pip install -e .[test]``: every module."""
    out = _python(
        "import sys\n"
        "sys.modules['submitit'] = None; sys.modules['normflows'] = None  # import raises ImportError\n"
        "import importlib, pkgutil, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "import sesamo_bench\n"
        "bad = {}\n"
        "for sub in ('', '.symmetries', '.targets', '.architectures'):\n"
        "    pkg = 'sesamo_bench' + sub\n"
        "    mod = importlib.import_module(pkg)\n"
        "    for info in pkgutil.walk_packages(mod.__path__, pkg + '.'):\n"
        "        try:\n"
        "            importlib.import_module(info.name)\n"
        "        except ImportError as exc:\n"
        "            bad[info.name] = repr(exc)\n"
        "assert 'sesamo_bench.harness.cluster_job' in sys.modules\n"
        "assert not bad, bad\n"
    )
    assert out.returncode == 0, out.stderr[-3000:]


def test_cluster_path_without_submitit_says_how_to_install(monkeypatch, tmp_path):
    from sesamo_bench.errors import UserError
    from sesamo_bench.harness import cluster
    from sesamo_bench.harness.cluster_job import RunJob

    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(UserError, match=r"sesamo-bench\[slurm\]"):
        cluster.require_submitit()
    assert callable(RunJob.checkpoint)  # submitit requeues any callable with checkpoint()


# -- 4. old import paths: moved modules and moved names, until 0.3.0 ---------------------------------
def _old(path: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return importlib.import_module(path)


def _moved_names() -> list[tuple[str, str, str]]:
    """(old module path, name, new module path) of every name that moved to another module."""
    from sesamo_bench.outputs import report

    rows = [(f"sesamo_bench.{old}", name, f"sesamo_bench.{target.partition(':')[0]}")
            for old, names in sesamo_bench.MOVED_NAMES.items() for name, target in names.items()]
    for name, home in report.MOVED_NAMES.items():
        rows += [("sesamo_bench.outputs.report", name, home.__name__), ("sesamo_bench.report", name, home.__name__)]
    return rows


MOVED_NAMES = _moved_names()


@pytest.mark.parametrize("old,name,new", MOVED_NAMES, ids=[f"{o}.{n}" for o, n, _ in MOVED_NAMES])
def test_moved_name_imports_from_its_old_path(old, name, new):
    target = dict(sesamo_bench.MOVED_NAMES.get(old.rpartition(".")[2], {})).get(name, f":{name}").partition(":")[2]
    module = _old(old)
    with pytest.warns(DeprecationWarning, match=rf"\.{name} moved to {new}\.{target}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), target)


def test_the_issue_s_examples_import():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from sesamo_bench.harness.config import EXECUTION_ONLY
        from sesamo_bench.outputs.paper import render_table1
        from sesamo_bench.report import render_table1 as old_render
        from sesamo_bench.store import EXECUTION_ONLY as old_execution_only
    assert old_render is render_table1 and old_execution_only is EXECUTION_ONLY


@pytest.mark.parametrize("old", sorted(sesamo_bench.MOVED))
def test_moved_module_stands_for_the_new_one(old):
    new = importlib.import_module(f"sesamo_bench.{sesamo_bench.MOVED[old]}")
    spec = new.__spec__
    module = _old(f"sesamo_bench.{old}")
    public = [k for k in vars(new) if not k.startswith("_")]
    assert all(getattr(module, k) is getattr(new, k) for k in public)
    assert new.__spec__ is spec and new.__spec__.name == new.__name__  # the real module is untouched
    assert module.__file__ == new.__file__


def test_old_path_warns_on_import():
    sys.modules.pop("sesamo_bench.loss", None)
    with pytest.warns(DeprecationWarning, match=r"sesamo_bench\.loss moved to sesamo_bench\.core\.loss"):
        importlib.import_module("sesamo_bench.loss")


def test_reload_of_a_module_imported_through_its_old_path():
    old = _old("sesamo_bench.store")
    from sesamo_bench.harness import store

    assert store.__spec__.name == "sesamo_bench.harness.store"
    real_store = store.Store
    try:
        store.Store = None
        assert importlib.reload(store) is store and store.Store is not None  # the module ran again
        assert old.Store is store.Store
        importlib.reload(old)  # the old path reloads too, and still stands for the module
        assert old.Store is store.Store and sys.modules["sesamo_bench.store"] is old
    finally:
        if store.Store is None:
            store.Store = real_store


def test_setting_through_the_old_path_sets_the_module(monkeypatch):
    old = _old("sesamo_bench.store")
    from sesamo_bench.harness import store

    monkeypatch.setattr(old, "_house_probe", 1, raising=False)
    assert store._house_probe == 1
    monkeypatch.undo()
    assert not hasattr(store, "_house_probe")


def test_star_import_through_the_old_path():
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        exec("from sesamo_bench.symmetry import *", namespace)
    from sesamo_bench.core.symmetry import Symmetry

    assert namespace["Symmetry"] is Symmetry


def test_unknown_name_is_still_an_attribute_error():
    from sesamo_bench.outputs import report

    with pytest.raises(AttributeError):
        report.no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        from sesamo_bench.store import no_such_name  # noqa: F401


# -- 5. dead code is gone ---------------------------------------------------------------------------
def test_dead_code_is_removed():
    from sesamo_bench.analysis import observables
    from sesamo_bench.core import metrics

    assert not hasattr(metrics, "sample_breaking_ratio")
    assert not hasattr(observables, "cost_per_effective_sample")
