"""Fast correctness checks of the performance benchmark and the fused flow kernels (no timing)."""

import pytest
import torch
from torch import nn

from sesamo_bench.harness import perf
from sesamo_bench.core.flows import RealNVP, _BoundedAffine


def test_mlp_flops_counts_three_times_forward():
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    assert perf.mlp_flops(net, 7) == 3 * 2 * 7 * (3 * 5 + 5 * 2)


def test_mlp_flops_of_realnvp():
    f = RealNVP(128, shape=(8, 8, 2), couplings=6, hidden_layers=4, width=100)
    per_coupling = 64 * 100 + 3 * 100 * 100 + 100 * 128
    assert perf.mlp_flops(f, 8192) == 6 * 8192 * per_coupling * 6


@pytest.mark.parametrize("dim", [2, 7, 128])
def test_peer_has_the_same_architecture(dim):
    pytest.importorskip("normflows")
    ours = RealNVP(dim, couplings=6, hidden_layers=4, width=40)
    peer = perf.peer_model(dim, couplings=6, hidden_layers=4, width=40)
    assert perf.n_params(peer) == perf.n_params(ours)
    shapes = lambda m: sorted(tuple(lin.weight.shape) for lin in m.modules() if isinstance(lin, nn.Linear))  # noqa: E731
    assert shapes(peer) == shapes(ours)
    assert perf.mlp_flops(peer, 64) == perf.mlp_flops(ours, 64)


def test_bounded_affine_gradcheck():
    raw = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    xb = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r, x: _BoundedAffine.apply(r, x, 2.0), (raw, xb))
    assert torch.autograd.gradcheck(lambda r, x: _BoundedAffine.apply(r, x, 2.0)[1], (raw, xb))


def test_fast_flow_matches_jacobian_and_inverts():
    torch.manual_seed(0)
    f = RealNVP(6, shape=(3, 2), couplings=4, hidden_layers=2, width=8).double()
    for p in f.parameters():
        nn.init.normal_(p, std=0.4)
    z = torch.randn(4, 6, dtype=torch.float64)
    x, ladj = f(z)
    for i in range(4):
        jac = torch.autograd.functional.jacobian(lambda t: f(t.unsqueeze(0))[0][0], z[i])
        assert torch.allclose(torch.linalg.slogdet(jac)[1], ladj[i])
    z2, ladj_inv = f.inverse(x)
    assert torch.allclose(z2, z) and torch.allclose(ladj_inv, -ladj)
    zr = z.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: f(t), (zr,))


def test_machine_info_and_matmul_rate():
    info = perf.machine_info()
    assert info["cores"] >= 1 and info["torch"] == torch.__version__
    assert perf.matmul_rate(64, reps=1) > 0


def test_unknown_section_is_an_error():
    from sesamo_bench.errors import ConfigError

    with pytest.raises(ConfigError, match="Available"):
        perf.run_perf(perf.PerfOptions(sections=("nope",)))


def test_perf_command_measures_matmul_and_rejects_bad_names(tmp_path):
    from typer.testing import CliRunner

    from sesamo_bench.cli import app

    runner = CliRunner()
    out = tmp_path / "perf.json"
    res = runner.invoke(app, ["perf", "--sections", "matmul", "--reps", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "GFLOP/s" in res.output and out.exists()
    bad = runner.invoke(app, ["perf", "--targets", "nope", "--sections", "throughput"])
    assert bad.exit_code == 2 and "Unknown target 'nope'" in bad.output
    bad = runner.invoke(app, ["perf", "--presets", "quick,huge", "--sections", "throughput"])
    assert bad.exit_code == 2 and "unknown preset 'huge'. Allowed: quick, paper" in bad.output


def test_perf_command_sets_the_thread_count(tmp_path):
    import json

    from typer.testing import CliRunner

    from sesamo_bench.cli import app

    before = torch.get_num_threads()
    out = tmp_path / "perf.json"
    try:
        args = ["perf", "--sections", "matmul", "--reps", "1", "--threads", "1", "--out", str(out)]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        assert json.loads(out.read_text())["machine"]["threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_throughput_row_reports_ratios_and_both_matmul_fractions():
    from sesamo_bench.core import kernels

    rates = {"float32": 1e11, "float32_onednn": 2e11, "float64": 5e10}
    row = perf.throughput_row("gaussian-mixture", "smoke", 64, reps=1, device="cpu", rates=rates, peer=False)
    for key in ("sesamo", "realnvp", "realnvp_aten"):
        r = row[key]
        assert r["steps_per_s"] > 0 and r["flops"] > 0
        assert r["matmul_fraction"] == pytest.approx(r["flops"] * r["steps_per_s"] / 1e11)
        assert r["best_matmul_fraction"] == pytest.approx(r["matmul_fraction"] / 2)  # against the faster rate
    sps = {k: row[k]["steps_per_s"] for k in ("realnvp", "realnvp_aten")}
    assert row["ratio_realnvp_vs_aten"] == pytest.approx(sps["realnvp"] / sps["realnvp_aten"])
    assert "ratio_realnvp_vs_peer" not in row
    if kernels.available():
        assert perf.onednn_rate(64, reps=1) > 0
    # every path that runs here is timed forced beside auto, and auto is compared with the fastest
    for path in ("native", "onednn"):
        if path in kernels.candidates():
            assert row[f"ratio_realnvp_vs_{path}"] == pytest.approx(
                row["realnvp"]["steps_per_s"] / row[f"realnvp_{path}"]["steps_per_s"])
            assert row[f"realnvp_{path}"]["matmul_fraction"] > 0
        else:
            assert f"realnvp_{path}" not in row
    forced = {p: row[f"realnvp_{p}"]["steps_per_s"] for p in kernels.candidates()}
    assert row["fastest_path"] == max(forced, key=forced.get)
    assert row["ratio_auto_vs_fastest"] == pytest.approx(row["realnvp"]["steps_per_s"] / max(forced.values()))
    assert row["auto_kernels"] and all(c["path"] in kernels.candidates() for c in row["auto_choice"])


def test_throughput_row_of_a_mixed_precision_preset():
    rates = {"float32": 1e11, "float64": 5e10}
    row = perf.throughput_row("hubbard", "smoke", 64, reps=1, device="cpu", rates=rates, peer=False)
    assert row["dtype"] == "float64" and row["mlp_dtype"] == "float32"
    for key, rate in (("realnvp", 1e11), ("sesamo", 1e11), ("realnvp_uniform", 5e10)):
        r = row[key]
        assert r["matmul_fraction"] == pytest.approx(r["flops"] * r["steps_per_s"] / rate)
    assert "ratio_uniform_vs_peer" not in row  # no peer measured
    assert "float64, MLPs float32" in perf.render({"machine": perf.machine_info(), "throughput": [row]})
