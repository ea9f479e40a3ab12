"""Bad input (issue 18): sizes that cannot fit, values that alias or overflow, duplicated keys,
shadowing plugins, hostile files; each one line ``error: ...``, exit 2, nothing written. Signals
are honoured inside evaluation, and a second one forces the exit."""

from __future__ import annotations

import json
import signal
import sqlite3
import time

import pytest
from typer.testing import CliRunner

from sesamo_bench.harness import grid
from sesamo_bench import plugins
from sesamo_bench.cli import app
from sesamo_bench.harness.benchmarks import grid_request
from sesamo_bench.registry import builtin_dir
from sesamo_bench.harness.store import Store

from .test_reliability import TINY, assert_clean_error


def invoke(*args, **kw):
    return CliRunner().invoke(app, [str(a) for a in args], **kw)


def run_ids(target: str, methods: str = "realnvp,sesamo", seeds: str = "0,7") -> list[str]:
    req = grid_request(target=target, methods=methods, preset="smoke", seeds=seeds, sets=["steps=40"], sweeps=[],
                       device=None, dtype=None, benchmark=None, benchmarks_file=None)
    return [r.run_id for r in grid.plan(req)[0]]


# ---------------------------------------------------------------------------------------------
# 5. sizes: refused from an estimate, before anything is allocated
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target, sets", [
    ("hubbard", ["width=1000000000"]),
    ("hubbard", ["couplings=1000000000"]),
    ("hubbard", ["final_samples=1000000000000000"]),
    ("hubbard", ["batch_size=100000000000", "hidden_layers=8"]),
    ("phi4-real", ["shape=100000,100000"]),
])
def test_sizes_that_cannot_fit_are_refused_at_once(tmp_path, target, sets):
    store = tmp_path / "r.sqlite"
    t0 = time.monotonic()
    res = invoke("run", "--target", target, "--methods", "realnvp", "--seeds", "0", "--preset", "smoke",
                 *[a for s in sets for a in ("--set", s)], "--store", store)
    assert time.monotonic() - t0 < 60
    assert_clean_error(res, store)
    assert "GiB of memory" in res.stderr and "reduce these sizes" in res.stderr


# ---------------------------------------------------------------------------------------------
# 6. one line instead of a traceback
# ---------------------------------------------------------------------------------------------
def test_huge_numbers_of_workers_and_batches(tmp_path):
    assert_clean_error(invoke("run", "--target", "hubbard", "--workers", "99999999999999999999", "--store",
                              tmp_path / "r.sqlite"), tmp_path / "r.sqlite")
    res = invoke("perf", "--batches", "99999999999999999999")
    assert_clean_error(res)
    assert "--batches" in res.stderr
    res = invoke("perf", "--quick", "--out", tmp_path / "missing" / "perf.json")
    assert_clean_error(res)
    assert "does not exist" in res.stderr


def test_non_utf8_benchmarks_file(tmp_path):
    f = tmp_path / "b.toml"
    f.write_bytes(b"[benchmarks.x]\ndescription = \"caf\xe9\"\n")
    for args in (["list", "benchmarks", "--benchmarks-file", f],
                 ["run", "--benchmark", "x", "--benchmarks-file", f, "--store", tmp_path / "r.sqlite"]):
        res = invoke(*args)
        assert_clean_error(res, tmp_path / "r.sqlite")
        assert "UTF-8" in res.stderr and str(f) in res.stderr


