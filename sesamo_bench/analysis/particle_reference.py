r"""The suite's own reference for a particle target: HMC chains with a written convergence check.

Many HMC chains (:mod:`sesamo_bench.analysis.hmc`) run on the reduced coordinates; after each trajectory a
global move applies a uniformly drawn element of S_N x O(D) (an exact symmetry: always accepted,
so the chains visit every permutation and mirror copy, which observables that are not invariant
would need). The check reports, for the energy and the virial y . grad S:

- the mean with its error from the Gamma method (autocorrelations included) and tau_int
  (:func:`sesamo_bench.analysis.autocorr.gamma_method`, one replica per chain);
- the potential scale reduction R-hat across the chains (Gelman, Rubin 1992; the split form of
  Gelman et al., Bayesian Data Analysis 3rd ed., Eq. 11.4: each chain cut in two halves), < 1.01
  for well-mixed chains. The rule is enforced: while the energy's R-hat is 1.01 or more, the
  states just recorded count as more burn-in and the chains record again, twice as far apart (up
  to ``max_thin`` trajectories); chains that never get there are reported ``converged: False``
  (``sesamo-bench reference`` then exits 1);
- the virial identity: for p ∝ exp(-S) on R^m (S growing at infinity), integration by parts gives
  <y . grad S> = m = (n - 1) D, independent of the energy, so a chain (or a set of reference
  samples) that misses it by many errors does not sample exp(-S);
- where the target ships reference samples: their energy mean, virial and the 2-Wasserstein
  distance of the two energy distributions.

Example (short chains; docs/results.md has the long run):
    >>> from sesamo_bench import plugins
    >>> rep = mcmc_check(plugins.targets.create("dw4"), chains=16, samples=40, burn_in=40, seed=0, max_thin=2)
    >>> rep["converged"] == (rep["energy"]["rhat"] < 1.01), sorted(rep)[:4]
    (True, ['acceptance', 'burn_in', 'chains', 'converged'])
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ..core.particles import ParticleTarget, load_reference, to_reduced
from .autocorr import gamma_method
from .hmc import HMC, sample_states
from .samples import split_rhat, symmetry_move  # noqa: F401 - defined there, used here and by callers


#: sizes of the HMC splits of :meth:`ShippedReference.training_data`
TRAIN_ROWS = 20000
TEST_ROWS = 5000


class ShippedReference:
    r"""Mixin: :meth:`reference_samples` from a shipped file where the target's parameters are the
    ones the file was sampled at (``reference_params``), else the suite's HMC."""

    reference_file: ClassVar[str] = ""
    reference_params: ClassVar[dict] = {}
    #: shipped training samples (``objective = ml | mixed``); the held-out split is the suite's HMC
    training_file: ClassVar[str] = ""
    #: whether ``reference_file`` holds exact samples of p; where it does not (DW-4's literature
    #: files), runs are measured against :meth:`exact_reference` as well
    reference_exact: ClassVar[bool] = True

    def exact_reference(self) -> Tensor | None:
        """Reduced configurations (float64) of an exact reference where the shipped reference is
        approximate: the held-out split of the suite's converged HMC (``training_data("test")``, never
        trained on). ``None`` where the shipped file is exact, or does not apply (the reference samples
        are then the suite's HMC already)."""
        if self.reference_exact or not self.has_shipped_reference():
            return None
        return self.training_data("test")

    def has_shipped_reference(self) -> bool:
        p = self.params()
        return bool(self.reference_file) and all(p.get(k) == v for k, v in self.reference_params.items())

    def reference_positions(self) -> Tensor | None:
        """All shipped reference positions ``(M, n, d)`` (float64, mean-free), or ``None``."""
        if not self.has_shipped_reference():
            return None
        return load_reference(self.reference_file, self.n_particles, self.spatial_dim)

    def training_data(self, split: str = "train") -> Tensor | None:
        """Reduced configurations (float64): ``"train"`` the shipped training file where the target's
        parameters are the file's (:attr:`training_file`), else :data:`TRAIN_ROWS` states of the
        suite's HMC; ``"test"`` always :data:`TEST_ROWS` states of the suite's HMC, from other
        chains (:mod:`sesamo_bench.analysis.samples`; cached after the first use).

        The held-out split is not a shipped file: the literature's DW-4 files are not disjoint (the
        10 000 rows of ``val_split_DW4.npy`` hold 7 701 distinct configurations, 6 633 of which are
        rows of ``train_split_DW4.npy``; the 100 000 training rows hold 30 091 distinct ones), and
        the 1 068 validation configurations absent from the training file are no sample of p (their
        mean energy is -20.81 against -22.48).
        """
        from .samples import hmc_split

        if split not in ("train", "test"):
            raise ValueError(f"training_data: split must be 'train' or 'test', got {split!r}")
        if split == "train" and self.training_file and self.has_shipped_reference():
            return to_reduced(load_reference(self.training_file, self.n_particles, self.spatial_dim))
        return hmc_split(self, split, TRAIN_ROWS if split == "train" else TEST_ROWS)

    def reference_samples(self, n: int, *, generator: torch.Generator) -> Tensor:
        """``n`` reduced configurations (float64): draws with replacement from the shipped samples
        where they apply, else HMC chains from a random start (:mod:`sesamo_bench.analysis.hmc`)."""
        ref = self.reference_positions()
        if ref is not None:
            idx = torch.randint(ref.shape[0], (n,), generator=generator)
            return to_reduced(ref[idx])
        y0 = self.reduced(self.initial_positions(256, generator=generator))
        return sample_states(self.action, y0, n, generator=generator, burn_in=500, thin=5, eps=0.02)

    def initial_positions(self, chains: int, *, generator: torch.Generator) -> Tensor:
        """Starting positions ``(chains, n, d)`` for MCMC (a loose random cloud)."""
        return torch.randn(chains, self.n_particles, self.spatial_dim, dtype=torch.float64, generator=generator)



