"""kernels=auto decides by measurement (issue 27): the fastest path of the ones timed, cached per
machine and shape, never a path that lost; and both register blockings of the native kernels
(AVX-512 and AVX2/FMA) build, and run against autograd where the CPU has the instructions."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sesamo_bench.core import kernels, native
from sesamo_bench.core.flows import mlp

needs_native = pytest.mark.skipif(native.library() is None, reason="no native kernels")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((set(ln.split(":", 1)[1].split()) for ln in fh if ln.startswith("flags")), set())
    except OSError:
        return set()


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty decision cache folder and no decisions in this process (restored afterwards)."""
    monkeypatch.setenv("SESAMO_BENCH_CACHE", str(tmp_path))
    saved = [dict(d) for d in (kernels._choices, kernels._fast)]
    kernels.forget()
    yield tmp_path
    kernels.forget()
    for d, old in zip((kernels._choices, kernels._fast), saved):
        d.update(old)


def _fake_times(times: dict[str, float], calls: list):
    def measure(sizes, batch, paths=kernels.PATHS, *, grad=True, **_):
        calls.append((tuple(sizes), batch, grad, tuple(paths)))
        return {p: times[p] for p in paths}
    return measure


def test_auto_takes_the_fastest_measured_path_and_caches_it(fresh, monkeypatch):
    monkeypatch.setattr(kernels, "candidates", lambda: ("native", "onednn", "aten"))
    calls: list = []
    monkeypatch.setattr(kernels, "measure", _fake_times({"native": 3.0, "onednn": 2.0, "aten": 1.5}, calls))
    x = torch.zeros(1000, 3, dtype=torch.float32)
    sizes = (3, 40, 40, 2)
    assert kernels.select("auto", x, True, sizes) is None  # aten, the fastest: the plain module
    assert len(calls) == 1 and calls[0] == (sizes, 1024, True, ("native", "onednn", "aten"))
    kernels.select("auto", x[:900], True, sizes)  # same batch class: no new measurement
    assert len(calls) == 1
    with torch.no_grad():  # forward alone is another decision
        kernels.select("auto", x, True, sizes)
    assert len(calls) == 2 and calls[1][2] is False
    data = json.loads((fresh / kernels.CHOICES_FILE).read_text())
    entries = list(data["choices"].values())
    assert sorted(e["path"] for e in entries) == ["aten", "aten"]
    assert entries[0]["times_ms"] == {"native": 3.0, "onednn": 2.0, "aten": 1.5}
    # a later process (no decisions in memory) reads the cache and times nothing
    kernels.forget()
    monkeypatch.setattr(kernels, "measure", lambda *a, **k: pytest.fail("measured again"))
    choice = kernels.choose(sizes, 1000)
    assert choice.path == "aten" and choice.source == "cached" and choice.times_ms["native"] == 3.0


def test_the_decision_does_not_depend_on_the_thread_count(fresh, monkeypatch):
    """A job with one thread and a local run with two take the same path (the numbers of a seed do
    not depend on the thread count; a per-thread-count decision on a noisy machine broke that)."""
    monkeypatch.setattr(kernels, "candidates", lambda: ("native", "onednn", "aten"))
    calls: list = []
    monkeypatch.setattr(kernels, "measure", _fake_times({"native": 1.0, "onednn": 2.0, "aten": 3.0}, calls))
    sizes = (1, 16, 2)
    first = kernels.choose(sizes, 128, threads=1)
    kernels.forget()  # another process, with two threads, that the other timings would favour
    monkeypatch.setattr(kernels, "measure", _fake_times({"native": 3.0, "onednn": 2.0, "aten": 1.0}, calls))
    second = kernels.choose(sizes, 128, threads=2)
    assert len(calls) == 1
    assert first.path == second.path == "native" and second.source == "cached" and second.threads == 1


def test_a_machine_where_the_native_kernels_lose_never_uses_them(fresh, monkeypatch):
    monkeypatch.setattr(kernels, "candidates", lambda: ("native", "onednn", "aten"))
    monkeypatch.setattr(kernels, "measure", _fake_times({"native": 9.0, "onednn": 1.0, "aten": 2.0}, []))
    for n in (16, 1024, 8192):
        for sizes in ((1, 40, 40, 2), (64, 100, 100, 128)):
            x = torch.zeros(n, sizes[0], dtype=torch.float32)
            assert kernels.select("auto", x, True, sizes) == "onednn"
    # an explicit setting still forces its path
    x = torch.zeros(64, 1, dtype=torch.float32)
    assert kernels.select("aten", x, True, (1, 40, 2)) is None
    if native.library() is not None:
        assert kernels.select("native", x, True, (1, 40, 2)) == "native"


