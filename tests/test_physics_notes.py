"""Issue 30, item 7 (physics notes of an independent audit) and two items of item 5.

Every check is against an independent reference: quadrature of the densities (the SESaMo family's
ESS ceiling), analytic AR(1) results (the Gamma method), autograd Jacobians (the Fourier flows'
volume element), inputs built to underflow (the M = 0 guard), and one-line errors for a deeply
nested benchmarks table and for a target whose action raises.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize

from sesamo_bench.analysis import autocorr, ceiling
from sesamo_bench.analysis.ceiling import ceilings
from tests.test_reliability2 import assert_clean_error, invoke

L = 9.0  # integration range: exp(-L^2 / 2) is far below every integrand that matters


# ---------------------------------------------------------------------------------------------
# item 7a: SESaMo's family has an ESS ceiling below 1 where |M| fluctuates
# ---------------------------------------------------------------------------------------------
def test_sesamo_family_ceiling_z2_against_quadrature():
    """One site, p0 = N(0, 1), broken by alpha x. SESaMo's family is q(x) = q_c(|x|) P(u) with u the
    sign and P(flip) = w free: ESS(w) = 1 / (int_0^inf sqrt(p(x)^2 / (1 - w) + p(-x)^2 / w) dx)^2
    (best q_c by Cauchy-Schwarz), maximised over w by quadrature; the module sees draws of |x| only."""
    alpha = 1.0

    def p(x):
        return math.exp(-x * x / 2 - alpha * x - alpha ** 2 / 2) / math.sqrt(2 * math.pi)

    def inv_sqrt_ess(w):
        return integrate.quad(lambda x: math.sqrt(p(x) ** 2 / (1 - w) + p(-x) ** 2 / w), 0, L, limit=400)[0]

    best = optimize.minimize_scalar(inv_sqrt_ess, bounds=(1e-9, 1 - 1e-9), method="bounded",
                                    options={"xatol": 1e-12})
    exact = 1 / best.fun ** 2
    assert 0.87 < exact < 0.885 and best.x > 0.5  # well below 1: the family does not contain p
    draws = np.abs(np.random.default_rng(1).standard_normal(1_000_000))
    got = ceilings(draws, alpha, "z2")
    assert abs(got.sesamo.mean - exact) < 4 * got.sesamo.err + 1e-4, (got.sesamo, exact)
    assert got.ceiling.mean < got.sesamo.mean < 1


def test_sesamo_family_ceiling_u1_against_quadrature():
    """p0 = N(0, 1_2) on C, broken by alpha Re x; the family is q = q_r(r) pi(theta) / r. The best
    pi solves pi(theta)^2 ~ int dr r^2 p^2 / sqrt(A(r)), A(r) = int dtheta r^2 p^2 / pi: solved here
    by that fixed-point iteration on a quadrature grid (the module: L-BFGS on draws of |M|)."""
    alpha = 1.0
    r, wr = np.polynomial.legendre.leggauss(200)
    r, wr = (r + 1) * L / 2, wr * L / 2
    th = 2 * math.pi * np.arange(256) / 256
    wt = np.full(256, 2 * math.pi / 256)
    dens = np.exp(-r[:, None] ** 2 / 2 - alpha * r[:, None] * np.cos(th)[None, :])
    p = dens / (wr[:, None] * wt[None, :] * r[:, None] * dens).sum()
    b = r[:, None] ** 2 * p ** 2  # E_p[p / q] = int dr dtheta b / (q_r pi)
    pi = np.full(256, 1 / (2 * math.pi))
    for _ in range(2000):
        new = np.sqrt(wr @ (b / np.sqrt((b / pi) @ wt)[:, None]))
        new /= new @ wt
        if np.abs(new - pi).max() < 1e-13:
            break
        pi = new
    exact = 1 / (wr @ np.sqrt((b / pi) @ wt)) ** 2
    invariant = 1 / (wr @ np.sqrt((b * 2 * math.pi) @ wt)) ** 2
    assert 0.89 < exact < 0.91 and invariant < 0.56
    draws = np.hypot(*np.random.default_rng(2).standard_normal((2, 1_000_000)))
    got = ceilings(draws, alpha, "u1")
    assert abs(got.sesamo.mean - exact) < 4 * got.sesamo.err + 1e-4, (got.sesamo, exact)
    assert abs(got.ceiling.mean - invariant) < 4 * got.ceiling.err + 1e-4


@pytest.mark.parametrize("group", ["z2", "u1"])
def test_sesamo_family_reaches_one_only_where_abs_m_is_fixed(group):
    """|M| fixed: p_S can equal the conditional p(u | y), so the target is in the family (ESS 1)."""
    got = ceiling.sesamo_ceiling(np.full((2, 100), 4.0), 0.25, group)
    assert got.mean == pytest.approx(1.0, abs=1e-9)


def test_ceiling_prints_the_sesamo_family_and_drops_the_wrong_claim():
    assert "ESS 1 is in" not in ceiling.__doc__ and "has no such ceiling" not in ceiling.__doc__
    res = invoke("ceiling", "--target", "phi4-real", "--set", "shape=3,2", "--set", "alpha=0.3",
                 "--chains", "2", "--samples", "20")
    assert res.exit_code == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if "SESaMo family" in ln)
    assert 0.5 < float(line.split()[-3]) <= 1.0


# ---------------------------------------------------------------------------------------------
# item 7b: tau_int below 1/2 for anticorrelated chains
# ---------------------------------------------------------------------------------------------
def ar1(phi: float, chains: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(chains, n))
    x = np.empty_like(e)
    x[:, 0] = e[:, 0] / math.sqrt(1 - phi * phi)  # stationary start
    for i in range(1, n):
        x[:, i] = phi * x[:, i - 1] + e[:, i]
    return x


@pytest.mark.parametrize("phi", [-0.5, 0.7])
def test_gamma_method_on_ar1_both_signs(phi):
    """AR(1) with unit innovations: tau_int = (1 + phi) / (2 (1 - phi)) (1/6 for phi = -0.5) and the
    exact error of the mean sqrt(2 tau_int Var / N) = 1 / ((1 - phi) sqrt(N))."""
    x = ar1(phi, 8, 20000, seed=7)
    est = autocorr.gamma_method(x)
    tau = (1 + phi) / (2 * (1 - phi))
    exact_err = 1 / ((1 - phi) * math.sqrt(x.size))
    assert abs(est.tau_int - tau) < 4 * est.tau_err + 0.01, (est, tau)
    # the error's own relative uncertainty is ~ tau_err / (2 tau_int), 1-3 % here
    assert est.err == pytest.approx(exact_err, rel=0.06), (est.err, exact_err)
    assert abs(est.mean) < 5 * est.err


def test_anticorrelated_error_matches_repetitions():
    """The spread of the means of 60 independent phi = -0.5 chains is the error to reproduce."""
    rng = np.random.default_rng(11)
    means, errs = [], []
    for _ in range(60):
        x = ar1(-0.5, 2, 3000, seed=int(rng.integers(1 << 30)))
        est = autocorr.gamma_method(x)
        means.append(est.mean)
        errs.append(est.err)
    exact = 1 / (1.5 * math.sqrt(6000))
    assert np.mean(errs) == pytest.approx(exact, rel=0.06)
    assert np.std(means, ddof=1) == pytest.approx(exact, rel=0.3)  # 60 repetitions: +-9 %


def test_chain_estimates_and_cost_use_tau_below_one_half():
    """``from_chain`` (pyerrors floors tau_int at 1/2) for 4 chains of AR(1) with phi = -0.5: the
    error and n_eff (hence the cost per effective sample) must be the exact ones, not sqrt(3) and
    1/3 of them."""
    from sesamo_bench.analysis.observables import from_chain

    x = ar1(-0.5, 4, 20000, seed=5)
    est = from_chain({"x": x.T.reshape(-1)}, chains=4)["x"]  # rows step-major: t * chains + c
    exact_err = 1 / (1.5 * math.sqrt(x.size))
    assert est.tau_int < 0.25 and est.tau_int == pytest.approx(1 / 6, abs=0.02)
    assert est.error == pytest.approx(exact_err, rel=0.06)
    var = 1 / (1 - 0.25)
    assert est.n_eff == pytest.approx(var / exact_err ** 2, rel=0.15)  # N / (2 tau_int) = 3 N


# ---------------------------------------------------------------------------------------------
# item 7c: the volume element of u1-fourier's coordinates
# ---------------------------------------------------------------------------------------------
def test_u1_fourier_volume_element_by_autograd():
    """x(rho, a_p, b_p, theta) of ``U1Fourier._field``: |det dx / d(rho, a, b, theta)| = e^{2 rho} =
    |M|^2 / V, i.e. volume element a_0 = |M| / sqrt(V) in (a_0, a_p, b_p, theta), not |M|."""
    from sesamo_bench.architectures import u1_fourier
    from sesamo_bench.core.architecture import Domain

    f = u1_fourier.U1Fourier(Domain((2, 2, 2), lattice=2), couplings=2, width=8).double()
    v = f.v
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        coords = torch.randn(2 * v, dtype=torch.float64, generator=gen)

        def field(c):
            theta = c[-1]
            return f._field(c[None, :-1], torch.stack([torch.cos(theta), torch.sin(theta)])[None])[0]

        jac = torch.autograd.functional.jacobian(field, coords)
        x = field(coords).view(v, 2)
        abs_m2 = float((x.sum(0) ** 2).sum())
        det = abs(float(torch.linalg.det(jac)))
        assert det == pytest.approx(math.exp(2 * float(coords[0])), rel=1e-10)
        assert det == pytest.approx(abs_m2 / v, rel=1e-10)
    assert "a_0 = |M| / sqrt(V) = e^{rho}" in u1_fourier.__doc__
    assert "volume element |M| = sqrt(V) e^{rho}" not in u1_fourier.__doc__


def test_z2_fourier_volume_element_by_autograd():
    """z2-fourier's docstring: x(rho, a_p) has |det| = e^{rho} (orthonormal basis, a_0 = e^{rho})."""
    from sesamo_bench.architectures.z2_fourier import Z2Fourier
    from sesamo_bench.core.architecture import Domain

    f = Z2Fourier(Domain((4, 2), lattice=2), couplings=2, width=8).double()
    coords = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    jac = torch.autograd.functional.jacobian(lambda c: f._field(c[None], torch.ones(1, 1, dtype=c.dtype))[0], coords)
    assert abs(float(torch.linalg.det(jac))) == pytest.approx(math.exp(float(coords[0])), rel=1e-10)


