"""Training objectives that learn from samples (issue 29): maximum likelihood and the mixed
objective, the training and held-out splits of a target, and the held-out NLL.

The references are independent of the code: the sample mean and covariance of a Gaussian, the
closed-form cross-entropy of two Gaussians, the loss written out by hand on the same draw."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sesamo_bench as sb
from sesamo_bench import plugins
from sesamo_bench.cli import app
from sesamo_bench.core.target import Target
from sesamo_bench.errors import ConfigError
from sesamo_bench.harness.config import RunConfig
from sesamo_bench.harness.store import run_id
from sesamo_bench.harness.train import Trainer, build, heldout_nll, prepare, train

MU = torch.tensor([1.5, -2.0], dtype=torch.float64)
SIGMA = torch.tensor([[1.0, 0.6], [0.6, 2.0]], dtype=torch.float64)


class Gaussian(Target):
    """N(MU, SIGMA) with exact training and held-out draws (different seeds: disjoint rows)."""

    name = "gauss-objective-test"
    dtype = torch.float64

    def __init__(self):
        self.shape = (2,)
        self.prec = torch.linalg.inv(SIGMA)

    def action(self, x):
        d = x - MU.to(x)
        return 0.5 * torch.einsum("ni,ij,nj->n", d, self.prec.to(x), d)

    def symmetry(self):
        return "z2", {"broken": True}

    def log_z(self):
        return 0.5 * math.log(float(torch.det(2 * math.pi * SIGMA)))

    def training_data(self, split="train"):
        g = torch.Generator().manual_seed({"train": 1, "test": 2}[split])
        n = {"train": 20000, "test": 4000}[split]
        z = torch.randn(n, 2, dtype=torch.float64, generator=g)
        return MU + z @ torch.linalg.cholesky(SIGMA).T


@pytest.fixture
def gaussian():
    sb.register(Gaussian)
    yield Gaussian
    plugins.targets.unregister(Gaussian.name)


def config(**kw) -> RunConfig:
    base = dict(target=Gaussian.name, method="realnvp", seed=0, steps=600, batch_size=512, lr=5e-3,
                lr_schedule="cosine", couplings=4, hidden_layers=1, width=16, eval_every=600,
                eval_samples=256, final_samples=4096, save_samples=0, dtype="float64", kernels="aten",
                device="cpu", objective="ml")
    return RunConfig(**{**base, **kw})


def test_ml_recovers_mean_and_covariance(gaussian):
    """Maximum likelihood on samples of N(mu, Sigma) gives a flow whose samples have the training
    data's mean and covariance (the ML estimates), and whose held-out NLL is the Gaussian's entropy."""
    res = train(config())
    assert res.status == "finished"
    target, model, _, _ = build(config())
    torch.manual_seed(0)
    # retrain the same run in-process to sample it (train() does not return the model)
    trainer = Trainer(config(), model, target, torch.device("cpu"))
    for step in range(1, 601):
        trainer.step(step)
    with torch.no_grad():
        x = model.sample(40000).x
    data = target.training_data("train")
    assert torch.allclose(x.mean(0), data.mean(0), atol=0.06), (x.mean(0), data.mean(0))
    assert torch.allclose(torch.cov(x.T), torch.cov(data.T), rtol=0.08, atol=0.06), torch.cov(x.T)
    entropy = 0.5 * math.log(float(torch.det(2 * math.pi * math.e * SIGMA)))
    assert res.nll == pytest.approx(entropy, abs=4 * res.nll_err + 0.02), (res.nll, res.nll_err, entropy)
    assert res.nll_per_dim == pytest.approx(res.nll / 2)
    assert res.ess > 0.95  # the flow is the target, up to the noise of its estimates


def test_heldout_nll_of_the_prior_is_the_cross_entropy(gaussian):
    """An untrained flow is the identity: q = N(0, 1), and -E_p[ln q] = (d ln 2 pi + tr Sigma + |mu|^2) / 2."""
    target, model, _, _ = build(config())
    out = heldout_nll(model, target)
    exact = 0.5 * (2 * math.log(2 * math.pi) + float(torch.trace(SIGMA)) + float(MU @ MU))
    assert out["nll_n"] == 4000
    assert out["nll"] == pytest.approx(exact, abs=4 * out["nll_err"]), (out, exact)


def test_the_losses_against_a_hand_computation(gaussian):
    """ml: the mean of -ln q over batch_size training rows drawn with replacement; mixed: that plus
    kl_weight times the self-reparametrized KL of a fresh batch of the model (same random draws)."""
    for objective in ("ml", "mixed"):
        cfg = config(objective=objective, kl_weight=0.3, gamma=0.5)
        target, model, _, _ = build(cfg)
        trainer = Trainer(cfg, model, target, torch.device("cpu"))
        data = target.training_data("train")
        torch.manual_seed(7)
        got = float(trainer.loss().detach())
        torch.manual_seed(7)
        idx = torch.randint(data.shape[0], (cfg.batch_size,))
        want = float(-model.log_prob(data[idx]).mean())
        if objective == "mixed":
            s = model.sample(cfg.batch_size)
            log_w = -target.action(s.x) - s.log_q
            kl = -log_w.mean() + 0.5 * (torch.logsumexp(log_w, 0) - math.log(cfg.batch_size))
            want += 0.3 * float(kl)
        assert got == pytest.approx(want, rel=1e-10, abs=1e-10), objective


def test_training_never_reads_the_heldout_split(gaussian, monkeypatch):
    """Training draws only from the ``train`` split (``training_rows``), the held-out NLL only from ``test``."""
    reads = []
    orig = Gaussian.training_data

    def spy(self, split="train"):
        reads.append((split, _caller()))
        return orig(self, split)

    monkeypatch.setattr(Gaussian, "training_data", spy)
    train(config(steps=20))
    assert ("train", "training_rows") in reads and ("test", "heldout_nll") in reads
    assert {c for s, c in reads if s == "test"} == {"heldout_nll"}
    assert {c for s, c in reads if s == "train"} == {"training_rows"}


def _caller() -> str:
    import inspect

    f = inspect.currentframe().f_back.f_back
    cls = f.f_locals.get("self")
    return f"{type(cls).__name__}.{f.f_code.co_name}" if cls is not None and f.f_code.co_name == "__init__" \
        else f.f_code.co_name


def test_dw4_splits_share_no_rows():
    """DW-4 trains on the literature's training file; its held-out split (the suite's HMC) shares no
    configuration with it, and is a sample of the target (energy of a converged HMC, virial = 6)."""
    from sesamo_bench.analysis.particle_reference import virial

    t = plugins.targets.create("dw4")
    tr, te = t.training_data("train"), t.training_data("test")
    assert tr.shape == (100000, 6) and te.shape[1] == 6
    seen = {r.tobytes() for r in tr.float().numpy()}
    assert not any(r.tobytes() in seen for r in te.float().numpy())
    e, v = t.action(te).numpy(), virial(t, te).numpy()
    # -22.54(2) from independent HMC chains (docs/results.md); virial (n - 1) d = 6 exactly
    assert abs(e.mean() - (-22.54)) < 4 * e.std() / math.sqrt(len(e)) * 1.5 + 0.02
    assert abs(v.mean() - 6.0) < 4 * v.std() / math.sqrt(len(v)) * 1.5


def test_objective_errors_are_one_line(tmp_path):
    store = tmp_path / "s.sqlite"
    res = CliRunner().invoke(app, ["run", "--target", "hubbard", "--methods", "realnvp", "--preset", "smoke",
                                   "--seeds", "0", "--set", "objective=ml", "--store", str(store)])
    assert res.exit_code == 2 and "has none" in res.stderr and "dw4" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    res = CliRunner().invoke(app, ["run", "--target", "dw4", "--methods", "realnvp", "--preset", "smoke",
                                   "--seeds", "0", "--set", "objective=forward", "--store", str(store)])
    assert res.exit_code == 2 and "reverse-kl, ml, mixed" in res.stderr
    assert not store.exists()


def test_reverse_kl_run_ids_are_unchanged():
    """objective and kl_weight are later fields: at their defaults the run id is the one of a
    configuration without them (stores from before keep their ids); another objective is another run."""
    cfg = RunConfig(target="dw4", method="realnvp")
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("objective", "kl_weight")}
    assert run_id(cfg.to_dict()) == run_id(old)
    assert run_id(dataclasses.replace(cfg, objective="ml").to_dict()) != run_id(old)


def test_every_builtin_method_accepts_every_objective():
    for m in plugins.methods.names():
        assert plugins.methods.items[m].exact_density, m
        prepare(RunConfig(target="dw4", method=m, objective="mixed"))


def test_a_method_without_exact_density_says_why(gaussian, monkeypatch):
    cls = plugins.methods.items["realnvp"]
    monkeypatch.setattr(cls, "exact_density", False)
    with pytest.raises(ConfigError, match="exact density"):
        prepare(config())
    np.testing.assert_equal(prepare(config(objective="reverse-kl"))[0].shape, (2,))


def test_heldout_split_is_generated_inside_an_evaluation(tmp_path, monkeypatch):
    """The final evaluation runs under torch.no_grad(); a held-out split not yet cached is generated
    there by HMC, which needs the action's gradient (LJ-13 runs failed at the end of training)."""
    from sesamo_bench.analysis.samples import hmc_split

    monkeypatch.setenv("SESAMO_BENCH_CACHE", str(tmp_path))
    t = plugins.targets.create("dw4")
    with torch.no_grad():
        y = hmc_split(t, "test", 200)
    assert y.shape == (200, 6) and bool(torch.isfinite(y).all())


