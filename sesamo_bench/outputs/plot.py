r"""Figures of stored runs (PNG, matplotlib Agg backend): densities, ESS over time, breaking ratios.

Pure functions of run records as returned by ``Store.runs()`` (see :mod:`sesamo_bench.outputs.report`);
samples are read from ``<run_dir>/samples.npz`` (``x``: ``(n, *field_shape)``, ``log_w``: ``(n,)``).
Runs without samples or history are skipped; a missing target plugin only drops the exact curves.

Kinds (paper figures):
    ``density``: per (target, params), one panel per method (first finished seed) plus the ground
        truth exp(-f) for 2-D targets (Figs. 3, 4); real lattices: histogram of the magnetisation
        (mean over sites, Fig. 11); complex lattices: 2-D histogram of (sum Re x, sum Im x) (Fig. 13).
    ``ess-time``: ESS against training wall time, mean +- std over seeds (Figs. 9, 14).
    ``breaking``: ESS and learned breaking ratio (mean +- std over seeds) against the swept
        parameter, with the exact curve (Figs. 10, 12).
    ``particles``: particle targets (``dw4``, ``lj13``): histograms of the energy and of the pair
        distances of each method's saved samples (first finished seed, unweighted) beside the
        target's reference samples, with the 2-Wasserstein distances in the legend.
        (``density`` skips particle targets.)
    ``generalisation``: the equivariant-flow paper's Fig. 1 (Köhler et al. 2020) for runs trained on
        one metastable state (``train_subset = one-state``): one row for the training data and one
        per method (first finished seed): the energies of its samples beside the exact (HMC)
        distribution, the marginal of the first particle's position, and the fraction of samples
        in each metastable state (states absent from the training data hatched), with the
        unseen-state fraction over all seeds in the row's title.
    ``autocorr``: per run with chain measurements (``measure --mcmc``, ``hmc``), the normalised
        autocorrelation functions rho(t) of its scalar observables, one panel per estimator, with
        tau_int in the legend.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..errors import UnknownNameError  # noqa: E402
from .aggregate import _mean_std, method_colour, method_label, method_rank, params_key, params_label, shown_params  # noqa: E402,E501

KINDS = ("density", "ess-time", "breaking", "particles", "autocorr", "generalisation")
DPI = 120
SWEEP_PREFERENCE = ("beta", "alpha", "b")


def _label(method: str) -> str:
    return method_label(method)


def _color(method: str, i: int) -> str:
    return method_colour(method, i)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "default"


def params_slug(params: dict[str, Any] | None) -> str:
    """File-name form of a parameter dict: ``{"alpha": 0.005, "beta": 2} -> "alpha-0.005_beta-2"``."""
    if not params:
        return "default"
    return _slug("_".join(f"{k}-{params_label({k: params[k]}).split('=', 1)[1]}" for k in sorted(params)))


def _title(target: str, shown: dict[str, Any]) -> str:
    return f"{target} ({params_label(shown)})" if shown else f"{target} (default parameters)"


def _by(runs: Iterable[dict[str, Any]], *keys: str) -> dict[tuple, list[dict[str, Any]]]:
    out: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        k = tuple(params_key(r.get("params")) if key == "params" else r.get(key) for key in keys)
        out.setdefault(k, []).append(r)
    return out


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _target(name: str, params: dict[str, Any]) -> Any | None:
    """The target plugin instance, or ``None`` when it is missing or refuses the parameters."""
    try:
        from .. import plugins

        return plugins.targets.create(name, dict(params))
    except Exception:
        return None


# -- density ----------------------------------------------------------------------------------------
def _load_samples(run: dict[str, Any]) -> np.ndarray | None:
    path = Path(run.get("run_dir") or "") / "samples.npz"
    if not run.get("run_dir") or not path.is_file():
        return None
    try:
        with np.load(path) as z:
            x = np.asarray(z["x"], dtype=np.float64)
    except Exception:  # truncated or foreign file: skip
        return None
    x = x[np.isfinite(x.reshape(len(x), -1)).all(1)] if x.ndim >= 2 else x[:0]
    return x if len(x) else None


def _observable(x: np.ndarray) -> tuple[str, np.ndarray, tuple[str, ...]]:
    """``("2d", (n, 2), labels)`` or ``("1d", (n,), labels)`` for a sample array ``(n, *shape)``."""
    if x.ndim == 2 and x.shape[1] == 2:
        return "2d", x, ("$x_1$", "$x_2$")
    if x.ndim == 4 and x.shape[-1] == 2:  # complex lattice (n, L1, L2, 2)
        return "2d", x.sum(axis=(1, 2)), (r"$\Sigma_j\,\mathrm{Re}\,\phi_j$", r"$\Sigma_j\,\mathrm{Im}\,\phi_j$")
    return "1d", x.reshape(len(x), -1).mean(1), (r"magnetisation $m = \Sigma_j\,\phi_j\,/\,V$",)


def _first_samples(runs: list[dict[str, Any]]) -> list[tuple[str, Any, np.ndarray]]:
    """``(method, seed, samples)`` of each method's first finished seed with saved samples."""
    panels = []
    for (method,), rs in sorted(_by(runs, "method").items(), key=lambda kv: method_rank(kv[0][0])):
        rs = sorted(rs, key=lambda r: (r.get("status") != "finished", r.get("seed", 0)))
        for r in rs:
            x = _load_samples(r)
            if x is not None:
                panels.append((method, r.get("seed"), x))
                break
    return panels


