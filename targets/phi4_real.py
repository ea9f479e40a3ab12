r"""Real phi^4 theory on a periodic 2-D lattice (paper Eq. 53, App. H.3).

    f[x] = sum_j [ -2 kappa sum_{mu=1,2} x_j x_{j+mu} + (1 - 2 lam) x_j^2 + lam x_j^4 + alpha x_j ]

Z2 (x -> -x) is exact for alpha = 0 and broken for alpha > 0. The exact breaking ratio (16 x 8,
kappa = 0.3, lam = 0.022) comes from the suite's own HMC, reweighted over alpha from one alpha = 0
ensemble and cached with its error (:mod:`sesamo_bench.analysis.phi4_reference`; ``sesamo-bench reference
phi4-real`` regenerates it).

The paper's Eq. (56) (:func:`breaking_ratio_eq56`) is the paper's approximation, not a reference:
it models the magnetisation per site m = sum_j x_j / V by two Gaussians at +-mu whose width
sigma = 0.629 is the spread of single-site field values, not of m (about 0.11 on 16 x 8); at
alpha = 0.005 it gives -0.87658 against the Monte Carlo value -0.87070.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

import numpy as np

from sesamo_bench.analysis.observables import flatten
from sesamo_bench.core.lattice_physics import (folded_normal_mean, free_field, free_moments, phi4_parameters,
                                               slice_correlator, two_point)
from sesamo_bench.core.target import SMOKE, Target

#: the paper's fit of the magnetisation histogram at alpha = 0 (App. H.3): A, mu, sigma
FIT = {"A": 0.499, "mu": 2.126, "sigma": 0.629}
FIT_SETUP = {"shape": (16, 8), "kappa": 0.3, "lam": 0.022}


def breaking_ratio_eq56(alpha: float, volume: int, mu: float = FIT["mu"], sigma: float = FIT["sigma"]) -> float:
    r"""R(alpha) of paper Eq. (56)-(57): the paper's approximation (not the exact reference).

    Written to stay finite for large V alpha mu.

    R = 1 - [e^{-V a mu} (1 + erf tau_-) + e^{V a mu} (1 + erf tau_+)] / (2 cosh(V a mu)),
    tau_+- = sigma / sqrt(2) (V a +- mu / sigma^2).
    """
    k = volume * alpha * mu
    tau_m = sigma / math.sqrt(2) * (volume * alpha - mu / sigma**2)
    tau_p = sigma / math.sqrt(2) * (volume * alpha + mu / sigma**2)
    e = math.exp(-2 * abs(k))
    lo, hi = (e, 1.0) if k >= 0 else (1.0, e)  # e^{-k}, e^{k} divided by e^{|k|}
    return 1 - (lo * (1 + math.erf(tau_m)) + hi * (1 + math.erf(tau_p))) / (1 + e)




class Phi4Real(Target):
    r"""Real scalar phi^4 theory on an ``L1 x L2`` periodic lattice.

    Arguments:
        shape: lattice size ``[L1, L2]``, each >= 1.
        kappa: hopping parameter.
        lam: quartic coupling >= 0.
        alpha: symmetry-breaking term alpha * x_j, alpha >= 0.

    Example:
        >>> t = Phi4Real(shape=[3, 4])
        >>> float(t.action(torch.zeros(1, 3, 4)))
        0.0
        >>> t.shape
        (3, 4)
    """

    name = "phi4-real"
    examples = [{"shape": [3, 4]}, {"shape": [3, 4], "alpha": 0.2}]
    dtype = None

    presets = {
        "smoke": SMOKE,
        "quick": {"steps": 6000, "batch_size": 1024, "lr": 1e-3, "lr_schedule": "cosine", "couplings": 6,
                  "hidden_layers": 2, "width": 100, "lr_breaking": 1e-2, "eval_every": 250, "eval_samples": 4096,
                  "final_samples": 32768, "checkpoint_every": 1000,
                  # z2-fourier (RealNVP on ln|M| and the momentum modes of sign(M) x) for the two
                  # methods that use a Z2-equivariant flow: in 6000 steps ESS 0.12(4) (sesamo) and
                  # 0.077(18) (equivariant) against 0.06(3) (MLP) and 0.001 (odd-realnvp); 65 000
                  # steps on 2 threads reach 0.630(14) in 27-29 minutes (docs/results.md, "Real phi^4
                  # 16x8 within 30 minutes")
                  "methods": {"sesamo": {"flow": "z2-fourier"}, "equivariant": {"flow": "z2-fourier"}}},
        "paper": {"steps": 100000, "batch_size": 8192, "lr": 5e-4, "couplings": 6, "hidden_layers": 4,
                  "width": 100, "eval_every": 500, "eval_samples": 8192, "final_samples": 262144,
                  "checkpoint_every": 5000, "lr_patience": 2000},
    }

    def __init__(self, *, shape: list[int] = [16, 8], kappa: float = 0.3, lam: float = 0.022,  # noqa: B006
                 alpha: float = 0.0):
        self.lattice, self.kappa, self.lam, self.alpha = phi4_parameters(shape, kappa, lam, alpha, "phi4-real")
        self.shape = self.lattice

    def params(self) -> dict[str, Any]:
        return {"shape": list(self.lattice), "kappa": self.kappa, "lam": self.lam, "alpha": self.alpha}

    def action(self, x: Tensor) -> Tensor:
        hop = (x * (torch.roll(x, -1, 1) + torch.roll(x, -1, 2))).sum((1, 2))
        x2 = x * x
        pot = (x2 * (self.lam * x2 + (1 - 2 * self.lam))).sum((1, 2))  # (1 - 2 lam) x^2 + lam x^4
        f = -2 * self.kappa * hop + pot
        return f + self.alpha * x.sum((1, 2)) if self.alpha else f

    def symmetry(self) -> tuple[str, dict[str, Any]]:
        return "z2", {"broken": self.alpha != 0}

    def exact_symmetries(self) -> list[tuple[str, dict[str, Any]]]:
        return [("z2", {"broken": False})] if self.alpha == 0 else []

    def reference_samples(self, n: int, *, generator: torch.Generator) -> Tensor:
        """HMC samples (float64) with a random global sign flip as a Metropolis-tested global move
        (always accepted at alpha = 0)."""
        from sesamo_bench.analysis.hmc import global_flip, sample_states

        x0 = torch.randn(256, *self.shape, dtype=torch.float64, generator=generator)
        return sample_states(self.action, x0, n, generator=generator, global_moves=[global_flip], eps=0.25)

    def _reference(self) -> tuple[float, float] | None:
        from sesamo_bench.analysis.phi4_reference import curve

        c = curve()
        if c is None or not c.matches(self.lattice, self.kappa, self.lam):
            return None
        return c(self.alpha)

    def breaking_ratio(self) -> float | None:
        """R(alpha) from the suite's reweighted HMC reference (16 x 8, kappa 0.3, lam 0.022 and
        alpha within the cached grid, else None); 0 at alpha = 0."""
        ref = self._reference()
        return None if ref is None else ref[0]

    def breaking_ratio_error(self) -> float | None:
        """The statistical error of :meth:`breaking_ratio` (None where that is None)."""
        ref = self._reference()
        return None if ref is None else ref[1]

    def breaking_ratio_approximation(self) -> float | None:
        """The paper's approximation, Eq. (56) with its fit (same setup only), for plots beside the reference."""
        if (self.lattice, self.kappa, self.lam) != (FIT_SETUP["shape"], FIT_SETUP["kappa"], FIT_SETUP["lam"]):
            return None
        return breaking_ratio_eq56(self.alpha, self.dim)

    def mode_probabilities(self) -> list[float] | None:
        """[p(m > 0), p(m < 0)] (z2 elements u = 0, 1) from the same fit as :meth:`breaking_ratio`."""
        r = self.breaking_ratio()
        return None if r is None else [(1 + r) / 2, (1 - r) / 2]

    # -- observables ----------------------------------------------------------------------------
    def observables(self, x: Tensor) -> dict[str, Tensor]:
        r"""m = M/V, |m|, m^2, the action density f/V, the zero-momentum correlator G(t) ``(N, L1)``
        and the two-point function C(x) ``(N, V)`` (:mod:`sesamo_bench.core.lattice_physics`)."""
        m = x.sum((1, 2)) / self.dim
        return {"m": m, "abs_m": m.abs(), "m2": m * m, "action_density": self.action(x) / self.dim,
                "G": slice_correlator(x), "C": two_point(x)}

    def derived_observables(self, o: dict[str, Any]) -> dict[str, Any]:
        r"""chi = V (<m^2> - <m>^2), the connected G_c(t) = G(t) - L2 <m>^2 and C_c(x) = C(x) - <m>^2,
        and the effective mass ln(G_c(t) / G_c(t+1)) for t < L1 / 2."""
        l1, l2 = self.lattice
        m_sq = o["m"] ** 2
        gc = [g - l2 * m_sq for g in o["G"]]
        return {"chi": self.dim * (o["m2"] - m_sq), "G_c": gc, "C_c": [c - m_sq for c in o["C"]],
                "m_eff": [np.log(gc[t] / gc[t + 1]) for t in range(l1 // 2)]}

    def exact_observables(self) -> dict[str, float] | None:
        """Exact for the free field (lam = 0, where the action is Gaussian), else ``None``."""
        if self.lam != 0:
            return None
        try:
            ff = free_field(self.lattice, self.kappa, self.alpha)
        except ValueError:
            return None
        mom = free_moments(self.lattice, ff["cov"], ff["mean"])
        second = ff["cov"] + np.outer(ff["mean"], ff["mean"])
        f = float(np.trace(ff["a"] @ second)) + self.alpha * float(ff["mean"].sum())
        prim = {"m": mom["m"], "abs_m": folded_normal_mean(mom["m"], mom["var_m"] ** 0.5), "m2": mom["m2"],
                "action_density": f / self.dim, "G": list(mom["G"]), "C": list(mom["C"])}
        return {k: float(v) for k, v in flatten({**prim, **self.derived_observables(prim)}).items()}

    def log_z(self) -> float | None:
        """Exact for the free field (lam = 0), else ``None``."""
        if self.lam != 0:
            return None
        try:
            return free_field(self.lattice, self.kappa, self.alpha)["log_z"]
        except ValueError:
            return None

