r"""The breaking ratio of real phi^4 theory from the suite's own HMC, reweighted over alpha.

With the Z2-symmetric ensemble at alpha = 0 and m = sum_j x_j / V, the term alpha sum_j x_j of
the action reweights each configuration by e^{-alpha V m}; pairing x with -x (the global flip is
exact at alpha = 0 and part of the chain) gives

    R(alpha) = <sign(m)>_alpha = -<sinh(alpha V |m|)>_0 / <cosh(alpha V |m|)>_0,

so one alpha = 0 run gives the whole curve (reference notes). Its error is the Gamma-method error
of the ratio (:func:`sesamo_bench.analysis.autocorr.ratio`). The cached curve
(``sesamo_bench/data/phi4_real_breaking_ratio.json``, with the command that made it and its
provenance) is what ``phi4-real`` reports as its exact breaking ratio, by cubic interpolation in
alpha; :func:`generate` also runs directly at one alpha > 0 (global flips as Metropolis
proposals) and records -tanh(alpha V <|m|>_0) as cross-checks.

The paper's Eq. (56) (two Gaussians of width sigma = 0.629 fitted to the single-site field
values) is the paper's approximation, not this reference.

Regenerate (a few CPU minutes)::

    nice -n 10 sesamo-bench reference phi4-real
    nice -n 10 python -m sesamo_bench.analysis.phi4_reference   # the same

Both write ``./phi4_real_breaking_ratio.json`` in the current folder: the shipped file is replaced
only when named with ``--out`` and ``--force`` (an existing ``--out`` file is never replaced without
``--force``; the check comes before the minutes of HMC).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import math
import os
import platform
import sys
import time
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import autocorr
from ..errors import UserError
from .hmc import HMC, always_flip, global_flip

DATA_FILE = "phi4_real_breaking_ratio.json"
#: the setup the cached curve belongs to
SETUP = {"shape": [16, 8], "kappa": 0.3, "lam": 0.022}
DEFAULTS = {"chains": 256, "samples": 8000, "burn_in": 400, "n_leapfrog": 10, "seed": 20261201,
            "alpha_max": 0.02, "alpha_step": 0.00025, "direct_alpha": 0.005, "direct_samples": 8000}


def reweighted_ratio(m_abs: np.ndarray, alpha: float, volume: int) -> autocorr.Estimate:
    r"""R(alpha) = -<sinh(alpha V |m|)> / <cosh(alpha V |m|)> from a Z2-symmetric alpha = 0 ensemble.

    Arguments:
        m_abs: |m| per recorded state, ``(chains, N)``.
        alpha: the breaking parameter >= 0.
        volume: the number of sites V.
    """
    a = alpha * volume * np.asarray(m_abs, dtype=np.float64)
    # divide both by e^{max}: the ratio is unchanged and nothing overflows
    c = a.max()
    num, den = -0.5 * (np.exp(a - c) - np.exp(-a - c)), 0.5 * (np.exp(a - c) + np.exp(-a - c))
    return autocorr.ratio(num, den)


def _phi4(alpha: float):
    from .. import plugins

    return plugins.targets.create("phi4-real", {**SETUP, "alpha": alpha})


def _chain(target, *, chains: int, samples: int, burn_in: int, n_leapfrog: int, moves, gen: torch.Generator):
    x0 = 2.0 + 0.3 * torch.randn(chains, *target.shape, dtype=torch.float64, generator=gen)
    hmc = HMC(target.action, eps=0.25, n_leapfrog=n_leapfrog, target_accept=0.8, global_moves=moves)
    return hmc.run(x0, n_samples=samples, burn_in=burn_in, keep=False,
                   observe=lambda x: x.mean(tuple(range(1, x.dim()))), generator=gen)


def generate(*, chains: int = DEFAULTS["chains"], samples: int = DEFAULTS["samples"],
             burn_in: int = DEFAULTS["burn_in"], n_leapfrog: int = DEFAULTS["n_leapfrog"],
             seed: int = DEFAULTS["seed"], alpha_max: float = DEFAULTS["alpha_max"],
             alpha_step: float = DEFAULTS["alpha_step"], direct_alpha: float = DEFAULTS["direct_alpha"],
             direct_samples: int = DEFAULTS["direct_samples"], log=lambda m: None) -> dict[str, Any]:
    r"""Run the alpha = 0 HMC (with global flips), reweight it over alpha, run the direct check.

    Returns:
        The JSON-able record written to the data file: ``alpha``, ``R``, ``R_err`` (lists), the
        chain settings and diagnostics (acceptance, tau_int of |m| and of R at ``direct_alpha``),
        ``checks`` (direct run, -tanh(alpha V <|m|>)) and ``provenance``.
    """
    gen = torch.Generator().manual_seed(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    target = _phi4(0.0)
    volume = target.dim
    run0 = _chain(target, chains=chains, samples=samples, burn_in=burn_in, n_leapfrog=n_leapfrog,
                  moves=[global_flip], gen=gen)
    m = run0.observables.T.numpy()  # (chains, N) signed magnetisation per site
    m_abs = np.abs(m)
    log(f"alpha = 0: {chains} chains x {samples} states, acceptance {run0.acceptance:.3f}, eps {run0.eps:.4f}")
    n_alpha = int(round(alpha_max / alpha_step))
    alphas = [round(i * alpha_step, 10) for i in range(n_alpha + 1)]
    curve = [reweighted_ratio(m_abs, a, volume) for a in alphas]
    est_abs = autocorr.gamma_method(m_abs)
    est_m = autocorr.gamma_method(m)
    at = reweighted_ratio(m_abs, direct_alpha, volume)
    cpu_main = time.process_time() - c0

    # direct run at alpha > 0: the flip is broken and enters as a Metropolis proposal
    c1 = time.process_time()
    target_a = _phi4(direct_alpha)
    run1 = _chain(target_a, chains=chains, samples=direct_samples, burn_in=burn_in, n_leapfrog=n_leapfrog,
                  moves=[always_flip], gen=gen)
    ma = run1.observables.T.numpy()
    sign = autocorr.gamma_method(np.sign(ma))
    # the conditional expectation of sign(m) given the pair {x, -x}: -tanh(alpha V |m|)
    rb = autocorr.gamma_method(-np.tanh(direct_alpha * volume * np.abs(ma)))
    cpu_direct = time.process_time() - c1
    tanh = -math.tanh(direct_alpha * volume * est_abs.mean)
    tanh_err = (1 - tanh**2) * direct_alpha * volume * est_abs.err
    log(f"R({direct_alpha}) = {at.mean:.6f} +- {at.err:.6f} (reweighted), direct {sign.mean:.5f} +- {sign.err:.5f}")

    def est(e: autocorr.Estimate) -> dict[str, float]:
        return {"value": e.mean, "err": e.err, "tau_int": e.tau_int, "tau_int_err": e.tau_err, "window": e.window}

    return {
        "what": "breaking ratio R(alpha) = P(m > 0) - P(m < 0) of real phi^4 (paper Eq. 39), reweighted from "
                "one alpha = 0 HMC ensemble: R = -<sinh(alpha V |m|)>/<cosh(alpha V |m|)>",
        "setup": dict(SETUP, volume=volume),
        "alpha": alphas,
        "R": [e.mean for e in curve],
        "R_err": [e.err for e in curve],
        "chain": {"chains": chains, "samples_per_chain": samples, "burn_in": burn_in, "n_leapfrog": n_leapfrog,
                  "eps": run0.eps, "acceptance": run0.acceptance, "flip_acceptance": run0.global_acceptance,
                  "mean_exp_minus_dH": run0.mean_exp_minus_dh, "seed": seed, "dtype": "float64"},
        "magnetisation": {"abs_mean": est(est_abs), "abs_std": float(m_abs.std()), "mean": est(est_m)},
        "at_direct_alpha": {"alpha": direct_alpha, **est(at)},
        "checks": {
            "direct": {"alpha": direct_alpha, "sign_m": est(sign), "minus_tanh_aV_abs_m": est(rb),
                       "acceptance": run1.acceptance, "flip_acceptance": run1.global_acceptance,
                       "samples_per_chain": direct_samples},
            "minus_tanh_aV_mean_abs_m": {"alpha": direct_alpha, "value": tanh, "err": tanh_err},
            "paper_eq56": {"alpha": direct_alpha, "value": _eq56(direct_alpha, volume),
                           "note": "the paper's approximation, not a reference"},
        },
        "provenance": {"command": "nice -n 10 sesamo-bench reference phi4-real " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in (("chains", chains), ("samples", samples),
                                                        ("burn_in", burn_in), ("seed", seed))),
                       "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                       "cpu_s": {"alpha0": cpu_main, "direct": cpu_direct},
                       "wall_s": time.perf_counter() - t0, "load_average": list(os.getloadavg()),
                       "torch": torch.__version__, "python": platform.python_version(),
                       "torch_threads": torch.get_num_threads(), "git_commit": _git_commit()},
    }


def _eq56(alpha: float, volume: int) -> float:
    from .. import plugins

    mod = sys.modules[plugins.targets.get("phi4-real").__module__]
    return mod.breaking_ratio_eq56(alpha, volume)


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def data_path() -> Path:
    """The cached curve shipped with the package."""
    return Path(str(resources.files("sesamo_bench") / "data" / DATA_FILE))


@functools.lru_cache(maxsize=4)
def load(path: str | None = None) -> dict[str, Any]:
    """The cached reference (``path`` default: :func:`data_path`)."""
    return json.loads(Path(path or data_path()).read_text())


class Curve:
    r"""R(alpha) and its error from a reference record (:func:`generate`), interpolated.

    R by a cubic spline through the grid (the grid step 2.5e-4 keeps the interpolation error
    below 1e-6, far under the statistical error); the error linearly. Outside the grid: ``None``.
    """

    def __init__(self, record: dict[str, Any]):
        from scipy.interpolate import CubicSpline

        self.record = record
        self.alpha = np.asarray(record["alpha"], dtype=np.float64)
        self._r = CubicSpline(self.alpha, np.asarray(record["R"]))
        self._err = np.asarray(record["R_err"], dtype=np.float64)

    def matches(self, shape: tuple[int, int], kappa: float, lam: float) -> bool:
        s = self.record["setup"]
        return (tuple(s["shape"]) == tuple(shape) and math.isclose(s["kappa"], kappa)
                and math.isclose(s["lam"], lam))

    def __call__(self, alpha: float) -> tuple[float, float] | None:
        if not self.alpha[0] <= alpha <= self.alpha[-1] + 1e-15:
            return None
        return float(self._r(alpha)), float(np.interp(alpha, self.alpha, self._err))


@functools.lru_cache(maxsize=1)
def curve() -> Curve | None:
    """The shipped curve, or ``None`` when the data file is missing."""
    try:
        return Curve(load())
    except (OSError, ValueError, KeyError):
        return None


def main(argv: list[str] | None = None) -> int:
    """``python -m sesamo_bench.analysis.phi4_reference [--out FILE] [--chains C] [--samples N] ...``"""
    p = argparse.ArgumentParser(prog="python -m sesamo_bench.analysis.phi4_reference",
                                description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=None, help=f"output JSON (default: ./{DATA_FILE})")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    for k in ("chains", "samples", "burn_in", "seed"):
        p.add_argument(f"--{k.replace('_', '-')}", type=int, default=DEFAULTS[k])
    a = p.parse_args(argv)
    try:
        write(out=a.out, force=a.force, chains=a.chains, samples=a.samples, burn_in=a.burn_in, seed=a.seed,
              log=lambda m: print(m, file=sys.stderr))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def default_out() -> Path:
    """Where :func:`write` writes without ``out``: ``./phi4_real_breaking_ratio.json`` (never the shipped file)."""
    return Path.cwd() / DATA_FILE


def check_out(out: Path, *, force: bool = False) -> Path:
    """``out`` if it may be written: it does not exist, or ``force`` (then it must not be a folder);
    else a :class:`UserError` (checked before the minutes of Monte Carlo)."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"reference: --out {out} is a folder; name a file")
    if (out.exists() or out.is_symlink()) and not force:
        shipped = " (the reference shipped with the package)" if out.resolve() == data_path().resolve() else ""
        raise UserError(f"reference: {out}{shipped} exists; give --force to replace it, or another --out")
    return out


