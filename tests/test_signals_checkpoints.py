"""Reliability, round 2 (issue 30, items 0 and 5): checkpoints that are links, directories, edited,
non-finite or of another run; a second signal during the final evaluation; a claim taken over
while its process was stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from sesamo_bench.harness import claim, runner
from sesamo_bench.harness import train as train_mod
from sesamo_bench.harness.checkpoint import (CheckpointError, load_checkpoint, save_checkpoint, state_digest)
from sesamo_bench.harness.grid import GridRequest, plan
from sesamo_bench.harness.store import Store

from .test_faults import _running, _wait
from .test_reliability import _cli

SMALL = {"steps": 20, "batch_size": 64, "eval_samples": 512, "final_samples": 1024, "eval_every": 10,
         "checkpoint_every": 10}


def _run(tmp_path: Path, seed: int = 0, **over):
    runs, _ = plan(GridRequest(target="gaussian-mixture", methods=["realnvp"], seeds=[seed], preset="smoke",
                               overrides={**SMALL, **over}))
    return runs[0]


def _execute(run, run_dir: Path, *, resume: bool = False, stop=lambda: False, store: Store | None = None):
    events = []
    with runner.one_thread():
        rec = runner.execute_in_dir(run, run_dir, resume=resume, should_stop=stop,
                                    emit=lambda k, r, d: events.append((k, d)),
                                    put=store.put if store is not None else None)
    return rec, events


def _notes(events) -> str:
    return " ".join(d.get("message", "") for k, d in events if k == "note")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """One uninterrupted run (its record and checkpoint)."""
    d = tmp_path_factory.mktemp("fresh")
    run = _run(d)
    rec, _ = _execute(run, d / run.run_id)
    assert rec["status"] == "finished"
    return run, rec, d / run.run_id / "checkpoint.pt"


# ---------------------------------------------------------------------------------------------
# item 0: the checkpoint's temporary file and the checkpoint itself are never followed as links
# ---------------------------------------------------------------------------------------------
def test_planted_tmp_links_are_not_followed(tmp_path, fresh):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("checkpoint.tmp", f".checkpoint.pt.{os.getpid()}.tmp"):
        (run_dir / name).symlink_to(outside)
    state = load_checkpoint(fresh[2])
    save_checkpoint(run_dir / "checkpoint.pt", state)
    assert outside.read_text() == "precious"
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == state["step"]


@pytest.mark.parametrize("kind", ["symlink", "directory"])
def test_checkpoint_that_is_a_link_or_a_directory_is_reported_and_replaced(tmp_path, fresh, kind):
    run, rec, ckpt = fresh
    run_dir = tmp_path / run.run_id
    run_dir.mkdir()
    outside = tmp_path / "outside.pt"
    outside.write_bytes(ckpt.read_bytes())
    if kind == "symlink":
        (run_dir / "checkpoint.pt").symlink_to(outside)
    else:
        (run_dir / "checkpoint.pt").mkdir()
        (run_dir / "checkpoint.pt" / "x").write_text("x")
    with pytest.raises(CheckpointError, match=kind.replace("symlink", "symbolic link")):
        load_checkpoint(run_dir / "checkpoint.pt")
    got, events = _execute(run, run_dir, resume=True)
    assert got["status"] == "finished" and got["ess"] == rec["ess"]  # restarted from step 0: same numbers
    assert "restarting from step 0" in _notes(events)
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / "checkpoint.pt").is_symlink()
    assert outside.read_bytes() == ckpt.read_bytes()  # the link's target is untouched


# ---------------------------------------------------------------------------------------------
# item 0: checksum, finite weights, the seed (the run) that wrote it
# ---------------------------------------------------------------------------------------------
def test_digest_survives_save_and_load_and_finds_an_edit(tmp_path, fresh):
    state = load_checkpoint(fresh[2])
    assert state_digest(state) == state["digest"]
    name = next(iter(state["model"]))
    state["model"][name] = state["model"][name].clone()
    state["model"][name].view(-1)[0] += 1e-6  # one weight edited, the old digest kept
    torch.save(state, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(tmp_path / "edited.pt")
    state.pop("digest")
    torch.save(state, tmp_path / "nodigest.pt")
    with pytest.raises(CheckpointError, match="no checksum"):
        load_checkpoint(tmp_path / "nodigest.pt")


def test_non_finite_weights_are_refused(tmp_path, fresh):
    state = load_checkpoint(fresh[2])
    name = next(iter(state["model"]))
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    save_checkpoint(tmp_path / "nan.pt", state)  # a correct checksum over NaN weights
    with pytest.raises(CheckpointError, match="non-finite weights"):
        load_checkpoint(tmp_path / "nan.pt")


def test_checkpoint_of_another_seed_is_refused_and_the_run_restarts(tmp_path, fresh):
    run, rec, ckpt = fresh
    other = _run(tmp_path, seed=5)
    assert other.run_id != run.run_id
    run_dir = tmp_path / other.run_id
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(ckpt.read_bytes())  # same model shapes, seed 0's weights
    got, events = _execute(other, run_dir, resume=True)
    assert "does not fit this run" in _notes(events) and "seed=0 (this run: 5)" in _notes(events)
    assert got["status"] == "finished" and got["provenance"]["resumed_from_step"] is None
    clean, _ = _execute(other, tmp_path / "clean" / other.run_id)
    assert got["ess"] == clean["ess"]


# ---------------------------------------------------------------------------------------------
# item 5: a second signal during the final evaluation records the run and keeps the checkpoint
# ---------------------------------------------------------------------------------------------
def test_forced_stop_during_final_evaluation_records_the_run(tmp_path, fresh, monkeypatch):
    run, rec, _ = fresh
    store = Store(tmp_path / "r.sqlite")
    run_dir = store.runs_dir / run.run_id
    real = train_mod.evaluate

    def evaluate(model, target, n, **kw):
        if n == run.config.final_samples:
            raise runner.ForcedStop(signal.SIGTERM)  # what the second signal's handler raises
        return real(model, target, n, **kw)

    monkeypatch.setattr(train_mod, "evaluate", evaluate)
    with pytest.raises(KeyboardInterrupt):
        _execute(run, run_dir, store=store)
    row = store.get(run.run_id)
    assert row["status"] == "interrupted" and row["steps"] == run.config.steps
    assert json.loads((run_dir / "result.json").read_text())["status"] == "interrupted"
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == run.config.steps  # the final checkpoint
    assert not (run_dir / claim.CLAIM).exists()
    monkeypatch.setattr(train_mod, "evaluate", real)
    got, _ = _execute(run, run_dir, resume=True, store=store)
    assert got["status"] == "finished" and got["ess"] == rec["ess"]
    assert got["provenance"]["resumed_from_step"] == run.config.steps


# ---------------------------------------------------------------------------------------------
# item 5: a claim taken over while its process was stopped
# ---------------------------------------------------------------------------------------------
def test_lost_claim_stops_the_run_without_writing(tmp_path, fresh, monkeypatch):
    run, _, _ = fresh
    run = _run(tmp_path, steps=200)
    store = Store(tmp_path / "r.sqlite")
    run_dir = store.runs_dir / run.run_id
    monkeypatch.setattr(claim, "CHECK_S", 0.0)
    real_step = train_mod.Trainer.step

    def step(self, i):
        if i == 35:  # another process takes the claim over (as after STALE_S of SIGSTOP)
            (run_dir / claim.CLAIM).write_text(json.dumps({"token": "theirs", "pid": 1, "host": "elsewhere"}))
            (run_dir / "checkpoint.pt").unlink()
        return real_step(self, i)

    monkeypatch.setattr(train_mod.Trainer, "step", step)
    res = runner.execute(run, store.path, resume=False, should_stop=lambda: False, emit=lambda *a: None)
    assert res["status"] == "running"  # the row as it stands: the other process records the run
    assert not (run_dir / "checkpoint.pt").exists()  # nothing written after the take-over
    assert not (run_dir / "result.json").exists()
    assert json.loads((run_dir / claim.CLAIM).read_text())["token"] == "theirs"  # their claim is left alone


@pytest.mark.slow
def test_stopped_process_whose_claim_went_stale_leaves_the_run(tmp_path):
    store = tmp_path / "r.sqlite"
    env = {**os.environ, "SESAMO_BENCH_CLAIM_STALE_S": "3"}
    args = ["run", "--target", "gaussian-mixture", "--methods", "realnvp", "--seeds", "0", "--preset", "smoke",
            "--set", "batch_size=64", "--set", "final_samples=256", "--set", "steps=400", "--set",
            "checkpoint_every=20", "--quiet", "--json", "--workers", "1", "--store", str(store)]
    first = subprocess.Popen([*_cli(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        row = _wait(lambda: _running(store, 400), 120, "the run to start")
        run_dir = Path(row["run_dir"])
        _wait(lambda: (run_dir / "checkpoint.pt").exists(), 60, "a checkpoint")
        first.send_signal(signal.SIGSTOP)
        time.sleep(4)  # the claim's heartbeat goes stale
        second = subprocess.run([*_cli(), *args, "--resume"], capture_output=True, text=True, env=env, timeout=300)
        assert second.returncode == 0, second.stderr
        done = json.loads(second.stdout)[0]
        assert done["status"] == "finished"
        assert Store(store).get(done["run_id"])["provenance"]["pid"] not in (None, first.pid)
        result = (run_dir / "result.json").read_bytes()
        first.send_signal(signal.SIGCONT)
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert "taken over by" in err, err
    assert (run_dir / "result.json").read_bytes() == result  # the first process wrote nothing more
    assert Store(store).get(done["run_id"])["status"] == "finished"


@pytest.mark.slow
@pytest.mark.parametrize("second", [None, signal.SIGTERM])
def test_signals_during_final_evaluation_record_the_run(tmp_path, second):
    store = tmp_path / "r.sqlite"
    args = ["run", "--target", "gaussian-mixture", "--methods", "realnvp", "--seeds", "0", "--preset", "smoke",
            "--set", "steps=20", "--set", "final_samples=30000000", "--quiet", "--json", "--workers", "1",
            "--store", str(store)]
    proc = subprocess.Popen([*_cli(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        row = _wait(lambda: _running(store, 20), 120, "the run to start")
        run_dir = Path(row["run_dir"])
        _wait(lambda: (run_dir / "checkpoint.pt").exists() and load_step(run_dir) == 20, 120, "the final checkpoint")
        time.sleep(0.5)  # in the final evaluation
        proc.send_signal(signal.SIGINT)
        if second is not None:  # at once: a forced stop, or (once the run is recorded) the default action
            proc.send_signal(second)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in ((130,) if second is None else (130, 143, -second)), err
    assert "Traceback" not in err
    got = Store(store).get(row["run_id"])
    assert got["status"] == "interrupted" and got["steps"] == 20, got["status"]
    assert load_step(run_dir) == 20


def load_step(run_dir: Path) -> int | None:
    try:
        return load_checkpoint(run_dir / "checkpoint.pt")["step"]
    except (CheckpointError, OSError):
        return None


@pytest.mark.slow
def test_results_do_not_depend_on_a_worker_killed_beside_them(tmp_path):
    """Kill one worker while the other run evaluates: the healthy runs' numbers equal the same runs
    trained alone, one after the other."""
    common = ["--target", "hubbard", "--methods", "realnvp", "--seeds", "0", "--preset", "smoke",
              "--set", "batch_size=64", "--set", "eval_every=10", "--set", "eval_samples=200000",
              "--set", "final_samples=200000", "--quiet", "--json"]
    alone = subprocess.run([*_cli(), "run", *common, "--sweep", "steps=30,40", "--workers", "1",
                            "--store", str(tmp_path / "alone.sqlite")], capture_output=True, text=True, timeout=600)
    assert alone.returncode == 0, alone.stderr
    want = {r["config"]["steps"]: r["ess"] for r in Store(tmp_path / "alone.sqlite").runs()}
    store = tmp_path / "r.sqlite"
    proc = subprocess.Popen([*_cli(), "run", *common, "--sweep", "steps=100000,30,40", "--workers", "2",
                             "--store", str(store)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim = _wait(lambda: _running(store, 100000), 120, "the long run to start")
        _wait(lambda: _running(store, 30) or _running(store, 40), 120, "a healthy run to start")
        time.sleep(1.5)  # the healthy run is in one of its evaluations
        os.kill(victim["provenance"]["pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    got = {r["config"]["steps"]: r["ess"] for r in Store(store).runs() if r["status"] == "finished"}
    assert got == want, err
