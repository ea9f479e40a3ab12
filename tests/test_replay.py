"""Stored configurations replay bit for bit (issue 28): a run rebuilt from the configuration its
row holds gets the run id of that row and, retrained, the same numbers to the last bit (ESS,
ln Z, the whole history but its wall times), for a few methods and targets."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sesamo_bench.cli import app
from sesamo_bench.harness.config import RunConfig
from sesamo_bench.harness.grid import PlannedRun, identity, plugin_sources
from sesamo_bench.harness.runner import execute, one_thread
from sesamo_bench.harness.store import Store, run_id
from sesamo_bench.harness.train import prepare

SMALL = ["--preset", "smoke", "--set", "steps=20", "--set", "batch_size=128", "--set", "final_samples=1024",
         "--seeds", "0", "--quiet", "--json", "--workers", "1"]
GRIDS = [["--target", "gaussian-mixture", "--methods", "realnvp,sesamo"],
         ["--target", "hubbard", "--methods", "canonicalization,vmonf"]]


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    store = tmp_path_factory.mktemp("replay") / "r.sqlite"
    for grid in GRIDS:
        res = CliRunner().invoke(app, ["run", *grid, *SMALL, "--store", str(store)])
        assert res.exit_code == 0, res.stderr
    return Store(store).runs()


def test_stored_configurations_give_their_run_ids(stored):
    assert len(stored) == 4
    for row in stored:
        cfg = RunConfig.from_dict(row["config"])
        assert cfg.to_dict() == row["config"]
        target, _ = prepare(cfg)
        ident = identity(cfg, target.params(), plugin_sources(cfg, target))
        assert run_id(ident, row["benchmark"]) == row["run_id"]


@pytest.mark.parametrize("i", range(4))
def test_a_stored_run_retrains_bit_for_bit(stored, tmp_path, i):
    row = stored[i]
    cfg = RunConfig.from_dict(row["config"])
    run = PlannedRun(cfg, row["run_id"], row["benchmark"], row["params"])
    with one_thread():
        again = execute(run, tmp_path / "again.sqlite", resume=False, should_stop=lambda: False,
                        emit=lambda *a: None)
    assert again["status"] == row["status"] == "finished"
    for key in ("ess", "log_z", "log_z_err", "breaking_ratio", "steps"):
        assert again[key] == row[key], (key, again[key], row[key])
    def numbers(history):  # the wall time of each logged step is the one thing that may differ
        return json.dumps([{k: v for k, v in h.items() if k != "wall_s"} for h in history])

    assert len(again["history"]) == len(row["history"]) > 0
    assert numbers(again["history"]) == numbers(row["history"])
    assert again["metrics"]["ess_path"] == row["metrics"]["ess_path"]