def _particles(target: str, params: dict[str, Any], shown: dict[str, Any], runs: list[dict[str, Any]],
               out_dir: Path) -> Path | None:
    import torch

    from ..core.metrics import wasserstein_1d

    t = _target(target, params)
    if t is None or not hasattr(t, "distributions"):
        return None
    ref = t.reference_positions() if hasattr(t, "reference_positions") else None
    panels = _first_samples(runs)
    if not panels:
        return None
    with torch.no_grad():
        dists = [(m, s, {k: v.numpy() for k, v in t.distributions(torch.as_tensor(x).reshape(len(x), -1)).items()})
                 for m, s, x in panels]
        want = {k: v.numpy() for k, v in t.distributions(t.reduced(ref)).items()} if ref is not None else None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in zip(axes, ("energy", "distance"), ("energy $E$", "pair distance $|x_i - x_j|$")):
        vals = [d[key][np.isfinite(d[key])] for _, _, d in dists] + ([want[key]] if want else [])
        lo, hi = np.percentile(np.concatenate(vals), [0.5, 99.5])
        bins = np.linspace(lo, hi, 80)
        if want is not None:
            ax.hist(want[key], bins=bins, density=True, color="0.6", alpha=0.6, label="reference")
        for i, (m, seed, d) in enumerate(dists):
            v = d[key][np.isfinite(d[key])]
            w2 = f", $W_2$ {wasserstein_1d(v, want[key]):.3g}" if want is not None and len(v) else ""
            ax.hist(v, bins=bins, density=True, histtype="step", lw=1.5, color=_color(m, i),
                    label=f"{_label(m)} (seed {seed}){w2}")
        ax.set_xlabel(label)
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    fig.suptitle(_title(target, shown) + " (model samples unweighted)")
    return _save(fig, out_dir / f"particles_{_slug(target)}{params_slug(shown)}.png")


