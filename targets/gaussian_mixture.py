r"""Gaussian mixture on a circle (paper Eq. 19, Sec. 4.1, App. H.1), optionally tilted.

    f(x) = -ln[ 1/(2 pi N) sum_k exp(-|x - mu_k|^2 / 2) ] + b (x1 + x2),
    mu_k = R (cos 2 pi k / N, sin 2 pi k / N),  k = 0 .. N-1.

For b = 0 this is the normalised density of Eq. (19) (ln Z = 0) with an exact Z_N rotation
symmetry; mode 0 lies on the positive x1 axis, inside the canonical wedge |angle| <= pi/N of the
``zm`` symmetry, and the rotation by element u = k maps mode 0 onto mode k. The tilt b (the
authors' code) breaks the symmetry; each Gaussian integral stays closed-form:

    Z = e^{b^2} / N * sum_k exp(-b (mu_k1 + mu_k2)),
    weight of mode k = exp(-b (mu_k1 + mu_k2)) / sum_j exp(-b (mu_j1 + mu_j2)).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.special import logsumexp, softmax
from torch import Tensor

from sesamo_bench.core.target import check, is_real, SMOKE, Target



class GaussianMixture(Target):
    r"""N unit-variance Gaussians on a circle of radius R, with an optional linear tilt.

    Arguments:
        n: number of Gaussians N >= 2 (the order of the Z_N symmetry).
        radius: circle radius R > 0.
        b: tilt b (x1 + x2) added to the action; b = 0 keeps the exact Z_N symmetry.

    Example:
        >>> t = GaussianMixture()
        >>> t.log_z()
        0.0
        >>> t.action(torch.tensor([[12.0, 0.0]])).shape
        torch.Size([1])
    """

    name = "gaussian-mixture"
    examples = [{}, {"n": 5, "radius": 3.0}, {"b": 0.3}]
    dtype = None

    presets = {
        "smoke": {**SMOKE, "methods": {"realnvp": {"prior_var": 20.0}}},
        "quick": {"steps": 4000, "batch_size": 2048, "lr": 2e-3, "lr_schedule": "cosine", "couplings": 6,
                  "hidden_layers": 4, "width": 40, "lr_breaking": 1e-2, "penalty_a": 10.0, "eval_every": 100,
                  "eval_samples": 4096,
                  "final_samples": 65536, "checkpoint_every": 500,
                  "methods": {"realnvp": {"prior_var": 20.0}}},
        "paper": {"steps": 10000, "batch_size": 8192, "lr": 5e-4, "couplings": 6, "hidden_layers": 4,
                  "width": 40, "eval_every": 100, "eval_samples": 8192, "final_samples": 262144,
                  "checkpoint_every": 1000, "lr_patience": 2000,
                  "methods": {"realnvp": {"prior_var": 20.0}}},
    }

    def __init__(self, *, n: int = 8, radius: float = 12.0, b: float = 0.0):
        check(isinstance(n, int) and not isinstance(n, bool) and n >= 2,
              f"gaussian-mixture: 'n' must be an integer >= 2, got {n!r}")
        check(is_real(radius) and radius > 0, f"gaussian-mixture: 'radius' must be a number > 0, got {radius!r}")
        check(is_real(b), f"gaussian-mixture: 'b' must be a finite number, got {b!r}")
        self.n, self.radius, self.b = n, float(radius), float(b)
        self.shape = (2,)
        ang = 2 * math.pi * np.arange(n) / n
        self._mu = self.radius * np.stack([np.cos(ang), np.sin(ang)], -1)  # (N, 2)

    @property
    def means(self) -> np.ndarray:
        """Mode centres mu_k, shape ``(N, 2)``."""
        return self._mu.copy()

    def action(self, x: Tensor) -> Tensor:
        mu = x.new_tensor(self._mu)  # (N_modes, 2)
        xt = x.t()  # (2, N)
        # a_k = -|x - mu_k|^2 / 2, laid out (N_modes, N): the reductions over the modes then run
        # along the batch, vectorised, and no reduction runs over a size-2 axis (PyTorch's CPU
        # kernels do both small-axis cases slowly)
        d1, d2 = xt[:1] - mu[:, :1], xt[1:] - mu[:, 1:]
        a = torch.addcmul(d1 * d1, d2, d2).mul_(-0.5)
        # log sum_k e^{a_k} = m + log sum_k e^{a_k - m} for any m; m = max_k a_k (no gradient: it
        # cancels). The sum is >= 1 (the term k = argmax is 1), so terms below e^-80 change it by
        # less than 1e-34 relative and are floored there: PyTorch's CPU exp is 8x slower on
        # arguments whose result underflows float32 (below -87), most of them for R = 12.
        m = a.detach().amax(0)
        lse = torch.exp((a - m).clamp(min=-80.0)).sum(0).log_().add_(m)
        return math.log(2 * math.pi * self.n) - lse + self.b * (xt[0] + xt[1])

    def symmetry(self) -> tuple[str, dict[str, Any]]:
        return "zm", {"m": self.n, "broken": self.b != 0}

    def exact_symmetries(self) -> list[tuple[str, dict[str, Any]]]:
        return [("zm", {"m": self.n, "broken": False})] if self.b == 0 else []

    # -- references ---------------------------------------------------------------------------
    def _tilt(self) -> np.ndarray:
        return -self.b * self._mu.sum(-1)

    def log_z(self) -> float:
        if self.b == 0:
            return 0.0
        return float(self.b**2 + logsumexp(self._tilt()) - math.log(self.n))

    def reference_samples(self, n: int, *, generator: torch.Generator) -> Tensor:
        r"""Exact draws: mode k with its weight, then N(mu_k - b (1, 1), I) (the tilt shifts each Gaussian)."""
        k = torch.multinomial(torch.as_tensor(softmax(self._tilt())), n, replacement=True, generator=generator)
        mean = torch.as_tensor(self._mu)[k] - self.b
        return mean + torch.randn(n, 2, dtype=torch.float64, generator=generator)

    def mode_probabilities(self) -> list[float]:
        r"""Weight of mode k, ordered k = 0..N-1 (= zm element u = k).

        This is the mass of Gaussian k. The mass of wedge k (the zm cell of element k) differs
        from it only by the tails crossing the wedge borders: exactly 0 for b = 0, below 1e-6 for
        N = 8, R = 12, |b| <= 1 (checked by quadrature in the tests).
        """
        return [float(p) for p in softmax(self._tilt())]

    # -- observables ----------------------------------------------------------------------------
    def observables(self, x: Tensor) -> dict[str, Tensor]:
        r"""The mode occupations: the indicator of the nearest mode centre ``(N, n)`` (the Z_n wedge
        of x), whose means are the mode weights."""
        mu = x.new_tensor(self._mu)
        nearest = ((x[:, None, :] - mu[None]) ** 2).sum(-1).argmin(1)
        return {"mode": torch.nn.functional.one_hot(nearest, self.n).to(x.dtype)}

    def exact_observables(self) -> dict[str, float]:
        """The mode weights (:meth:`mode_probabilities`; the wedge masses differ from them by tails
        below 1e-6 for the paper's mixture)."""
        return {f"mode[{k}]": p for k, p in enumerate(self.mode_probabilities())}
