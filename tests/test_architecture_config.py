"""Selecting an architecture: configuration, run identity, provenance, CLI, report and plot."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sesamo_bench.cli import app
from sesamo_bench.harness.config import resolve
from sesamo_bench.errors import ConfigError, UnknownNameError
from sesamo_bench.outputs.report import render_report
from sesamo_bench.harness.store import Store, run_id

#: run ids computed before the architecture registry existed (configurations with the default flow)
PINNED = [
    (("hubbard", "sesamo", "quick", {}), "64cc08ba3906", "91922086810e"),
    (("phi4-real", "canonicalization", "smoke", {"width": 7}), "eea88ebb3ce0", "60404714a914"),
    (("phi4-complex", "sesamo", "paper", {}), "9470afe44cab", "d77c75be9562"),
    (("gaussian-mixture", "realnvp", "quick", {}), "ca154eecd9db", "f7ad00c8fced"),
]


@pytest.mark.parametrize("args,rid,rid_bench", PINNED)
def test_existing_configurations_keep_their_run_ids(args, rid, rid_bench):
    target, method, preset, ov = args
    for extra in ({}, {"flow": "realnvp"}):
        cfg = resolve(target, method, seed=1, preset=preset, overrides={**ov, **extra})
        assert run_id(cfg.to_dict()) == rid
        assert run_id(cfg.to_dict(), "bench") == rid_bench


def test_realnvp_parameters_have_one_spelling():
    a = resolve("phi4-real", "sesamo", overrides={"flow": "realnvp", "width": 33})
    b = resolve("phi4-real", "sesamo", overrides={"flow": "realnvp", "flow.width": 33})
    assert a.width == b.width == 33 and b.flow_params == {}
    assert run_id(a.to_dict()) == run_id(b.to_dict())


def test_architecture_and_its_parameters_enter_the_run_id():
    base = resolve("phi4-real", "sesamo", overrides={"flow": "lattice-affine"})
    wide = resolve("phi4-real", "sesamo", overrides={"flow": "lattice-affine", "flow.width": 8})
    assert wide.flow_params == {"width": 8}
    ids = {run_id(c.to_dict()) for c in (resolve("phi4-real", "sesamo"), base, wide)}
    assert len(ids) == 3


def test_bad_architecture_input_names_the_alternatives():
    with pytest.raises(UnknownNameError, match=r"Unknown architecture 'conv'. Available: .*lattice-affine.*realnvp"):
        resolve("phi4-real", "sesamo", overrides={"flow": "conv"})
    with pytest.raises(ConfigError, match=r"architecture 'lattice-affine': unknown key 'depth'. Allowed: activation"):
        resolve("phi4-real", "sesamo", overrides={"flow": "lattice-affine", "flow.depth": 3})
    with pytest.raises(ConfigError, match=r"'width' expects int"):
        resolve("phi4-real", "sesamo", overrides={"flow": "lattice-affine", "flow.width": "wide"})


def test_cli_rejects_unknown_architecture_in_one_line(tmp_path):
    res = CliRunner().invoke(app, ["run", "--target", "phi4-real", "--set", "flow=conv", "--store",
                                   str(tmp_path / "r.sqlite")])
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [
        "error: Unknown architecture 'conv'. Available: affine-realnvp, kernel-cnf, lattice-affine, lattice-odd, "
        "lattice-spline, lattice-u1, odd-realnvp, polar-zm, realnvp, spline, u1-fourier, z2-fourier"]
    assert not (tmp_path / "r.sqlite").exists()


def test_cli_rejects_an_architecture_whose_domain_does_not_fit(tmp_path):
    res = CliRunner().invoke(app, ["run", "--target", "phi4-complex", "--methods", "sesamo", "--set",
                                   "flow=lattice-affine", "--store", str(tmp_path / "r.sqlite")])
    assert res.exit_code == 2
    assert "u1-equivariant" in res.stderr and "Traceback" not in res.stderr


def test_list_architectures():
    res = CliRunner().invoke(app, ["list", "architectures"])
    assert res.exit_code == 0
    for word in ("realnvp", "lattice-u1", "equivariant under: translation, u1", "kernel_size=3", "bins=8"):
        assert word in res.stdout


def test_run_records_architecture_in_provenance_report_and_plot(tmp_path):
    store = tmp_path / "r.sqlite"
    common = ["run", "--target", "phi4-real", "--methods", "sesamo", "--preset", "smoke", "--seeds", "0",
              "--set", "shape=4,2", "--set", "steps=20", "--set", "batch_size=64", "--set", "final_samples=256",
              "--set", "eval_every=10", "--store", str(store), "--quiet", "--json", "--workers", "1"]
    for extra in ([], ["--set", "flow=lattice-affine", "--set", "flow.width=4"]):
        res = CliRunner().invoke(app, common + extra)
        assert res.exit_code == 0, res.stderr
    runs = Store(store).runs()
    flows = sorted(r["provenance"]["architecture"]["name"] for r in runs)
    assert flows == ["lattice-affine", "realnvp"]
    lat = next(r for r in runs if r["config"]["flow"] == "lattice-affine")
    assert lat["provenance"]["architecture"]["params"] == {"width": 4}
    text = render_report(runs)
    assert "flow" in text.splitlines()[0] and "lattice-affine(width=4)" in text
    assert {g["flow"] for g in json.loads(render_report(runs, fmt="json"))} == {"realnvp", "lattice-affine(width=4)"}
    res = CliRunner().invoke(app, ["plot", "--kind", "ess-time", "--store", str(store), "--out", str(tmp_path / "f")])
    assert res.exit_code == 0, res.stderr
    assert list((tmp_path / "f").glob("ess-time_*.png"))