def _generalisation(target: str, params: dict[str, Any], shown: dict[str, Any], runs: list[dict[str, Any]],
                    out_dir: Path) -> Path | None:
    import torch

    runs = [r for r in runs if (r.get("config") or {}).get("train_subset", "all") != "all"]
    t = _target(target, params)
    if not runs or t is None or not callable(getattr(t, "metastable_state", None)):
        return None
    from ..analysis.states import state_labels, restrict, training_states

    panels = _first_samples(runs)
    if not panels:
        return None
    subset = runs[0]["config"]["train_subset"]
    train, trained_on = restrict(t, t.training_data("train"), subset)
    ref = t.training_data("test")
    n_states = t.n_particles * (t.n_particles - 1) // 2 + 1
    rows = [("training data", None, train.numpy())] + [(m, seed, x.reshape(len(x), -1)) for m, seed, x in panels]
    with torch.no_grad():
        e_ref = t.energy(t.positions(ref)).numpy()
    ref_frac = np.bincount(training_states(t, ref), minlength=n_states) / len(ref)
    fig, axes = plt.subplots(len(rows), 3, figsize=(13, 3.6 * len(rows)), squeeze=False)
    lo, hi = np.percentile(e_ref, [0.1, 99.9])
    bins = np.linspace(lo - 2, hi + 4, 70)
    for i, (name, seed, y) in enumerate(rows):
        yt = torch.as_tensor(y[:4000], dtype=torch.float64)
        with torch.no_grad():
            e = t.energy(t.positions(yt)).numpy()
            x1 = t.positions(yt)[:, 0].numpy()
        frac = np.bincount(state_labels(t, yt), minlength=n_states) / len(yt)
        label = name if seed is None else f"{_label(name)} (seed {seed})"
        colour = "0.3" if seed is None else _color(name, i)
        ax = axes[i, 0]
        ax.hist(e_ref, bins=bins, density=True, color="0.75", label="exact (suite HMC)")
        ax.hist(e[np.isfinite(e)], bins=bins, density=True, histtype="step", lw=1.5, color=colour, label=label)
        ax.set_xlabel("energy $E$")
        ax.legend(fontsize=7)
        ax = axes[i, 1]
        ax.hist2d(x1[:, 0], x1[:, 1], bins=50, range=[[-6, 6], [-6, 6]], cmap="Greys")
        ax.set_aspect("equal")
        ax.set_xlabel("$x_1$ (first particle, centre of mass at 0)")
        ax.set_title(label, fontsize=8)
        ax = axes[i, 2]
        ks = np.arange(n_states)
        ax.bar(ks - 0.2, ref_frac, width=0.4, color="0.75", label="exact")
        bars = ax.bar(ks + 0.2, frac, width=0.4, color=colour, label=label)
        for k, b in zip(ks, bars):
            if k not in trained_on:
                b.set_hatch("//")
        if seed is not None:
            vals = [(r.get("metrics") or {}).get("unseen_states") for r in runs if r.get("method") == name]
            vals = [v for v in vals if _finite(v)]
            m, sd = (float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0) if vals else (0, 0)
            ax.set_title(f"unseen states {m:.3f} +- {sd:.3f} ({len(vals)} seeds)", fontsize=8)
        ax.set_xlabel("metastable state (inner-well pairs at the minimum)")
        ax.legend(fontsize=7)
    fig.subplots_adjust(hspace=0.5, wspace=0.3)
    fig.suptitle(_title(target, shown) + f": trained on one metastable state ({trained_on}), samples unweighted")
    return _save(fig, out_dir / f"generalisation_{_slug(target)}{params_slug(shown)}.png")


def _density(target: str, params: dict[str, Any], shown: dict[str, Any], runs: list[dict[str, Any]],
             out_dir: Path) -> Path | None:
    t = _target(target, params)
    if t is not None and hasattr(t, "distributions"):
        return None  # particle targets: kind "particles"
    panels = _first_samples(runs)
    if not panels:
        return None
    kinds = {_observable(x)[0] for _, _, x in panels}
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    obs = [(m, s, _observable(x)[1]) for m, s, x in panels]
    labels = _observable(panels[0][2])[2]
    allv = np.concatenate([o for _, _, o in obs])
    if kind == "2d":
        lo, hi = np.percentile(allv, [0.2, 99.8], axis=0)
        pad = 0.08 * (hi - lo) + 1e-9
        lo, hi = lo - pad, hi + pad
        box, truth = (lo, hi), None
        if panels[0][2].ndim == 2:  # 2-D target: exp(-f) on a grid is cheap
            # widen the box to the target's own mass (an untrained or collapsed flow misses modes)
            lo, hi = _mass_box(target, params, lo, hi)
            if lo is not None:
                truth = _truth_2d(target, params, lo, hi)
            else:
                lo, hi = box
        n = len(obs) + (truth is not None)
        fig, axes = plt.subplots(1, n, figsize=(3.3 * n, 3.6), squeeze=False, sharex=True, sharey=True,
                                 layout="constrained")
        axes = list(axes[0])
        extent = (lo[0], hi[0], lo[1], hi[1])
        if truth is not None:
            ax = axes.pop(0)
            ax.imshow(truth, origin="lower", extent=extent, aspect="equal", cmap="viridis")
            ax.set_title("ground truth")
            ax.set_xlabel(labels[0])
            ax.set_ylabel(labels[1])
        for i, (ax, (m, seed, o)) in enumerate(zip(axes, obs)):
            ax.hist2d(o[:, 0], o[:, 1], bins=80, range=[[lo[0], hi[0]], [lo[1], hi[1]]], cmap="viridis")
            ax.set_title(f"{_label(m)} (seed {seed})")
            ax.set_xlabel(labels[0])
            ax.set_aspect("equal", adjustable="box")
            if i == 0 and truth is None:
                ax.set_ylabel(labels[1])
    else:
        lo, hi = np.percentile(allv, [0.1, 99.9])
        pad = 0.05 * (hi - lo) + 1e-9
        bins = np.linspace(lo - pad, hi + pad, 81)
        n = len(obs)
        fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False, sharex=True, sharey=True,
                                 layout="constrained")
        for i, (ax, (m, seed, o)) in enumerate(zip(axes[0], obs)):
            ax.hist(o, bins=bins, density=True, color=_color(m, i), alpha=0.8)
            ax.set_title(f"{_label(m)} (seed {seed})")
            ax.set_xlabel(labels[0])
            if i == 0:
                ax.set_ylabel("density")
    fig.suptitle(f"Samples of the trained flows: {_title(target, shown)}")
    return _save(fig, out_dir / f"density_{_slug(target)}_{params_slug(shown)}.png")


