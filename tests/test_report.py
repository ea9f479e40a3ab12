"""Report tables: uncertainty notation, aggregation over seeds, every output format, Table 1."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from sesamo_bench.errors import UnknownNameError
from sesamo_bench.outputs.aggregate import aggregate, shown_params, training_overrides
from sesamo_bench.outputs.formatting import FORMATS, format_err, parse_err
from sesamo_bench.outputs.paper import paper_table1, render_table1
from sesamo_bench.outputs.report import EMPTY, render_report


def make_run(target="gaussian-mixture", method="sesamo", seed=0, *, params=None, status="finished", ess=0.9,
             log_z=0.0, br=None, br_exact=None, log_z_exact=None, wall_s=10.0, benchmark=None, preset="smoke"):
    """A run record as ``Store.runs()`` returns it (no files)."""
    return {"run_id": f"{target}-{method}-{seed}-{status}", "benchmark": benchmark, "target": target,
            "method": method, "seed": seed, "params": params or {}, "config": {"preset": preset, "steps": 30},
            "provenance": {"device": "cpu"}, "status": status, "steps": 30, "wall_s": wall_s, "ess": ess,
            "log_z": log_z, "log_z_err": 0.01, "breaking_ratio": br, "breaking_ratio_exact": br_exact,
            "metrics": {"log_z_exact": log_z_exact}, "history": [], "run_dir": "/nonexistent"}


# -- format_err -------------------------------------------------------------------------------------
@pytest.mark.parametrize("mean, err, text", [
    # the paper's Table 1, from values that round to it
    (0.7512, 0.262, "0.75(26)"),
    (0.9921, 0.0041, "0.992(4)"),
    (0.163, 0.08, "0.16(8)"),
    (0.9512, 0.0031, "0.951(3)"),
    (0.22, 0.04, "0.22(4)"),
    (0.9478, 0.0042, "0.948(4)"),
    (0.88, 0.15, "0.88(15)"),
    # leading digit 1 or 2 keeps two digits (the paper's 0.999(1), 0.999(2), 0.85(1) keep one)
    (0.999, 0.001, "0.9990(10)"),
    (0.999, 0.0021, "0.9990(21)"),
    (0.85, 0.012, "0.850(12)"),
    (0.99904, 0.0004, "0.9990(4)"),
    (0.5, 0.0299, "0.500(30)"),
    (0.5, 0.03, "0.50(3)"),
    # rounding up into the next decade
    (0.85, 0.0096, "0.850(10)"),
    (0.123, 0.0951, "0.12(10)"),
    (0.123, 0.0949, "0.12(9)"),
    # errors >= 1
    (12.34, 1.23, "12.3(1.2)"),
    (0.5, 0.999, "0.5(1.0)"),
    (12.34, 3.4, "12(3)"),
    (-150.3, 25.2, "-150(25)"),
    (1234.0, 150.0, "1230(150)"),
    # signs and negative errors
    (-0.5, 0.04, "-0.50(4)"),
    (0.5, -0.04, "0.50(4)"),
])
def test_format_err(mean, err, text):
    assert format_err(mean, err) == text


@pytest.mark.parametrize("mean, err, text", [
    (0.99912, 0.0, "0.9991"),
    (0.99912, None, "0.9991"),
    (0.99912, float("nan"), "0.9991"),
    (-150.34, None, "-150.3"),
    (123456.7, 0.0, "123457"),
    (0.0, 0.0, "0"),
    (None, 0.1, "-"),
    (float("nan"), 0.1, "-"),
    (float("inf"), None, "-"),
])
def test_format_err_without_uncertainty(mean, err, text):
    assert format_err(mean, err) == text


@pytest.mark.parametrize("text", ["0.75(26)", "0.992(4)", "12.3(1.2)", "-150(25)", "0.9990(10)"])
def test_parse_err_inverts_format_err(text):
    assert format_err(*parse_err(text)) == text


# -- aggregate --------------------------------------------------------------------------------------
def test_aggregate_mean_std_and_failures():
    runs = [make_run(seed=s, ess=e, log_z=lz, wall_s=w, log_z_exact=0.0)
            for s, e, lz, w in [(0, 0.90, 0.1, 10.0), (1, 0.94, -0.1, 20.0), (2, 0.98, 0.0, 30.0)]]
    runs += [make_run(seed=3, status="failed", ess=None), make_run(seed=4, status="diverged", ess=0.0),
             make_run(seed=5, status="diverged", ess=None), make_run(seed=6, status="interrupted", ess=0.1)]
    runs += [make_run(method="realnvp", seed=0, ess=0.5)]
    groups = aggregate(runs)
    assert [g["method"] for g in groups] == ["realnvp", "sesamo"]
    g = groups[1]
    assert g["seeds"] == [0, 1, 2] and g["n_finished"] == 3 and g["n_runs"] == 7
    assert (g["n_failed"], g["n_diverged"], g["n_interrupted"], g["n_running"]) == (1, 2, 1, 0)
    assert g["ess_mean"] == pytest.approx(0.94)
    assert g["ess_std"] == pytest.approx(0.04)  # sample std, ddof=1
    assert g["log_z_mean"] == pytest.approx(0.0, abs=1e-12)
    assert g["log_z_std"] == pytest.approx(0.1)
    assert g["wall_s_mean"] == pytest.approx(20.0)
    assert g["log_z_exact"] == 0.0 and g["breaking_ratio_exact"] is None
    single = groups[0]
    assert single["ess_mean"] == 0.5 and single["ess_std"] is None


def test_aggregate_groups_by_params_benchmark_and_preset():
    runs = [make_run(params={"beta": b}, br=-0.5 * b, br_exact=-0.5 * b, seed=s) for b in (2.0, 0.5, 10.0)
            for s in (0, 1)]
    runs += [make_run(params={"beta": 2.0}, benchmark="hub"), make_run(params={"beta": 2.0}, preset="paper")]
    groups = aggregate(runs)
    assert len(groups) == 5
    adhoc = [g for g in groups if g["benchmark"] is None and g["preset"] == "smoke"]
    assert [g["params"]["beta"] for g in adhoc] == [0.5, 2.0, 10.0]  # numeric, not string order
    assert adhoc[1]["breaking_ratio_mean"] == pytest.approx(-1.0) and adhoc[1]["breaking_ratio_std"] == 0.0
    assert adhoc[1]["breaking_ratio_exact"] == pytest.approx(-1.0)


def test_aggregate_keeps_runs_of_different_symmetry_parameters_apart():
    runs = [make_run("dw4", "sesamo", s, ess=0.1) for s in (0, 1)]
    for r, sym in zip([make_run("dw4", "sesamo", s, ess=0.5) for s in (0, 1)], ({"permutations": False},) * 2):
        r["config"]["symmetry_params"] = sym
        runs.append(r)
    full, restricted = sorted(aggregate(runs), key=lambda g: len(g["params"]))
    assert full["ess_mean"] == pytest.approx(0.1) and full["params"] == {}
    assert restricted["ess_mean"] == pytest.approx(0.5) and restricted["params"] == {"symmetry.permutations": False}


def test_aggregate_keeps_hmc_with_and_without_global_moves_apart():
    runs = [make_run(method="hmc", seed=0, ess=None), make_run(method="hmc", seed=0, ess=None)]
    runs[1]["config"]["global_moves"] = True
    plain, moves = sorted(aggregate(runs), key=lambda g: len(g["params"]))
    assert plain["params"] == {} and moves["params"] == {"global_moves": True} and plain["flow"] == "-"


def test_aggregate_keeps_runs_given_other_training_settings_apart():
    """Runs of one preset given ``--set steps=...`` (or lr, ...) on top are other experiments; an
    execution setting (threads) or a bookkeeping one (checkpoint_every) is not."""
    runs = [make_run(seed=s, ess=0.2) for s in (0, 1)]  # the smoke preset's 30 steps
    for s in (0, 1):
        r = make_run(seed=s, ess=0.8)
        r["run_id"] += "-long"
        r["config"].update(steps=500, lr=3e-4, threads=2 - s, checkpoint_every=7)
        runs.append(r)
    r = make_run(seed=2, ess=0.2)
    r["config"].update(threads=1, checkpoint_every=99)  # same experiment as the first two
    runs.append(r)
    short, long = sorted(aggregate(runs), key=lambda g: len(g["params"]))
    assert short["params"] == {} and short["seeds"] == [0, 1, 2] and short["ess_mean"] == pytest.approx(0.2)
    assert long["params"] == {"steps": 500, "lr": 3e-4} and long["seeds"] == [0, 1]
    assert long["ess_mean"] == pytest.approx(0.8)
    text = render_report(runs, fmt="markdown")
    assert "lr=0.0003, steps=500" in text


def test_training_overrides_compare_with_the_methods_preset_and_skip_swept_keys():
    # phi4-real's quick preset gives sesamo z2-fourier and 6000 steps: neither is an override
    r = make_run("phi4-real", "sesamo", preset="quick")
    r["config"].update(steps=6000, lr=1e-3, flow="z2-fourier", batch_size=1024)
    assert training_overrides(r) == {}
    r["config"]["steps"] = 50000
    assert training_overrides(r) == {"steps": 50000}
    r["params"] = {"steps": 50000}  # a --sweep steps=... run: already a parameter
    assert training_overrides(r) == {}
    assert training_overrides({**r, "target": "no-such-target"}) == {}


def test_aggregate_ignores_nan_and_unfinished_values():
    runs = [make_run(seed=0, ess=float("nan")), make_run(seed=1, ess=0.8), make_run(seed=2, status="running", ess=0.1)]
    (g,) = aggregate(runs)
    assert g["ess_mean"] == 0.8 and g["ess_std"] is None and g["n_running"] == 1


# -- render_report ----------------------------------------------------------------------------------
def sample_runs():
    runs = [make_run(seed=s, ess=0.99 + 0.001 * s, log_z_exact=0.0) for s in range(3)]
    runs += [make_run(method="realnvp", seed=s, ess=0.5 + 0.2 * s) for s in range(3)]
    runs += [make_run("hubbard", m, s, params={"beta": 2.0}, br=-0.86 + 0.01 * s, br_exact=-0.868, benchmark="hub")
             for m in ("canonicalization", "sesamo") for s in range(2)]
    runs += [make_run("hubbard", "sesamo", 9, params={"beta": 2.0}, status="diverged", benchmark="hub")]
    return runs


def test_render_terminal():
    text = render_report(sample_runs())
    assert "gaussian-mixture" in text and "hubbard" in text and "beta=2" in text
    assert "0.9910(10)" in text  # SESaMo ESS, mean(std)
    assert "1 diverged" in text
    assert "ddof=1" in text  # the caption says what the uncertainty is
    assert "benchmark" in text  # two benchmarks (hub and none): a benchmark column
    assert "\x1b[" not in text  # plain text, no ANSI codes


def test_render_markdown_and_grouping():
    text = render_report(sample_runs(), fmt="markdown", group_by_benchmark=True)
    assert "|---" in text.replace(":", "-") or "|--" in text
    assert "**benchmark: hub**" in text and "**ad-hoc runs (no benchmark)**" in text
    header = next(line for line in text.splitlines() if line.startswith("| target"))
    assert "ESS" in header and "R exact" in header and "failures" in header


def test_render_csv_parses():
    text = render_report(sample_runs(), fmt="csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 4
    hub = [r for r in rows if r["target"] == "hubbard" and r["method"] == "sesamo"][0]
    assert json.loads(hub["params"]) == {"beta": 2.0}
    assert float(hub["breaking_ratio_mean"]) == pytest.approx(-0.855)
    assert hub["n_diverged"] == "1" and hub["seeds"] == "0 1"


def test_render_json_parses():
    data = json.loads(render_report(sample_runs(), fmt="json"))
    assert len(data) == 4 and {"ess_mean", "ess_std", "n_failed", "params"} <= set(data[0])
    # NaN becomes null so strict parsers accept it
    data = json.loads(render_report([make_run(ess=float("nan"))], fmt="json"), parse_constant=pytest.fail)
    assert data[0]["ess_mean"] is None


def test_render_latex():
    text = render_report(sample_runs(), fmt="latex")
    assert r"\toprule" in text and r"\bottomrule" in text and r"\caption{" in text


@pytest.mark.parametrize("fmt", FORMATS)
def test_render_empty(fmt):
    text = render_report([], fmt=fmt)
    if fmt == "json":
        assert json.loads(text) == []
    elif fmt == "csv":
        assert list(csv.DictReader(io.StringIO(text))) == [] and text.startswith("benchmark,")
    else:
        assert text == EMPTY and "\n" not in text


def test_render_unknown_format_names_alternatives():
    with pytest.raises(UnknownNameError, match="markdown"):
        render_report([], fmt="html")


# -- Table 1 ----------------------------------------------------------------------------------------
def test_paper_table1_numbers():
    t = paper_table1()
    assert t["gmm-exact-z8"]["ess"]["realnvp"] == {"text": "0.75(26)", "mean": 0.75, "std": 0.26}
    assert t["gmm-exact-z8"]["ess"]["sesamo"]["mean"] == 0.999
    assert t["phi4-complex-exact-u1"]["ess"]["canonicalization"] is None
    assert t["phi4-complex-broken-u1"]["params"] == {"alpha": 0.005}
    assert math.isclose(t["hubbard-broken-z4"]["ess"]["canonicalization"]["std"], 0.01)
    assert {r["target"] for r in t.values()} == {"gaussian-mixture", "phi4-complex", "hubbard"}


def test_render_table1_beside_ours():
    runs = sample_runs()
    runs += [make_run("phi4-complex", "sesamo", s, params={"alpha": 0.005}, ess=0.94 + 0.01 * s) for s in range(2)]
    text = render_table1(runs)
    lines = text.splitlines()
    gmm = next(line for line in lines if "Gaussian mixture" in line)
    assert "0.75(26)" in gmm and "0.9910(10)" in gmm and "0.70(20)" in gmm  # b missing = default b=0
    broken = next(line for line in lines if "broken U(1)" in line)
    assert "0.948(4)" in broken and "0.945(7)" in broken and "n/a" in broken
    exact = next(line for line in lines if "exact U(1)" in line)
    assert "0.951(3)" in exact  # the paper's number, ours '-'
    def cells(line):
        return [c.strip() for c in line.strip(" |").split("|")]
    assert cells(lines[0])[-2:] == ["Equivariant (ours)", "VMONF (ours)"]
    assert cells(gmm)[-2:] == ["-", "-"]  # polar-zm makes the equivariant flow apply; no runs given
    runs += [make_run("hubbard", "vmonf", s, params={"beta": 2.0}, ess=0.9 + 0.02 * s, benchmark="hub")
             for s in range(2)]
    hub = next(line for line in render_table1(runs).splitlines() if "Hubbard" in line)
    assert cells(hub)[-2:] == ["-", "0.910(14)"]
    data = json.loads(render_table1(runs, fmt="json"))
    assert data[3]["vmonf_ess_mean"] == pytest.approx(0.91) and data[3]["equivariant_ours"] == "-"
    assert len(data) == 4 and data[0]["realnvp_paper_mean"] == 0.75
    assert r"\toprule" in render_table1(runs, fmt="latex")
    assert len(list(csv.DictReader(io.StringIO(render_table1([], fmt="csv"))))) == 4


def test_render_table1_names_architectures_and_skips_hmc_and_unfinished():
    runs = sample_runs()
    for s in range(2):  # SESaMo on Hubbard with a second architecture, one seed less than the MLP's
        r = make_run("hubbard", "sesamo", s, ess=0.5 + 0.1 * s, preset="quick")
        r["config"]["flow"] = "lattice-affine"
        runs.append(r)
    runs += [make_run("hubbard", "sesamo", s, ess=0.98 + 0.01 * s, preset="quick") for s in range(3)]
    runs += [make_run("hubbard", "hmc", 0, ess=None, preset="quick"),
             make_run("hubbard", "vmonf", 0, status="running", ess=None, preset="quick")]
    data = [r for r in json.loads(render_table1(runs, fmt="json")) if r["row"].startswith("hubbard")
            and r["preset"] == "quick"]
    assert len(data) == 1  # hmc is no Table 1 method: no row of its own
    assert data[0]["sesamo_ours"] == "0.990(10); 0.55(7) [lattice-affine]"
    assert data[0]["sesamo_seeds"] == 3 and data[0]["sesamo_flow"] == "realnvp"
    assert data[0]["vmonf_ours"] == "-" and data[0]["vmonf_seeds"] == 0  # a running run is no result
    line = next(x for x in render_table1(runs, fmt="terminal").splitlines() if "[quick]" in x and "Hubbard" in x)
    assert "[lattice-affine]" in line  # printed as text, not taken for rich markup


def test_render_table1_says_why_equivariant_cannot_apply(monkeypatch):
    """A target whose symmetry has no equivariant architecture registered: the cell gives the reason."""
    from sesamo_bench.core import equivariant

    monkeypatch.setattr(equivariant, "architectures_for", lambda group, target=None: [])
    gmm = next(line for line in render_table1(sample_runs()).splitlines() if "Gaussian mixture" in line)
    assert [c.strip() for c in gmm.strip(" |").split("|")][-2] == "n/a: no zm-equivariant flow"


def test_shown_params_drops_defaults_keeps_swept_values():
    full = {"u": 18.0, "beta": 2.0, "kappa": 1.0, "nt": 1, "sites": 2}
    assert shown_params("hubbard", full) == {"beta": 2.0}
    assert shown_params("hubbard", {**full, "beta": 1.0}) == {}
    assert shown_params("hubbard", {**full, "beta": 1.0}, [full]) == {"beta": 1.0}  # varies among siblings
    assert shown_params("hubbard", {**full, "lr": 1e-3}) == {"beta": 2.0, "lr": 1e-3}  # swept hyperparameter
    assert shown_params("no-such-target", {"a": 1}) == {"a": 1}


def test_render_with_full_params_as_the_runner_stores_them():
    gmm = {"n": 8, "radius": 12.0, "b": 0.0}
    runs = [make_run(params=gmm, seed=s, ess=0.99) for s in range(2)]
    runs += [make_run("hubbard", "sesamo", 0, params={"u": 18.0, "beta": b, "kappa": 1.0, "nt": 1, "sites": 2})
             for b in (1.0, 2.0)]
    text = render_report(runs, fmt="markdown")
    gmm_line = next(line for line in text.splitlines() if "gaussian-mixture" in line)
    assert "radius" not in gmm_line
    assert "beta=1 " in text and "beta=2 " in text and "kappa" not in text
    assert "0.9900" in render_table1(runs)
