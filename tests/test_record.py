"""One typed run record end to end (issue 28): each metric declared once, on RunRecord; the runner
builds the record, the store writes and returns it, report and measure read it; a grid is planned
and validated without building a model."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sesamo_bench.cli import app
from sesamo_bench.errors import ConfigError, IncompatibleError
from sesamo_bench.harness import record
from sesamo_bench.harness.evaluate import Evaluation
from sesamo_bench.harness.record import METRICS, RESULT_METRICS, RunRecord
from sesamo_bench.harness.store import Store
from sesamo_bench.harness.train import Result

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "smoke", "--set", "steps=20", "--set", "batch_size=128", "--set", "final_samples=512"]


def _annotated_names(path: Path, cls: str) -> set[str]:
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}


def test_each_metric_is_declared_once_on_the_record():
    """Result and Evaluation declare no metric field of their own: they take the names from RunRecord
    and refuse one it does not declare."""
    for path, cls in ((ROOT / "sesamo_bench/harness/train.py", "Result"),
                      (ROOT / "sesamo_bench/harness/evaluate.py", "Evaluation")):
        assert not _annotated_names(path, cls) & set(RESULT_METRICS), cls
    assert set(RESULT_METRICS) <= set(METRICS) | set(record.COLUMN_METRICS)
    assert set(record.COLUMN_METRICS) <= set(record.COLUMNS)
    res = Result(None, "finished", 10, 1.0, ess=0.5, nll=3.0, info={"extra": 1})
    assert (res.ess, res.nll, res.coordinate_w2) == (0.5, 3.0, None)
    assert list(res.metrics()) == [*RESULT_METRICS, "extra"]
    assert res.record()["ess"] == 0.5 and res.record()["metrics"]["nll"] == 3.0
    with pytest.raises(TypeError, match="unknown metric 'nll_typo'"):
        Result(None, "finished", 10, 1.0, nll_typo=1.0)
    with pytest.raises(TypeError, match="unknown metric"):
        Evaluation(ess=1.0, not_a_metric=2.0)
    with pytest.raises(AttributeError):
        _ = res.not_a_metric


def test_the_record_is_the_dict_of_its_columns():
    r = RunRecord(run_id="abc", status="running", metrics={"ess_n": 12.0})
    assert list(r) == list(record.COLUMNS) and r.history == [] and r.params == {}
    assert r.ess_n == 12.0 and r == json.loads(json.dumps(r))
    r.nll = 7.0
    r.ess_n = None
    assert r["metrics"] == {"nll": 7.0}
    copy = r.replace(status="finished")
    copy.nll = 1.0
    assert (r.status, r.nll, copy.status, copy.nll) == ("running", 7.0, "finished", 1.0)
    with pytest.raises(ValueError, match="unknown store columns"):
        RunRecord(run_id="x", not_a_column=1)


def test_a_run_goes_through_one_record(tmp_path, monkeypatch):
    """The runner builds a RunRecord, the store returns one (typed, JSON as before), and the
    report, ``show`` and ``--json`` read it."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["run", "--target", "gaussian-mixture", "--methods", "realnvp", "--seeds", "0",
                                   *TINY, "--json"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout[res.stdout.index("["):])
    store = Store(tmp_path / "sesamo-runs" / "results.sqlite")
    (rec,) = store.runs()
    assert isinstance(rec, RunRecord) and rec.status == "finished" and rec.steps == 20
    assert rec.ess == rec["ess"] == rec.metrics["ess"] == printed[0]["ess"]
    assert rec.ess_n == pytest.approx(rec.ess * 512) and rec.ess_n == printed[0]["ess_n"]
    assert rec.log_z_exact is not None and rec.config["steps"] == 20 and Path(rec.run_dir).is_dir()
    on_disk = json.loads((Path(rec.run_dir) / "result.json").read_text())
    assert {k: on_disk[k] for k in ("run_id", "status", "ess", "metrics")} == \
        {k: rec[k] for k in ("run_id", "status", "ess", "metrics")}
    rep = CliRunner().invoke(app, ["report", "--format", "json"])
    assert rep.exit_code == 0 and json.loads(rep.stdout)[0]["ess_mean"] == pytest.approx(rec.ess)
    shown = CliRunner().invoke(app, ["show", rec.run_id[:6]])
    assert shown.exit_code == 0 and rec.run_id in shown.output


def test_a_grid_is_validated_without_building_a_model(monkeypatch):
    """Planning refuses what the model build would refuse (the method, the flow's domain, the
    architecture's parameter values, the objective) without constructing a method or a flow."""
    from sesamo_bench.core.architecture import Architecture
    from sesamo_bench.core.method import Method
    from sesamo_bench.harness import grid

    def built(*args, **kwargs):
        raise AssertionError("a model was built to plan a grid")

    monkeypatch.setattr(Method, "__init__", built)
    monkeypatch.setattr(Architecture, "__init__", built)
    runs, notes = grid.plan(grid.GridRequest(target="dw4", methods=None, seeds=[0, 1], preset="smoke"))
    assert {r.config.method for r in runs} >= {"realnvp", "sesamo", "equivariant"}
    assert any("skipping canonicalization" in n for n in notes)
    runs, notes = grid.plan(grid.GridRequest(target="dw4", methods=None, seeds=[0], preset="smoke",
                                             overrides={"objective": "flow-matching"}))
    assert [r.config.method for r in runs] == ["equivariant"] and any("vector field" in n for n in notes)
    cases = [({"flow": "spline", "flow.bins": 1}, "realnvp", ConfigError, "bins must be >= 2"),
             ({"n": 8, "flow.order": 6}, "equivariant", IncompatibleError, "does not commute"),
             ({"flow": "lattice-affine"}, "sesamo", IncompatibleError, "acts on lattice"),
             ({"prior_mean": 1.0}, "canonicalization", IncompatibleError, "invariant prior")]
    for overrides, method, error, words in cases:
        with pytest.raises(error, match=words):
            grid.plan(grid.GridRequest(target="gaussian-mixture", methods=[method], seeds=[0], preset="smoke",
                                       overrides=overrides))