def _mass_box(target: str, params: dict[str, Any], lo: np.ndarray, hi: np.ndarray,
              n: int = 120) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Grow ``[lo, hi]`` until it holds the region where exp(-f) > 1e-3 of its maximum."""
    for _ in range(5):
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        wlo, whi = mid - 3 * half, mid + 3 * half
        wide = _truth_2d(target, params, wlo, whi, n=n)
        if wide is None:
            return None, None
        rows, cols = np.nonzero(wide > 1e-3)
        g1, g2 = np.linspace(wlo[0], whi[0], n), np.linspace(wlo[1], whi[1], n)
        new_lo = np.minimum(lo, [g1[cols.min()], g2[rows.min()]])
        new_hi = np.maximum(hi, [g1[cols.max()], g2[rows.max()]])
        at_edge = min(rows.min(), cols.min()) == 0 or max(rows.max(), cols.max()) == n - 1
        lo, hi = new_lo, new_hi
        if not at_edge:
            break
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def _truth_2d(target: str, params: dict[str, Any], lo: np.ndarray, hi: np.ndarray, n: int = 200) -> np.ndarray | None:
    t = _target(target, params)
    if t is None or tuple(getattr(t, "shape", ())) != (2,):
        return None
    try:
        import torch

        g1, g2 = np.meshgrid(np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n))
        grid = np.stack([g1.ravel(), g2.ravel()], 1)
        with torch.no_grad():
            f = t.action(torch.tensor(grid, dtype=torch.float64)).double().numpy()
    except Exception:
        return None
    f = np.where(np.isfinite(f), f, np.inf)
    if not np.isfinite(f).any():
        return None
    return np.exp(-(f - f.min())).reshape(n, n)


# -- ESS over time ----------------------------------------------------------------------------------
def _curve(history: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray] | None:
    pts = sorted((float(h["wall_s"]), float(h["ess"])) for h in history or []
                 if _finite(h.get("wall_s")) and _finite(h.get("ess")))
    if len(pts) < 2:
        return None
    t, e = np.array(pts).T
    return t, e


def ess_time_curves(runs: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The runs of one ESS-vs-time figure by curve: ``(method, setting)``, the setting being the
    architecture plus, where they differ, the preset and the hyperparameters set on top of it
    (``z2-fourier [steps=50000]``). Seeds are pooled into one curve, settings never."""
    from .aggregate import flow_label, training_overrides

    presets = {(r.get("config") or {}).get("preset") for r in runs}

    def setting(r: dict[str, Any]) -> str:
        bits = ([f"{(r.get('config') or {}).get('preset')} preset"] if len(presets) > 1 else []) + \
               [f"{k}={v}" for k, v in sorted(training_overrides(r).items())]
        return flow_label(r.get("config")) + (f" [{', '.join(bits)}]" if bits else "")

    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        out.setdefault((r["method"], setting(r)), []).append(r)
    return out


