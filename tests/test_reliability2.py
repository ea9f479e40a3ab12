"""Reliability, round 2 (issue 30): entry points, damaged store cells, conflicting settings, float ranges."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sesamo_bench.cli import app
from sesamo_bench.harness.config import PRESETS, resolve
from sesamo_bench.harness.store import Store, check_row

TINY = ["--preset", "smoke", "--set", "steps=20", "--set", "batch_size=128", "--set", "final_samples=512"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_clean_error(res, store: Path | None = None, *words: str) -> None:
    assert res.exit_code == 2, (res.exit_code, res.stdout, res.stderr)
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert res.exception is None or isinstance(res.exception, SystemExit)
    for w in words:
        assert w in res.stderr, (w, res.stderr)
    if store is not None:
        assert not store.exists() and not (store.parent / "runs").exists()


# ---------------------------------------------------------------------------------------------
# item 6: python -m sesamo_bench, python -m sesamo_bench.cli
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("module", ["sesamo_bench", "sesamo_bench.cli"])
def test_python_dash_m_runs_the_cli(module, tmp_path):
    res = subprocess.run([sys.executable, "-m", module, "list", "methods"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("methods:") and "sesamo" in res.stdout
    bad = subprocess.run([sys.executable, "-m", module, "show", "abc", "--store", tmp_path / "none.sqlite"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


# ---------------------------------------------------------------------------------------------
# item 1: a damaged store cell never breaks the readers
# ---------------------------------------------------------------------------------------------
def test_check_row_replaces_damaged_cells():
    row = {"run_id": "abc", "target": None, "method": b"\x00", "error": b"\xff", "wall_s": "inf", "seed": "x",
           "steps": 3, "ess": 0.5, "history": [1, {"step": 1}, "x"],
           "metrics": {"measurements": {"reweight": {"estimates": {}}, "hmc": 3}, "ess_n": "many",
                       "log_z_err_reliable": True}}
    bad = check_row(row)
    assert set(bad) == {"method", "error", "wall_s", "seed", "history", "metrics.measurements.reweight",
                        "metrics.measurements.hmc", "metrics.ess_n"}
    assert row["method"] is row["error"] is row["wall_s"] is row["seed"] is None
    assert row["steps"] == 3 and row["ess"] == 0.5 and row["history"] == [{"step": 1}]
    assert row["metrics"]["measurements"] == {} and row["metrics"]["ess_n"] is None
    assert row["metrics"]["log_z_err_reliable"] is True
    good = {"run_id": "abc", "target": "t", "wall_s": 1, "history": [{"step": 1}],
            "metrics": {"measurements": {"reweight": {"samples": 4, "seconds": 0.1, "exact": None, "cost": {"m": None},
                                                      "estimates": {"m": {"value": 1.0, "error": None}}}}}}
    assert check_row(good) == [] and good["wall_s"] == 1.0


@pytest.fixture(scope="module")
def measured_store(tmp_path_factory) -> tuple[Path, str, str]:
    """A store with two real smoke runs, both measured (reweighting)."""
    d = tmp_path_factory.mktemp("base")
    store = d / "r.sqlite"
    res = invoke("run", "--target", "hubbard", "--methods", "realnvp", "--seeds", "0,1", *TINY, "--store", store,
                 "--quiet", "--json")
    assert res.exit_code == 0, res.stderr
    bad, good = (r["run_id"] for r in json.loads(res.stdout))
    for rid in (bad, good):
        m = invoke("measure", rid, "--store", store, "--samples", "256")
        assert m.exit_code == 0, m.stderr
    return store, bad, good


def _set(path: str, value: str) -> str:
    return f"UPDATE runs SET metrics = json_set(metrics, '{path}', {value}) WHERE run_id = ?"


#: damage -> (SQL applied to the bad row, the column the warning names)
DAMAGES = {
    "measurements-number": (_set("$.measurements", "3"), "metrics.measurements"),
    "measurement-number": (_set("$.measurements.reweight", "3"), "metrics.measurements.reweight"),
    "measurement-without-samples": ("UPDATE runs SET metrics = json_remove(metrics, '$.measurements.reweight.samples') "
                                    "WHERE run_id = ?", "metrics.measurements.reweight"),
    "estimates-list": (_set("$.measurements.reweight.estimates", "json('[1, 2]')"), "metrics.measurements.reweight"),
    "autocorr-number": (_set("$.measurements.reweight.autocorr", "5"), "metrics.measurements.reweight"),
    "metric-text": (_set("$.ess_n", "'many'"), "metrics.ess_n"),
    "history-numbers": ("UPDATE runs SET history = '[1, 2, 3]' WHERE run_id = ?", "history"),
    "history-object": ("UPDATE runs SET history = '{\"a\": 1}' WHERE run_id = ?", "history"),
    "wall-inf-text": ("UPDATE runs SET wall_s = 'inf' WHERE run_id = ?", "wall_s"),
    "ess-blob": ("UPDATE runs SET ess = x'0102' WHERE run_id = ?", "ess"),
    "seed-text": ("UPDATE runs SET seed = 'x' WHERE run_id = ?", "seed"),
    "target-null": ("UPDATE runs SET target = NULL WHERE run_id = ?", "target"),
    "target-blob": ("UPDATE runs SET target = x'00ff' WHERE run_id = ?", "target"),
    "method-null": ("UPDATE runs SET method = NULL WHERE run_id = ?", "method"),
    "method-blob": ("UPDATE runs SET method = x'00ff' WHERE run_id = ?", "method"),
    "error-blob": ("UPDATE runs SET error = x'00ff' WHERE run_id = ?", "error"),
    "benchmark-blob": ("UPDATE runs SET benchmark = x'00ff' WHERE run_id = ?", "benchmark"),
    "run-dir-blob": ("UPDATE runs SET run_dir = x'00ff' WHERE run_id = ?", "run_dir"),
}

READERS = [["report"], ["report", "--table1"], ["report", "--format", "json"], ["report", "--format", "latex"],
           ["report", "--format", "csv"], ["plot", "--kind", "ess-time", "--kind", "autocorr"], ["show", "BAD"],
           ["show", "BAD", "--json"], ["show", "GOOD"], ["report", "--observables", "all"],
           ["report", "--observables", "all", "--format", "json"], ["status"]]


@pytest.mark.slow
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_cell_is_one_warning_and_the_good_rows_stay(measured_store, tmp_path, damage):
    base, bad, good = measured_store
    store = tmp_path / "r.sqlite"
    with sqlite3.connect(base) as src, sqlite3.connect(store) as dst:  # the rows live in the WAL too
        src.backup(dst)
    sql, column = DAMAGES[damage]
    with sqlite3.connect(store) as conn:
        conn.execute(sql, (bad,))
    for args in READERS:
        args = [{"BAD": bad, "GOOD": good}.get(a, a) for a in args]
        out = ["--out", tmp_path / "plots"] if args[0] == "plot" else []
        res = invoke(*args, *out, "--store", store)
        assert res.exception is None or isinstance(res.exception, SystemExit), (args, res.exception)
        assert res.exit_code == 0 and "Traceback" not in res.stdout + res.stderr, (args, res.stderr)
        if args[0] == "report" and "--observables" in args:
            assert good[:8] in res.stdout or good in res.stdout, (args, res.stdout)
        elif args[0] == "report" and "--table1" not in args:
            assert "hubbard" in res.stdout and "realnvp" in res.stdout, (args, res.stdout)
        if args[:2] == ["show", good] or args[0] in ("status",):
            continue
        if args[0] == "show" and damage.endswith("-null"):  # a NULL cell is shown as such, not damaged
            continue
        warnings = [line for line in res.stderr.splitlines() if line.startswith("warning: ")]
        assert len(warnings) == 1 and bad in warnings[0] and column in warnings[0], (args, res.stderr)
        if args[-1] == "--json":
            assert json.loads(res.stdout)["run_id"] == bad


# ---------------------------------------------------------------------------------------------
# item 4: conflicting settings, LIKE patterns in run-id prefixes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--sweep", "beta=1,2", "--set", "beta=3"], ["'beta' is both swept", "beta=3"]),
    (["--sweep", "beta=1,2", "--set", "target.beta=3"], ["'beta' is both swept", "target.beta=3"]),
    (["--sweep", "width=4,8", "--set", "flow.width=6"], ["'width' is both swept", "flow.width=6"]),
    (["--set", "width=8", "--set", "flow.width=9"], ["'width' and 'flow.width' name the same setting"]),
    (["--set", "beta=1", "--set", "target.beta=2"], ["'beta' and 'target.beta' name the same setting"]),
    (["--sweep", "couplings=1,2", "--sweep", "flow.couplings=3"], ["'couplings' and 'flow.couplings'"]),
])
def test_conflicting_settings_are_refused(tmp_path, args, words):
    store = tmp_path / "r.sqlite"
    res = invoke("run", "--target", "hubbard", "--methods", "realnvp", "--seeds", "0", "--preset", "smoke", *args,
                 "--store", store)
    assert_clean_error(res, store, *words)


def test_benchmark_key_given_on_the_command_line_replaces_the_files():
    from sesamo_bench.harness.benchmarks import grid_request

    req = grid_request(target=None, methods=None, preset=None, seeds=None, sets=["target.beta=2"], sweeps=[],
                       device=None, dtype=None, benchmark="hubbard-beta-sweep", benchmarks_file=None)
    assert "beta" not in req.sweeps and req.overrides["target.beta"] == "2"
    req = grid_request(target=None, methods=None, preset=None, seeds=None, sets=[], sweeps=["u=10,20"],
                       device=None, dtype=None, benchmark="hubbard", benchmarks_file=None)
    assert "u" not in req.overrides and req.sweeps["u"] == ["10", "20"]


def test_run_prefix_is_not_a_like_pattern(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    for rid in ("abc123", "abd456"):
        s.put({"run_id": rid, "status": "finished", "target": "t", "method": "m", "seed": 0})
    assert s.find("abc")["run_id"] == "abc123"
    for prefix in ("ab_", "a%", "%", "_bc", "ab\\"):
        with pytest.raises(Exception, match="no run"):
            s.find(prefix)
    s.put({"run_id": "a_%x", "status": "finished", "target": "t", "method": "m", "seed": 0})
    assert s.find("a_%")["run_id"] == "a_%x"
    res = invoke("show", "ab_", "--store", tmp_path / "r.sqlite")
    assert_clean_error(res, None, "no run 'ab_'")


# ---------------------------------------------------------------------------------------------
# item 3: float settings that cannot train are refused at planning
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("setting, words", [
    ("prior_var=1e308", ["'prior_var'", "<= 10000", "1e+308"]),
    ("lr=1e308", ["'lr'", "> 0 and <= 1", "1e+308"]),
    ("prior_mean=1e308", ["'prior_mean'", ">= -100 and <= 100", "1e+308"]),
    ("lr=1e-320", ["'lr'", "subnormal", "1e-320"]),
    ("lr_breaking=1e-320", ["'lr_breaking'", "subnormal"]),
    ("penalty_a=1e300", ["'penalty_a'", "<= 1e+06"]),
    ("scale_bound=1e300", ["'scale_bound'", "<= 10"]),
    ("kappa=1e-320", ["'kappa'", "subnormal"]),
    ("u=1e308", ["U beta / nt must be <= 2500"]),
])
def test_float_settings_out_of_a_usable_range_are_refused(tmp_path, setting, words):
    store = tmp_path / "r.sqlite"
    res = invoke("run", "--target", "hubbard", "--methods", "realnvp", "--seeds", "0", "--preset", "smoke",
                 "--set", setting, "--store", store)
    assert_clean_error(res, store, *words)


def test_every_preset_and_benchmark_stays_in_range():
    from sesamo_bench import plugins
    from sesamo_bench.core.methods import METHODS
    from sesamo_bench.errors import IncompatibleError
    from sesamo_bench.harness import benchmarks

    for t in plugins.targets.names():
        for p in PRESETS:
            for m in METHODS:
                try:
                    resolve(t, m, preset=p)
                except IncompatibleError:
                    pass
    import tomllib

    path = benchmarks.default_file()
    for name in tomllib.loads(path.read_text())["benchmarks"]:
        benchmarks.get(name, path)


# ---------------------------------------------------------------------------------------------
# item 2: size bounds also for another architecture's couplings and a mixture's components
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("args, words", [
    (["--methods", "sesamo", "--set", "flow=lattice-affine", "--set", "flow.couplings=100000000"],
     ["couplings=100000000", "GiB of memory", "GiB of this machine"]),
    (["--methods", "vmonf", "--set", "components=64", "--set", "width=20000", "--set", "hidden_layers=2"],
     ["components=64", "GiB of memory", "GiB of this machine"]),
])
def test_sizes_beyond_memory_are_refused_promptly(tmp_path, args, words):
    import time

    store = tmp_path / "r.sqlite"
    t0 = time.monotonic()
    res = invoke("run", "--target", "phi4-real", "--seeds", "0", "--preset", "smoke", *args, "--store", store)
    assert_clean_error(res, store, *words)
    assert time.monotonic() - t0 < 30


def test_status_on_a_fifo_as_the_store_is_refused_at_once(tmp_path):
    """Issue 30 item 5: ``status`` opened the store path to read its header, and a FIFO there waited
    for a writer forever; it is refused in one line like the other commands refuse it."""
    import os

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    fifo = tmp_path / "results.sqlite"
    os.mkfifo(fifo)
    done = subprocess.run([sys.executable, "-m", "sesamo_bench", "status", "--store", str(fifo)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {fifo} is not a sesamo-bench results database (not a regular file)"
