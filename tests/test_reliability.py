"""Reliability (issue 5): bad input, divergence, signals and resume, concurrent writers, broken stores."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sesamo_bench import plugins
from sesamo_bench.cli import app
from sesamo_bench.harness.config import HYPER, RANGES
from sesamo_bench.harness.store import Store

TINY = ["--preset", "smoke", "--set", "steps=20", "--set", "batch_size=128", "--set", "final_samples=512"]

FLAKY = '''
import math
import torch
from sesamo_bench.core.target import Target


class Flaky(Target):
    """A standard Gaussian in 2-D whose action turns NaN after ``nan_after`` calls (0: never)."""

    name = "flaky"
    presets = {"smoke": {"steps": 20, "batch_size": 64, "couplings": 2, "hidden_layers": 1, "width": 8,
                         "eval_every": 5, "eval_samples": 128, "final_samples": 256, "save_samples": 64,
                         "checkpoint_every": 5}}

    def __init__(self, *, nan_after: int = 0):
        self.nan_after, self.calls, self.shape = nan_after, 0, (2,)

    def action(self, x):
        self.calls += 1
        f = 0.5 * (x ** 2).sum(-1)
        return f * float("nan") if self.nan_after and self.calls > self.nan_after else f

    def symmetry(self):
        return "z2", {}

    def log_z(self):
        return math.log(2 * math.pi)
'''


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_clean_error(res, store: Path | None = None) -> None:
    assert res.exit_code == 2, (res.exit_code, res.stdout, res.stderr)
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert res.exception is None or isinstance(res.exception, SystemExit)
    if store is not None:
        assert not store.exists()


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    d = tmp_path / "plug"
    (d / "targets").mkdir(parents=True)
    (d / "targets" / "flaky.py").write_text(FLAKY)
    (d / "targets" / "broken.py").write_text("def oops(:\n    pass\n")
    monkeypatch.setenv("SESAMO_BENCH_PLUGINS", str(d))
    plugins.reload()
    yield d
    plugins.reload()


# ---------------------------------------------------------------------------------------------
# plugins and divergence
# ---------------------------------------------------------------------------------------------
def test_broken_plugin_is_listed_and_others_work(plugin_dir, tmp_path):
    res = invoke("list", "targets")
    assert res.exit_code == 0
    assert "broken.py (line 1): SyntaxError" in res.stdout
    assert "flaky" in res.stdout and "hubbard" in res.stdout
    assert_clean_error(invoke("run", "--target", "broken", "--store", tmp_path / "s.sqlite"), tmp_path / "s.sqlite")
    assert "broken.py" in invoke("run", "--target", "broken").stderr


def test_nan_action_is_recorded_as_diverged_and_grid_goes_on(plugin_dir, tmp_path):
    store = tmp_path / "r.sqlite"
    res = invoke("run", "--target", "flaky", "--methods", "realnvp,sesamo", "--seeds", "0",
                 "--sweep", "nan_after=0,13", "--preset", "smoke", "--store", store, "--json", "--quiet")
    assert res.exit_code == 0, res.stderr
    runs = {(r["method"], r["params"]["nan_after"]): r for r in json.loads(res.stdout)}
    assert len(runs) == 4
    for method in ("realnvp", "sesamo"):
        ok, bad = runs[method, 0], runs[method, 13]
        assert ok["status"] == "finished" and ok["steps"] == 20
        step = bad["steps"]
        assert bad["status"] == "diverged" and 5 < step < 20 and f"step {step}" in bad["error"]
        row = Store(store).get(bad["run_id"])
        assert row["metrics"]["diverged_step"] == step and row["history"][-1]["step"] <= step
        assert (Path(bad["run_dir"]) / "history.csv").exists()
    rep = invoke("report", "--store", store)
    assert rep.exit_code == 0 and "flaky" in rep.stdout


def test_huge_learning_rate_diverges_other_runs_finish(tmp_path):
    # lr = 1 is the largest allowed (issue 30: larger ones are refused at planning) and still diverges
    res = invoke("run", "--target", "hubbard", "--methods", "realnvp", "--seeds", "0", "--sweep", "lr=1,0.001",
                 *TINY, "--store", tmp_path / "r.sqlite", "--json", "--quiet")
    assert res.exit_code == 0, res.stderr
    status = {r["params"]["lr"]: (r["status"], r["steps"]) for r in json.loads(res.stdout)}
    assert status[1.0][0] == "diverged" and 1 <= status[1.0][1] <= 20
    assert status[0.001] == ("finished", 20)


# ---------------------------------------------------------------------------------------------
# signals and resume (real subprocesses, float64 on the CPU)
# ---------------------------------------------------------------------------------------------
STEPS = 400
RESUME_ARGS = ["run", "--target", "hubbard", "--methods", "sesamo", "--seeds", "0", "--preset", "smoke",
               "--dtype", "float64", "--device", "cpu", "--set", f"steps={STEPS}", "--set", "checkpoint_every=5",
               "--set", "batch_size=64", "--set", "eval_every=50", "--set", "final_samples=512", "--quiet", "--json"]


def _cli() -> list[str]:
    exe = shutil.which("sesamo-bench")
    return [exe] if exe else [sys.executable, "-m", "sesamo_bench.cli"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    store = tmp_path_factory.mktemp("ref") / "r.sqlite"
    res = CliRunner().invoke(app, [*RESUME_ARGS, "--store", str(store)])
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)[0]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_keeps_checkpoint_and_resume_matches(tmp_path, uninterrupted, sig, code):
    store = tmp_path / "r.sqlite"
    proc = subprocess.Popen([*_cli(), *RESUME_ARGS, "--store", str(store)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list((tmp_path / "runs").glob("*/checkpoint.pt")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "--resume" in err
    (rec,) = json.loads(out)
    assert rec["status"] == "interrupted" and 5 <= rec["steps"] < STEPS
    row = Store(store).get(rec["run_id"])
    assert row["status"] == "interrupted" and row["metrics"]["interrupted_step"] == rec["steps"]
    run_dir = Path(rec["run_dir"])
    assert (run_dir / "checkpoint.pt").exists() and (run_dir / "history.csv").exists()

    res = CliRunner().invoke(app, [*RESUME_ARGS, "--store", str(store), "--resume"])
    assert res.exit_code == 0, res.stderr
    (done,) = json.loads(res.stdout)
    assert done["run_id"] == rec["run_id"] == uninterrupted["run_id"]
    assert done["status"] == "finished" and done["steps"] == STEPS
    for key in ("ess", "log_z", "log_z_err", "breaking_ratio"):
        assert math.isclose(done[key], uninterrupted[key], rel_tol=1e-12, abs_tol=1e-12), key
    history = Store(store).get(done["run_id"])["history"]
    assert [h["step"] for h in history] == list(range(50, STEPS + 1, 50))
    assert Store(store).get(done["run_id"])["provenance"]["resumed_from_step"] == rec["steps"]


# ---------------------------------------------------------------------------------------------
# concurrent writers, read-only and full stores
# ---------------------------------------------------------------------------------------------
def test_two_processes_into_one_store(tmp_path):
    store = tmp_path / "r.sqlite"
    procs = [subprocess.Popen([*_cli(), "run", "--target", "hubbard", "--methods", m, "--seeds", "0,1,2", *TINY,
                               "--store", str(store), "--quiet", "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for m in ("realnvp,sesamo", "canonicalization")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    rows = Store(store).runs()
    ids = [r["run_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 9
    assert all(r["status"] == "finished" for r in rows)
    assert {r["run_id"] for o, _ in outs for r in json.loads(o)} == set(ids)


def _first_run(store: Path) -> list[dict]:
    res = invoke("run", "--target", "hubbard", "--methods", "realnvp", "--seeds", "0,1", *TINY, "--store", store,
                 "--quiet", "--json")
    assert res.exit_code == 0, res.stderr
    return Store(store).runs()


def test_read_only_store_is_a_clean_error(tmp_path, monkeypatch):
    store = tmp_path / "r.sqlite"
    before = _first_run(store)
    monkeypatch.setattr(Store, "_connect",
                        lambda self: sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30))
    res = invoke("run", "--target", "hubbard", "--methods", "sesamo", "--seeds", "0", *TINY, "--store", store)
    assert_clean_error(res)
    assert "readonly" in res.stderr and str(store) in res.stderr
    monkeypatch.undo()
    assert Store(store).runs() == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_file_permissions(tmp_path):
    store = tmp_path / "r.sqlite"
    before = _first_run(store)
    for p in [store, *tmp_path.glob("r.sqlite-*")]:
        p.chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        assert_clean_error(invoke("run", "--target", "hubbard", "--methods", "sesamo", "--seeds", "0", *TINY,
                                  "--store", store))
    finally:
        tmp_path.chmod(0o755)
        store.chmod(0o644)
    assert Store(store).runs() == before


class _FullDisk(sqlite3.Connection):
    """SQLite reporting SQLITE_FULL after a number of row writes (a disk filling up mid-grid)."""

    budget = 0

    def execute(self, sql, *args):
        if sql.startswith("INSERT INTO runs"):
            if _FullDisk.budget <= 0:
                raise sqlite3.OperationalError("database or disk is full")
            _FullDisk.budget -= 1
        return super().execute(sql, *args)


def test_disk_full_mid_grid_keeps_recorded_runs(tmp_path, monkeypatch):
    store = tmp_path / "r.sqlite"
    _FullDisk.budget = 3  # run 1: running + finished; run 2: running, then the disk is full
    monkeypatch.setattr(Store, "_connect", lambda self: sqlite3.connect(self.path, timeout=30, factory=_FullDisk))
    # in-process (--workers 1): the patched connection lives in this process
    res = invoke("run", "--target", "hubbard", "--methods", "realnvp", "--seeds", "0,1,2", *TINY, "--store", store,
                 "--quiet", "--workers", "1")
    assert res.exit_code == 2 and "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert lines[0].startswith("finished") and len(lines) == 2  # the run recorded before the disk filled
    assert lines[1].startswith("error: cannot write results store") and "database or disk is full" in lines[1]
    monkeypatch.undo()
    rows = Store(store).runs()
    assert [r["status"] for r in rows] == ["finished", "running"]
    assert rows[0]["ess"] > 0 and rows[0]["history"]


def test_foreign_file_as_store_is_rejected_untouched(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("my notes\n" * 100)
    res = invoke("run", "--target", "hubbard", "--methods", "realnvp", "--seeds", "0", *TINY, "--store", junk)
    assert_clean_error(res)
    assert "is not a sesamo-bench results database" in res.stderr
    assert junk.read_text() == "my notes\n" * 100
    assert_clean_error(invoke("report", "--store", junk))
    assert_clean_error(invoke("show", "abc", "--store", junk))


def test_unwritable_store_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = invoke("run", "--target", "hubbard", "--methods", "realnvp", "--seeds", "0", *TINY,
                 "--store", blocker / "r.sqlite")
    assert_clean_error(res)
    assert "cannot write results store" in res.stderr


# ---------------------------------------------------------------------------------------------
# benchmarks.toml errors
# ---------------------------------------------------------------------------------------------
BASE = '[benchmarks.b]\ntarget = "hubbard"\nmethods = ["sesamo"]\nseeds = [0]\npreset = "smoke"\n'


@pytest.mark.parametrize("extra, words", [
    ("colour = 1\n", ["[benchmarks.b]", "unknown key 'colour'"]),
    ("[benchmarks.b.params]\nwidth = 3\n", ["[benchmarks.b.params]", "unknown key 'width'"]),
    ("[benchmarks.b.params]\nu = \"big\"\n", ["[benchmarks.b.params]", "'u' expects float"]),
    ("[benchmarks.b.set]\nu = 3\n", ["[benchmarks.b.set]", "unknown key 'u'"]),
    ("[benchmarks.b.set]\nlr = -1\n", ["[benchmarks.b.set]", "'lr' must be > 0"]),
    ("[benchmarks.b.method.sesamo]\nsteps = \"many\"\n", ["[benchmarks.b.method.sesamo]", "'steps' expects int"]),
    ("[benchmarks.b.method.flow]\nsteps = 3\n", ["[benchmarks.b.method]", "unknown method 'flow'"]),
    ("[benchmarks.b.sweep]\nbeta = 2\n", ["[benchmarks.b.sweep]", "'beta' must be a non-empty list"]),
    ("[benchmarks.b.sweep]\nbeta = [1, -2]\n", ["[benchmarks.b.sweep]", "'beta' must be a number > 0"]),
    ("[benchmarks.b.symmetry_params]\nbins = 3\n", ["[benchmarks.b.symmetry_params]", "unknown key 'bins'"]),
    ("[benchmarks.b.x\n", ["malformed TOML", "line 6"]),
])
def test_benchmarks_file_errors_name_file_table_key(tmp_path, extra, words):
    f = tmp_path / "bench.toml"
    f.write_text(BASE + extra)
    res = invoke("run", "--benchmark", "b", "--benchmarks-file", f, "--store", tmp_path / "s.sqlite")
    assert_clean_error(res, tmp_path / "s.sqlite")
    for w in [str(f), *words]:
        assert w in res.stderr, res.stderr


def test_wrong_types_in_benchmark_table(tmp_path):
    f = tmp_path / "bench.toml"
    for line in ('seeds = "0"', "seeds = [-1]", "target = 3", 'methods = "sesamo"', 'preset = "fast"'):
        key = line.split(" =")[0]
        f.write_text("".join(x + "\n" for x in BASE.splitlines() if not x.startswith(key + " ")) + line + "\n")
        res = invoke("run", "--benchmark", "b", "--benchmarks-file", f)
        assert_clean_error(res)
        assert str(f) in res.stderr and "[benchmarks.b]" in res.stderr and f"'{key}'" in res.stderr


# ---------------------------------------------------------------------------------------------
# property-based: random malformed configurations always give one clean line
# ---------------------------------------------------------------------------------------------
HUBBARD_PARAMS = {"u", "beta", "kappa", "nt", "sites"}
NUMERIC = sorted(k for k in RANGES if isinstance(HYPER[k], (int, float)) and not isinstance(HYPER[k], bool))


def _number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _out_of_range(key: str):
    lo, inclusive, hi = RANGES[key]
    if isinstance(HYPER[key], int):
        below = st.integers(max_value=int(lo) - (1 if inclusive else 0), min_value=-10**9)
        return below.map(str)
    below = st.floats(max_value=lo, allow_nan=False, allow_infinity=False).filter(
        lambda v: v < lo if inclusive else v <= lo)
    above = st.floats(min_value=hi, exclude_min=True, allow_nan=False, allow_infinity=False) if hi else st.nothing()
    return (below | above).map(repr)


_ident = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
_bad_sets = st.one_of(
    st.tuples(_ident.filter(lambda k: k not in HYPER and k not in HUBBARD_PARAMS), st.text(max_size=6)),
    st.tuples(st.sampled_from(NUMERIC), st.text(max_size=6).filter(lambda v: not _number(v))),
    st.sampled_from(NUMERIC).flatmap(lambda k: st.tuples(st.just(k), _out_of_range(k))),
    st.tuples(st.sampled_from(["u", "beta"]), st.floats(max_value=0, allow_nan=False).map(repr)),
    st.tuples(st.sampled_from(["nt", "sites"]), st.text(max_size=4).filter(lambda v: not _number(v))),
).map(lambda kv: f"{kv[0]}={kv[1]}") | st.text(max_size=10).filter(lambda s: "=" not in s)
_good_sets = st.sampled_from(["steps=5", "batch_size=32", "beta=2", "lr=0.01", "symmetry.broken=true"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=_bad_sets, good=st.lists(_good_sets, max_size=2), seeds=st.sampled_from(["0", "1,2"]),
       first=st.booleans())
def test_random_malformed_set_is_one_clean_line(tmp_path, bad, good, seeds, first):
    good = [g for g in good if g.split("=")[0] != bad.split("=")[0].strip()]
    items = [bad, *good] if first else [*good, bad]
    store = tmp_path / "never.sqlite"
    args = ["run", "--target", "hubbard", "--methods", "sesamo", "--seeds", seeds, "--preset", "smoke",
            "--store", store, *[f"--set={i}" for i in items]]
    assert_clean_error(invoke(*args), store)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


_scalar = st.one_of(st.integers(-5, 5), st.floats(-10, 10, allow_nan=False), st.text(max_size=4), st.booleans(),
                    st.lists(st.integers(-3, 3), max_size=2))
_mutations = st.one_of(
    st.tuples(st.just(""), _ident.filter(lambda k: k not in ("description", "target", "methods", "seeds", "preset",
                                                             "symmetry")), _scalar),
    st.tuples(st.just(""), st.sampled_from(["target", "preset", "symmetry"]), _scalar.filter(
        lambda v: not isinstance(v, str))),
    st.tuples(st.just(""), st.sampled_from(["methods", "seeds"]), _scalar.filter(lambda v: not isinstance(v, list))),
    st.tuples(st.sampled_from(["params", "symmetry_params"]), _ident.filter(
        lambda k: k not in HUBBARD_PARAMS | {"broken", "flip"}), _scalar),
    st.tuples(st.sampled_from(["set", "method.sesamo"]), _ident.filter(lambda k: k not in HYPER), _scalar),
    st.tuples(st.just("raw"), st.sampled_from(["[benchmarks.b", "x = ", "= 3", "[[", "a = [1,", "\"open"]),
              st.just(0)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=_mutations)
def test_random_malformed_benchmark_table_is_one_clean_line(tmp_path, mutation):
    table, key, value = mutation
    base = BASE
    if table == "":
        base = "\n".join(line for line in BASE.splitlines() if not line.startswith(key + " ")) + "\n"
        text = base + f"{key} = {_toml_value(value)}\n"
    elif table == "raw":
        text = base + key + "\n"
    else:
        text = base + f"[benchmarks.b.{table}]\n{key} = {_toml_value(value)}\n"
    f = tmp_path / "fuzz.toml"
    f.write_text(text)
    store = tmp_path / "never.sqlite"
    res = invoke("run", "--benchmark", "b", "--benchmarks-file", f, "--store", store)
    assert_clean_error(res, store)
    assert str(f) in res.stderr