def _ess_time(target: str, shown: dict[str, Any], runs: list[dict[str, Any]], out_dir: Path) -> Path | None:
    by_pair = ess_time_curves(runs)
    several = len({f for _, f in by_pair}) > 1
    series = []
    for (method, flow), rs in sorted(by_pair.items(), key=lambda kv: (method_rank(kv[0][0]), kv[0][1])):
        fin = [r for r in rs if r.get("status") == "finished"]
        curves = [c for r in (fin or rs) if (c := _curve(r.get("history"))) is not None]
        if curves:
            series.append(((method, flow), curves))
    if not series:
        return None
    tmax = max(c[0][-1] for _, cs in series for c in cs)
    scale, unit = (60.0, "min") if tmax > 300 else (1.0, "s")
    fig, ax = plt.subplots(figsize=(6.0, 4.2), layout="constrained")
    styles = ("-", "--", ":", "-.")
    flows = sorted({f for (_, f), _ in series})
    for i, ((method, flow), curves) in enumerate(series):
        grid = np.linspace(min(c[0][0] for c in curves), max(c[0][-1] for c in curves), 200)
        ys = np.array([np.interp(grid, t, e, left=np.nan, right=np.nan) for t, e in curves])
        valid = np.isfinite(ys).sum(0)
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(np.where(valid > 0, ys, 0.0), 0)
            std = np.nanstd(np.where(valid > 0, ys, 0.0), 0) if len(curves) > 1 else np.zeros_like(grid)
        keep = valid == len(curves)  # where every seed has data (no jumps where short runs end)
        color = _color(method, i) if not several else f"C{flows.index(flow) % 10}"
        name = f"{_label(method)} / {flow}" if several else _label(method)
        ax.plot(grid[keep] / scale, mean[keep], color=color, linestyle=styles[method_rank(method)[0] % len(styles)],
                label=f"{name} ({len(curves)} seeds)")
        if len(curves) > 1:
            ax.fill_between(grid[keep] / scale, (mean - std)[keep], (mean + std)[keep], color=color, alpha=0.25,
                            linewidth=0)
    ax.set_xlabel(f"training wall time ({unit})")
    ax.set_ylabel("ESS")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if max(len(t.get_label()) for t in ax.get_lines()) > 32:  # long setting labels: below the axes
        fig.legend(loc="outside lower center", fontsize="small", ncols=1)
    else:
        ax.legend(loc="lower right")
    ax.set_title(f"ESS during training (mean $\\pm$ std over seeds)\n{_title(target, shown)}")
    return _save(fig, out_dir / f"ess-time_{_slug(target)}_{params_slug(shown)}.png")


# -- breaking ratio against the swept parameter -----------------------------------------------------
def swept_key(params_list: list[dict[str, Any]]) -> str | None:
    """The numeric parameter taking more than one value among ``params_list`` (beta, alpha preferred)."""
    keys = sorted({k for p in params_list for k in p})
    varying = [k for k in keys if all(_finite(p.get(k)) for p in params_list if k in p)
               and len({float(p[k]) for p in params_list if k in p}) > 1]
    if not varying:
        return None
    return next((k for k in SWEEP_PREFERENCE if k in varying), varying[0])


def _reference_curve(target: str, rest: dict[str, Any], key: str, lo: float, hi: float, method: str,
           n: int = 60) -> tuple[np.ndarray, np.ndarray] | None:
    """The target's ``method()`` (``breaking_ratio``: the exact R; ``breaking_ratio_approximation``:
    phi4-real's Eq. 56) along ``key`` from ``lo`` to ``hi``; ``None`` with fewer than two values."""
    vs = np.linspace(lo, hi, n)
    out = []
    for v in vs:
        t = _target(target, {**rest, key: float(v)})
        f = getattr(t, method, None)
        try:
            r = f() if f is not None else None
        except Exception:
            r = None
        out.append(r if _finite(r) else np.nan)
    out = np.array(out, dtype=float)
    return (vs, out) if np.isfinite(out).sum() >= 2 else None


