"""The missing-support metric, the importance-weighted breaking ratio and the ln Z error flag,
against exact references (Hubbard quadrant masses and quadrature, Gaussian-mixture weights)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sesamo_bench.core import metrics
from sesamo_bench import plugins
from sesamo_bench.outputs.report import render_report
from sesamo_bench.harness.train import breaking_sign_fn, evaluate, support

from .helpers import bound, make_method
from .test_report import make_run


def hubbard(**kw):
    return plugins.targets.create("hubbard", kw)


def gauss_legendre_mass(t, x1_range, x2_range, n=240, power=0):
    """int x1^power exp(-f) over a rectangle by Gauss-Legendre in each axis (f: the target's action)."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    (a1, b1), (a2, b2) = x1_range, x2_range
    x1, w1 = 0.5 * (b1 - a1) * nodes + 0.5 * (b1 + a1), 0.5 * (b1 - a1) * weights
    x2, w2 = 0.5 * (b2 - a2) * nodes + 0.5 * (b2 + a2), 0.5 * (b2 - a2) * weights
    g1, g2 = np.meshgrid(x1, x2, indexing="ij")
    x = torch.as_tensor(np.stack([g1.ravel(), g2.ravel()], -1))
    f = t.action(x).numpy().reshape(g1.shape)
    return float((np.outer(w1, w2) * g1**power * np.exp(-f)).sum())


def binomial_close(est: float, exact: float, n: int, k: float = 5.0) -> bool:
    return abs(est - exact) < k * math.sqrt(max(exact * (1 - exact), 1e-12) / n)


# -- exact reference samples ------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [1.0, 4.0])
def test_hubbard_reference_samples_have_the_exact_quadrant_masses(beta):
    t = hubbard(beta=beta)
    n = 200_000
    x = t.reference_samples(n, generator=torch.Generator().manual_seed(1))
    assert x.shape == (n, 2) and x.dtype == torch.float64
    quad = [(x[:, 0] > 0) & (x[:, 1] > 0), (x[:, 0] < 0) & (x[:, 1] < 0),
            (x[:, 0] < 0) & (x[:, 1] > 0), (x[:, 0] > 0) & (x[:, 1] < 0)]
    for q, p in zip(quad, t.mode_probabilities()):
        assert binomial_close(float(q.double().mean()), p, n)


def test_hubbard_reference_samples_second_moment_by_quadrature():
    t = hubbard()
    x = t.reference_samples(200_000, generator=torch.Generator().manual_seed(2))

    lim = 70.0
    pieces = [(-lim, 0.0), (0.0, lim)]
    z = sum(gauss_legendre_mass(t, a, b) for a in pieces for b in pieces)
    m2 = sum(gauss_legendre_mass(t, a, b, power=2) for a in pieces for b in pieces) / z
    est = float((x[:, 0] ** 2).mean())
    assert abs(est - m2) < 5 * float((x[:, 0] ** 2).std()) / math.sqrt(x.shape[0])


def test_gaussian_mixture_reference_samples_have_the_mode_weights():
    t = plugins.targets.create("gaussian-mixture", {"b": 0.1})
    n = 100_000
    x = t.reference_samples(n, generator=torch.Generator().manual_seed(3))
    k = torch.cdist(x, torch.as_tensor(t.means)).argmin(1)
    for i, p in enumerate(t.mode_probabilities()):
        assert binomial_close(float((k == i).double().mean()), p, n)
    # the tilt b (x1 + x2) shifts every Gaussian by -b (1, 1)
    shift = (x - torch.as_tensor(t.means)[k]).mean(0)
    assert torch.allclose(shift, torch.full((2,), -0.1, dtype=torch.float64), atol=0.02)


# -- missing support --------------------------------------------------------------------------------
class QuadrantModel(torch.nn.Module):
    """A stand-in model whose q is positive only on the listed quadrants (signs of x1, x2)."""

    def __init__(self, quadrants):
        super().__init__()
        self.quadrants = quadrants
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def log_prob(self, x):
        ok = torch.zeros(x.shape[0], dtype=torch.bool)
        for s1, s2 in self.quadrants:
            ok |= (s1 * x[:, 0] > 0) & (s2 * x[:, 1] > 0)
        return torch.where(ok, torch.zeros(x.shape[0], dtype=x.dtype), torch.full((x.shape[0],), -math.inf))


@pytest.mark.parametrize("beta", [1.0, 3.0])
def test_support_metric_gives_the_exact_mass_of_the_missing_quadrants(beta):
    t = hubbard(beta=beta)
    p = t.mode_probabilities()  # quadrants (+,+), (-,-), (-,+), (+,-)
    n = 100_000
    cases = [([(1, 1), (-1, -1)], p[2] + p[3]), ([(1, 1), (-1, -1), (-1, 1)], p[3]),
             ([(1, 1), (-1, -1), (-1, 1), (1, -1)], 0.0)]
    for quadrants, missing in cases:
        out = support(QuadrantModel(quadrants), t, n, seed=0)
        assert out["support_reference_n"] == n
        assert binomial_close(out["support_missing"], missing, n), (quadrants, out, missing)
        if missing == 0:
            assert out["support_missing_count"] == 0 and out["support_missing_err"] == 0


class Shift(torch.nn.Module):
    """y = z + (c, 0): maps the positive quadrant onto x1 > c, x2 > 0 only."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.dim = 2

    def forward(self, z):
        return z + z.new_tensor([self.c, 0.0]), z.new_zeros(z.shape[0])

    def inverse(self, x):
        return x - x.new_tensor([self.c, 0.0]), x.new_zeros(x.shape[0])


def test_canonicalization_that_misses_part_of_its_cell_reports_the_missing_mass():
    """Canonicalization with a flow that maps the quadrant onto x1 > c has no support on |x1| < c:
    the metric must give the target mass of that strip (2-D quadrature of exp(-f))."""
    t = hubbard()
    c = 12.0
    model = make_method("canonicalization", bound("z2xz2", {"broken": True, "flip": [0]}, (2,)), (2,),
                        prior_var=18.0)
    model.flow = Shift(c)
    lim = 70.0
    x1_pieces, x2_pieces = [(-lim, -c), (-c, c), (c, lim)], [(-lim, 0.0), (0.0, lim)]
    masses = [sum(gauss_legendre_mass(t, a, b) for b in x2_pieces) for a in x1_pieces]
    strip = masses[1] / sum(masses)
    n = 100_000
    out = support(model, t, n, seed=1)
    assert 0.01 < strip < 0.5
    assert binomial_close(out["support_missing"], strip, n), (out, strip)
    # the flow covers its whole cell without the shift: no missing mass
    model.flow = Shift(0.0)
    assert support(model, t, 20_000, seed=1)["support_missing"] == 0.0


def test_missing_support_counts_minus_infinity_only():
    lq = torch.tensor([0.0, -math.inf, -1e300, -math.inf])
    assert metrics.missing_support(lq) == (0.5, pytest.approx(0.25), 2)


# -- importance-weighted breaking ratio -------------------------------------------------------------
def test_weighted_breaking_ratio_against_the_exact_ratio_at_large_beta():
    """SESaMo at beta = 4 with the wrong modulation (p = 1/2, learned R = 0) and a broad flow:
    the importance-weighted R of its samples must still give the exact R = -0.99732."""
    torch.manual_seed(4)
    t = hubbard(beta=4.0)
    sym = bound("z2xz2", {"broken": True, "flip": [0]}, (2,))
    model = make_method("sesamo", sym, (2,), prior_var=60.0**2, flow_scale=0.0)
    assert model.breaking_ratio() == pytest.approx(0.0)
    ev = evaluate(model, t, 65536, sign_fn=breaking_sign_fn(None, model, t, torch.device("cpu")))
    exact = t.breaking_ratio()
    assert ev.breaking_ratio_is_err < 3e-3
    assert abs(ev.breaking_ratio_is - exact) < 5 * ev.breaking_ratio_is_err, (ev, exact)
    assert ev.log_z_err_reliable and ev.ess_n > metrics.MIN_EFFECTIVE_SAMPLES


def test_breaking_sign_is_the_targets_when_the_method_enforces_a_subgroup():
    """The equivariant flow on the Hubbard model enforces only the exact global flip (z2); its R IS
    must still count the target's z2 x z2 cells, whose breaking ratio is the exact reference."""
    t = hubbard()
    from sesamo_bench.core.architecture import FlowSpec
    from sesamo_bench.core.methods import METHODS

    model = METHODS["equivariant"]((2,), bound("z2", {}, (2,)), flow=FlowSpec("odd-realnvp", {"width": 8}))
    assert model.symmetry.name == "z2" and t.symmetry()[0] == "z2xz2"
    sign = breaking_sign_fn(None, model, t, torch.device("cpu"))
    x = torch.tensor([[1.0, 2.0], [-1.0, -2.0], [-1.0, 2.0], [1.0, -2.0]])
    assert sign(x).tolist() == bound("z2xz2", t.symmetry()[1], (2,)).breaking_sign(x).tolist() == [1, 1, -1, -1]


def test_weighted_breaking_ratio_of_exact_samples_is_the_counting_ratio():
    # q = p: unit weights, R-hat = mean sign and the delta-method error is the binomial one
    s = torch.tensor([1.0] * 70 + [-1.0] * 30)
    r, err = metrics.weighted_breaking_ratio(torch.zeros(100), s)
    assert r == pytest.approx(0.4) and err == pytest.approx(math.sqrt((1 - 0.4**2) / 100))


def test_breaking_sign_follows_the_cells():
    z2 = bound("z2", {"broken": True}, (3,))
    x = torch.tensor([[1.0, 1.0, -0.5], [-1.0, 0.2, 0.1]])
    assert z2.breaking_sign(x).tolist() == [1, -1]
    k = bound("z2xz2", {"broken": True, "flip": [0]}, (2,))
    x = torch.tensor([[1.0, 2.0], [-1.0, -2.0], [-1.0, 2.0], [1.0, -2.0]])
    assert k.breaking_sign(x).tolist() == [1, 1, -1, -1]
    assert bound("zm", {"m": 8}, (2,)).breaking_sign(x) is None


def test_phi4_real_weighted_ratio_sign_convention():
    """R = P(m > 0) - P(m < 0): exact samples (q = p) of a tilted field give -tanh-like negative R."""
    t = plugins.targets.create("phi4-real", {"shape": [2, 2], "alpha": 0.3})
    sym = bound("z2", {"broken": True}, (2, 2))
    x = t.reference_samples(4000, generator=torch.Generator().manual_seed(5))
    r, _ = metrics.weighted_breaking_ratio(torch.zeros(x.shape[0]), sym.breaking_sign(x))
    assert r < -0.1


# -- ln Z error flag --------------------------------------------------------------------------------
def test_error_flag_threshold():
    assert metrics.error_reliable(6.0) is False
    assert metrics.error_reliable(float(metrics.MIN_EFFECTIVE_SAMPLES)) is True
    assert metrics.error_reliable(None) is None
    lw = torch.tensor([0.0] + [-50.0] * 999)  # one weight dominates: ESS x N = 1
    assert metrics.effective_samples(lw) == pytest.approx(1.0)


def test_report_suppresses_ln_z_errors_of_too_few_effective_samples():
    runs = []
    for seed, ess_n in ((0, 6.0), (1, 5000.0)):
        r = make_run("hubbard", "sesamo", seed, log_z=19.3 + seed, log_z_exact=24.64)
        r["metrics"].update(ess_n=ess_n, log_z_err_reliable=metrics.error_reliable(ess_n), breaking_ratio_is=-0.4,
                            breaking_ratio_is_err=0.01, support_missing=0.026, support_missing_err=0.001)
        runs.append(r)
    text = render_report(runs, fmt="markdown")
    assert "19.80*" in text and "19.8(7)" not in text
    assert "ESS x N < 100" in text
    ok = render_report(runs[1:], fmt="markdown")
    assert "20.30*" not in ok and "-0.400(10)" in ok and "0.0260(10)" in ok
    groups = json.loads(render_report(runs, fmt="json"))
    assert groups[0]["log_z_err_reliable"] is False and groups[0]["ess_n_min"] == 6.0



