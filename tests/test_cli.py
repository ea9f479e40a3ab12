"""The command line through typer's CliRunner, plus one real subprocess per command."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sesamo_bench.core import kernels
from sesamo_bench.cli import JSON_FIELDS, app
from sesamo_bench.harness.store import Store

TINY = ["--preset", "smoke", "--set", "steps=20", "--set", "batch_size=128", "--set", "final_samples=512"]
CONTRACT = ("target", "method", "seed", "params", "status", "steps", "wall_s", "ess", "log_z", "log_z_err",
            "breaking_ratio", "breaking_ratio_exact", "run_dir")


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def run_json(store, *args: str) -> list[dict]:
    res = invoke("run", *args, *TINY, "--store", store, "--json", "--quiet")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def test_list_everything():
    res = invoke("list")
    assert res.exit_code == 0
    out = res.stdout
    for word in ("targets:", "symmetries:", "methods:", "benchmarks", "presets:", "hubbard", "u=18.0",
                 "zm", "m=8", "sesamo", "gmm-z8", "hubbard-beta-sweep", "phi4-real-alpha-sweep"):
        assert word in out
    assert invoke("list", "methods").stdout.startswith("methods:")
    bad = invoke("list", "widgets")
    assert bad.exit_code == 2 and bad.stderr.startswith("error: cannot list 'widgets'")


def test_provenance_records_the_threads_a_run_trains_with(tmp_path):
    """--set threads=2 trains with 2 intra-op threads and says so (it was once recorded as the one
    thread the harness holds before the run sets its own); by default a run has one."""
    store = tmp_path / "r.sqlite"
    run_json(store, "--target", "gaussian-mixture", "--methods", "realnvp", "--seeds", "0", "--workers", "1")
    run_json(store, "--target", "gaussian-mixture", "--methods", "realnvp", "--seeds", "1", "--workers", "1",
             "--set", "threads=2")
    threads = {r["seed"]: r["provenance"]["threads"] for r in Store(store).runs()}
    assert threads == {0: 1, 1: 2}


def test_run_json_contract_show_and_report(tmp_path):
    store = tmp_path / "r.sqlite"
    runs = run_json(store, "--target", "hubbard", "--methods", "realnvp,sesamo", "--seeds", "0")
    assert [r["method"] for r in runs] == ["realnvp", "sesamo"]
    for r in runs:
        assert set(CONTRACT) <= set(r) and set(r) == set(JSON_FIELDS)
        assert r["status"] == "finished" and r["steps"] == 20 and 0 < r["ess"] <= 1
        assert r["params"]["u"] == 18.0
        files = sorted(p.name for p in (tmp_path / "runs" / r["run_id"]).iterdir())
        assert files == ["checkpoint.pt", "config.json", "history.csv", "result.json", "samples.npz"]
    assert runs[0]["breaking_ratio"] is None and runs[1]["breaking_ratio"] is not None
    assert runs[1]["breaking_ratio_exact"] is not None

    rows = Store(store).runs()
    assert len(rows) == 2 and rows[0]["config"]["steps"] == 20
    assert rows[0]["provenance"]["torch"] and rows[0]["provenance"]["python"]
    # float32 conditioner MLPs in the Hubbard presets: kernels=auto measured each MLP shape and
    # recorded what it took and the times it compared
    prov = rows[0]["provenance"]
    choices = prov["mlp_kernels_choice"]
    assert choices and all(c["path"] in kernels.candidates() for c in choices)
    assert set(prov["mlp_kernels"].split("+")) == {c["path"] for c in choices if c["grad"]}
    assert all(set(c["times_ms"]) == set(kernels.candidates()) or c["source"] == "only" for c in choices)
    assert rows[0]["history"] and rows[0]["history"][-1]["step"] == 20

    shown = invoke("show", runs[1]["run_id"][:6], "--store", store)
    assert shown.exit_code == 0
    for word in ("sesamo", "finished", "provenance:", "config:", "metrics:", "batch_size", "torch"):
        assert word in shown.stdout
    as_json = json.loads(invoke("show", runs[1]["run_id"], "--store", store, "--json").stdout)
    assert as_json["run_id"] == runs[1]["run_id"]
    assert invoke("show", "ffffffffffff", "--store", store).exit_code == 2

    for fmt in ("terminal", "markdown", "csv", "json", "latex"):
        rep = invoke("report", "--store", store, "--format", fmt)
        assert rep.exit_code == 0, rep.stderr
        assert "sesamo" in rep.stdout
    assert invoke("report", "--store", store, "--format", "xml").exit_code == 2
    t1 = invoke("report", "--store", store, "--table1", "--format", "json")
    assert t1.exit_code == 0, t1.stderr
    assert len(json.loads(t1.stdout)) == 4  # the paper's four rows, ours where the store has them
    if importlib.util.find_spec("sesamo_bench.outputs.plot") is not None:
        plotted = invoke("plot", "--store", store, "--out", tmp_path / "plots", "--kind", "density")
        assert plotted.exit_code == 0, plotted.stderr
        assert plotted.stdout.strip() and all(Path(p).exists() for p in plotted.stdout.split())
    assert invoke("report", "--store", tmp_path / "nope.sqlite").exit_code == 2
    assert not (tmp_path / "nope.sqlite").exists()


def test_progress_bars_sweep_and_resume(tmp_path):
    store = tmp_path / "r.sqlite"
    res = invoke("run", "--target", "hubbard", "--methods", "sesamo", "--seeds", "0", "--sweep", "beta=1,2",
                 *TINY, "--store", store)
    assert res.exit_code == 0, res.stderr
    assert "grid" in res.stderr and "finished" in res.stderr  # rich progress on stderr
    assert "sesamo" in res.stdout  # the ESS table
    rows = Store(store).runs()
    assert sorted(r["params"]["beta"] for r in rows) == [1.0, 2.0]
    again = invoke("run", "--target", "hubbard", "--methods", "sesamo", "--seeds", "0", "--sweep", "beta=1,2",
                   *TINY, "--store", store, "--resume", "--json", "--quiet")
    assert again.exit_code == 0
    assert again.stderr.count("reusing finished run") == 2
    assert sorted(r["run_id"] for r in json.loads(again.stdout)) == sorted(r["run_id"] for r in rows)


def test_all_methods_skips_canonicalization_for_continuous_symmetry(tmp_path):
    res = invoke("run", "--target", "phi4-complex", "--set", "shape=2,2", "--seeds", "0", *TINY,
                 "--store", tmp_path / "r.sqlite", "--json", "--quiet")
    assert res.exit_code == 0, res.stderr
    assert "skipping canonicalization" in res.stderr
    assert [r["method"] for r in json.loads(res.stdout)] == ["realnvp", "sesamo", "equivariant", "vmonf"]


def test_benchmark_from_file(tmp_path):
    toml = tmp_path / "b.toml"
    toml.write_text(
        '[benchmarks.tiny]\ndescription = "a tiny one"\ntarget = "gaussian-mixture"\n'
        'methods = ["canonicalization"]\nseeds = [3]\npreset = "smoke"\n'
        "[benchmarks.tiny.params]\nn = 4\n[benchmarks.tiny.set]\nsteps = 12\n"
        "[benchmarks.tiny.method.canonicalization]\nbatch_size = 64\n[benchmarks.tiny.sweep]\nradius = [6.0, 8.0]\n")
    listed = invoke("list", "benchmarks", "--benchmarks-file", toml)
    assert listed.exit_code == 0 and "tiny" in listed.stdout and "radius=6.0,8.0" in listed.stdout
    res = invoke("run", "--benchmark", "tiny", "--benchmarks-file", toml, "--store", tmp_path / "r.sqlite",
                 "--json", "--quiet")
    assert res.exit_code == 0, res.stderr
    runs = json.loads(res.stdout)
    assert [(r["seed"], r["steps"], r["params"]["n"], r["params"]["radius"]) for r in runs] == [(3, 12, 4, 6.0),
                                                                                                 (3, 12, 4, 8.0)]
    rows = Store(tmp_path / "r.sqlite").runs(benchmark="tiny")
    assert len(rows) == 2 and rows[0]["config"]["batch_size"] == 64


def test_workers_equal_sequential(tmp_path):
    """A 5 methods x 2 seeds grid in two worker processes gives the numbers of a sequential run
    (``all`` on the mixture: realnvp, canonicalization, sesamo, equivariant with polar-zm, vmonf)."""
    args = ["--target", "gaussian-mixture", "--methods", "all", "--seeds", "0,1"]
    seq = run_json(tmp_path / "seq" / "r.sqlite", *args, "--workers", "1")
    par = run_json(tmp_path / "par" / "r.sqlite", *args, "--workers", "2")
    assert len(seq) == len(par) == 10
    assert {r["method"] for r in seq} == {"realnvp", "canonicalization", "sesamo", "equivariant", "vmonf"}
    for a, b in zip(seq, par):
        assert (a["run_id"], a["status"]) == (b["run_id"], "finished")
        for key in ("ess", "log_z", "log_z_err", "steps"):
            assert a[key] == b[key], (a["method"], a["seed"], key)
    pids = {r["provenance"]["pid"] for r in Store(tmp_path / "par" / "r.sqlite").runs()}
    assert os.getpid() not in pids and len(pids) == 2


def test_real_subprocess_run_list_show(tmp_path):
    store = tmp_path / "r.sqlite"
    env = dict(os.environ, COLUMNS="200")
    exe = shutil.which("sesamo-bench")
    cmd = [exe] if exe else [sys.executable, "-m", "sesamo_bench.cli"]
    out = subprocess.run([*cmd, "run", "--target", "hubbard", "--methods", "canonicalization", "--seeds", "0",
                          *TINY, "--store", str(store), "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    runs = json.loads(out.stdout)
    assert runs[0]["status"] == "finished" and runs[0]["method"] == "canonicalization"
    shown = subprocess.run([*cmd, "show", runs[0]["run_id"], "--store", str(store)], capture_output=True, text=True,
                           env=env, timeout=120)
    assert shown.returncode == 0 and "canonicalization" in shown.stdout
    listed = subprocess.run([*cmd, "list", "targets"], capture_output=True, text=True, env=env, timeout=120)
    assert listed.returncode == 0 and "hubbard" in listed.stdout
    bad = subprocess.run([*cmd, "run", "--target", "nope", "--store", str(tmp_path / "x.sqlite")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert not (tmp_path / "x.sqlite").exists()


@pytest.mark.parametrize("args, message", [
    (["--target", "nope"], "Unknown target 'nope'. Available:"),
    (["--target", "hubbard", "--methods", "sesamo,foo"], "Unknown method 'foo'"),
    (["--target", "hubbard", "--preset", "huge"], "Unknown preset 'huge'"),
    (["--benchmark", "nope"], "Unknown benchmark 'nope'"),
    (["--target", "hubbard", "--set", "u=0"], "'u' must be a number > 0"),
    (["--target", "hubbard", "--set", "beta=-1"], "'beta' must be a number > 0"),
    (["--target", "gaussian-mixture", "--set", "n=1"], "'n' must be an integer >= 2"),
    (["--target", "phi4-real", "--set", "shape=0,8"], "'shape' must be two integers >= 1"),
    (["--target", "hubbard", "--set", "gamma=1.5"], "'gamma' must be >= 0 and <= 1"),
    (["--target", "hubbard", "--set", "lr=0"], "'lr' must be > 0"),
    (["--target", "hubbard", "--set", "batch_size=0"], "'batch_size' must be >= 1"),
    (["--target", "hubbard", "--set", "steps=0"], "'steps' must be >= 1"),
    (["--target", "hubbard", "--seeds", "0,-1"], "seeds must be >= 0"),
    (["--target", "hubbard", "--set", "wings=2"], "unknown key 'wings'"),
    (["--target", "hubbard", "--device", "tpu"], "'device' must be one of"),
    (["--target", "hubbard", "--set", "mlp_dtype=float16"], "'mlp_dtype' must be one of auto, float32, float64"),
    (["--target", "phi4-complex", "--methods", "canonicalization"], "needs a finite symmetry group"),
    (["--target", "hubbard", "--set", "symmetry.broken=false"], "declared exact but does not leave"),
    (["--target", "phi4-real", "--set", "symmetry.flip=0,200", "--methods", "sesamo"], "z2"),
    (["--target", "hubbard", "--workers", "0"], "--workers"),
    (["--target", "hubbard", "--benchmark", "gmm-z8"], "cannot be combined"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    store = tmp_path / "r.sqlite"
    res = invoke("run", *args, "--store", store)
    assert res.exit_code == 2
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert not store.exists() and not (tmp_path / "runs").exists()


def test_cuda_without_cuda_is_clean(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    res = invoke("run", "--target", "hubbard", "--device", "cuda", "--store", tmp_path / "r.sqlite")
    assert res.exit_code == 2 and "cuda" in res.stderr and res.stderr.count("\n") == 1
    assert not (tmp_path / "r.sqlite").exists()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))


def test_run_json_new_fields(tmp_path):
    """Fields added after the contract: ESS x N with the ln Z error flag, R IS, the missing support."""
    runs = run_json(tmp_path / "r.sqlite", "--target", "hubbard", "--methods", "canonicalization", "--seeds", "0")
    r = runs[0]
    assert r["ess_n"] == pytest.approx(r["ess"] * 512)
    assert r["log_z_err_reliable"] is (r["ess_n"] >= 100)
    assert -1 <= r["breaking_ratio_is"] <= 1 and r["breaking_ratio_is_err"] >= 0
    assert 0 <= r["support_missing"] <= 1 and r["support_missing_err"] >= 0
    assert r["breaking_ratio_exact_err"] is None  # a closed form


def test_reference_command_for_particles(tmp_path):
    out = tmp_path / "dw4.json"
    res = invoke("reference", "dw4", "--chains", "8", "--samples", "20", "--burn-in", "20", "--out", out)
    assert res.exit_code == 0, res.stderr
    assert "virial" in res.stdout and "shipped reference" in res.stdout
    rec = json.loads(out.read_text())
    assert rec["target"] == "dw4" and rec["chains"] == 8 and rec["samples"] == 20 and rec["virial_expected"] == 6
    assert invoke("reference", "dw4", "--chains", "0").exit_code == 2


def test_ceiling_command():
    bad = invoke("ceiling", "--target", "hubbard")
    assert bad.exit_code == 2 and bad.stderr.startswith("error: ceiling: --target 'hubbard'")
    res = invoke("ceiling", "--target", "phi4-real", "--set", "shape=3,2", "--set", "alpha=0.2", "--chains", "4",
                 "--samples", "30", "--json")
    assert res.exit_code == 0, res.stderr
    rec = json.loads(res.stdout)
    assert rec["group"] == "z2" and rec["alpha"] == 0.2
    assert 0 < rec["unbroken"]["value"] <= rec["ceiling"]["value"] <= 1


def test_reference_command(tmp_path):
    bad = invoke("reference", "hubbard")
    assert bad.exit_code == 2 and bad.stderr.startswith("error: reference: unknown reference 'hubbard'")
    out = tmp_path / "ref.json"
    res = invoke("reference", "phi4-real", "--out", out, "--chains", "4", "--samples", "10", "--burn-in", "4")
    assert res.exit_code == 0, res.stderr
    rec = json.loads(out.read_text())
    assert rec["chain"]["chains"] == 4 and rec["chain"]["samples_per_chain"] == 10
    assert "--chains 4 --samples 10 --burn-in 4" in rec["provenance"]["command"]
    assert len(rec["R"]) == len(rec["alpha"]) == 81 and rec["R"][0] == 0.0