def _breaking(target: str, runs: list[dict[str, Any]], out_dir: Path) -> Path | None:
    fin = [r for r in runs if r.get("status") == "finished"]
    key = swept_key([r.get("params") or {} for r in fin])
    if key is None or not any(_finite(r.get("breaking_ratio")) for r in fin):
        return None
    fin = [r for r in fin if _finite((r.get("params") or {}).get(key))]
    # the other parameters: one family of curves per combination
    families = _by(({**r, "rest": params_key({k: v for k, v in (r.get("params") or {}).items() if k != key})}
                    for r in fin), "rest")
    fig, (ax_e, ax_r, ax_d) = plt.subplots(1, 3, figsize=(16.0, 4.4), layout="constrained")
    for (rest_key,), fam in sorted(families.items()):
        rest = json.loads(rest_key)
        rest_shown = shown_params(target, rest, (json.loads(k) for (k,) in families))
        suffix = f" [{params_label(rest_shown)}]" if len(families) > 1 and rest_shown else ""
        xs_all = sorted({float(r["params"][key]) for r in fam})
        # exact: stored per-point values, plus a smooth curve from the plugin where it exists
        exact = sorted({float(r["params"][key]): float(r["breaking_ratio_exact"])
                        for r in fam if _finite(r.get("breaking_ratio_exact"))}.items())
        smooth = (_reference_curve(target, rest, key, xs_all[0], xs_all[-1], "breaking_ratio")
                  if len(xs_all) > 1 else None)
        mc = any(_finite((r.get("metrics") or {}).get("breaking_ratio_exact_err")) for r in fam)
        ref_label = f"{'reference (HMC, reweighted)' if mc else 'exact'}{suffix}"
        if smooth is not None:
            ax_r.plot(*smooth, color="black", lw=1.5, label=ref_label)
            if exact:
                ax_r.plot(*zip(*exact), "kx", ms=6, zorder=3)
        elif exact:
            ax_r.plot(*zip(*exact), "k-", marker=".", lw=1.5, label=ref_label)
        approx = (_reference_curve(target, rest, key, xs_all[0], xs_all[-1], "breaking_ratio_approximation")
                  if len(xs_all) > 1 else None)
        if approx is not None:
            ax_r.plot(*approx, color="gray", lw=1.2, ls="--", label=f"the paper's approximation (Eq. 56){suffix}")
        for i, ((method,), rs) in enumerate(sorted(_by(fam, "method").items(), key=lambda kv: method_rank(kv[0][0]))):
            pts = _by(({**r, "x": float(r["params"][key])} for r in rs), "x")
            xs = sorted(x for (x,) in pts)
            ess = [_mean_std([r.get("ess") for r in pts[(x,)]]) for x in xs]
            br = [_mean_std([r.get("breaking_ratio") for r in pts[(x,)]]) for x in xs]
            color, dx = _color(method, i), 0.004 * i * (xs_all[-1] - xs_all[0])
            style = dict(color=color, marker="o", ms=5, capsize=3, lw=1, ls="none")
            _errorbar(ax_e, [x + dx for x in xs], ess, label=f"{_label(method)}{suffix}", **style)
            ex = dict(exact)
            if any(_finite(r.get("breaking_ratio")) for r in rs):
                _errorbar(ax_r, [x + dx for x in xs], br, label=f"{_label(method)}: learned R{suffix}", **style)
                _errorbar(ax_d, [x + dx for x in xs], _minus(br, xs, ex), label=f"{_label(method)}: learned R{suffix}",
                          **style)
            # the importance-weighted R of the samples; error bars suppressed where ESS x N < 100
            ris = [_is_stats([(r.get("metrics") or {}) for r in pts[(x,)]]) for x in xs]
            if any(m is not None for m, _ in ris):
                shifted = [x + 2 * dx + 0.002 * (xs_all[-1] - xs_all[0]) for x in xs]
                is_style = {**style, "marker": "s", "mfc": "none"}
                _errorbar(ax_r, shifted, ris, label=f"{_label(method)}: R IS{suffix}", **is_style)
                _errorbar(ax_d, shifted, _minus(ris, xs, ex), label=f"{_label(method)}: R IS{suffix}", **is_style)
    ax_e.set_ylabel("ESS")
    ax_e.set_ylim(-0.02, 1.02)
    ax_r.set_ylabel("breaking ratio R")
    ax_d.axhline(0.0, color="black", lw=1)
    ax_d.set_ylabel("R - R exact" + (" (reference)" if "HMC" in " ".join(ax_r.get_legend_handles_labels()[1])
                                     else ""))
    for ax in (ax_e, ax_r, ax_d):
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{target}: ESS and breaking ratio against {key} (mean $\\pm$ std over seeds; "
                 "R IS: importance-weighted, no error bar where ESS x N < 100)")
    return _save(fig, out_dir / f"breaking_{_slug(target)}_{_slug(key)}.png")


def _minus(stats: list[tuple[float | None, float | None]], xs: list[float],
           exact: dict[float, float]) -> list[tuple[float | None, float | None]]:
    """``stats`` minus the exact value at each x (``None`` where there is none)."""
    return [(m - exact[x], e) if m is not None and x in exact else (None, None) for (m, e), x in zip(stats, xs)]


