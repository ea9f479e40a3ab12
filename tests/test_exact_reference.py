"""DW-4's shipped reference samples (the literature's files) are approximate samples of p; runs are
also measured against the exact reference, the held-out split of the suite's converged HMC
(issue 29): W2 of the energy and pair distances, and the mass without support."""

from __future__ import annotations

import json

import numpy as np
import torch
from typer.testing import CliRunner

from sesamo_bench import plugins
from sesamo_bench.cli import JSON_FIELDS, app
from sesamo_bench.core.particles import to_reduced

EXACT = ("energy_w2_exact", "distance_w2_exact", "support_missing_exact", "support_missing_exact_err")


def test_the_exact_reference_is_the_heldout_hmc_split_only_where_the_files_are_approximate():
    dw4 = plugins.targets.create("dw4")
    exact = dw4.exact_reference()
    assert torch.equal(exact, dw4.training_data("test"))
    shipped = to_reduced(dw4.reference_positions())
    assert not set(map(bytes, exact.float().numpy())) & set(map(bytes, shipped.float().numpy()))
    assert plugins.targets.create("lj13").exact_reference() is None  # its file agrees with the HMC
    assert plugins.targets.create("dw4", {"n_particles": 3}).exact_reference() is None  # no file applies


def test_w2_to_the_exact_reference_is_measured_against_the_hmc_rows():
    dw4 = plugins.targets.create("dw4")
    exact = dw4.exact_reference()
    shipped = to_reduced(dw4.reference_positions())
    on_hmc = dw4.reference_metrics(exact)  # the HMC rows themselves: zero distance to the exact reference
    assert on_hmc["energy_w2_exact"] == 0.0 and on_hmc["distance_w2_exact"] == 0.0
    assert on_hmc["energy_w2"] > 0.0
    on_file = dw4.reference_metrics(shipped)  # the literature's rows: zero to themselves, not to the HMC
    assert on_file["energy_w2"] == 0.0 and on_file["distance_w2"] == 0.0
    assert on_file["energy_w2_exact"] > 0.0 and on_file["distance_w2_exact"] > 0.0
    # 1-D W2 of two equal-size samples: the root mean square of the sorted differences
    n = len(exact)
    assert len(shipped) >= n
    e_file = np.sort(dw4.distributions(shipped[:n])["energy"].numpy())
    e_hmc = np.sort(dw4.distributions(exact)["energy"].numpy())
    got = dw4.reference_metrics(shipped[:n])["energy_w2_exact"]
    assert abs(got - float(np.sqrt(np.mean((e_file - e_hmc) ** 2)))) < 1e-9


def test_a_dw4_run_reports_the_exact_reference_metrics(tmp_path):
    store = tmp_path / "r.sqlite"
    res = CliRunner().invoke(app, ["run", "--target", "dw4", "--methods", "realnvp", "--preset", "smoke",
                                   "--seeds", "0", "--store", str(store), "--json", "--quiet"])
    assert res.exit_code == 0, res.stderr
    (row,) = json.loads(res.stdout)
    assert set(EXACT) <= set(JSON_FIELDS)
    for k in EXACT[:3]:
        assert row[k] is not None and row[k] >= 0, k
    assert 0 <= row["support_missing_exact"] <= 1
    res = CliRunner().invoke(app, ["run", "--target", "lj13", "--methods", "realnvp", "--preset", "smoke",
                                   "--seeds", "0", "--store", str(store), "--json", "--quiet"])
    assert res.exit_code == 0, res.stderr
    (row,) = json.loads(res.stdout)
    assert all(row[k] is None for k in EXACT)
