"""Observables, their estimators (reweighting, neural MCMC, HMC) and `measure`/`hmc`, against exact values.

The free field (lambda = 0) is Gaussian, so every phi^4 observable is known in closed form on a
finite periodic lattice (sesamo_bench.core.lattice_physics); the Hubbard observables come from 2-D quadrature
of the closed-form weight.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sesamo_bench import plugins
from sesamo_bench.cli import app
from sesamo_bench.core.lattice_physics import free_field, slice_correlator, two_point
from sesamo_bench.analysis.nmcmc import independence_metropolis
from sesamo_bench.analysis.observables import from_chain, reweighted

FREE = {"shape": [3, 4], "lam": 0.0, "kappa": 0.2, "alpha": 0.1}


def test_correlators_against_explicit_sums():
    gen = torch.Generator().manual_seed(0)
    for complex_field in (False, True):
        phi = torch.randn(3, 4, 5, *((2,) if complex_field else ()), generator=gen, dtype=torch.float64)
        p = phi if complex_field else phi.unsqueeze(-1)
        g, c = slice_correlator(phi, complex_field=complex_field), two_point(phi, complex_field=complex_field)
        for n in range(3):
            for t in range(4):
                want = sum(float((p[n, tp].sum(0) * p[n, (tp + t) % 4].sum(0)).sum()) for tp in range(4)) / 20
                assert abs(float(g[n, t]) - want) < 1e-10
            for dx in range(4):
                for dy in range(5):
                    want = sum(float((p[n, a, b] * p[n, (a + dx) % 4, (b + dy) % 5]).sum())
                               for a in range(4) for b in range(5)) / 20
                    assert abs(float(c[n, dx * 5 + dy]) - want) < 1e-10


def _gaussian_proposal(target, n: int, widen: float, seed: int):
    """Draws of a Gaussian q with the free field's covariance widened by ``widen`` (mean 0), and ln p - ln q."""
    rng = np.random.default_rng(seed)
    comps = target.dim // 12
    cov = np.kron(free_field((3, 4), FREE["kappa"], 0.0)["cov"], np.eye(comps)) * widen
    chol = np.linalg.cholesky(cov)
    z = rng.normal(size=(n, target.dim))
    x = torch.from_numpy(z @ chol.T).reshape(n, *target.shape)
    return x, target.log_prob(x).numpy() + 0.5 * (z * z).sum(1)


def _pulls(est, exact):
    return {k: (est[k].value - v) / est[k].error for k, v in exact.items() if est[k].error > 0}


@pytest.mark.parametrize("name", ["phi4-real", "phi4-complex"])
def test_free_field_reweighting_and_neural_mcmc_agree_with_the_exact_values(name):
    t = plugins.targets.create(name, FREE)
    exact = t.exact_observables()
    assert {"m2", "action_density", "chi", "G_c[1]", "C_c[5]", "m_eff[0]"} <= set(exact) or name == "phi4-complex"
    x, log_w = _gaussian_proposal(t, 60_000, 1.5, seed=1)
    values = {k: v.numpy() for k, v in t.observables(x).items()}
    rw = reweighted(values, log_w, derived=t.derived_observables)
    pulls = _pulls(rw, exact)
    worst = sorted(pulls.items(), key=lambda kv: -abs(kv[1]))[:3]
    assert len(pulls) >= 30 and max(abs(p) for p in pulls.values()) < 4.5, worst
    assert all(abs(rw[k].tau_int - 0.5) < 0.1 for k in values if k in rw)  # independent draws
    idx, acc = independence_metropolis(log_w, rng=np.random.default_rng(2))
    assert 0.05 < acc < 0.95
    chain = from_chain({k: v[idx] for k, v in values.items()}, derived=t.derived_observables)
    pulls = _pulls(chain, exact)
    assert max(abs(p) for p in pulls.values()) < 4.5
    key = "m2" if name == "phi4-real" else "abs_m2"
    assert chain[key].tau_int > 0.6  # rejections correlate the chain


def test_free_field_references_are_not_circular():
    """<m^2> and <f>/V of the free field, from the covariance alone (independent of lattice.free_moments)."""
    t = plugins.targets.create("phi4-real", {**FREE, "alpha": 0.0})
    ff = free_field((3, 4), FREE["kappa"], 0.0)
    ex = t.exact_observables()
    assert abs(ex["m2"] - ff["cov"].sum() / 144) < 1e-12
    # <phi^T A phi> = tr(A (2A)^-1) = V / 2 for a Gaussian exp(-phi^T A phi)
    assert abs(ex["action_density"] - 0.5) < 1e-12
    assert abs(ex["chi"] - ff["cov"].sum() / 12) < 1e-12


