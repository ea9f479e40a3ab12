r"""DW-4: identical particles in a pairwise double-well potential (Köhler, Klein, Noé 2020).

With d_ij = |x_i - x_j| and s = d_ij - d0,

    E(x) = sum_{i<j} [ a s + b s^2 + c s^4 ],   p(x) ∝ exp(-E(x) / T),

defaults a = 0, b = -4, c = 0.9, d0 = 4, T = 1, 4 particles in 2-D (each pair counted once;
bgflow names the quartic coefficient ``a``). Each pair has wells at d = d0 ± sqrt(-b / (2c)) =
d0 ± 1.49 (for a = 0). E is invariant under permutations, rotations, reflections and translations;
the field is the centre-of-mass-free reduced coordinates of :mod:`sesamo_bench.core.particles`
(dimension (n - 1) d = 6). The shipped reference samples (the literature's, EqFM / DEM) are
approximate samples of p: mean energy -22.47 (std 1.90) against -22.536(18) of the suite's
converged HMC, virial 5.49(12) against the exact 6 (``sesamo_bench/data/particles/README.md``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from sesamo_bench.analysis.particle_reference import ShippedReference
from sesamo_bench.core.particles import ParticleTarget, pair_distances, safe_distances
from sesamo_bench.core.target import SMOKE, check, is_int, is_real


class DW4(ShippedReference, ParticleTarget):
    r"""Particles in a pairwise double-well potential.

    Arguments:
        n_particles: number of particles >= 2.
        dim: spatial dimension >= 1.
        a, b, c: linear, quadratic and quartic coefficients of the pair potential (c > 0).
        d0: the pair distance the potential is centred at.
        temperature: T > 0.

    Example:
        >>> import torch
        >>> t = DW4()
        >>> t.shape, t.particles
        ((6,), (4, 2))
        >>> x = torch.tensor([[[0.0, 0.0], [4.0, 0.0]]], dtype=torch.float64)
        >>> float(DW4(n_particles=2).energy(x))
        0.0
    """

    name = "dw4"
    examples = [{}, {"n_particles": 3, "dim": 2}, {"n_particles": 3, "dim": 3, "a": 0.3, "temperature": 2.0}]
    reference_file = "val_split_DW4.npy"
    #: the literature's 100 000-row training split (``objective = ml | mixed``); the held-out split
    #: is the suite's HMC (ShippedReference.training_data: the literature's files share rows)
    training_file = "train_split_DW4.npy"
    #: the literature's files are approximate samples of p: runs are measured against the suite's
    #: converged HMC as well (``energy_w2_exact``, ``distance_w2_exact``, ``support_missing_exact``)
    reference_exact = False
    reference_params = {"n_particles": 4, "dim": 2, "a": 0.0, "b": -4.0, "c": 0.9, "d0": 4.0, "temperature": 1.0}

    #: the prior's variance matches the reference samples' (std 2.1 per reduced coordinate)
    presets = {
        "smoke": {**SMOKE, "prior_var": 4.0},
        "quick": {"steps": 3000, "batch_size": 512, "lr": 1e-3, "lr_schedule": "cosine", "couplings": 6,
                  "hidden_layers": 2, "width": 64, "eval_every": 250, "eval_samples": 4096,
                  "final_samples": 100000, "save_samples": 20000, "checkpoint_every": 500, "prior_var": 4.0,
                  # kernel-cnf's weights enter the field linearly: lr 1e-3 barely moves them in 3000 steps
                  "methods": {"equivariant": {"lr": 1e-2}}},
        "paper": {"steps": 50000, "batch_size": 1024, "lr": 5e-4, "lr_schedule": "cosine", "couplings": 8,
                  "hidden_layers": 3, "width": 128, "eval_every": 1000, "eval_samples": 16384,
                  "final_samples": 1000000, "save_samples": 50000, "checkpoint_every": 5000, "prior_var": 4.0},
    }

    def __init__(self, *, n_particles: int = 4, dim: int = 2, a: float = 0.0, b: float = -4.0, c: float = 0.9,
                 d0: float = 4.0, temperature: float = 1.0):
        check(is_int(n_particles) and n_particles >= 2,
              f"dw4: 'n_particles' must be an integer >= 2, got {n_particles!r}")
        check(is_int(dim) and dim >= 1, f"dw4: 'dim' must be an integer >= 1, got {dim!r}")
        check(is_real(a), f"dw4: 'a' must be a finite number, got {a!r}")
        check(is_real(b), f"dw4: 'b' must be a finite number, got {b!r}")
        check(is_real(c) and c > 0, f"dw4: 'c' must be a number > 0 (a bounded-below potential), got {c!r}")
        check(is_real(d0), f"dw4: 'd0' must be a finite number, got {d0!r}")
        check(is_real(temperature) and temperature > 0, f"dw4: 'temperature' must be a number > 0, got {temperature!r}")
        self.a, self.b, self.c, self.d0, self.temperature = float(a), float(b), float(c), float(d0), float(temperature)
        self._set_particles(n_particles, dim)

    def params(self) -> dict[str, Any]:
        # ``dim`` is the spatial dimension here (``Target.dim`` is the field's component count)
        return {"n_particles": self.n_particles, "dim": self.spatial_dim, "a": self.a, "b": self.b, "c": self.c,
                "d0": self.d0, "temperature": self.temperature}

    def energy(self, x: Tensor) -> Tensor:
        s = safe_distances(x) - self.d0
        s2 = s * s
        return (self.a * s + self.b * s2 + self.c * s2 * s2).sum(-1)

    def metastable_state(self, y: Tensor) -> Tensor:
        r"""The metastable state of configurations ``y`` ``(N, m)``: the number of pairs in the inner
        well (d < d0) at the local energy minimum that gradient descent reaches from each (200 steps
        of step size 0.05, every particle moved at most 0.2 a step; the label agrees with 2000
        smaller steps on 99.9 % of the training file), a label ``(N,)`` from 0 to n (n - 1) / 2,
        invariant under S_N x O(D) and translations. Köhler et al. 2020 (Fig. 1) tell the states apart
        after energy minimisation the same way. For the default DW-4 the minima have 2, 3, 4 or 5
        short pairs (training file, first 20 000 rows after minimisation: 4 short pairs 48 %, 2 short
        pairs 47 % in two kinds of minimum, 5 short pairs 4.5 %, 3 short pairs 0.5 %)."""
        from sesamo_bench.core.particles import relaxed

        x = relaxed(self.energy, self.positions(y.detach().double()), steps=200, lr=0.05, max_step=0.2)
        return (pair_distances(x) < self.d0).sum(-1)

    def observables(self, y: Tensor) -> dict[str, Tensor]:
        r"""The energy E, the mean pair distance and the fraction of pairs in the inner well (d < d0)."""
        x = self.positions(y)
        d = pair_distances(x)
        return {"energy": self.energy(x), "pair_distance": d.mean(-1),
                "inner_fraction": (d < self.d0).to(d.dtype).mean(-1)}