@pytest.mark.parametrize("rows", [65536, 100])
def test_sesamo_stacked_preimage_pass_equals_one_pass_per_preimage(rows, monkeypatch):
    """SESaMo's density sums over the preimages; the flow runs over them stacked (in groups of
    PREIMAGE_ROWS rows): the same value as one flow pass per preimage (float64, DW-4: 96 preimages)."""
    import importlib

    from sesamo_bench.harness.config import resolve
    from sesamo_bench.harness.train import build

    sesamo = importlib.import_module(plugins.methods.items["sesamo"].__module__)
    monkeypatch.setattr(sesamo, "PREIMAGE_ROWS", rows)
    torch.manual_seed(0)
    cfg = resolve("dw4", "sesamo", seed=0, preset="smoke", overrides={"objective": "ml"})
    target, model, _, _ = build(cfg)
    model = model.double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        x = target.training_data("train")[:40]
        sym = model.symmetry
        terms = []
        for y, u in sym.preimages(x):
            z, ladj = model.flow.inverse(sym.unembed(y))
            terms.append(model.prior.log_prob(z) + ladj + sym.modulation.log_prob(u) - sym.modulation_ladj(y))
        assert len(terms) == 96
        assert torch.allclose(model.log_prob(x), torch.logsumexp(torch.stack(terms), 0), rtol=1e-12, atol=1e-12)
