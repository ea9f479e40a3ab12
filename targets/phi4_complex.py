r"""Complex phi^4 theory on a periodic 2-D lattice (paper Eqs. 20 / 48, Sec. 4.2, App. H.4).

With x_j = re_j + i im_j, stored as a field ``(N, L1, L2, 2)``,

    f[x] = sum_j [ -2 kappa sum_{mu=1,2} Re(conj(x_j) x_{j+mu}) + (1 - 2 lam) |x_j|^2
                   + lam |x_j|^4 + alpha Re(x_j) ].

The global phase rotation x -> e^{i theta} x (U(1)) is exact for alpha = 0 and broken for
alpha > 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import math

import numpy as np

from sesamo_bench.core.lattice_physics import free_field, free_moments, phi4_parameters, slice_correlator, two_point
from sesamo_bench.analysis.observables import flatten
from sesamo_bench.core.target import SMOKE, Target



class Phi4Complex(Target):
    r"""Complex scalar phi^4 theory on an ``L1 x L2`` periodic lattice.

    Arguments:
        shape: lattice size ``[L1, L2]``, each >= 1 (the field shape is ``(L1, L2, 2)``).
        kappa: hopping parameter.
        lam: quartic coupling >= 0.
        alpha: U(1)-breaking term alpha * Re(x_j), alpha >= 0.

    Example:
        >>> t = Phi4Complex(shape=[3, 4])
        >>> t.shape, t.params()["shape"]
        ((3, 4, 2), [3, 4])
    """

    name = "phi4-complex"
    examples = [{"shape": [3, 4]}, {"shape": [3, 4], "alpha": 0.2}]
    dtype = None

    presets = {
        "smoke": SMOKE,
        "quick": {"steps": 6000, "batch_size": 1024, "lr": 1e-3, "lr_schedule": "cosine", "couplings": 6,
                  "hidden_layers": 2, "width": 100, "eval_every": 250, "eval_samples": 4096,
                  "final_samples": 32768, "checkpoint_every": 1000,
                  # the flow in the frame of the magnetisation reaches ESS 0.2 in 3000 steps where the
                  # MLP RealNVP reaches 0.005 (docs/results.md, "Architectures"); realnvp and vmonf have
                  # no U(1) to use it with and keep the MLP
                  "methods": {"sesamo": {"flow": "u1-fourier"}, "equivariant": {"flow": "u1-fourier"}}},
        "paper": {"steps": 400000, "batch_size": 8192, "lr": 5e-4, "couplings": 6, "hidden_layers": 4,
                  "width": 100, "eval_every": 1000, "eval_samples": 8192, "final_samples": 262144,
                  "checkpoint_every": 10000, "lr_patience": 2000},
    }

    def __init__(self, *, shape: list[int] = [8, 8], kappa: float = 0.3, lam: float = 0.022,  # noqa: B006
                 alpha: float = 0.0):
        self.lattice, self.kappa, self.lam, self.alpha = phi4_parameters(shape, kappa, lam, alpha, "phi4-complex")
        #: field shape (L1, L2, 2); the constructor's ``shape`` is the lattice, see :meth:`params`
        self.shape = (*self.lattice, 2)

    def params(self) -> dict[str, Any]:
        # ``self.shape`` is the field shape (L1, L2, 2), not the constructor's lattice size
        return {"shape": list(self.lattice), "kappa": self.kappa, "lam": self.lam, "alpha": self.alpha}

    def action(self, x: Tensor) -> Tensor:
        # sum_j Re(conj(x_j) x_{j+mu}) = sum over sites and (re, im) of x * shifted x: one flat
        # reduction per sample (PyTorch's CPU reduction over a size-2 last axis is slow)
        hop = (x * (torch.roll(x, -1, 1) + torch.roll(x, -1, 2))).sum((1, 2, 3))
        re, im = x[..., 0], x[..., 1]
        r2 = torch.addcmul(re * re, im, im)  # |x_j|^2
        pot = (r2 * (self.lam * r2 + (1 - 2 * self.lam))).sum((1, 2))  # (1 - 2 lam) |x|^2 + lam |x|^4
        f = -2 * self.kappa * hop + pot
        return f + self.alpha * re.sum((1, 2)) if self.alpha else f

    def reference_samples(self, n: int, *, generator: torch.Generator) -> Tensor:
        """HMC samples (float64) with a random global U(1) rotation as a Metropolis-tested global
        move (always accepted at alpha = 0)."""
        from sesamo_bench.analysis.hmc import random_phase, sample_states

        x0 = torch.randn(256, *self.shape, dtype=torch.float64, generator=generator)
        return sample_states(self.action, x0, n, generator=generator, global_moves=[random_phase], eps=0.2)

    def symmetry(self) -> tuple[str, dict[str, Any]]:
        return "u1", {"broken": self.alpha != 0}

    def exact_symmetries(self) -> list[tuple[str, dict[str, Any]]]:
        return [("u1", {"broken": False})] if self.alpha == 0 else []

    # -- observables ----------------------------------------------------------------------------
    def observables(self, x: Tensor) -> dict[str, Tensor]:
        r"""m = M/V (``m_re``, ``m_im``), |m|, |m|^2, cos and sin of arg M (their means measure the
        tilt of the phase distribution; 0 for exact U(1)), the action density, G(t) and C(x) with
        Re(conj(a) b) products (:mod:`sesamo_bench.core.lattice_physics`)."""
        v = self.dim // 2
        m_re, m_im = x[..., 0].sum((1, 2)) / v, x[..., 1].sum((1, 2)) / v
        r2 = m_re * m_re + m_im * m_im
        r = r2.sqrt()
        return {"m_re": m_re, "m_im": m_im, "abs_m": r, "abs_m2": r2, "cos_arg": m_re / r, "sin_arg": m_im / r,
                "action_density": self.action(x) / v, "G": slice_correlator(x, complex_field=True),
                "C": two_point(x, complex_field=True)}

    def derived_observables(self, o: dict[str, Any]) -> dict[str, Any]:
        r"""chi = V (<|m|^2> - |<m>|^2), G_c(t) = G(t) - L2 |<m>|^2, C_c(x) = C(x) - |<m>|^2, and the
        effective mass ln(G_c(t) / G_c(t+1)) for t < L1 / 2."""
        l1, l2 = self.lattice
        m_sq = o["m_re"] ** 2 + o["m_im"] ** 2
        gc = [g - l2 * m_sq for g in o["G"]]
        return {"chi": l1 * l2 * (o["abs_m2"] - m_sq), "G_c": gc, "C_c": [c - m_sq for c in o["C"]],
                "m_eff": [np.log(gc[t] / gc[t + 1]) for t in range(l1 // 2)]}

    def _free(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The free field's real and imaginary parts: independent real free fields, the breaking
        term acting on the real part only."""
        if self.lam != 0:
            return None
        try:
            return free_field(self.lattice, self.kappa, self.alpha), free_field(self.lattice, self.kappa, 0.0)
        except ValueError:
            return None

    def exact_observables(self) -> dict[str, float] | None:
        """Exact for the free field (lam = 0, Gaussian), else ``None``."""
        free = self._free()
        if free is None:
            return None
        from scipy import integrate, stats
        from scipy.special import i1e

        fre, fim = free
        mre = free_moments(self.lattice, fre["cov"], fre["mean"])
        mim = free_moments(self.lattice, fim["cov"], fim["mean"])
        s, nu = mre["var_m"] ** 0.5, abs(mre["m"])
        # (m_re, m_im) is an isotropic 2-D Gaussian around (<m_re>, 0), nu = |<m_re>|: |m| is Rice distributed, and
        # E cos(arg M) = int_0^inf r/s^2 exp(-(r - nu)^2 / (2 s^2)) I1(r nu / s^2) dr
        cos_arg = integrate.quad(lambda r: r / s**2 * math.exp(-(r - nu) ** 2 / (2 * s * s)) * i1e(r * nu / s**2),
                                 0, nu + 40 * s)[0] if nu > 0 else 0.0
        cos_arg = math.copysign(cos_arg, mre["m"])  # the mean lies along -alpha: arg M near pi
        second = fre["cov"] + np.outer(fre["mean"], fre["mean"])
        f = float(np.trace(fre["a"] @ second) + np.trace(fim["a"] @ fim["cov"])) + self.alpha * float(fre["mean"].sum())
        v = self.dim // 2
        prim = {"m_re": mre["m"], "m_im": 0.0, "abs_m": float(stats.rice(nu / s, scale=s).mean()),
                "abs_m2": mre["m2"] + mim["m2"], "cos_arg": cos_arg, "sin_arg": 0.0, "action_density": f / v,
                "G": list(mre["G"] + mim["G"]), "C": list(mre["C"] + mim["C"])}
        return {k: float(v) for k, v in flatten({**prim, **self.derived_observables(prim)}).items()}

    def log_z(self) -> float | None:
        """Exact for the free field (lam = 0), else ``None``."""
        free = self._free()
        return None if free is None else free[0]["log_z"] + free[1]["log_z"]
