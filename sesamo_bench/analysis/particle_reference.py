r"""The suite's own reference for a particle target: HMC chains with a written convergence check.

Many HMC chains (:mod:`sesamo_bench.analysis.hmc`) run on the reduced coordinates; after each trajectory a
global move applies a uniformly drawn element of S_N x O(D) (an exact symmetry: always accepted,
so the chains visit every permutation and mirror copy, which observables that are not invariant
would need). The check reports, for the energy and the virial y . grad S:

- the mean with its error from the Gamma method (autocorrelations included) and tau_int
  (:func:`sesamo_bench.analysis.autocorr.gamma_method`, one replica per chain);
- the potential scale reduction R-hat across the chains (Gelman, Rubin 1992; the split form of
  Gelman et al., Bayesian Data Analysis 3rd ed., Eq. 11.4: each chain cut in two halves), < 1.01
  for well-mixed chains;
- the virial identity: for p ∝ exp(-S) on R^m (S growing at infinity), integration by parts gives
  <y . grad S> = m = (n - 1) D, independent of the energy, so a chain (or a set of reference
  samples) that misses it by many errors does not sample exp(-S);
- where the target ships reference samples: their energy mean, virial and the 2-Wasserstein
  distance of the two energy distributions.

Example (short chains; docs/results.md has the long run):
    >>> from sesamo_bench import plugins
    >>> rep = mcmc_check(plugins.targets.create("dw4"), chains=16, samples=40, burn_in=40, seed=0)
    >>> sorted(rep)[:3]
    ['acceptance', 'chains', 'energy']
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


class ShippedReference:
    r"""Mixin: :meth:`reference_samples` from a shipped file where the target's parameters are the
    ones the file was sampled at (``reference_params``), else the suite's HMC."""

    reference_file: ClassVar[str] = ""
    reference_params: ClassVar[dict] = {}

    def has_shipped_reference(self) -> bool:
        p = self.params()
        return bool(self.reference_file) and all(p.get(k) == v for k, v in self.reference_params.items())

    def reference_positions(self) -> Tensor | None:
        """All shipped reference positions ``(M, n, d)`` (float64, mean-free), or ``None``."""
        if not self.has_shipped_reference():
            return None
        return load_reference(self.reference_file, self.n_particles, self.spatial_dim)

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



def split_rhat(data: np.ndarray) -> float:
    r"""Split R-hat of ``(chains, N)`` data: every chain cut in two halves, then
    sqrt(((N' - 1) / N' W + B / N') / W) with W the mean within-half variance and B / N' the
    variance of the half means (N' = N // 2)."""
    a = np.asarray(data, dtype=float)
    h = a.shape[1] // 2
    halves = np.concatenate([a[:, :h], a[:, h:2 * h]], 0)
    w = halves.var(1, ddof=1).mean()
    b_over_n = halves.mean(1).var(ddof=1)
    return float(math.sqrt(((h - 1) / h * w + b_over_n) / w))


def symmetry_move(target: ParticleTarget):
    """A global HMC move: a uniform random element of S_N x O(D) applied to the chains."""
    from .. import plugins

    name, params = target.symmetry()
    sym = plugins.symmetries.create(name, params).bind(target.shape)

    def move(y: Tensor, generator: torch.Generator) -> Tensor:
        seed = int(torch.randint(2**62, (1,), generator=generator))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            u = sym.random_elements(y.shape[0], y)
        return sym.act(y, u)

    return move


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
               thin: int = 2, n_leapfrog: int = 10, eps: float = 0.05, seed: int = 0) -> dict[str, Any]:
    r"""Run the reference chains and the convergence check (module docstring).

    Returns:
        ``{"energy": {mean, err, tau_int, rhat}, "virial": {...}, "virial_expected": (n - 1) D,
        "acceptance", "eps", "chains", "samples", "reference": {energy_mean, energy_std, virial,
        virial_err, energy_w2} or None, "samples_y": (samples * chains, m) float64}``.
    """
    gen = torch.Generator().manual_seed(seed)
    y0 = target.reduced(target.initial_positions(chains, generator=gen) * 2.0)
    hmc = HMC(target.action, eps=eps, n_leapfrog=n_leapfrog, global_moves=[symmetry_move(target)])
    run = hmc.run(y0, n_samples=samples, burn_in=burn_in, thin=thin, generator=gen)
    ys = run.samples  # (samples, chains, m)
    flat = ys.reshape(-1, ys.shape[-1])
    with torch.no_grad():
        energy = target.energy(target.positions(flat)).reshape(samples, chains).T.numpy()
    vir = virial(target, flat).reshape(samples, chains).T.numpy()
    out: dict[str, Any] = {"energy": _summary(energy), "virial": _summary(vir), "virial_expected": target.dim,
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
    lines = [f"HMC: {rep['chains']} chains x {rep['samples']} samples, eps {rep['eps']:.4g}, "
             f"acceptance {rep['acceptance']:.3f}",
             f"energy  {e['mean']:.4f} +- {e['err']:.4f}  tau_int {e['tau_int']:.2f}  R-hat {e['rhat']:.4f}",
             f"virial  {v['mean']:.4f} +- {v['err']:.4f}  (expected {rep['virial_expected']})  "
             f"tau_int {v['tau_int']:.2f}  R-hat {v['rhat']:.4f}"]
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
