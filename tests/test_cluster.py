"""Cluster execution through submitit: `run --executor submitit-local` (the Slurm code path with
submitit's LocalExecutor: job folders, pickled jobs, separate processes), `status`, `collect`,
requeue after preemption, and the [executor.slurm] settings."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sesamo_bench.cli import app
from sesamo_bench.harness.store import Store

submitit = pytest.importorskip("submitit")

TINY = ["--preset", "smoke", "--set", "steps=40", "--set", "batch_size=128", "--set", "final_samples=512"]
GRID = ["--target", "gaussian-mixture", "--methods", "realnvp,sesamo", "--seeds", "0,1", *TINY]
NUMBERS = ("status", "steps", "ess", "log_z", "log_z_err", "breaking_ratio")


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok_json(*args: str):
    res = invoke(*args)
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def timeless(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in history]


def wait_for(predicate, timeout: float = 120.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def all_ended(store: Path) -> list[dict] | None:
    jobs = ok_json("status", "--store", store, "--json")
    return jobs if jobs and all(j["state"] not in ("queued", "running") for j in jobs) else None


def test_grid_through_submitit_equals_local(tmp_path):
    """2 methods x 2 seeds as submitit jobs, then `collect`: the numbers of the local executor, exactly."""
    store = tmp_path / "cluster" / "r.sqlite"
    submitted = ok_json("run", *GRID, "--executor", "submitit-local", "--store", store, "--json")
    assert [s["status"] for s in submitted] == ["submitted"] * 4
    local = ok_json("run", *GRID, "--store", tmp_path / "local" / "r.sqlite", "--json", "--quiet")

    jobs = wait_for(lambda: all_ended(store), what="the jobs")
    assert [j["state"] for j in jobs] == ["finished"] * 4
    assert {j["job_id"] for j in jobs} == {s["job_id"] for s in submitted}
    assert Store(store).runs() == []  # jobs never write the database; collect does

    collected = ok_json("collect", "--store", store, "--json")
    by_id = {r["run_id"]: r for r in collected}
    assert [r["run_id"] for r in local] == [s["run_id"] for s in submitted]
    for ref in local:
        got = by_id[ref["run_id"]]
        for key in NUMBERS:
            assert got[key] == ref[key], (ref["method"], ref["seed"], key)
    rows = {r["run_id"]: r for r in Store(store).runs()}
    ref_rows = {r["run_id"]: r for r in Store(tmp_path / "local" / "r.sqlite").runs()}
    assert len(rows) == 4
    for rid, row in rows.items():
        assert timeless(row["history"]) == timeless(ref_rows[rid]["history"]) and row["history"]
        assert row["provenance"]["job_id"] == next(s["job_id"] for s in submitted if s["run_id"] == rid)
        assert row["provenance"]["pid"] != os.getpid()
        files = sorted(p.name for p in Path(row["run_dir"]).iterdir())
        assert files == ["checkpoint.pt", "config.json", "history.csv", "result.json", "samples.npz"]
        assert Path(row["run_dir"]).parent == store.parent / "runs"

    manifest = json.loads(next((store.parent / "jobs").glob("*/manifest.json")).read_text())
    assert manifest["executor"] == "submitit-local" and len(manifest["jobs"]) == 4
    assert {"run_id", "job_id", "config", "stdout", "stderr"} <= set(manifest["jobs"][0])
    text = invoke("status", "--store", store)
    assert text.exit_code == 0 and "4 finished" in text.stdout
    again = invoke("collect", "--store", store)  # idempotent
    assert again.exit_code == 0 and len(Store(store).runs()) == 4
    resumed = invoke("run", *GRID, "--executor", "submitit-local", "--resume", "--store", store, "--json")
    assert resumed.exit_code == 0 and json.loads(resumed.stdout) == []  # nothing left to submit
    assert resumed.stderr.count("reusing finished run") == 4
    assert invoke("report", "--store", store).exit_code == 0


def _task_pid(controller: int) -> int:
    """The job's python process: the child of submitit's local controller."""
    def child() -> int | None:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == controller and fields[0] != "Z":
                return int(stat.parent.name)
        return None

    return wait_for(child, 30, "the job process")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the job process through /proc")
def test_preempted_job_is_requeued_and_resumes(tmp_path):
    """SIGUSR2 (submitit's timeout/preemption signal) mid-run: checkpoint(), requeue, resume, same result."""
    args = ["--target", "gaussian-mixture", "--methods", "sesamo", "--seeds", "0", "--dtype", "float64",
            "--preset", "smoke", "--set", "steps=150", "--set", "batch_size=128", "--set", "final_samples=512",
            "--set", "checkpoint_every=10"]
    store = tmp_path / "cluster" / "r.sqlite"
    [sub] = ok_json("run", *args, "--executor", "submitit-local", "--store", store, "--json")
    ckpt = Path(sub["run_dir"]) / "checkpoint.pt"
    task = _task_pid(int(sub["job_id"]))
    wait_for(ckpt.exists, 60, "the first checkpoint")
    os.kill(task, signal.SIGUSR2)
    twice = invoke("run", *args, "--executor", "submitit-local", "--store", store, "--json")
    assert twice.exit_code == 0 and json.loads(twice.stdout) == [] and "already running as job" in twice.stderr
    [ref] = ok_json("run", *args, "--store", tmp_path / "local" / "r.sqlite", "--json", "--quiet")

    wait_for(lambda: all_ended(store), what="the requeued job")
    log = Path(sub["stdout"]).read_text()
    assert "Calling checkpoint method" in log and "Requeued job" in log
    [got] = ok_json("collect", "--store", store, "--json")
    row = Store(store).get(got["run_id"])
    assert 0 < row["provenance"]["resumed_from_step"] < 150
    for key in NUMBERS:
        assert got[key] == ref[key], key
    assert timeless(row["history"]) == timeless(Store(tmp_path / "local" / "r.sqlite").get(ref["run_id"])["history"])


def test_failed_job_shows_log_tail(tmp_path):
    """A job that crashes (here: its config.json cannot be written) is failed in status, collect and run.

    (A corrupt checkpoint no longer crashes a job: the run restarts from step 0, see test_faults.)"""
    from sesamo_bench.harness import grid
    from sesamo_bench.harness.benchmarks import grid_request

    store = tmp_path / "r.sqlite"
    args = ["--target", "hubbard", "--methods", "realnvp", "--seeds", "0", *TINY]
    req = grid_request(target="hubbard", methods="realnvp", preset="smoke", seeds="0",
                       sets=["steps=40", "batch_size=128", "final_samples=512"], sweeps=[], device=None, dtype=None,
                       benchmark=None, benchmarks_file=None)
    [run], _ = grid.plan(req)
    run_dir = tmp_path / "runs" / run.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").mkdir()  # os.replace onto a directory fails (a checkpoint or result in
    # the way is removed: runner._discard)

    res = invoke("run", *args, "--executor", "submitit-local", "--resume", "--wait", "--store", store, "--json")
    assert res.exit_code == 1, res.stderr
    [rec] = json.loads(res.stdout)
    assert rec["run_id"] == run.run_id and rec["status"] == "failed" and "job" in rec["error"]

    [job] = ok_json("status", "--store", store, "--json")
    assert job["state"] == "failed" and job["log"].endswith("_log.err")
    assert "Traceback" in Path(job["log"]).read_text() and job["log_tail"].count("\n") == 9
    text = invoke("status", "--store", store)
    assert text.exit_code == 0 and "failed" in text.stdout and "last lines of" in text.stdout
    assert job["log_tail"].splitlines()[-1] in text.stdout


def test_slurm_without_submitit_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` raises ImportError
    res = invoke("run", "--target", "hubbard", *TINY, "--executor", "slurm", "--store", tmp_path / "r.sqlite")
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'sesamo-bench[slurm]'" in lines[0] and lines[0].startswith("error:")
    assert not (tmp_path / "r.sqlite").exists()


def test_slurm_submission_error_is_one_line(tmp_path, monkeypatch):
    """No sbatch on this machine: a clean error, and no manifest."""
    monkeypatch.setenv("PATH", str(tmp_path))
    res = invoke("run", "--target", "hubbard", "--seeds", "0", "--methods", "realnvp", *TINY, "--executor", "slurm",
                 "--store", tmp_path / "r.sqlite")
    assert res.exit_code == 2 and res.stderr.startswith("error: submitting 1 job(s) with --executor slurm failed")
    assert len(res.stderr.strip().splitlines()) == 1
    assert not list((tmp_path / "jobs").glob("*/manifest.json"))


def test_slurm_settings_table_and_options(tmp_path, monkeypatch):
    """[executor.slurm] of benchmarks.toml is validated; --slurm-* options win; the sbatch script has them."""
    from sesamo_bench.harness import benchmarks, cluster

    fake = tmp_path / "bin"  # submitit's SlurmExecutor wants an srun on PATH
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ.get('PATH', '')}")

    path = tmp_path / "benchmarks.toml"
    path.write_text('[executor.slurm]\npartition = "cpu"\ngpus = 0\ntime = 30\nmem = "8G"\n'
                    '[executor.slurm.sbatch]\naccount = "proj42"\n')
    table = benchmarks.executor_settings(path)
    cli = cluster.cli_settings(partition="gpu", gpus=1, cpus=None, mem=None, time_min=240,
                               sbatch=["qos=long", "account=proj7"])
    s = table.overridden_by(cli)
    assert (s.partition, s.gpus, s.time, s.mem, s.sbatch) == ("gpu", 1, 240, "8G", {"account": "proj7",
                                                                                   "qos": "long"})
    ex = cluster.make_executor("slurm", tmp_path / "jobs", s)
    script = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=1", "--time=240", "--mem=8G", "--account=proj7", "--qos=long",
                 "--signal=USR2@"):
        assert line in script
    assert len(benchmarks.load(path)) == 0

    path.write_text('[executor.slurm]\npartition = "gpu"\ngpu = 1\n')
    for call in (lambda: benchmarks.executor_settings(path), lambda: benchmarks.load(path)):
        with pytest.raises(Exception) as err:
            call()
        assert str(path) in str(err.value) and "[executor.slurm]" in str(err.value) and "'gpu'" in str(err.value)
    res = invoke("run", "--target", "hubbard", "--executor", "slurm", "--benchmarks-file", path, "--benchmark", "x")
    assert res.exit_code == 2 and "unknown key 'gpu'" in res.stderr and "[executor.slurm]" in res.stderr

    path.write_text('[executor.slurm]\nmem = 8\n')
    with pytest.raises(Exception, match="'mem' must be a size"):
        benchmarks.executor_settings(path)
    assert [cluster.slurm_category(s) for s in ("PENDING", "RUNNING", "CANCELLED by 12", "TIMEOUT", "UNKNOWN",
                                                "REQUEUED")] == ["queued", "running", "failed", "failed", "unknown",
                                                                 "queued"]


@pytest.mark.parametrize("extra, message", [
    (["--slurm-time", "10"], "--slurm-time applies to --executor slurm"),
    (["--wait"], "--wait applies to --executor slurm"),
    (["--executor", "pbs"], "--executor must be one of local, slurm, submitit-local"),
    (["--executor", "slurm", "--slurm-mem", "lots"], "'mem' must be a size"),
    (["--executor", "slurm", "--slurm-sbatch", "account"], "--slurm-sbatch: expected key=value"),
    (["--executor", "slurm", "--workers", "2"], "--workers applies to --executor local"),
])
def test_cluster_option_errors(tmp_path, extra, message):
    res = invoke("run", "--target", "hubbard", *TINY, "--store", tmp_path / "r.sqlite", *extra)
    assert res.exit_code == 2 and message in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "r.sqlite").exists()


def test_help_and_empty_status(tmp_path):
    out = invoke("run", "--help").stdout
    for opt in ("--executor", "--slurm-partition", "--slurm-gpus", "--slurm-cpus", "--slurm-mem", "--slurm-time",
                "--slurm-sbatch", "--wait"):
        assert opt in out
    res = invoke("status", "--store", tmp_path / "r.sqlite")
    assert res.exit_code == 0 and "no submitted jobs" in res.stderr
    assert invoke("collect", "--store", tmp_path / "r.sqlite").exit_code == 2