def test_hmc_agrees_with_the_free_field():
    from sesamo_bench.harness.measure import measure_hmc

    t = plugins.targets.create("phi4-real", FREE)
    m = measure_hmc(t, samples=3200, chains=16, burn_in=100, seed=3, n_leapfrog=8)
    assert 0.5 < m.acceptance < 0.98
    pulls = _pulls(m.estimates, m.exact)
    worst = sorted(pulls.items(), key=lambda kv: -abs(kv[1]))[:3]
    assert len(pulls) >= 30 and max(abs(p) for p in pulls.values()) < 4.5, worst


def test_hubbard_observables_against_quadrature():
    t = plugins.targets.create("hubbard", {})
    exact = t.exact_observables()
    assert abs(sum(exact[f"quadrant[{j}]"] for j in range(4)) - 1) < 1e-12
    gen = torch.Generator().manual_seed(4)
    n, sigma = 400_000, 22.0
    x = sigma * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    log_w = (t.log_prob(x) + 0.5 * (x * x).sum(1) / sigma**2).numpy()
    est = reweighted({k: v.numpy() for k, v in t.observables(x).items()}, log_w)
    pulls = _pulls(est, exact)
    assert len(pulls) == 6 and max(abs(p) for p in pulls.values()) < 4.5, pulls


def test_gaussian_mixture_mode_occupations():
    t = plugins.targets.create("gaussian-mixture", {"b": 0.1})
    gen = torch.Generator().manual_seed(5)
    mu = torch.tensor(t.means)
    k = torch.multinomial(torch.tensor(t.mode_probabilities()), 100_000, replacement=True, generator=gen)
    x = mu[k] + torch.randn(100_000, 2, generator=gen, dtype=torch.float64)  # exact samples of p
    est = from_chain({k: v.numpy() for k, v in t.observables(x).items()})
    pulls = _pulls(est, t.exact_observables())
    assert len(pulls) == 8 and max(abs(p) for p in pulls.values()) < 4.5


# --- the commands ----------------------------------------------------------------------------
def _invoke(*args):
    return CliRunner().invoke(app, list(args))


