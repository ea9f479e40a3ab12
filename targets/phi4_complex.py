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

from sesamo_bench.target import check, is_real, lattice_shape, SMOKE, Target



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
                  "final_samples": 32768, "checkpoint_every": 1000},
        "paper": {"steps": 400000, "batch_size": 8192, "lr": 5e-4, "couplings": 6, "hidden_layers": 4,
                  "width": 100, "eval_every": 1000, "eval_samples": 8192, "final_samples": 262144,
                  "checkpoint_every": 10000, "lr_patience": 2000},
    }

    def __init__(self, *, shape: list[int] = [8, 8], kappa: float = 0.3, lam: float = 0.022,  # noqa: B006
                 alpha: float = 0.0):
        self.lattice = lattice_shape(shape, "phi4-complex")
        check(is_real(kappa), f"phi4-complex: 'kappa' must be a finite number, got {kappa!r}")
        check(is_real(lam) and lam >= 0, f"phi4-complex: 'lam' must be a number >= 0, got {lam!r}")
        check(is_real(alpha) and alpha >= 0, f"phi4-complex: 'alpha' must be a number >= 0, got {alpha!r}")
        self.kappa, self.lam, self.alpha = float(kappa), float(lam), float(alpha)
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

    def symmetry(self) -> tuple[str, dict[str, Any]]:
        return "u1", {"broken": self.alpha != 0}

    def exact_symmetries(self) -> list[tuple[str, dict[str, Any]]]:
        return [("u1", {"broken": False})] if self.alpha == 0 else []
