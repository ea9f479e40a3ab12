"""Figures: every kind is written as a readable, non-trivial PNG; missing data is skipped."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from sesamo_bench.errors import UnknownNameError
from sesamo_bench.outputs.plot import ess_time_curves, make_plots, params_slug, swept_key

METHODS = ("realnvp", "canonicalization", "sesamo")


def gmm_samples(rng: np.random.Generator, n: int = 2000) -> np.ndarray:
    angles = 2 * np.pi * rng.integers(0, 8, n) / 8
    return (12 * np.stack([np.cos(angles), np.sin(angles)], 1) + rng.normal(size=(n, 2))).astype(np.float32)


def lattice_samples(rng: np.random.Generator, shape: tuple[int, ...], n: int = 1000) -> np.ndarray:
    sign = rng.choice([-1.0, 1.0], size=(n,) + (1,) * len(shape))
    return (sign * 1.2 + 0.3 * rng.normal(size=(n, *shape))).astype(np.float32)


def history(rng: np.random.Generator, t_end: float) -> list[dict]:
    t = np.linspace(0.0, t_end, 12)
    ess = 1 - np.exp(-t / (0.3 * t_end)) - 0.05 * rng.random(12)
    return [{"step": 10 * i, "loss": 1.0, "ess": float(e), "log_z": 0.0, "lr": 1e-3, "wall_s": float(w)}
            for i, (w, e) in enumerate(zip(t, ess))]


def make_run(tmp: Path, target: str, method: str, seed: int, *, params: dict | None = None, x: np.ndarray | None = None,
             hist: list | None = None, status: str = "finished", br: float | None = None,
             br_exact: float | None = None, ess: float = 0.9) -> dict:
    run_dir = tmp / f"{target}-{method}-{seed}-{params_slug(params)}"
    run_dir.mkdir(parents=True, exist_ok=True)
    if x is not None:
        np.savez(run_dir / "samples.npz", x=x, log_w=np.zeros(len(x)))
    return {"run_id": run_dir.name, "benchmark": None, "target": target, "method": method, "seed": seed,
            "params": params or {}, "config": {"preset": "smoke"}, "provenance": {}, "status": status, "steps": 100,
            "wall_s": 10.0, "ess": ess, "log_z": 0.0, "log_z_err": 0.01, "breaking_ratio": br,
            "breaking_ratio_exact": br_exact, "metrics": {}, "history": hist or [], "run_dir": str(run_dir)}


def assert_png(path: Path) -> None:
    assert path.is_file() and path.suffix == ".png"
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    assert np.unique(img.reshape(-1, img.shape[-1])[::7], axis=0).shape[0] > 20  # not a blank canvas


@pytest.fixture
def runs(tmp_path: Path) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i, m in enumerate(METHODS):
        for s in range(3):
            out.append(make_run(tmp_path, "gaussian-mixture", m, s, params={"n": 8, "radius": 12.0, "b": 0.0},
                                x=gmm_samples(rng) if s == 0 else None,
                                hist=history(rng, 20.0 + 5 * s + i)))
    for m in ("realnvp", "sesamo"):
        out.append(make_run(tmp_path, "phi4-real", m, 0, params={"shape": [4, 4]},
                            x=lattice_samples(rng, (4, 4))))
        out.append(make_run(tmp_path, "phi4-complex", m, 0, params={"shape": [4, 4], "alpha": 0.005},
                            x=lattice_samples(rng, (4, 4, 2))))
    for beta in (0.5, 1.0, 2.0, 4.0):
        exact = -0.9 * (1 - np.exp(-beta))
        for m in ("canonicalization", "sesamo"):
            for s in range(2):
                params = {"u": 18.0, "beta": beta, "kappa": 1.0, "nt": 1, "sites": 2}  # as the runner stores them
                out.append(make_run(tmp_path, "hubbard", m, s, params=params, ess=0.9 + 0.02 * s,
                                    br=exact + 0.02 * (s - 0.5) if m == "sesamo" else None, br_exact=exact))
    # a failed run with no files at all, and a run whose samples file is missing
    out.append(make_run(tmp_path, "gaussian-mixture", "sesamo", 7, status="failed"))
    return out


def test_make_plots_all_kinds(runs, tmp_path):
    out = tmp_path / "plots"
    files = make_plots(runs, out)
    names = sorted(p.name for p in files)
    assert names == sorted([
        "density_gaussian-mixture_default.png",
        "density_phi4-real_shape-4x4.png",
        "density_phi4-complex_alpha-0.005_shape-4x4.png",
        "ess-time_gaussian-mixture_default.png",
        "breaking_hubbard_beta.png",
    ])
    for p in files:
        assert p.parent == out
        assert_png(p)


def test_make_plots_selected_kinds_and_skips(runs, tmp_path):
    files = make_plots(runs, tmp_path / "a", kinds=["ess-time"])
    assert [p.name for p in files] == ["ess-time_gaussian-mixture_default.png"]
    # no samples, no history, no sweep: nothing to draw, no crash
    bare = [{**r, "run_dir": str(tmp_path / "missing"), "history": []} for r in runs if r["target"] != "hubbard"]
    assert make_plots(bare, tmp_path / "b") == []
    assert make_plots([], tmp_path / "c") == []


def test_ess_time_keeps_training_settings_apart(tmp_path):
    """A 30-step smoke run and a 500-step one (``--set steps=500``) are two curves, not one pooled
    and cut at the shorter run; seeds and threads are pooled; presets are named where they differ."""
    rng = np.random.default_rng(1)
    rs = [make_run(tmp_path, "gaussian-mixture", "sesamo", s, hist=history(rng, 10.0)) for s in (0, 1)]
    for s in (0, 1):
        r = make_run(tmp_path, "gaussian-mixture", "sesamo", s + 10, hist=history(rng, 100.0))
        r["config"].update(steps=500, threads=s + 1)
        rs.append(r)
    curves = ess_time_curves(rs)
    assert sorted(curves) == [("sesamo", "realnvp"), ("sesamo", "realnvp [steps=500]")]
    assert [r["seed"] for r in curves[("sesamo", "realnvp [steps=500]")]] == [10, 11]
    rs[0]["config"]["preset"] = "quick"
    assert set(ess_time_curves(rs)) == {("sesamo", "realnvp [quick preset]"), ("sesamo", "realnvp [smoke preset]"),
                                        ("sesamo", "realnvp [smoke preset, steps=500]")}
    files = make_plots(rs[1:], tmp_path / "plots", kinds=["ess-time"])
    assert len(files) == 1
    assert_png(files[0])


def test_make_plots_unknown_kind(tmp_path):
    with pytest.raises(UnknownNameError, match="density"):
        make_plots([], tmp_path, kinds=["histogram"])


def test_swept_key():
    assert swept_key([{"beta": 1.0, "u": 18.0}, {"beta": 2.0, "u": 18.0}]) == "beta"
    assert swept_key([{"alpha": 0.0, "b": 1.0}, {"alpha": 0.1, "b": 2.0}]) == "alpha"
    assert swept_key([{"shape": [4, 4]}, {"shape": [8, 8]}]) is None
    assert swept_key([{}, {}]) is None


def test_autocorrelation_of_an_ar1_chain_and_its_plot(tmp_path):
    """rho(t) of an AR(1) chain is phi^t; ``plot --kind autocorr`` draws a measured HMC chain."""
    from sesamo_bench import plugins
    from sesamo_bench.harness.measure import autocorrelations, measure_hmc

    rng = np.random.default_rng(0)
    x = np.zeros((40000, 2))  # two chains, step-major rows
    for t in range(1, len(x)):
        x[t] = 0.7 * x[t - 1] + rng.normal(size=2)
    rho = autocorrelations({"x": x.reshape(-1)}, chains=2)["x"]
    assert rho[0] == 1.0 and len(rho) == 101
    assert np.allclose(rho[:6], 0.7 ** np.arange(6), atol=0.03)
    m = measure_hmc(plugins.targets.create("hubbard", {}), samples=512, chains=4, burn_in=20, seed=1)
    assert set(m.autocorr) >= {"x1x2", "abs_x", "quadrant[0]"}
    run = make_run(tmp_path, "hubbard", "hmc", 0)
    run["metrics"] = {"measurements": {"hmc": m.to_dict()}}
    (path,) = make_plots([run], tmp_path / "p", kinds=["autocorr"])
    assert path.name == f"autocorr_hubbard_{run['run_id'][:8]}.png"
    assert_png(path)
