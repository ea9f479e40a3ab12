r"""LJ-13: a Lennard-Jones cluster held by a harmonic tether (Köhler, Klein, Noé 2020).

With d_ij = |x_i - x_j|, x̄ the centre of mass and epsilon = r_m = 1 by default,

    E(x) = k epsilon sum_{i<j} [ (r_m / d_ij)^12 - 2 (r_m / d_ij)^6 ] + (oscillator / 2) sum_i |x_i - x̄|^2,

p(x) ∝ exp(-E / T), 13 particles in 3-D. ``pair_count`` sets k: ``"ordered"`` counts every
ordered pair (k = 2), the convention of the code that produced the shipped reference samples
(EqFM / DEM; their virial <x . grad E> is (N - 1) D = 36 only with k = 2) and therefore of the
numbers published with them (EqFM, DEM and later papers on the same data); ``"unordered"`` counts
each pair once (k = 1), the published formula and bgflow's / the SE(3)-augmented coupling flow
code's convention. The two are different targets; their numbers do not compare.

The pair term is singular at d -> 0. The energy is exact for d_ij >= ``r_min`` (default 0.01 r_m,
where one pair already costs 10^24 epsilon: no probability there, exp(-E) underflows) and the
distance is clamped at ``r_min`` below, so float32 configurations with overlapping particles give
a huge but finite action and a finite gradient: the loss stays finite (a non-finite loss aborts
training as diverged) and such samples carry zero weight.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sesamo_bench.analysis.particle_reference import ShippedReference
from sesamo_bench.core.particles import ParticleTarget, pair_distances, relaxed, safe_distances
from sesamo_bench.core.target import SMOKE, check, is_int, is_real

PAIR_COUNTS = ("ordered", "unordered")


class LJ13(ShippedReference, ParticleTarget):
    r"""A Lennard-Jones cluster with a harmonic tether to its centre of mass.

    Arguments:
        n_particles: number of particles >= 2.
        dim: spatial dimension >= 1.
        epsilon: well depth > 0.
        r_m: distance of the pair minimum > 0.
        oscillator: coefficient of the tether (oscillator / 2) sum |x_i - x̄|^2, >= 0.
        pair_count: ``"ordered"`` (k = 2, the reference samples') or ``"unordered"`` (k = 1).
        temperature: T > 0.
        r_min: distances are clamped at r_min r_m (0 < r_min < 0.5).

    Example:
        >>> import torch
        >>> x = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]], dtype=torch.float64)
        >>> (float(LJ13(n_particles=2, oscillator=0.0).energy(x)),
        ...  float(LJ13(n_particles=2, oscillator=0.0, pair_count="unordered").energy(x)))
        (-2.0, -1.0)
    """

    name = "lj13"
    examples = [{}, {"n_particles": 3, "dim": 2, "pair_count": "unordered"},
                {"n_particles": 4, "dim": 3, "oscillator": 0.5}]
    reference_file = "val_split_LJ13-1000.npy"
    reference_params = {"n_particles": 13, "dim": 3, "epsilon": 1.0, "r_m": 1.0, "oscillator": 1.0,
                        "pair_count": "ordered", "temperature": 1.0}

    #: the prior's variance matches the reference samples' (std 0.71 per reduced coordinate)
    presets = {
        "smoke": {**SMOKE, "prior_var": 0.5},
        "quick": {"steps": 3000, "batch_size": 256, "lr": 5e-4, "lr_schedule": "cosine", "couplings": 8,
                  "hidden_layers": 2, "width": 128, "eval_every": 250, "eval_samples": 2048,
                  "final_samples": 100000, "save_samples": 20000, "checkpoint_every": 500, "grad_clip": 10.0,
                  "prior_var": 0.5},
        "paper": {"steps": 100000, "batch_size": 1024, "lr": 2e-4, "lr_schedule": "cosine", "couplings": 12,
                  "hidden_layers": 3, "width": 256, "eval_every": 1000, "eval_samples": 16384,
                  "final_samples": 1000000, "save_samples": 50000, "checkpoint_every": 5000, "grad_clip": 10.0,
                  "prior_var": 0.5},
    }

    def __init__(self, *, n_particles: int = 13, dim: int = 3, epsilon: float = 1.0, r_m: float = 1.0,
                 oscillator: float = 1.0, pair_count: str = "ordered", temperature: float = 1.0, r_min: float = 0.01):
        check(is_int(n_particles) and n_particles >= 2,
              f"lj13: 'n_particles' must be an integer >= 2, got {n_particles!r}")
        check(is_int(dim) and dim >= 1, f"lj13: 'dim' must be an integer >= 1, got {dim!r}")
        check(is_real(epsilon) and epsilon > 0, f"lj13: 'epsilon' must be a number > 0, got {epsilon!r}")
        check(is_real(r_m) and r_m > 0, f"lj13: 'r_m' must be a number > 0, got {r_m!r}")
        check(is_real(oscillator) and oscillator >= 0, f"lj13: 'oscillator' must be a number >= 0, got {oscillator!r}")
        check(pair_count in PAIR_COUNTS,
              f"lj13: 'pair_count' must be one of {', '.join(PAIR_COUNTS)}, got {pair_count!r}")
        check(is_real(temperature) and temperature > 0,
              f"lj13: 'temperature' must be a number > 0, got {temperature!r}")
        check(is_real(r_min) and 0 < r_min < 0.5, f"lj13: 'r_min' must be a number in (0, 0.5), got {r_min!r}")
        self.epsilon, self.r_m, self.oscillator = float(epsilon), float(r_m), float(oscillator)
        self.pair_count, self.temperature, self.r_min = pair_count, float(temperature), float(r_min)
        self._set_particles(n_particles, dim)

    def params(self) -> dict[str, Any]:
        return {"n_particles": self.n_particles, "dim": self.spatial_dim, "epsilon": self.epsilon, "r_m": self.r_m,
                "oscillator": self.oscillator, "pair_count": self.pair_count, "temperature": self.temperature,
                "r_min": self.r_min}

    @property
    def pair_factor(self) -> float:
        """k: 2 for every ordered pair, 1 for each pair once."""
        return 2.0 if self.pair_count == "ordered" else 1.0

    def pair_energy(self, x: Tensor) -> Tensor:
        """The Lennard-Jones part k epsilon sum_{i<j} [(r_m/d)^12 - 2 (r_m/d)^6], ``(N,)``."""
        inv6 = (self.r_m / safe_distances(x, floor=self.r_min * self.r_m)).pow(6)
        return self.pair_factor * self.epsilon * (inv6 * (inv6 - 2.0)).sum(-1)

    def energy(self, x: Tensor) -> Tensor:
        xc = x - x.mean(1, keepdim=True)
        return self.pair_energy(x) + 0.5 * self.oscillator * xc.pow(2).sum((1, 2))

    def initial_positions(self, chains: int, *, generator: torch.Generator) -> Tensor:
        """Starting positions for MCMC: random clouds relaxed to nearby local minima
        (:func:`~sesamo_bench.core.particles.relaxed`); from the unrelaxed clouds the HMC of
        ``sesamo-bench reference lj13`` tuned its step size to overlapping pairs and never moved."""
        return relaxed(self.energy, super().initial_positions(chains, generator=generator))

    def observables(self, y: Tensor) -> dict[str, Tensor]:
        r"""The energy E, its Lennard-Jones part, the mean pair distance and the radius of gyration."""
        x = self.positions(y)
        d = pair_distances(x)
        return {"energy": self.energy(x), "lj_energy": self.pair_energy(x), "pair_distance": d.mean(-1),
                "gyration_radius": x.pow(2).sum(-1).mean(-1).sqrt()}
