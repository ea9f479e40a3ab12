"""The cluster path against a real Slurm: a private single-node cluster (munge, slurmctld, slurmd)
started by ``.ci/slurm-up`` for this module; every test here skips where it cannot start (no
slurm-wlm installed, not root, not Linux).

What runs for real: ``run --executor slurm`` (sbatch, a job array), ``status`` (squeue: this
cluster has no accounting storage, as many small clusters), a job that reaches its time limit,
gets submitit's USR2, is requeued by Slurm and resumes from its checkpoint, ``scancel`` then
``run --resume``, ``collect``; the numbers equal a local run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sesamo_bench.cli import app
from sesamo_bench.harness.store import Store

pytest.importorskip("submitit")

ROOT = Path(__file__).resolve().parent.parent
NUMBERS = ("status", "steps", "ess", "log_z", "log_z_err", "breaking_ratio")
SLURM = ["--executor", "slurm", "--slurm-cpus", "1"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if not sys.platform.startswith("linux"):
        pytest.skip("the test cluster needs Linux")
    d = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ)
    env.setdefault("SESAMO_BENCH_NO_APT", "1")  # .ci/run installs slurm-wlm; a test never does
    try:
        res = subprocess.run([str(ROOT / ".ci" / "slurm-up"), str(d)], capture_output=True, text=True, timeout=180,
                             env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"no Slurm test cluster: {exc}")
    if res.returncode != 0:
        pytest.skip(f"no Slurm test cluster: {res.stderr.strip().splitlines()[-1:]}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = res.stdout.strip().splitlines()[-1]
    yield d
    # jobs first (while slurmctld still runs), then the daemons
    subprocess.run(["scancel", "--user", str(os.getuid())], check=False, capture_output=True)
    for _ in range(30):
        out = subprocess.run(["squeue", "--noheader"], capture_output=True, text=True, check=False).stdout
        if not out.strip():
            break
        time.sleep(1)
    subprocess.run([str(ROOT / ".ci" / "slurm-down"), str(d)], check=False)
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok_json(*args):
    res = invoke(*args)
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")


def states(store: Path) -> dict[str, str]:
    return {j["run_id"]: j["state"] for j in ok_json("status", "--store", store, "--json")}


def ended(store: Path) -> dict[str, str] | None:
    s = states(store)
    return s if s and all(v not in ("queued", "running") for v in s.values()) else None


def timeless(history):
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in history]


def test_grid_on_real_slurm_equals_local(slurm, tmp_path):
    grid = ["--target", "gaussian-mixture", "--methods", "realnvp,sesamo", "--seeds", "0", "--preset", "smoke",
            "--set", "steps=40", "--set", "batch_size=128", "--set", "final_samples=512"]
    store = tmp_path / "cluster" / "r.sqlite"
    submitted = ok_json("run", *grid, *SLURM, "--store", store, "--json")
    assert [s["status"] for s in submitted] == ["submitted"] * 2
    assert all("_" in s["job_id"] for s in submitted)  # Slurm array task ids, not pids
    first = states(store)
    assert set(first.values()) <= {"queued", "running", "finished"}, first
    local = ok_json("run", *grid, "--store", tmp_path / "local" / "r.sqlite", "--json", "--quiet")
    final = wait_for(lambda: ended(store), 240, "the Slurm jobs")
    assert set(final.values()) == {"finished"}, final
    text = invoke("status", "--store", store)
    assert text.exit_code == 0 and "2 finished" in text.stdout
    got = {r["run_id"]: r for r in ok_json("collect", "--store", store, "--json")}
    for ref in local:
        for key in NUMBERS:
            assert got[ref["run_id"]][key] == ref[key], (ref["method"], key)
        row = Store(store).get(ref["run_id"])
        assert row["provenance"]["cluster"] == "slurm" and row["provenance"]["job_id"] in {
            s["job_id"] for s in submitted}


# one configuration, long enough to span time-limit signals, shared by the two tests below
LONG = ["--target", "gaussian-mixture", "--methods", "sesamo", "--seeds", "0", "--dtype", "float64",
        "--preset", "smoke", "--set", "batch_size=128", "--set", "final_samples=512", "--set", "eval_every=100",
        "--set", "checkpoint_every=20"]
_REFERENCE: dict[str, tuple] = {}


@pytest.fixture(scope="module")
def long_args(slurm, tmp_path_factory) -> list[str]:
    """The run's arguments: ~45 s of training on this machine (calibrated on a short run), so that a
    job with a one-minute limit and USR2 45 s before it (sent 15-45 s into each attempt: slurmctld
    looks every 30 s) is signalled at least once whatever the load."""
    d = tmp_path_factory.mktemp("calibrate")
    [rec] = ok_json("run", *LONG, "--set", "steps=400", "--store", d / "r.sqlite", "--json", "--quiet")
    per_step = max(rec["wall_s"], 1e-3) / 400
    steps = int(min(60000, max(2000, 45 / per_step)) // 100 * 100)
    return [*LONG, "--set", f"steps={steps}"]


def shorter(args: list[str], factor: int) -> list[str]:
    steps = int(args[-1].split("=")[1])
    return [*args[:-1], f"steps={max(400, steps // factor // 100 * 100)}"]


def reference(args: list[str], tmp_path: Path) -> tuple[dict, dict]:
    """The local, uninterrupted run of ``args`` (computed once, while the first cluster job runs)."""
    key = " ".join(args)
    if key not in _REFERENCE:
        store = tmp_path / "reference" / "r.sqlite"
        [ref] = ok_json("run", *args, "--store", store, "--json", "--quiet")
        _REFERENCE[key] = (ref, Store(store).get(ref["run_id"]))
    return _REFERENCE[key]


def _check_equal(store: Path, ref: tuple[dict, dict]) -> dict:
    [got] = ok_json("collect", "--store", store, "--json")
    for key in NUMBERS:
        assert got[key] == ref[0][key], key
    row = Store(store).get(got["run_id"])
    assert timeless(row["history"]) == timeless(ref[1]["history"])
    return row


def test_time_limit_requeues_and_resumes_from_checkpoint(slurm, tmp_path, long_args):
    store = tmp_path / "r.sqlite"
    # a one-minute limit with submitit's USR2 45 s before it: after 15-45 s (slurmctld checks every
    # 30 s) each attempt is signalled, checkpoints, is requeued by Slurm and resumes
    [sub] = ok_json("run", *long_args, *SLURM, "--slurm-time", "1", "--slurm-sbatch", "signal=USR2@45",
                    "--store", store, "--json")
    ref = reference(long_args, tmp_path)
    states_seen = wait_for(lambda: ended(store), 480, "the requeued job")
    logs = Path(sub["stdout"]).read_text() + Path(sub["stderr"]).read_text()
    assert "Requeued job" in logs, logs[-3000:]
    if states_seen[sub["run_id"]] == "failed" and "User defined signal 2" in logs:
        # Slurm may send the time-limit signal up to a minute early: into a requeued attempt still
        # starting Python (before submitit's handler is installed), which then dies. The recovery
        # is the documented one, `run --resume`, from the same checkpoint
        [sub] = ok_json("run", *long_args, *SLURM, "--slurm-time", "1", "--slurm-sbatch", "signal=USR2@45",
                        "--resume", "--store", store, "--json")
        wait_for(lambda: ended(store), 480, "the resubmitted job")
    row = _check_equal(store, ref)
    assert 0 < row["provenance"]["resumed_from_step"] < row["steps"]
    assert row["provenance"]["job_id"] == sub["job_id"]  # the same job, requeued


def test_resume_after_scancel(slurm, tmp_path, long_args):
    long_args = shorter(long_args, 4)  # no time limit here: ~20 s of training are enough
    store = tmp_path / "r.sqlite"
    [sub] = ok_json("run", *long_args, *SLURM, "--store", store, "--json")
    ckpt = Path(sub["run_dir"]) / "checkpoint.pt"
    wait_for(ckpt.exists, 180, "the first checkpoint")
    subprocess.run(["scancel", sub["job_id"].split("_")[0]], check=True)
    assert wait_for(lambda: ended(store), 120, "the cancelled job") == {sub["run_id"]: "failed"}
    st = ok_json("status", "--store", store, "--json")
    assert "CANCELLED" in st[0]["detail"]
    [again] = ok_json("run", *long_args, *SLURM, "--resume", "--store", store, "--json")
    assert again["job_id"] != sub["job_id"]
    ref = reference(long_args, tmp_path)
    assert wait_for(lambda: ended(store), 300, "the resumed job") == {sub["run_id"]: "finished"}
    row = _check_equal(store, ref)
    assert row["provenance"]["resumed_from_step"] > 0 and row["provenance"]["job_id"] == again["job_id"]
