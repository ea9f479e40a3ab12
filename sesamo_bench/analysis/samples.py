r"""Samples of a particle target from the suite's own HMC, generated once and cached: the training
and held-out splits of :meth:`~sesamo_bench.core.target.Target.training_data` where no shipped file
provides them (LJ-13's training split; every target's held-out split).

Each split comes from its own chains (``train`` and ``test`` use different seeds), so the two share
no rows and neither shares rows with what a run draws from its flow. The chains are those of the
reference check (:mod:`sesamo_bench.analysis.particle_reference`): HMC on the reduced coordinates
from the target's starting clouds, a uniform element of S_N x O(D) after each trajectory. They are
burnt in until the split R-hat of the energy over the chains is below :data:`RHAT_MAX` (the burn-in,
then the states recorded further apart, up to :data:`MAX_THIN` trajectories); a split whose chains
never get there is refused
(:class:`~sesamo_bench.errors.TargetError`), not used.

The files live in ``$SESAMO_BENCH_CACHE/samples`` (default ``~/.cache/sesamo-bench/samples``, as the
native kernels' cache), named by the target, its parameters, the split, the size and
:data:`VERSION`; they are written atomically and read back only if their shape fits.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import math

from ..errors import TargetError
from .hmc import HMC

#: bumped whenever the sampler changes, so cached splits of an earlier sampler are not reused
VERSION = 1
#: split R-hat of the energy below which the chains count as burnt in
RHAT_MAX = 1.01
#: trajectories of the burn-in; trajectories between two kept states, doubled (up to MAX_THIN) while
#: R-hat says the chains have not mixed
BURN_IN = 1000
THIN = 5
MAX_THIN = 40
#: chains: one per PER_CHAIN states kept, between MIN_CHAINS and CHAINS
CHAINS = 64
MIN_CHAINS = 8
PER_CHAIN = 400
#: seeds of the splits' chains (different chains: disjoint splits)
SEEDS = {"train": 101, "test": 202}


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


def symmetry_move(target):
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


def cache_dir() -> Path:
    """The folder of the cached splits (created on first write)."""
    from ..core.native import cache_dir as native_cache

    return Path(native_cache()) / "samples"


def cache_file(target, split: str, n: int) -> Path:
    key = json.dumps({"target": target.name, "params": target.params(), "split": split, "n": n,
                      "version": VERSION}, sort_keys=True, default=str)
    return cache_dir() / f"{target.name}-{split}-{n}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npy"


def hmc_split(target, split: str, n: int, *, progress=None) -> Tensor:
    r"""``n`` reduced configurations ``(n, m)`` (float64) of ``target`` for ``split`` (``"train"`` or
    ``"test"``), from the cache or generated (module docstring)."""
    if split not in SEEDS:
        raise ValueError(f"split must be one of {', '.join(SEEDS)}, got {split!r}")
    path = cache_file(target, split, n)
    if path.is_file() and not path.is_symlink():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.shape == (n, *target.shape) and np.isfinite(arr).all():
                return torch.from_numpy(arr.astype(np.float64))
        except (OSError, ValueError):
            pass  # a damaged cache file is generated again
    with torch.enable_grad():  # HMC follows the action's gradient, also when called from an evaluation
        y = generate(target, split, n, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, y.numpy())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return y


def generate(target, split: str, n: int, *, progress=None) -> Tensor:
    """Run the chains of ``split`` until they pass the R-hat rule, then keep ``n`` states."""
    gen = torch.Generator().manual_seed(SEEDS[split])
    # R-hat - 1 is about tau_int / (states per half chain): 1.01 needs a few hundred states a chain
    chains = max(MIN_CHAINS, min(CHAINS, n // PER_CHAIN))
    per = -(-n // chains)
    y = target.reduced(target.initial_positions(chains, generator=gen))
    hmc = HMC(target.action, eps=0.02, n_leapfrog=10, global_moves=[symmetry_move(target)])
    burn, thin = BURN_IN, THIN
    while True:
        if progress is not None:
            progress(f"{target.name}: HMC {split} split ({n} states), {chains} chains, burn-in {burn}, thin {thin}")
        run = hmc.run(y, n_samples=per, burn_in=burn, thin=thin, generator=gen,
                      observe=lambda s: target.action(s).detach())
        rhat = split_rhat(run.observables.T.numpy())
        if rhat < RHAT_MAX:
            return run.samples.reshape(per * chains, *target.shape)[:n].contiguous()
        if thin >= MAX_THIN:
            raise TargetError(f"target '{target.name}': the HMC chains of its {split} split did not converge "
                              f"(split R-hat of the energy {rhat:.3f} >= {RHAT_MAX} with {per} states a chain, "
                              f"{thin} trajectories apart)")
        # the states just recorded were a longer burn-in; record again, further apart
        y, burn, thin = run.samples[-1], 0, thin * 2
        hmc.eps = run.eps
