"""The results store: schema marker, upserts, JSON columns, concurrency, failures."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest

from sesamo_bench.errors import StoreError
from sesamo_bench.harness.store import Store, run_id, write_history_csv, write_json


def _record(i: int, status: str = "finished") -> dict:
    return {"run_id": f"r{i:04d}", "target": "t", "method": "m", "seed": i, "status": status,
            "params": {"beta": 1.0 + i}, "config": {"steps": 10}, "history": [{"step": 1, "ess": 0.5}],
            "ess": 0.5, "log_z": float("nan"), "log_z_err": float("inf"), "started": f"2026-01-01T00:00:{i % 60:02d}"}


def test_put_get_upsert_and_filters(tmp_path):
    s = Store(tmp_path / "a" / "r.sqlite")
    s.put(_record(1, "running"))
    s.put({"run_id": "r0001", "status": "finished", "steps": 10})
    s.put(_record(2, "diverged"))
    got = s.get("r0001")
    assert got["status"] == "finished" and got["steps"] == 10
    assert got["params"] == {"beta": 2.0} and got["history"] == [{"step": 1, "ess": 0.5}]
    assert got["log_z"] is None and got["log_z_err"] == float("inf")
    assert [r["run_id"] for r in s.runs()] == ["r0001", "r0002"]
    assert [r["run_id"] for r in s.runs(status="diverged")] == ["r0002"]
    assert s.find("r0002")["seed"] == 2
    with pytest.raises(StoreError, match="ambiguous"):
        s.find("r000")
    with pytest.raises(StoreError, match="no run"):
        s.find("zzz")


def test_run_id_ignores_execution_fields():
    cfg = {"target": "t", "steps": 10, "device": "cpu", "threads": 0, "compile": False}
    same = dict(cfg, device="cuda", threads=4, compile=True)
    assert run_id(cfg) == run_id(same)
    assert len(run_id(cfg)) == 12
    assert run_id(cfg) != run_id(dict(cfg, steps=11))
    assert run_id(cfg) != run_id(cfg, "bench")


def test_rejects_foreign_files(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 50)
    with pytest.raises(StoreError, match="is not a sesamo-bench results database"):
        Store(junk)
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="is not a sesamo-bench results database"):
        Store(other)
    with pytest.raises(StoreError, match="no results database"):
        Store(tmp_path / "missing.sqlite", create=False)
    assert not (tmp_path / "missing.sqlite").exists()


def test_unwritable_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot write results store"):
        Store(blocker / "r.sqlite")
    with pytest.raises(StoreError, match="cannot write"):
        write_json(blocker / "sub" / "x.json", {})


def test_read_only_database_keeps_rows(tmp_path, monkeypatch):
    path = tmp_path / "r.sqlite"
    s = Store(path)
    s.put(_record(1))
    s.close()
    monkeypatch.setattr(Store, "_connect",
                        lambda self: sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30))
    with pytest.raises(StoreError, match="readonly"):
        Store(path)
    monkeypatch.undo()
    assert [r["run_id"] for r in Store(path).runs()] == ["r0001"]


def test_atomic_files(tmp_path):
    write_history_csv(tmp_path / "h.csv", [{"step": 1, "ess": 0.1}, {"step": 2, "ess": 0.2, "breaking_ratio": -0.5}])
    text = (tmp_path / "h.csv").read_text().splitlines()
    assert text[0] == "step,ess,breaking_ratio" and text[2] == "2,0.2,-0.5"
    write_json(tmp_path / "x.json", {"a": float("nan")})
    assert (tmp_path / "x.json").read_text().strip().replace(" ", "").replace("\n", "") == '{"a":null}'
    assert not list(tmp_path.glob(".*.tmp"))


def _writer(path: str, worker: int, n: int) -> None:
    s = Store(path)
    for i in range(n):
        s.put(_record(worker * 1000 + i, "running"))
        s.put({"run_id": f"r{worker * 1000 + i:04d}", "status": "finished"})
        s.put(_record(i))  # the same ids from every process: upserts, never duplicates


def test_concurrent_processes_lose_no_rows(tmp_path):
    path = str(tmp_path / "r.sqlite")
    Store(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 40)) for w in range(1, 5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = Store(path).runs()
    ids = [r["run_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 4 * 40 + 40
    assert all(r["status"] == "finished" for r in rows)