def _is_stats(ms: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """Mean and spread (std over seeds, or one run's own error) of R IS; no spread when any seed
    has too few effective samples (``log_z_err_reliable`` false)."""
    m, sd = _mean_std([x.get("breaking_ratio_is") for x in ms])
    if m is None:
        return None, None
    if any(x.get("log_z_err_reliable") is False for x in ms):
        return m, None
    if len(ms) == 1:
        return m, ms[0].get("breaking_ratio_is_err")
    return m, sd


def _errorbar(ax: Any, xs: list[float], stats: list[tuple[float | None, float | None]], **kw: Any) -> None:
    pts = [(x, m, s or 0.0) for x, (m, s) in zip(xs, stats) if m is not None]
    if pts:
        x, m, s = zip(*pts)
        ax.errorbar(x, m, yerr=s, **kw)


# -- autocorrelation ----------------------------------------------------------------------------------
def _autocorr(run: dict[str, Any], out_dir: Path, *, most: int = 6) -> Path | None:
    """rho(t) of up to ``most`` observables per chain estimator of one run."""
    found = [(kind, m) for kind, m in ((run.get("metrics") or {}).get("measurements") or {}).items()
             if m.get("autocorr")]
    if not found:
        return None
    fig, axes = plt.subplots(1, len(found), figsize=(5.2 * len(found), 3.8), squeeze=False)
    for ax, (kind, m) in zip(axes[0], found):
        for name, rho in list(m["autocorr"].items())[:most]:
            tau = (m.get("estimates") or {}).get(name, {}).get("tau_int")
            label = name + (f" (tau_int {tau:.2f})" if _finite(tau) else "")
            ax.plot(np.arange(len(rho)), rho, label=label)
        ax.axhline(0.0, color="0.6", lw=0.8)
        what = {"nmcmc": "neural MCMC", "hmc": "HMC" + (" + global moves" if (m.get("settings") or {}).get(
            "global_moves") else "")}.get(kind, kind)
        acc = m.get("acceptance")
        ax.set_title(f"{run['target']} / {run['method']}: {what}" + (f", acceptance {acc:.3f}" if _finite(acc) else ""),
                     fontsize=9)
        ax.set_xlabel("lag t (recorded states)")
        ax.set_ylabel("rho(t)")
        ax.legend(fontsize=7)
    return _save(fig, out_dir / f"autocorr_{_slug(run['target'])}_{run['run_id'][:8]}.png")


# -- entry point ------------------------------------------------------------------------------------
def make_plots(runs: Iterable[dict[str, Any]], out_dir: Path, *, kinds: list[str] | None = None) -> list[Path]:
    r"""Write the figures of the given runs as PNG files.

    Arguments:
        runs: run records (see the module docstring); all benchmarks are pooled per (target, params).
        out_dir: folder for the PNGs (created if missing).
        kinds: a subset of ``density``, ``ess-time``, ``breaking``, ``particles``, ``autocorr``,
            ``generalisation``; ``None``
            for all.

    Returns:
        The written files, e.g. ``density_<target>_<params>.png``, ``ess-time_<target>_<params>.png``,
        ``breaking_<target>_<key>.png``. Figures without data (no samples, no history, no swept
        parameter or no learned breaking ratio) are skipped.

    Raises:
        UnknownNameError: for an unknown kind.
    """
    kinds = list(KINDS) if kinds is None else list(kinds)
    for k in kinds:
        if k not in KINDS:
            raise UnknownNameError("plot kind", k, list(KINDS))
    runs = [r for r in runs if r.get("target") and r.get("method")]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    by_point = sorted(_by(runs, "target", "params").items(), key=lambda kv: kv[0])
    for (target, pkey), rs in by_point:
        params = json.loads(pkey)
        shown = shown_params(target, params, (r.get("params") or {} for r in runs if r["target"] == target))
        if "density" in kinds and (p := _density(target, params, shown, rs, out_dir)) is not None:
            written.append(p)
        if "ess-time" in kinds and (p := _ess_time(target, shown, rs, out_dir)) is not None:
            written.append(p)
        if "particles" in kinds and (p := _particles(target, params, shown, rs, out_dir)) is not None:
            written.append(p)
        if "generalisation" in kinds and (p := _generalisation(target, params, shown, rs, out_dir)) is not None:
            written.append(p)
    if "breaking" in kinds:
        for (target,), rs in sorted(_by(runs, "target").items()):
            if (p := _breaking(target, rs, out_dir)) is not None:
                written.append(p)
    if "autocorr" in kinds:
        written += [p for r in runs if (p := _autocorr(r, out_dir)) is not None]
    return written