# ---------------------------------------------------------------------------------------------
# item 7d: samples whose density the M = 0 guard made finite but wrong are counted
# ---------------------------------------------------------------------------------------------
def _fourier(kind: str, dtype: torch.dtype):
    from sesamo_bench.architectures.u1_fourier import U1Fourier
    from sesamo_bench.architectures.z2_fourier import Z2Fourier
    from sesamo_bench.core.architecture import Domain

    if kind == "z2":
        return Z2Fourier(Domain((2, 2), lattice=2), couplings=2, width=8).to(dtype)
    return U1Fourier(Domain((2, 2, 2), lattice=2), couplings=2, width=8).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["z2", "u1"])
def test_fourier_flows_flag_zero_magnetisation_and_underflow(kind, dtype):
    """Rows 1 and 3 have M = 0 exactly (+-1, +-0.5 cancel in any precision); with the zero mode's
    shift at -2000 every output's e^rho underflows, in float32 and float64."""
    f = _fourier(kind, dtype)
    z = torch.randn(4, f.dim, dtype=dtype, generator=torch.Generator().manual_seed(0)) + 3.0
    zero = torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=dtype)
    if kind == "u1":  # complex: re and im parts each sum to 0
        zero = torch.stack([zero, zero.flip(0)], -1).reshape(-1)
    z[1], z[3] = zero, 2 * zero
    with torch.no_grad():
        x, ladj = f(z)
        assert torch.isfinite(ladj).all()  # the guard keeps the density finite ...
        assert f.underflow.tolist() == [False, True, False, True]  # ... and says where it is wrong
        f.underflow = None
        f.inverse(x[[0, 2]])
        assert f.underflow.tolist() == [False, False]
        f.underflow = None
        f.shift[0] = -2000.0
        x, ladj = f(z)
        assert torch.isfinite(ladj).all() and f.underflow.all()