def test_measure_and_report_observables(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = _invoke("run", "--target", "hubbard", "--methods", "sesamo", "--preset", "smoke", "--seeds", "0",
                  "--json", "--quiet", "--workers", "1")
    assert res.exit_code == 0, res.output
    rid = json.loads(res.stdout)[0]["run_id"]
    res = _invoke("measure", rid[:8], "--samples", "4000", "--mcmc", "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert {r["estimator"] for r in rows} == {"reweight", "nmcmc"}
    assert {r["observable"] for r in rows} == {"x1x2", "abs_x"} | {f"quadrant[{j}]" for j in range(4)}
    assert all(r["exact"] is not None for r in rows)
    assert (tmp_path / "sesamo-runs" / "runs" / rid / "measurements.json").is_file()
    res = _invoke("report", "--observables", "quadrant", "--format", "markdown")
    assert res.exit_code == 0 and "quadrant[3]" in res.output and "x1x2" not in res.output
    shown = json.loads(_invoke("show", rid, "--json").stdout)
    assert set(shown["metrics"]["measurements"]) == {"reweight", "nmcmc"}
    # bad input: one line, exit 2
    for args, what in ((("measure", rid, "--observables", "nope"), "no observable 'nope'"),
                       (("measure", rid, "--samples", "1"), "--samples"),
                       (("measure", "ffffffff"), "no run"),
                       (("hmc", "--target", "hubbard", "--chains", "0"), "--chains"),
                       (("hmc", "--target", "nope"), "Unknown target")):
        res = _invoke(*args)
        assert res.exit_code == 2 and what in res.output and "Traceback" not in res.output, (args, res.output)


def test_hmc_command_records_a_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["hmc", "--target", "phi4-real", "--set", "shape=3,4", "--set", "lam=0", "--set", "kappa=0.2",
            "--samples", "800", "--chains", "8", "--burn-in", "50", "--global-moves", "--json"]
    res = _invoke(*args)
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert {r["method"] for r in rows} == {"hmc"} and all(r["acceptance"] > 0.3 for r in rows)
    again = json.loads(_invoke(*args).stdout)

    def no_time(rs):
        return [{k: v for k, v in r.items() if k != "cost_s"} for r in rs]

    assert no_time(again) == no_time(rows)  # the same seed gives the same chain; the same run id is replaced
    res = _invoke("report", "--format", "json")
    assert [r["method"] for r in json.loads(res.stdout)] == ["hmc"]
    assert math.isfinite(rows[0]["cost_s"])


def test_unmixed_chains_get_the_error_of_their_means():
    """16 chains stuck in one of two states each: within every chain nothing fluctuates, so the
    Gamma method alone says error 0; the chains disagree, and the error is the spread of their means."""
    from sesamo_bench.analysis.observables import RHAT_MAX, from_chain

    stuck = np.repeat((np.arange(16) % 4 == 0).astype(float)[None, :], 500, axis=0)  # (T, chains): 4 of 16 at 1
    est = from_chain({"x": stuck.reshape(-1)}, chains=16)["x"]
    assert est.value == pytest.approx(0.25) and est.rhat == float("inf") > RHAT_MAX
    means = stuck.mean(0)
    assert est.error == pytest.approx(means.std(ddof=1) / 4) and est.error > 0.1
    # the tau_int that error implies, error^2 = 2 tau Var / N: far beyond the within-chain 0.5
    assert est.tau_int == pytest.approx(stuck.size * est.error**2 / (2 * stuck.var())) and est.tau_int > 100
    mixed = np.random.default_rng(3).normal(size=(500, 16))
    ok = from_chain({"x": mixed.reshape(-1)}, chains=16)["x"]
    assert ok.rhat < 1.01 and ok.error == pytest.approx(1 / math.sqrt(8000), rel=0.15)


def test_particle_global_move_is_an_exact_reproducible_symmetry(tmp_path, monkeypatch):
    """The particles' elements are (permutation, rotation) pairs, not angles: the global move draws
    them from the group, leaves the DW-4 energy unchanged (an exact symmetry: always accepted), moves
    the configuration, and repeats with the generator's seed; `hmc --global-moves` runs on DW-4."""
    from sesamo_bench.harness.measure import global_moves_for

    target = plugins.targets.create("dw4", {})
    (move,) = global_moves_for(target)
    x = 2.0 * torch.randn(64, *target.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = move(x, torch.Generator().manual_seed(7))
    torch.testing.assert_close(target.action(y), target.action(x), atol=1e-9, rtol=1e-9)
    assert (y - x).abs().amax(1).min() > 1e-3  # every configuration moved
    torch.testing.assert_close(move(x, torch.Generator().manual_seed(7)), y, atol=0, rtol=0)
    monkeypatch.chdir(tmp_path)
    res = _invoke("hmc", "--target", "dw4", "--samples", "64", "--chains", "4", "--burn-in", "20",
                  "--global-moves", "--json")
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert {r["observable"] for r in json.loads(res.stdout)} >= {"energy", "pair_distance"}


def test_observable_table_flags_estimates_with_few_effective_samples():
    """n_eff = Var(O) / error^2 below 100: the table marks the estimate (an LJ-13 flow with ESS x N
    ~ 1 reweights to E = -57.1(5) against HMC's -43.02(21); the error alone does not warn)."""
    from sesamo_bench.outputs.observables import render_observables

    base = {"target": "lj13", "method": "realnvp", "estimator": "reweight", "acceptance": None, "exact": None,
            "pull": None, "tau_int": 0.5, "rhat": None, "cost_s": 0.4}
    rows = [{**base, "run_id": "aaaaaaaa", "observable": "energy", "value": -57.1, "error": 0.5, "n_eff": 32.4},
            {**base, "run_id": "bbbbbbbb", "observable": "energy", "value": -43.02, "error": 0.21, "n_eff": 1059.0}]
    lines = render_observables(rows, "markdown").splitlines()
    assert "-57.1(5)*" in next(x for x in lines if "aaaaaaaa" in x)
    line = next(x for x in lines if "bbbbbbbb" in x)
    assert "-43.02(21)" in line and "*" not in line
    assert "fewer than 100 effective samples" in render_observables(rows, "terminal")
