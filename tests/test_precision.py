"""Mixed precision: float32 conditioner MLPs inside a float64 flow keep the density exact."""

from __future__ import annotations

import pytest
import torch

from sesamo_bench.harness import config, train
from sesamo_bench.core import kernels
from sesamo_bench.core.flows import MLP, RealNVP
from sesamo_bench.harness.store import run_id

from .helpers import randomise


def _mixed_flow(dim: int = 4, seed: int = 0) -> RealNVP:
    flow = randomise(RealNVP(dim, couplings=4, hidden_layers=2, width=16).double(), scale=0.5, seed=seed)
    for m in flow.modules():
        if isinstance(m, MLP):
            m.float()
    return flow


def test_mixed_flow_is_an_exact_float64_bijection():
    flow = _mixed_flow()
    z = torch.randn(7, 4, dtype=torch.float64)
    x, ladj = flow(z)
    assert x.dtype == ladj.dtype == torch.float64
    z2, ladj_inv = flow.inverse(x)
    # s and t are float32 functions of x_a, but the same ones both ways: float64 round trip
    torch.testing.assert_close(z2, z, rtol=0, atol=1e-12)
    torch.testing.assert_close(ladj_inv, -ladj, rtol=0, atol=1e-12)
    # ln|det| against autograd's Jacobian of the mixed-precision map, one sample per call as the
    # Jacobian is taken (float32 products may round differently at another batch size). The
    # Jacobian's d s / d x_a entries carry float32 rounding (~1e-7 relative), which slogdet
    # amplifies by the matrix's condition number (1e4 to 2e5 for these flows): up to ~5e-4 with
    # either the plain or the native float32 kernels. A wrong ln|det| would be off by O(0.1).
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda t: flow(t.unsqueeze(0))[0][0], z[i])
        one = flow(z[i:i + 1])[1][0]
        assert torch.linalg.slogdet(jac)[1].item() == pytest.approx(one.item(), abs=2e-3)
        assert one.item() == pytest.approx(ladj[i].item(), abs=1e-5)


def test_mixed_flow_differs_from_float64_only_by_float32_rounding_of_s_and_t():
    mixed = _mixed_flow(seed=3)
    full = randomise(RealNVP(4, couplings=4, hidden_layers=2, width=16).double(), scale=0.5, seed=3)
    full.load_state_dict({k: v.double() for k, v in mixed.state_dict().items()})
    z = torch.randn(50, 4, dtype=torch.float64)
    (xm, lm), (xf, lf) = mixed(z), full(z)
    assert not torch.equal(xm, xf)  # the conditioners really ran in float32
    torch.testing.assert_close(xm, xf, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lm, lf, rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_float32_parameters():
    flow = _mixed_flow()
    x, ladj = flow(torch.randn(9, 4, dtype=torch.float64))
    ((x**2).sum() + ladj.sum()).backward()
    mlp_params = [p for m in flow.modules() if isinstance(m, MLP) for p in m.parameters()]
    assert mlp_params and all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
                              for p in mlp_params)
    assert any(float(p.grad.abs().sum()) > 0 for p in mlp_params)


@pytest.mark.parametrize("method", ["realnvp", "canonicalization", "sesamo"])
def test_hubbard_presets_run_float32_mlps_in_a_float64_model(method):
    cfg = config.resolve("hubbard", method, preset="smoke", overrides={"device": "cpu"})
    assert cfg.mlp_dtype == "float32"
    target, model, _, dtype = train.build(cfg)
    assert dtype == torch.float64
    in_mlps = {id(p) for m in model.modules() if isinstance(m, MLP) for p in m.parameters()}
    assert in_mlps
    for p in model.parameters():
        assert p.dtype == (torch.float32 if id(p) in in_mlps else torch.float64)
    s = model.sample(64)
    assert s.x.dtype == s.log_q.dtype == torch.float64
    # the exact density at the samples equals the density along the sampling path; to float32
    # rounding of s and t only: the inverse sees x_a after float64 rounding of the prior's
    # standardisation, which can move it across a float32 rounding boundary
    # (not for a fresh SESaMo flow, which leaves its cell: its exact density sums the preimages)
    if method != "sesamo":
        assert ((model.log_prob(s.x) - s.log_q).abs() < 1e-5).all()
    same = config.resolve("hubbard", method, preset="smoke", overrides={"device": "cpu", "mlp_dtype": "auto"})
    assert all(p.dtype == torch.float64 for p in train.build(same)[1].parameters())


def test_mlp_dtype_enters_the_run_id_only_when_set():
    cfg = config.resolve("gaussian-mixture", "sesamo", preset="smoke").to_dict()
    earlier = {k: v for k, v in cfg.items() if k != "mlp_dtype"}  # a store written before the field existed
    assert cfg["mlp_dtype"] == "auto" and run_id(cfg) == run_id(earlier)
    assert run_id(dict(cfg, mlp_dtype="float32")) != run_id(cfg)
    with pytest.raises(config.ConfigError, match="'mlp_dtype' must be one of auto, float32, float64"):
        config.check_hyper("mlp_dtype", "half")


def test_keep_freed_memory_is_applied_once_and_reports_it():
    applied = kernels.keep_freed_memory()
    assert isinstance(applied, bool) and kernels.keep_freed_memory() is applied
    import sys

    if sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver()):
        assert applied