def test_evaluation_counts_underflow_beside_outside_cell():
    """SESaMo with z2-fourier (float32): a fresh flow has no underflow; with the zero mode pushed to
    rho = -200 (e^-200 underflows in float32) every sample's path density is finite but wrong (its
    log q along the path and the exact log q disagree) and the evaluation counts all of them."""
    from sesamo_bench.harness.config import resolve
    from sesamo_bench.harness.train import build, evaluate

    cfg = resolve("phi4-real", "sesamo", preset="smoke",
                  overrides={"shape": [4, 2], "flow": "z2-fourier", "device": "cpu"})
    target, model, _, dtype = build(cfg)
    assert dtype == torch.float32
    arch = next(m for m in model.modules() if type(m).__name__ == "Z2Fourier")
    ev = evaluate(model, target, 600, chunk=256)
    assert ev.underflow == 0.0 and ev.outside_cell == 0.0
    with torch.no_grad():
        arch.shift[0] = -200.0
        s = model.sample(64)
        assert torch.isfinite(s.log_q).all() and (s.log_q - model.log_prob(s.x)).abs().min() > 100
    ev = evaluate(model, target, 600, chunk=256)
    assert ev.underflow == 1.0


@pytest.mark.slow
def test_run_records_the_underflow_metric(tmp_path):
    import json

    res = invoke("run", "--target", "phi4-real", "--methods", "sesamo", "--seeds", "0", "--preset", "smoke",
                 "--set", "shape=4,2", "--set", "flow=z2-fourier", "--set", "steps=5", "--set", "batch_size=64",
                 "--set", "final_samples=256", "--store", tmp_path / "r.sqlite", "--quiet", "--json")
    assert res.exit_code == 0, res.stderr
    (rec,) = json.loads(res.stdout)
    assert rec["underflow"] == 0.0


