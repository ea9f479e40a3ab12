"""Test set-up: float64 and a fixed seed per test, Hypothesis' CI profile, and the two tiers.

The suite has two tiers. Plain ``pytest`` runs the fast one (a few minutes on two cores); tests
marked ``@pytest.mark.slow`` (a real Slurm cluster, signals and killed workers, trainings of
quick presets, nested pytest runs, hostile-input sweeps) run with ``pytest --tier slow``, and
both with ``pytest --tier all`` (what ``.ci/run`` does). ``-m`` expressions still apply on top.
"""

import fnmatch
import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _float64_and_seed():
    """Tests run in float64 (zuko's habit) with a fixed seed."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


TIERS = ("fast", "slow", "all")
#: tests of the slow tier besides those marked ``@pytest.mark.slow`` (node-id patterns): a real
#: Slurm and submitit jobs, signals, killed workers and concurrent processes, trainings of presets,
#: nested pytest runs of dropped-in plugins, and the densities whose quadrature takes longest. The
#: fast tier keeps at least one normalisation, bijectivity and equivariance check of every kind.
SLOW_TESTS = (
    "tests/test_slurm.py::*",
    "tests/test_cluster.py::*",
    "tests/test_faults.py::*",
    "tests/test_reliability.py::*",
    "tests/test_readme.py::test_readme_python_example_matches_the_cli",
    "tests/test_cli.py::test_reference_command",
    "tests/test_cli.py::test_real_subprocess_run_list_show",
    "tests/test_cli.py::test_workers_equal_sequential",
    "tests/test_cli.py::test_all_methods_skips_canonicalization_for_continuous_symmetry",
    "tests/test_plugins.py::test_dropped_in_*",
    "tests/test_plugins.py::test_contract_tests_catch_a_broken_dropped_in_*",
    "tests/test_architectures.py::test_dropped_in_architecture_gets_the_contract_tests",
    "tests/test_architectures.py::test_density_integrates_to_one[vmonf-*",
    "tests/test_architectures.py::test_density_integrates_to_one[*-lattice-*",
    "tests/test_equivariant_vmonf.py::test_equivariant_density_integrates_to_one[lattice-*",
    "tests/test_kernel_cnf.py::test_ladj_is_the_log_determinant_of_the_map*",
    "tests/test_polar_zm.py::test_density_integrates_to_one_by_quadrature*",
)


def _slow(item) -> bool:
    return item.get_closest_marker("slow") is not None or any(fnmatch.fnmatchcase(item.nodeid, p) for p in SLOW_TESTS)


def pytest_addoption(parser):
    parser.addoption("--tier", default=os.environ.get("SESAMO_BENCH_TEST_TIER", "fast"), choices=TIERS,
                     help="fast (default): the tests not marked slow; slow: only those; all: both")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: the slow tier (pytest --tier slow or --tier all runs it)")


def pytest_collection_modifyitems(config, items):
    tier = config.getoption("--tier")
    if tier == "all":
        return
    keep, drop = [], []
    for item in items:
        (drop if _slow(item) == (tier == "fast") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
        config._sesamo_tier = (tier, len(drop))


def pytest_terminal_summary(terminalreporter, config):
    tier, n = getattr(config, "_sesamo_tier", (None, 0))
    if tier == "fast" and n:
        terminalreporter.write_line(f"fast tier: {n} slow tests not run; `pytest --tier slow` runs them, "
                                    f"`pytest --tier all` runs everything")