def write_new(out: Path, text: str, *, force: bool = False) -> None:
    """Write ``text`` to ``out`` atomically, through a fresh temporary file beside it (never a
    planted one); without ``force`` an ``out`` that appeared meanwhile is not replaced."""
    out = check_out(out, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        if force:
            os.replace(tmp, out)
        else:
            try:
                os.link(tmp, out)  # fails where out exists: never replaced without force
            except FileExistsError:
                raise UserError(f"reference: {out} exists; give --force to replace it, or another --out") from None
            except OSError:  # a filesystem without hard links
                check_out(out)
                os.replace(tmp, out)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def write(*, out: Path | None = None, force: bool = False, log=lambda m: None, **kw: Any) -> Path:
    """:func:`generate` and write the record (atomically) to ``out`` (default: :func:`default_out`, in the
    current folder); an existing ``out`` is replaced only with ``force``, and checked before generating."""
    out = check_out(Path(out) if out is not None else default_out(), force=force)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the summation order, and so every number, independent of the machine
    try:
        rec = generate(log=log, **kw)
    finally:
        torch.set_num_threads(threads)
    write_new(out, json.dumps(rec, indent=1) + "\n", force=force)
    load.cache_clear()
    curve.cache_clear()
    log(f"wrote {out}")
    return out


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