# ---------------------------------------------------------------------------------------------
# item 5: a deeply nested benchmarks table; a target whose action raises
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    "params = " + "{a = " * 1000 + "1" + "}" * 1000,  # tomllib itself recurses
    "seeds = " + "[" * 1000 + "1" + "]" * 1000,
    "params = {n = " + "{a = " * 40 + "1" + "}" * 40 + "}",  # parsed, but deeper than allowed
])
def test_deeply_nested_benchmarks_table_is_one_line(tmp_path, body):
    f = tmp_path / "benchmarks.toml"
    f.write_text("[benchmarks.deep]\ntarget = 'gaussian-mixture'\n" + body + "\n")
    res = invoke("list", "benchmarks", "--benchmarks-file", f)
    assert_clean_error(res, None, "benchmarks.deep", "32 levels")
    assert "RecursionError" not in res.stderr and len(res.stderr) < 300


BUGGY_TARGET = '''
from sesamo_bench.core.target import Target


class Buggy(Target):
    """a target plugin whose action has a bug"""

    name = "buggy"

    def __init__(self, *, n: int = 2):
        self.n, self.shape = n, (n,)

    def action(self, x):
        raise RuntimeError("boom in the action")
'''


def test_hmc_with_a_raising_action_is_one_line(tmp_path, monkeypatch):
    from sesamo_bench import plugins

    d = tmp_path / "plug"
    (d / "targets").mkdir(parents=True)
    (d / "targets" / "buggy.py").write_text(BUGGY_TARGET)
    monkeypatch.setenv("SESAMO_BENCH_PLUGINS", str(d))
    plugins.reload()
    try:
        res = invoke("hmc", "--target", "buggy", "--samples", "8", "--chains", "2", "--burn-in", "2",
                     "--store", tmp_path / "r.sqlite")
        assert_clean_error(res, None, "target 'buggy'", "RuntimeError: boom in the action")
    finally:
        monkeypatch.delenv("SESAMO_BENCH_PLUGINS")
        plugins.reload()