def virial(target: ParticleTarget, y: Tensor) -> Tensor:
    """y . grad S(y) per configuration ``(N,)`` (autograd)."""
    with torch.enable_grad():
        yg = y.detach().double().requires_grad_(True)
        (g,) = torch.autograd.grad(target.action(yg).sum(), yg)
    return (yg.detach() * g).sum(-1)


def _summary(data: np.ndarray) -> dict[str, float]:
    est = gamma_method(data)
    return {"mean": est.mean, "err": est.err, "tau_int": est.tau_int, "rhat": split_rhat(data)}


def mcmc_check(target: ParticleTarget, *, chains: int = 64, samples: int = 500, burn_in: int = 500,
               thin: int = 2, n_leapfrog: int = 10, eps: float = 0.05, seed: int = 0,
               max_thin: int = 32) -> dict[str, Any]:
    r"""Run the reference chains and the convergence check (module docstring).

    ``max_thin``: the widest spacing the R-hat rule may reach (``max_thin = thin``: record once).

    Returns:
        ``{"energy": {mean, err, tau_int, rhat}, "virial": {...}, "virial_expected": (n - 1) D,
        "converged": energy R-hat < RHAT_MAX, "burn_in": trajectories before the recorded ones,
        "thin", "acceptance", "eps", "chains", "samples", "reference": {energy_mean, energy_std,
        virial, virial_err, energy_w2} or None, "samples_y": (samples * chains, m) float64}``.
    """
    from .samples import RHAT_MAX

    gen = torch.Generator().manual_seed(seed)
    y0 = target.reduced(target.initial_positions(chains, generator=gen) * 2.0)
    hmc = HMC(target.action, eps=eps, n_leapfrog=n_leapfrog, global_moves=[symmetry_move(target)])
    burnt, burn = 0, burn_in
    while True:
        run = hmc.run(y0, n_samples=samples, burn_in=burn, thin=thin, generator=gen,
                      observe=lambda s: target.energy(target.positions(s)).detach())
        burnt += burn
        energy = run.observables.T.numpy()  # (chains, samples)
        if split_rhat(energy) < RHAT_MAX or 2 * thin > max_thin:
            break
        # the states just recorded were a longer burn-in; record again, further apart
        y0, burnt, burn, thin = run.samples[-1], burnt + samples * thin, 0, 2 * thin
        hmc.eps = run.eps
    ys = run.samples  # (samples, chains, m)
    flat = ys.reshape(-1, ys.shape[-1])
    vir = virial(target, flat).reshape(samples, chains).T.numpy()
    summary = _summary(energy)
    out: dict[str, Any] = {"energy": summary, "virial": _summary(vir), "virial_expected": target.dim,
                           "converged": summary["rhat"] < RHAT_MAX, "burn_in": burnt, "thin": thin,
                           "acceptance": run.acceptance, "eps": run.eps, "chains": chains, "samples": samples,
                           "reference": None, "samples_y": flat}
    ref = target.reference_positions() if hasattr(target, "reference_positions") else None
    if ref is not None:
        from ..core.metrics import wasserstein_1d

        ry = target.reduced(ref)
        with torch.no_grad():
            re = target.energy(ref).numpy()
        rv = virial(target, ry).numpy()
        out["reference"] = {"energy_mean": float(re.mean()), "energy_std": float(re.std()),
                            "energy_err_iid": float(re.std() / math.sqrt(len(re))),
                            "virial": float(rv.mean()), "virial_err_iid": float(rv.std() / math.sqrt(len(rv))),
                            "energy_w2": wasserstein_1d(energy.reshape(-1), re, p=2)}
    return out


def format_check(rep: dict[str, Any]) -> str:
    """A short text report of :func:`mcmc_check`."""
    e, v = rep["energy"], rep["virial"]
    lines = [f"HMC: {rep['chains']} chains x {rep['samples']} samples (thin {rep['thin']}, burn-in "
             f"{rep['burn_in']} trajectories), eps {rep['eps']:.4g}, acceptance {rep['acceptance']:.3f}",
             f"energy  {e['mean']:.4f} +- {e['err']:.4f}  tau_int {e['tau_int']:.2f}  R-hat {e['rhat']:.4f}",
             f"virial  {v['mean']:.4f} +- {v['err']:.4f}  (expected {rep['virial_expected']})  "
             f"tau_int {v['tau_int']:.2f}  R-hat {v['rhat']:.4f}",
             "converged (energy R-hat < 1.01)" if rep["converged"] else
             "NOT converged: energy R-hat >= 1.01 at the widest spacing; use more --samples or --burn-in"]
    r = rep.get("reference")
    if r:
        lines.append(f"shipped reference: energy {r['energy_mean']:.4f} +- {r['energy_err_iid']:.4f} (iid error), "
                     f"std {r['energy_std']:.3f}; virial {r['virial']:.3f} +- {r['virial_err_iid']:.3f}; "
                     f"W2(energy, HMC vs shipped) {r['energy_w2']:.4f}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m sesamo_bench.analysis.particle_reference dw4 [chains samples burn_in]
    import sys

    from .. import plugins

    args = sys.argv[1:]
    tgt = plugins.targets.create(args[0] if args else "dw4")
    nums = [int(a) for a in args[1:4]]
    kw = dict(zip(("chains", "samples", "burn_in"), nums))
    print(format_check(mcmc_check(tgt, **kw)))
