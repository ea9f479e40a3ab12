"""Faults and hostile files (issue 18): planted pickles never run, a dead worker costs only its own
run, two processes never train the same run, a damaged checkpoint restarts the run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sesamo_bench.harness import claim
from sesamo_bench.cli import app
from sesamo_bench.harness.store import Store
from sesamo_bench.harness.checkpoint import state_digest
from sesamo_bench.harness.train import CheckpointError, load_checkpoint

from .test_reliability import TINY, _cli

GRID = ["run", "--target", "hubbard", "--methods", "realnvp", "--seeds", "0,1", *TINY, "--quiet", "--json",
        "--workers", "1"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


class Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _interrupted_grid(tmp_path: Path) -> tuple[Path, list[dict]]:
    """A finished two-run grid whose rows are then marked interrupted (so --resume loads their checkpoints)."""
    store = tmp_path / "r.sqlite"
    res = invoke(*GRID, "--store", store)
    assert res.exit_code == 0, res.stderr
    recs = json.loads(res.stdout)
    st = Store(store)
    for r in recs:
        assert (Path(r["run_dir"]) / "checkpoint.pt").exists()
        st.put({"run_id": r["run_id"], "status": "interrupted"})
    return store, recs


# ---------------------------------------------------------------------------------------------
# 1. no code runs from a results folder
# ---------------------------------------------------------------------------------------------
def test_planted_checkpoint_payload_does_not_run_on_resume(tmp_path):
    store, recs = _interrupted_grid(tmp_path)
    marker = tmp_path / "PWNED"
    ckpt = Path(recs[0]["run_dir"]) / "checkpoint.pt"
    real = torch.load(ckpt, weights_only=True)
    torch.save({**real, "history": [Payload(marker)]}, ckpt)  # a valid checkpoint with an object inside
    res = invoke(*GRID, "--store", store, "--resume")
    assert not marker.exists(), "the planted checkpoint ran its payload"
    assert res.exit_code == 0, res.stderr
    assert "Traceback" not in res.stderr
    [line] = [ln for ln in res.stderr.splitlines() if "checkpoint" in ln]
    assert "cannot be loaded" in line and "restarting from step 0" in line
    done = {r["run_id"]: r for r in json.loads(res.stdout)}
    assert done[recs[0]["run_id"]]["status"] == "finished" and done[recs[0]["run_id"]]["ess"] == recs[0]["ess"]
    row = Store(store).get(recs[0]["run_id"])
    assert row["provenance"]["resumed_from_step"] is None and "checkpoint_discarded" in row["provenance"]


def test_real_checkpoint_loads_with_weights_only(tmp_path):
    store, recs = _interrupted_grid(tmp_path)
    state = load_checkpoint(Path(recs[0]["run_dir"]) / "checkpoint.pt")
    assert state["step"] == 20 and state["history"] and isinstance(state["rng"], torch.Tensor)
    res = invoke(*GRID, "--store", store, "--resume")
    assert res.exit_code == 0 and "checkpoint" not in res.stderr, res.stderr
    for r in json.loads(res.stdout):
        assert Store(store).get(r["run_id"])["provenance"]["resumed_from_step"] == 20


def test_status_and_collect_never_unpickle_job_results(tmp_path):
    pytest.importorskip("submitit")
    from submitit.core.utils import JobPaths

    store = tmp_path / "r.sqlite"
    Store(store).close()
    marker = tmp_path / "PWNED"
    folder = tmp_path / "jobs" / "20260101-000000-abcdef"
    folder.mkdir(parents=True)
    job_id = "999999999"
    entry = {"run_id": "0123456789ab", "job_id": job_id, "label": "hubbard/realnvp/seed0", "benchmark": None,
             "target": "hubbard", "method": "realnvp", "seed": 0, "params": {}, "config": {}, "resume": False,
             "run_dir": str(tmp_path / "runs" / "0123456789ab"), "stdout": str(folder / f"{job_id}_0_log.out"),
             "stderr": str(folder / f"{job_id}_0_log.err")}
    (folder / "manifest.json").write_text(json.dumps({
        "submission": folder.name, "executor": "submitit-local", "created": "2026-01-01T00:00:00+00:00",
        "store": str(store), "folder": str(folder), "parameters": {}, "jobs": [entry]}))
    import pickle

    JobPaths(folder, job_id=job_id, task_id=0).result_pickle.write_bytes(
        pickle.dumps(("success", Payload(marker))))
    for cmd in (["status", "--store", store], ["status", "--store", store, "--json"], ["collect", "--store", store]):
        res = invoke(*cmd)
        assert not marker.exists(), f"{cmd[0]} unpickled a planted result"
        assert res.exit_code == 0, res.stderr
    assert Store(store).get("0123456789ab")["status"] == "failed"


@pytest.mark.parametrize("manifest", [[1, 2], {"submission": "x", "executor": "slurm", "folder": "f", "jobs": [3]},
                                      {"submission": "x", "executor": "local", "folder": "f", "jobs": []},
                                      {"submission": "x", "executor": "slurm", "folder": "f",
                                       "jobs": [{"run_id": "../../etc"}]}])
def test_malformed_manifest_is_one_line(tmp_path, manifest):
    store = tmp_path / "r.sqlite"
    Store(store).close()
    (tmp_path / "jobs" / "s").mkdir(parents=True)
    (tmp_path / "jobs" / "s" / "manifest.json").write_text(json.dumps(manifest))
    for cmd in ("status", "collect"):
        res = invoke(cmd, "--store", store)
        assert res.exit_code == 2 and res.stderr.startswith("error: job manifest"), res.stderr
        assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


# ---------------------------------------------------------------------------------------------
# 4. damaged checkpoints
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated", "foreign"])
def test_damaged_checkpoint_restarts_from_step_zero(tmp_path, damage):
    store, recs = _interrupted_grid(tmp_path)
    ckpt = Path(recs[0]["run_dir"]) / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes({"empty": b"", "garbage": b"\x00not a checkpoint" * 10, "truncated": data[: len(data) // 2],
                      "foreign": b""}[damage])
    if damage == "foreign":
        torch.save({"model": {"w": torch.zeros(3)}}, ckpt)
    with pytest.raises(CheckpointError):
        load_checkpoint(ckpt)
    res = invoke(*GRID, "--store", store, "--resume")
    assert res.exit_code == 0, res.stderr
    assert "Traceback" not in res.stderr
    notes = [ln for ln in res.stderr.splitlines() if "restarting from step 0" in ln]
    assert len(notes) == 1 and str(ckpt) in notes[0]
    out = {r["run_id"]: r for r in json.loads(res.stdout)}
    assert [out[r["run_id"]]["status"] for r in recs] == ["finished", "finished"]  # the grid went on
    assert out[recs[0]["run_id"]]["ess"] == recs[0]["ess"]  # retrained from step 0: the same numbers
    assert Store(store).get(recs[1]["run_id"])["provenance"]["resumed_from_step"] == 20


def test_checkpoint_of_another_model_restarts(tmp_path):
    store, recs = _interrupted_grid(tmp_path)
    other = Path(recs[1]["run_dir"]) / "checkpoint.pt"
    state = torch.load(other, weights_only=True)
    state["model"] = {k: torch.zeros(1) for k in state["model"]}
    state["digest"] = state_digest(state)  # a well-formed checkpoint, of another model
    torch.save(state, Path(recs[0]["run_dir"]) / "checkpoint.pt")
    res = invoke(*GRID, "--store", store, "--resume")
    assert res.exit_code == 0, res.stderr
    assert "does not fit this run" in res.stderr and "Traceback" not in res.stderr
    out = {r["run_id"]: r for r in json.loads(res.stdout)}
    assert out[recs[0]["run_id"]]["status"] == "finished" and out[recs[0]["run_id"]]["ess"] == recs[0]["ess"]


# ---------------------------------------------------------------------------------------------
# 2. a dead worker
# ---------------------------------------------------------------------------------------------
def _wait(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _running(store: Path, steps: int) -> dict | None:
    if not store.exists():
        return None
    try:
        rows = Store(store, create=False).runs(status="running")
    except Exception:  # noqa: BLE001 - being created
        return None
    return next((r for r in rows if r["config"].get("steps") == steps and r["provenance"].get("pid")), None)


def test_killed_worker_fails_only_its_run(tmp_path):
    store = tmp_path / "r.sqlite"
    args = ["run", "--target", "hubbard", "--methods", "realnvp", "--seeds", "0", "--preset", "smoke",
            "--set", "batch_size=64", "--set", "final_samples=256", "--sweep", "steps=100000,30,40",
            "--workers", "2", "--quiet", "--json", "--store", str(store)]
    proc = subprocess.Popen([*_cli(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim = _wait(lambda: _running(store, 100000), 120, "the long run to start")
        os.kill(victim["provenance"]["pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err  # a failed run, not a signal
    assert "stopped by" not in err and "Traceback" not in err
    rows = {r["config"]["steps"]: r for r in Store(store).runs()}
    recs = json.loads(out)
    assert len(recs) == 3 and len(Store(store).runs()) == 3
    dead = Store(store).get(victim["run_id"])
    assert dead["status"] == "failed" and "SIGKILL" in dead["error"]
    assert str(victim["provenance"]["pid"]) in dead["error"]
    others = [r for r in Store(store).runs() if r["run_id"] != victim["run_id"]]
    assert [(r["status"], r["steps"]) for r in others] == [("finished", 30), ("finished", 40)]
    assert rows[30]["ess"] > 0 and rows[40]["ess"] > 0


# ---------------------------------------------------------------------------------------------
# 3. claims: two processes never train the same run
# ---------------------------------------------------------------------------------------------
def test_second_process_skips_a_run_in_progress(tmp_path):
    store = tmp_path / "r.sqlite"
    args = ["run", "--target", "hubbard", "--methods", "realnvp", "--seeds", "0", "--preset", "smoke",
            "--set", "batch_size=64", "--set", "final_samples=256", "--set", "steps=100000", "--set",
            "checkpoint_every=10", "--quiet", "--json", "--workers", "1", "--store", str(store)]
    first = subprocess.Popen([*_cli(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        row = _wait(lambda: _running(store, 100000), 120, "the run to start")
        run_dir = Path(row["run_dir"])
        _wait(lambda: (run_dir / "checkpoint.pt").exists(), 60, "a checkpoint")
        for extra in ([], ["--resume"]):
            res = invoke(*args, *extra)
            assert res.exit_code == 0, res.stderr
            assert "being trained by pid" in res.stderr and str(first.pid) in res.stderr, res.stderr
            assert first.poll() is None and (run_dir / "checkpoint.pt").exists()
            now = Store(store).get(row["run_id"])
            assert now["status"] == "running" and now["provenance"]["pid"] == first.pid
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 143, err
    assert json.loads(out)[0]["status"] == "interrupted"
    assert not (run_dir / claim.CLAIM).exists()  # released


def _plant_claim(run_dir: Path, **owner) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / claim.CLAIM).write_text(json.dumps({"token": "old", **owner}))


def test_stale_claims_are_taken_over_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    # a dead pid on this host: stale
    _plant_claim(tmp_path / "a", host=host, pid=dead.pid)
    with claim.acquire(tmp_path / "a") as c:
        assert json.loads((tmp_path / "a" / claim.CLAIM).read_text())["pid"] == os.getpid() and c.owned()
    assert not (tmp_path / "a" / claim.CLAIM).exists()
    # another host, heartbeat expired: stale
    _plant_claim(tmp_path / "b", host="elsewhere", pid=1)
    old = time.time() - claim.STALE_S - 5
    os.utime(tmp_path / "b" / claim.CLAIM, (old, old))
    claim.acquire(tmp_path / "b").release()
    # another host with a fresh heartbeat, and a live pid here: live, left alone
    _plant_claim(tmp_path / "c", host="elsewhere", pid=1)
    _plant_claim(tmp_path / "d", host=host, pid=os.getppid())
    for d in ("c", "d"):
        with pytest.raises(claim.Busy):
            claim.acquire(tmp_path / d)
        assert json.loads((tmp_path / d / claim.CLAIM).read_text())["token"] == "old"
    # a live claim is waited for: it is released meanwhile
    held = claim.acquire(tmp_path / "e")
    t0 = time.monotonic()
    import threading

    threading.Timer(0.5, held.release).start()
    claim.acquire(tmp_path / "e", wait_s=10, poll_s=0.1).release()
    assert 0.4 < time.monotonic() - t0 < 10


def test_run_takes_over_a_stale_claim(tmp_path):
    store = tmp_path / "r.sqlite"
    res = invoke(*GRID, "--store", store)
    recs = json.loads(res.stdout)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _plant_claim(Path(recs[0]["run_dir"]), host=socket.gethostname(), pid=dead.pid)
    res = invoke(*GRID, "--store", store)
    assert res.exit_code == 0 and "being trained" not in res.stderr, res.stderr
    assert [r["status"] for r in json.loads(res.stdout)] == ["finished", "finished"]


# ---------------------------------------------------------------------------------------------
# 8. the native kernel cache loads only what it built
# ---------------------------------------------------------------------------------------------
def test_planted_native_library_is_not_loaded(tmp_path, monkeypatch):
    import shutil

    from sesamo_bench.core import native

    cc = native._compiler()
    if cc is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("SESAMO_BENCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir(mode=0o700)
    target = native._build()
    marker = tmp_path / "PWNED"
    src = tmp_path / "evil.c"
    src.write_text('#include <stdio.h>\n__attribute__((constructor)) static void evil(void) '
                   f'{{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n')
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(tmp_path / "evil.so"), str(src)], check=True)
    shutil.copy(tmp_path / "evil.so", target)  # the predictable name, a library that runs code on load
    native.library.cache_clear()
    try:
        lib = native.library()
        assert not marker.exists(), "the planted library was loaded"
        assert lib is not None and native._verified(target)
    finally:
        native.library.cache_clear()


def test_checkpoint_write_failure_leaves_no_tmp(tmp_path, monkeypatch):
    import errno

    from sesamo_bench.harness import train
    from sesamo_bench.errors import StoreError

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train.torch, "save", full)
    with pytest.raises(StoreError, match="No space left"):
        train._save_checkpoint(tmp_path / "checkpoint.pt", {"step": 1})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 9. a plugin folder runs only what its plugin sub-folders hold
# ---------------------------------------------------------------------------------------------
def test_flat_plugin_folder_executes_nothing(tmp_path, monkeypatch):
    from sesamo_bench import plugins

    folder = tmp_path / "downloads"
    folder.mkdir()
    marker = tmp_path / "ran"
    (folder / "setup_helper.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.setenv("SESAMO_BENCH_PLUGINS", str(folder))
    plugins.reload()
    try:
        res = invoke("list")
        assert res.exit_code == 0, res.stderr
        assert not marker.exists()
        assert f"SESAMO_BENCH_PLUGINS folder {folder}: none of the sub-folders" in res.stdout
        assert "hubbard" in res.stdout
        # the same file inside a targets/ sub-folder is a plugin and is imported
        (folder / "targets").mkdir()
        (folder / "setup_helper.py").rename(folder / "targets" / "setup_helper.py")
        plugins.reload()
        res = invoke("list", "targets")
        assert res.exit_code == 0 and marker.exists() and "none of the sub-folders" not in res.stdout
    finally:
        monkeypatch.delenv("SESAMO_BENCH_PLUGINS")
        plugins.reload()