def test_a_damaged_or_foreign_cache_is_measured_again(fresh, monkeypatch):
    monkeypatch.setattr(kernels, "candidates", lambda: ("onednn", "aten"))
    calls: list = []
    monkeypatch.setattr(kernels, "measure", _fake_times({"onednn": 1.0, "aten": 2.0}, calls))
    path = fresh / kernels.CHOICES_FILE
    path.write_text("{not json")
    assert kernels.choose((2, 8, 2), 64).path == "onednn" and len(calls) == 1
    # an entry naming a path that does not run here is ignored
    data = json.loads(path.read_text())
    (key,) = data["choices"]
    data["choices"][key]["path"] = "native"
    path.write_text(json.dumps(data))
    kernels.forget()
    assert kernels.choose((2, 8, 2), 64).path == "onednn" and len(calls) == 2


def test_remeasure_times_again_and_replaces_the_cached_decision(fresh, monkeypatch):
    monkeypatch.setattr(kernels, "candidates", lambda: ("onednn", "aten"))
    monkeypatch.setattr(kernels, "measure", _fake_times({"onednn": 1.0, "aten": 2.0}, []))
    assert kernels.choose((2, 8, 2), 64).path == "onednn"
    monkeypatch.setattr(kernels, "measure", _fake_times({"onednn": 3.0, "aten": 2.0}, []))
    try:
        kernels.remeasure()
        assert kernels.choose((2, 8, 2), 64).source == "measured"
        assert kernels.choose((2, 8, 2), 64).path == "aten"
    finally:
        kernels.remeasure(False)
    assert kernels.choose((2, 8, 2), 64) .path == "aten"  # the new decision was cached


def test_one_path_is_taken_without_timing(fresh, monkeypatch):
    monkeypatch.setattr(kernels, "candidates", lambda: ("aten",))
    monkeypatch.setattr(kernels, "measure", lambda *a, **k: pytest.fail("timed a single path"))
    choice = kernels.choose((3, 4, 2), 100)
    assert choice.path == "aten" and choice.source == "only"
    assert not (fresh / kernels.CHOICES_FILE).exists()


def test_measure_times_every_path_without_touching_the_global_random_state():
    state = torch.get_rng_state()
    times = kernels.measure((5, 16, 16, 3), 200, kernels.candidates(), budget_s=0.01)
    assert set(times) == set(kernels.candidates()) and all(0 < t < 1e4 for t in times.values())
    with torch.no_grad():
        assert set(kernels.measure((5, 16, 3), 50, ("aten",), grad=False, budget_s=0.01)) == {"aten"}
    assert torch.equal(torch.get_rng_state(), state)


def test_tracked_lists_the_decisions_a_run_used(fresh, monkeypatch):
    monkeypatch.setattr(kernels, "candidates", lambda: ("onednn", "aten"))
    monkeypatch.setattr(kernels, "measure", _fake_times({"onednn": 1.0, "aten": 2.0}, []))
    kernels.choose((1, 8, 2), 64)
    kernels.track()
    net = mlp(2, 4, hidden_layers=2, width=8, activation="relu", kernels="auto").float()
    net(torch.randn(100, 2, dtype=torch.float32)).sum().backward()
    with torch.no_grad():
        net(torch.randn(4000, 2, dtype=torch.float32))
    used = kernels.tracked()
    assert [(c.sizes, c.batch, c.grad) for c in used] == [((2, 8, 8, 4), 128, True), ((2, 8, 8, 4), 4096, False)]
    assert kernels.summary(used) == "onednn"
    assert "2x8x8x4 batch 128 train" in used[0].describe() and "-> onednn (measured)" in used[0].describe()


def test_auto_runs_agree_with_the_plain_module():
    """Whatever auto chose here, the MLP's value and gradients are the plain module's."""
    net = mlp(3, 5, hidden_layers=2, width=40, activation="relu", kernels="auto").float()
    for p in net.parameters():
        nn.init.normal_(p, std=0.3)
    x = torch.randn(700, 3, dtype=torch.float32)
    out = net(x)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    ref = nn.Sequential(*net)
    for p in ref.parameters():
        p.grad = None
    ref_out = ref(x)
    ref_out.square().sum().backward()
    assert torch.allclose(out, ref_out, atol=1e-5)
    for g, p in zip(grads, ref.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-4 * (1 + p.grad.abs().max().item()))


