"""The self-reparametrized KL (paper Eq. 18, App. J) and the penalty (Eq. 11)."""

from __future__ import annotations

import math

import pytest
import torch

from sesamo_bench.core import metrics
from sesamo_bench.core.loss import penalty, self_reparametrized_kl

from .helpers import bound, make_method


def test_penalty_shape():
    lam = torch.tensor([-2.0, -1e-9, 0.0, 1e-3, 5.0])
    p = penalty(lam, a=1000.0, b=100.0)
    assert p[0] == p[1] == p[2] == 0
    torch.testing.assert_close(p[3], 1000 * torch.sigmoid(torch.tensor(0.1)))
    torch.testing.assert_close(p[4], torch.tensor(1000.0))


def test_gamma_zero_is_reverse_kl():
    lw = torch.randn(100)
    torch.testing.assert_close(self_reparametrized_kl(lw, gamma=0.0), -lw.mean())
    torch.testing.assert_close(self_reparametrized_kl(lw, gamma=1.0),
                               -lw.mean() + torch.logsumexp(lw, 0) - math.log(100))


def test_metrics_against_direct_formulas():
    w = torch.rand(1000) + 0.1
    lw = w.log()
    assert metrics.ess(lw) == pytest.approx(float(w.sum() ** 2 / (1000 * (w**2).sum())))
    lz, err = metrics.log_z(lw)
    assert lz == pytest.approx(math.log(float(w.mean())))
    assert err == pytest.approx(float(w.std(unbiased=False) / w.mean()) / math.sqrt(1000), rel=1e-6)
    # huge log-weights do not overflow
    assert metrics.ess(lw + 1e4) == pytest.approx(metrics.ess(lw))


class TwoModes:
    """1-D target 0.25 N(-3, 1) + 0.75 N(3, 1): the Z2 flip (to x < 0) has probability 0.25."""

    p_flip = 0.25

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1)
        a = math.log(self.p_flip) - 0.5 * (x + 3) ** 2
        b = math.log(1 - self.p_flip) - 0.5 * (x - 3) ** 2
        return torch.logaddexp(a, b) - 0.5 * math.log(2 * math.pi)


def _train_flip_probability(gamma: float, steps: int = 300, seed: int = 0) -> float:
    torch.manual_seed(seed)
    sym = bound("z2", {"broken": True}, (1,))
    m = make_method("sesamo", sym, (1,), prior_mean=3.0, seed=seed, flow_scale=0.0, couplings=2)
    target = TwoModes()
    opt = torch.optim.Adam(m.parameters(), lr=2e-2)
    for _ in range(steps):
        opt.zero_grad()
        s = m.sample(512)
        lw = target.log_prob(s.x) - s.log_q
        loss = self_reparametrized_kl(lw, penalty(sym.penalty_fn(s.cell)), gamma=gamma)
        loss.backward()
        opt.step()
    return float(sym.modulation.probabilities()[1])


def test_gamma_learns_breaking_parameter():
    """App. J: with gamma > 0 the flip probability e^b converges to the mode ratio."""
    learned = _train_flip_probability(gamma=0.5)
    assert abs(learned - TwoModes.p_flip) < 0.03, learned


def _breaking_gradients(gamma: float, batches: int = 200) -> torch.Tensor:
    torch.manual_seed(1)
    sym = bound("z2", {"broken": True}, (1,))
    # the flow already matches the x > 0 mode exactly (identity flow, prior N(3, 1))
    m = make_method("sesamo", sym, (1,), prior_mean=3.0, flow_scale=0.0, couplings=2)
    target, grads = TwoModes(), []
    for _ in range(batches):
        m.zero_grad()
        s = m.sample(512)
        self_reparametrized_kl(target.log_prob(s.x) - s.log_q, gamma=gamma).backward()
        grads.append(float(sym.modulation.theta.grad))
    return torch.tensor(grads)


def test_reverse_kl_gives_no_gradient_to_breaking_parameter():
    """App. J Eq. (62): at gamma = 0 the gradient w.r.t. b vanishes in expectation (only
    batch noise); at gamma = 0.5 it is significantly non-zero and lowers the flip probability."""
    g0 = _breaking_gradients(0.0)
    assert abs(float(g0.mean())) < 3 * float(g0.std()) / math.sqrt(len(g0)) + 1e-12
    g5 = _breaking_gradients(0.5)
    assert float(g5.mean()) > 6 * float(g5.std()) / math.sqrt(len(g5))  # descent lowers theta


def test_reverse_kl_training_leaves_breaking_parameter_near_initial_value():
    frozen = _train_flip_probability(gamma=0.0)
    learned = _train_flip_probability(gamma=0.5)
    assert abs(frozen - TwoModes.p_flip) > 3 * abs(learned - TwoModes.p_flip), (frozen, learned)
