"""The fused MLP kernels (sesamo_bench.core.kernels) and the flow's split/join and bounded scale,
checked against autograd of the plain PyTorch modules (an independent reference)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from sesamo_bench.core import kernels, native
from sesamo_bench.harness import store
from sesamo_bench.harness.config import resolve
from sesamo_bench.errors import ConfigError
from sesamo_bench.core.flows import MLP, RealNVP, _Join, _Split, bounded, mlp

needs_onednn = pytest.mark.skipif(not kernels.available(), reason="this PyTorch build has no oneDNN linear operators")
FUSED = [pytest.param("onednn", marks=needs_onednn),
         pytest.param("native", marks=pytest.mark.skipif(native.library() is None,
                                                          reason=f"no native kernels: {native.unavailable_reason()}"))]


def _plain(net: MLP) -> nn.Sequential:
    """The same layers as a plain nn.Sequential (autograd through nn.Linear and nn.ReLU)."""
    return nn.Sequential(*net)


def _grads(module: nn.Module, x: torch.Tensor, gout: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    out = module(x)
    params = list(module.parameters())
    gs = torch.autograd.grad(out, [x, *params], gout)
    return out.detach(), gs


@pytest.mark.parametrize("fused", FUSED)
@given(n=st.integers(1, 300), n_in=st.integers(1, 70), width=st.sampled_from([3, 16, 40, 64, 100]),
       hidden=st.integers(0, 3), n_out=st.integers(1, 130))
def test_fused_mlp_matches_autograd_of_the_plain_module(fused, n, n_in, width, hidden, n_out):
    torch.manual_seed(n + n_in)
    net = mlp(n_in, n_out, hidden_layers=hidden, width=width, activation="relu", kernels=fused).float()
    for p in net.parameters():
        nn.init.normal_(p, std=0.3)
    x = torch.randn(n, n_in, dtype=torch.float32)
    gout = torch.randn(n, n_out, dtype=torch.float32)
    assert kernels.select(net.kernels, x, net._relu, net._sizes) == fused
    out, gs = _grads(net, x, gout)
    ref_out, ref_gs = _grads(_plain(net), x, gout)
    assert torch.allclose(out, ref_out, rtol=1e-4, atol=1e-4)
    for g, r in zip(gs, ref_gs):
        assert g.shape == r.shape
        assert torch.allclose(g, r, rtol=1e-4, atol=1e-5 * (1 + r.abs().max().item()))


@pytest.mark.parametrize("fused", FUSED)
def test_fused_mlp_without_input_gradient_and_under_no_grad(fused):
    net = mlp(64, 128, hidden_layers=4, width=100, activation="relu", kernels=fused).float()
    for p in net.parameters():
        nn.init.normal_(p, std=0.1)
    x = torch.randn(4099, 64, dtype=torch.float32)  # does not require grad: no input gradient is formed
    net(x).square().sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    ref = _plain(net)  # the same parameters, plain autograd
    for p in ref.parameters():
        p.grad = None
    ref(x).square().sum().backward()
    for g, p in zip(grads, ref.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-5 * (1 + p.grad.abs().max().item()))
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x), atol=1e-5)


def test_kernels_apply_only_to_float32_relu_on_cpu(monkeypatch):
    x32, x64 = torch.zeros(2048, 3, dtype=torch.float32), torch.zeros(2048, 3, dtype=torch.float64)
    sizes = (3, 40, 40, 2)
    for name in ("auto", "native", "onednn"):
        assert kernels.select(name, x64, True, sizes) is None
        assert kernels.select(name, x32, False, sizes) is None
        assert kernels.select(name, x32[None], True, sizes) is None  # not a 2-D batch
    assert kernels.select("aten", x32, True, sizes) is None
    onednn = "onednn" if kernels.available() else None
    has_native = native.library() is not None
    assert kernels.select("onednn", x32[:1024], True, sizes) == onednn
    assert kernels.select("native", x32, True, sizes) == ("native" if has_native else onednn)
    # auto takes what the measurement chose (tests/test_kernel_choice.py), among the paths that run here
    chosen = kernels.choose(sizes, 2048).path
    assert chosen in kernels.candidates()
    assert kernels.select("auto", x32, True, sizes) == (None if chosen == "aten" else chosen)
    # without the native build, kernels=native falls back to oneDNN
    monkeypatch.setattr(native, "library", lambda: None)
    assert "native" not in kernels.candidates()
    assert kernels.select("native", x32, True, sizes) == onednn


def test_aten_kernels_are_the_plain_module():
    net = mlp(5, 4, hidden_layers=2, width=8, activation="relu", kernels="aten").float()
    for p in net.parameters():
        nn.init.normal_(p, std=0.5)
    x = torch.randn(9, 5, dtype=torch.float32)
    assert torch.equal(net(x), _plain(net)(x))


def test_kernels_setting_is_checked_at_construction(monkeypatch):
    with pytest.raises(ConfigError, match="kernels must be one of auto, native, onednn, aten; got 'fast'"):
        mlp(2, 2, hidden_layers=1, width=4, activation="relu", kernels="fast")
    monkeypatch.setattr(kernels, "available", lambda: False)
    with pytest.raises(ConfigError, match="no working oneDNN"):
        RealNVP(4, couplings=2, hidden_layers=1, width=8, kernels="onednn")
    with pytest.raises(ConfigError, match="'kernels' must be one of auto, native, onednn, aten"):
        resolve("gaussian-mixture", "sesamo", preset="smoke", overrides={"kernels": "fast"})
    monkeypatch.setattr(native, "library", lambda: None)
    monkeypatch.setattr(native, "_reason", ["no C compiler (set CC or install gcc)"])
    with pytest.raises(ConfigError, match=r"kernels 'native' cannot run here \(no C compiler"):
        RealNVP(4, couplings=2, hidden_layers=1, width=8, kernels="native")


def test_kernels_is_an_execution_setting_outside_the_run_id():
    a = resolve("gaussian-mixture", "sesamo", preset="smoke", overrides={"kernels": "aten"}).to_dict()
    b = resolve("gaussian-mixture", "sesamo", preset="smoke").to_dict()
    assert a["kernels"] == "aten" and b["kernels"] == "auto"
    assert store.run_id(a) == store.run_id(b)


@pytest.mark.parametrize("fused", FUSED)
def test_float32_flow_with_fused_kernels_inverts_and_matches_its_jacobian(fused):
    torch.manual_seed(1)
    f = RealNVP(6, shape=(3, 2), couplings=4, hidden_layers=2, width=70, kernels=fused).float()
    for p in f.parameters():
        nn.init.normal_(p, std=0.2)
    z = torch.randn(5, 6, dtype=torch.float32)
    x, ladj = f(z)
    z2, ladj_inv = f.inverse(x)
    assert torch.allclose(z2, z, atol=1e-4) and torch.allclose(ladj_inv, -ladj, atol=1e-4)
    for i in range(5):
        jac = torch.autograd.functional.jacobian(lambda t: f(t.unsqueeze(0))[0][0], z[i])
        assert torch.allclose(torch.linalg.slogdet(jac.double())[1].float(), ladj[i], atol=1e-3)


@given(raw=st.lists(st.floats(-50, 50), min_size=1, max_size=20), c=st.floats(0.1, 10))
def test_bounded_is_c_tanh(raw, c):
    r = torch.tensor(raw, dtype=torch.float64)
    assert torch.allclose(bounded(r, c), c * torch.tanh(r / c), atol=1e-13 * c)


def test_split_and_join_are_inverse_gathers_with_exact_gradients():
    idx_a, idx_b = torch.tensor([0, 3, 4]), torch.tensor([1, 2, 5, 6])
    inv = torch.argsort(torch.cat([idx_a, idx_b]))
    x = torch.randn(3, 7, requires_grad=True)
    a, b = _Split.apply(x, idx_a, idx_b, inv)
    assert torch.equal(a, x[:, idx_a]) and torch.equal(b, x[:, idx_b])
    assert torch.equal(_Join.apply(a, b, idx_a, idx_b, inv), x)
    assert torch.autograd.gradcheck(lambda t: _Split.apply(t, idx_a, idx_b, inv), (x,))
    assert torch.autograd.gradcheck(lambda t: _Split.apply(t, idx_a, idx_b, inv)[1], (x,))  # one half unused
    ta, tb = torch.randn(3, 3, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, q: _Join.apply(p, q, idx_a, idx_b, inv), (ta, tb))


@pytest.mark.skipif(native.library() is None, reason="no native kernels")
def test_native_kernels_refuse_a_second_derivative():
    net = mlp(3, 2, hidden_layers=1, width=8, activation="relu", kernels="native").float()
    x = torch.randn(5, 3, requires_grad=True)
    # the x^3 term keeps the gradient differentiable: without the guard the MLP's part of the
    # second derivative would silently be left out
    (g,) = torch.autograd.grad(net(x).square().sum() + x.pow(3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()


@pytest.mark.skipif(native.library() is None, reason="no native kernels")
def test_native_probe_runs_under_no_grad_and_inference_mode():
    """The first MLP call of a process may come in a sampling pass: the probe must still pass."""
    lib = native.library()
    with torch.no_grad():
        native._probe(lib)
    with torch.inference_mode():
        native._probe(lib)


def test_native_build_goes_to_the_cache_folder_once(tmp_path, monkeypatch):
    if native._compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("SESAMO_BENCH_CACHE", str(tmp_path))
    path = native._build()
    assert path.parent == tmp_path and path.exists()
    # the library and the sha256 it is checked against before every load
    assert sorted(tmp_path.iterdir()) == [path, path.with_name(path.name + ".sha256")]
    mtime = path.stat().st_mtime_ns
    assert native._build() == path and path.stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_native_build_without_a_working_compiler_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("SESAMO_BENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(RuntimeError, match="does not run"):
        native._build()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(native.library() is None, reason="no native kernels")
def test_native_kernels_give_the_same_numbers_with_any_number_of_threads():
    """Runs are reproducible on any machine: the gradient sums do not depend on the thread count."""
    torch.manual_seed(3)
    net = mlp(3, 5, hidden_layers=3, width=40, activation="relu", kernels="native").float()
    for p in net.parameters():
        nn.init.normal_(p, std=0.3)
    x, gout = torch.randn(5000, 3), torch.randn(5000, 5)  # 79 tiles of 64 rows in 5 slots
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            results.append(_grads(net, x, gout))
    finally:
        torch.set_num_threads(threads)
    for out, gs in results[1:]:
        assert torch.equal(out, results[0][0])
        assert all(torch.equal(g, r) for g, r in zip(gs, results[0][1]))