def _build_variant(tmp_path, monkeypatch, march: str):
    monkeypatch.setenv("SESAMO_BENCH_CACHE", str(tmp_path / march))
    monkeypatch.setenv(native.MARCH_ENV, march)
    return native._build()


@pytest.mark.skipif(native._compiler() is None, reason="no C compiler")
@pytest.mark.parametrize("march, isa, flags", [("x86-64-v3", "avx2", {"avx2", "fma"}),
                                               ("x86-64-v4", "avx512", {"avx512f", "avx512bw", "avx512vl"})])
def test_both_register_blockings_build_and_run_where_the_cpu_can(tmp_path, monkeypatch, march, isa, flags):
    """The AVX2 variant (16 registers) and the AVX-512 one (32) build on every change; each runs
    against float64 autograd on random MLPs where this CPU has its instructions."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86-64 builds")
    path = _build_variant(tmp_path, monkeypatch, march)
    assert path.exists()
    if not flags <= _cpu_flags():
        pytest.skip(f"built; this CPU has no {isa} to run it")
    lib = native._load(path)
    assert lib.sb_blocking().decode().startswith(isa)
    native._probe(lib)
    gen = torch.Generator().manual_seed(1)
    for dims in ([1, 40, 40, 40, 2], [64, 100, 100, 128], [7, 16, 33, 5], [3, 130, 9]):
        n = 333
        ws = [torch.randn(o, i, generator=gen) / i**0.5 for i, o in zip(dims, dims[1:])]
        bs = [torch.randn(o, generator=gen) for o in dims[1:]]
        x, gout = torch.randn(n, dims[0], generator=gen), torch.randn(n, dims[-1], generator=gen)
        f32 = lambda ts: [t.float().contiguous() for t in ts]  # noqa: E731
        out, hidden = native._forward(lib, x.float(), f32(ws), f32(bs), keep=True)
        gx, gws, gbs = native._backward(lib, x.float(), hidden, f32(ws), gout.float(), input_grad=True)
        ref = [t.clone().requires_grad_() for t in (x, *ws, *bs)]
        h = ref[0]
        L = len(ws)
        for k in range(L):
            h = torch.addmm(ref[1 + L + k], h, ref[1 + k].t())
            h = h.relu() if k < L - 1 else h
        grads = torch.autograd.grad(h, ref, gout)
        scale = lambda t: 1e-4 * (1 + t.abs().max().item())  # noqa: E731
        assert torch.allclose(out.double(), h.detach(), rtol=1e-4, atol=scale(h))
        for mine, theirs in zip((gx, *gws, *gbs), grads):
            assert torch.allclose(mine.double(), theirs, rtol=1e-4, atol=scale(theirs))


def test_a_march_that_is_not_a_name_is_refused(monkeypatch):
    monkeypatch.setenv(native.MARCH_ENV, "native -o /tmp/x")
    with pytest.raises(RuntimeError, match="SESAMO_BENCH_MARCH must name a -march value"):
        native.flags()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_runs_train_on_the_gpu_with_the_plain_mlp(tmp_path):
    """--device auto takes the GPU where there is one: a smoke run trains there, its MLPs on the
    plain module (the fused kernels are CPU-only), and records the device."""
    from typer.testing import CliRunner

    from sesamo_bench.cli import app
    from sesamo_bench.harness.store import Store

    store = tmp_path / "r.sqlite"
    res = CliRunner().invoke(app, ["run", "--target", "phi4-complex", "--methods", "sesamo,realnvp", "--preset",
                                   "smoke", "--seeds", "0", "--device", "auto", "--store", str(store), "--quiet"])
    assert res.exit_code == 0, res.output
    rows = Store(store).runs()
    assert len(rows) == 2 and all(r["status"] == "finished" for r in rows)
    for r in rows:
        assert r["provenance"]["device"].startswith("cuda") and r["provenance"]["mlp_kernels"] == "aten"
        assert 0 < r["ess"] <= 1
    net = mlp(3, 2, hidden_layers=1, width=8, activation="relu", kernels="auto").float().cuda()
    assert kernels.select("auto", torch.zeros(4, 3, device="cuda"), True, (3, 8, 2)) is None
    assert net(torch.zeros(4, 3, device="cuda")).device.type == "cuda"