def test_store_symlink_loop_and_device_file(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for args in (["run", "--target", "hubbard", "--store", loop / "r.sqlite"], ["status", "--store", loop],
                 ["report", "--store", loop], ["collect", "--store", loop]):
        assert_clean_error(invoke(*args))
    res = invoke("status", "--store", "/dev/null")
    assert_clean_error(res)
    assert "not a sesamo-bench results database" in res.stderr


def test_one_damaged_json_cell_leaves_the_store_usable(tmp_path):
    store = tmp_path / "r.sqlite"
    res = invoke("run", "--target", "hubbard", "--methods", "realnvp", "--seeds", "0,1", *TINY, "--store", store,
                 "--quiet", "--json")
    assert res.exit_code == 0, res.stderr
    bad, good = (r["run_id"] for r in json.loads(res.stdout))
    with sqlite3.connect(store) as conn:
        conn.execute("UPDATE runs SET params = '{not json', history = 'x' WHERE run_id = ?", (bad,))
    for args in (["report", "--store", store], ["show", good, "--store", store], ["show", bad, "--store", store],
                 ["plot", "--store", store, "--out", tmp_path / "plots", "--kind", "ess-time"]):
        res = invoke(*args)
        assert res.exit_code == 0 and "Traceback" not in res.stderr, (args, res.stderr)
    assert Store(store).get(bad)["params"] == {} and Store(store).get(good)["history"]


PLUGIN_RAISES = '''
from sesamo_bench.core.target import Target


class Angry(Target):
    """raises a RuntimeError in its constructor"""

    name = "angry"

    def __init__(self, *, x: float = 1.0):
        raise RuntimeError("boom")

    def action(self, x):
        return x.sum(-1)
'''


def test_plugin_failures_are_one_line(tmp_path, monkeypatch):
    d = tmp_path / "plug"
    (d / "targets").mkdir(parents=True)
    (d / "targets" / "angry.py").write_text(PLUGIN_RAISES)
    (d / "targets" / "quitter.py").write_text("raise SystemExit(3)\n")
    (d / "targets" / "interrupter.py").write_text("raise KeyboardInterrupt\n")
    (d / "targets" / "my_thing.py").write_text("import no_such_module_here\n")
    monkeypatch.setenv("SESAMO_BENCH_PLUGINS", str(d))
    plugins.reload()
    try:
        listed = invoke("list", "targets")
        assert listed.exit_code == 0, listed.stderr
        assert "quitter.py" in listed.stdout and "SystemExit" in listed.stdout and "interrupter.py" in listed.stdout
        assert "hubbard" in listed.stdout
        res = invoke("run", "--target", "angry", "--store", tmp_path / "r.sqlite")
        assert_clean_error(res, tmp_path / "r.sqlite")
        assert "RuntimeError: boom" in res.stderr
        res = invoke("run", "--target", "my-thing", "--store", tmp_path / "r.sqlite")
        assert_clean_error(res, tmp_path / "r.sqlite")
        assert "my_thing.py" in res.stderr and "no_such_module_here" in res.stderr
    finally:
        monkeypatch.delenv("SESAMO_BENCH_PLUGINS")
        plugins.reload()


# ---------------------------------------------------------------------------------------------
# 7. silent wrong results
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seeds", ["4294967296", "0,4294967296", str(2**63), str(2**64 + 5)])
def test_seeds_that_would_alias_are_refused(tmp_path, seeds):
    store = tmp_path / "r.sqlite"
    res = invoke("run", "--target", "hubbard", "--seeds", seeds, *TINY, "--store", store)
    assert_clean_error(res, store)
    assert "2**32" in res.stderr
    assert not (tmp_path / "runs").exists()  # no orphan config.json either


def test_seed_in_a_benchmark_file_is_checked(tmp_path):
    f = tmp_path / "b.toml"
    f.write_text('[benchmarks.x]\ndescription = "d"\ntarget = "hubbard"\nseeds = [4294967296]\npreset = "smoke"\n')
    res = invoke("run", "--benchmark", "x", "--benchmarks-file", f, "--store", tmp_path / "r.sqlite")
    assert_clean_error(res, tmp_path / "r.sqlite")


@pytest.mark.parametrize("assignment", ["lr=inf", "scale_bound=inf", "grad_clip=inf", "prior_mean=nan",
                                        "prior_mean=-inf", "lr_min=inf", "penalty_a=inf", "kappa=inf"])
def test_non_finite_values_are_refused(tmp_path, assignment):
    store = tmp_path / "r.sqlite"
    res = invoke("run", "--target", "hubbard", "--methods", "realnvp", "--seeds", "0", *TINY, "--set", assignment,
                 "--store", store)
    assert_clean_error(res, store)
    assert "finite" in res.stderr


@pytest.mark.parametrize("target,assignments,words", [
    ("hubbard", ["u=1e308"], "U beta / nt must be <= 2500"),
    ("hubbard", ["kappa=1e3"], "kappa beta / nt must be <= 50"),
    ("phi4-real", ["lam=0", "kappa=0.3"], "no normalisable density"),
    ("phi4-complex", ["lam=0", "kappa=-0.26"], "no normalisable density"),
])
def test_targets_without_a_usable_density_are_refused(tmp_path, target, assignments, words):
    store = tmp_path / "r.sqlite"
    sets = [a for kv in assignments for a in ("--set", kv)]
    res = invoke("run", "--target", target, "--methods", "realnvp", "--seeds", "0", *TINY, *sets, "--store", store)
    assert_clean_error(res, store)
    assert words in res.stderr


def test_free_field_normalisability_against_the_hopping_matrix():
    import numpy as np

    from sesamo_bench.core.lattice_physics import free_min_eigenvalue, hopping_matrix

    for lattice in [(8, 8), (3, 5), (2, 4), (1, 6)]:
        for kappa in (-0.3, -0.2, 0.1, 0.249, 0.26):
            dense = np.linalg.eigvalsh(hopping_matrix(lattice, kappa)).min()
            assert abs(dense - free_min_eigenvalue(lattice, kappa)) < 1e-12


@pytest.mark.parametrize("option", ["--set", "--sweep"])
def test_duplicated_keys_are_an_error(tmp_path, option):
    store = tmp_path / "r.sqlite"
    res = invoke("run", "--target", "hubbard", "--methods", "realnvp", "--seeds", "0", *TINY, option, "u=10",
                 option, "u=12", "--store", store)
    assert_clean_error(res, store)
    assert "given twice" in res.stderr and "'u'" in res.stderr


def test_built_in_run_ids_are_unchanged():
    # the ids of the release before the shadowing rule (computed with it absent)
    assert run_ids("hubbard") == ['4b8bf60b7610', '5f0fb7df503a', 'ae3e5dc235dc', 'ed268af8edb7']
    assert run_ids("phi4-real") == ['eb72841621f9', '0d4aa95d2945', 'a6c6718a2f15', 'c629e0813093']


def test_plugin_shadowing_a_built_in_gets_its_own_run_ids(tmp_path, monkeypatch):
    builtin = run_ids("hubbard")
    d = tmp_path / "plug"
    (d / "targets").mkdir(parents=True)
    source = (builtin_dir("targets") / "hubbard.py").read_text()
    (d / "targets" / "hubbard.py").write_text(source + "\n# a modified copy\n")
    monkeypatch.setenv("SESAMO_BENCH_PLUGINS", str(d))
    plugins.reload()
    try:
        first = run_ids("hubbard")
        assert not set(first) & set(builtin)
        (d / "targets" / "hubbard.py").write_text(source + "\n# modified again\n")
        plugins.reload()
        second = run_ids("hubbard")
        assert not set(second) & (set(builtin) | set(first))
    finally:
        monkeypatch.delenv("SESAMO_BENCH_PLUGINS")
        plugins.reload()
    assert run_ids("hubbard") == builtin


# ---------------------------------------------------------------------------------------------
# 5. signals inside evaluation, and a second signal
# ---------------------------------------------------------------------------------------------
def test_stop_is_honoured_inside_the_final_evaluation(tmp_path):
    import torch

    from sesamo_bench.harness.config import resolve
    from sesamo_bench.harness.train import Interrupted, train

    cfg = resolve("hubbard", "realnvp", preset="smoke",
                  overrides={"steps": 5, "batch_size": 64, "final_samples": 3_000_000, "checkpoint_every": 5,
                             "device": "cpu"})
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > 7  # 5 training steps, then two chunks of the final evaluation

    torch.set_default_dtype(torch.float32)
    t0 = time.monotonic()
    with pytest.raises(Interrupted) as info:
        train(cfg, checkpoint=tmp_path / "checkpoint.pt", should_stop=should_stop)
    assert info.value.step == 5 and (tmp_path / "checkpoint.pt").exists()
    assert len(calls) == 8 and time.monotonic() - t0 < 60  # 183 chunks were not drawn


def test_second_signal_forces_the_exit():
    from sesamo_bench.harness.runner import ForcedStop, StopFlag

    flag = StopFlag()
    flag.set(signal.SIGINT)  # a worker saw Ctrl-C first: not a signal of this process
    flag.signalled(signal.SIGINT)
    assert flag() and flag.signum == signal.SIGINT
    with pytest.raises(ForcedStop):
        flag.signalled(signal.SIGTERM)


def test_valid_store_in_a_folder_that_cannot_be_written(tmp_path):
    import shutil
    import subprocess

    store = tmp_path / "ro" / "r.sqlite"
    res = invoke("run", "--target", "hubbard", "--methods", "realnvp", "--seeds", "0", *TINY, "--store", store,
                 "--quiet", "--json")
    assert res.exit_code == 0, res.stderr
    [rec] = json.loads(res.stdout)
    with sqlite3.connect(store) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (tmp_path / "closed").mkdir()
    shutil.copy(store, tmp_path / "closed" / "r.sqlite")  # the database alone, as after its last writer ended
    store = tmp_path / "closed" / "r.sqlite"
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(store.parent)],
                                                        capture_output=True).returncode != 0:
        pytest.skip("cannot make a folder immutable here (chattr +i)")
    try:
        rep = invoke("report", "--store", store)
        assert rep.exit_code == 0 and "hubbard" in rep.stdout, rep.stderr
        assert invoke("show", rec["run_id"], "--store", store).exit_code == 0
        res = invoke("run", "--target", "hubbard", "--methods", "sesamo", "--seeds", "0", *TINY, "--store", store)
        assert_clean_error(res)
        assert "cannot be written" in res.stderr
    finally:
        subprocess.run(["chattr", "-i", str(store.parent)], check=False)
