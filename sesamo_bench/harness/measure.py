r"""Measuring observables with a trained run (reweighting, neural MCMC) and with HMC, and their cost.

What ``sesamo-bench measure`` and ``sesamo-bench hmc`` run. A measurement is stored with its run
(``metrics["measurements"][kind]``, kind ``reweight``, ``nmcmc`` or ``hmc``): the estimates of
every observable the target declares (value, error, tau_int, n_eff), the exact values where the
target knows them, the seconds spent, and the cost per effective sample of each observable,

    cost = (training seconds x N / amortise + sampling seconds) / n_eff,

with n_eff = Var(O) / error^2 (``N / (2 tau_int)`` for a chain, about ``ESS x N`` for
reweighting), training time amortised over ``amortise`` samples (default: the ``N`` measured).
HMC has no training time: its cost is its own seconds, burn-in included, over n_eff.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, StoreError
from ..analysis.nmcmc import independence_metropolis
from ..analysis.observables import Estimate, from_chain, reweighted
from ..core.target import Target
from .record import RunRecord

KINDS = ("reweight", "nmcmc", "hmc")
#: lags of the stored autocorrelation functions
AUTOCORR_LAGS = 100


def autocorrelations(values: dict[str, np.ndarray], chains: int = 1) -> dict[str, list[float]]:
    """rho(t) = Gamma(t) / Gamma(0) of each scalar observable and of the components of vectors of at
    most 8 (the Gaussian mixture's mode occupations; not correlators), rows in the order ``(T, chains)``."""
    from ..analysis.autocorr import autocorrelation

    flat = {}
    for name, v in values.items():
        v = np.asarray(v, dtype=np.float64)
        if v.ndim == 1:
            flat[name] = v
        elif v.ndim == 2 and v.shape[1] <= 8:
            flat.update({f"{name}[{j}]": v[:, j] for j in range(v.shape[1])})
    out = {}
    for name, v in flat.items():
        if len(v) < 4 * chains:
            continue
        g = autocorrelation(v.reshape(-1, chains).T, max_lag=min(AUTOCORR_LAGS, len(v) // chains // 2))
        if g[0] > 0:
            out[name] = [float(r) for r in g / g[0]]
    return out


@dataclass
class Measurement:
    """One estimator's estimates of a target's observables."""

    kind: str
    samples: int
    seconds: float
    estimates: dict[str, Estimate]
    exact: dict[str, float] | None = None
    acceptance: float | None = None
    cost: dict[str, float | None] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    #: normalised autocorrelation function rho(t), t = 0 .. :data:`AUTOCORR_LAGS`, of each scalar
    #: primary observable of a chain (neural MCMC, HMC; pooled over the chains), for ``plot --kind autocorr``
    autocorr: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["estimates"] = {k: e.to_dict() for k, e in self.estimates.items()}
        return d


def _select(values: dict[str, np.ndarray], names: list[str] | None, target: Target) -> dict[str, np.ndarray]:
    if not names:
        return values
    unknown = [n for n in names if n not in values]
    if unknown:
        raise ConfigError(f"--observables: target '{target.name}' has no observable '{unknown[0]}'. "
                          f"Available: {', '.join(values) or '(none)'}")
    return {n: values[n] for n in names}


def _costs(estimates: dict[str, Estimate], seconds: float) -> dict[str, float | None]:
    return {k: (seconds / e.n_eff if e.n_eff else None) for k, e in estimates.items() if e.n_eff is not None}


def _derived(target: Target, names: list[str] | None):
    return None if names else target.derived_observables


@torch.no_grad()
def measure_flow(model: Any, target: Target, *, samples: int, train_seconds: float = 0.0,
                 amortise: int | None = None, mcmc: bool = False, names: list[str] | None = None,
                 seed: int = 0, chunk: int = 16384) -> list[Measurement]:
    r"""Reweighting (and, with ``mcmc``, neural MCMC) estimates from ``samples`` fresh draws of a
    trained model, with its exact density.

    Arguments:
        model: a :class:`~sesamo_bench.core.methods.Method`.
        target: its target (declares the observables).
        samples: number of draws N.
        train_seconds: the run's training time (for the cost per effective sample).
        amortise: number of samples the training time is spread over (default ``samples``).
        mcmc: also run the independence Metropolis chain through the same draws.
        names: primary observables to measure (default: all, with the derived ones).
        seed: seeds torch's global generator (the draws) and the chain's accept/reject stream.
    """
    torch.manual_seed(seed)
    was = model.training
    model.eval()
    t0 = time.perf_counter()
    vals: dict[str, list[np.ndarray]] = {}
    lws = []
    done = 0
    while done < samples:
        m = min(chunk, samples - done)
        s = model.sample(m)
        lws.append((target.log_prob(s.x) - model.log_prob(s.x)).double().cpu().numpy())
        for k, v in target.observables(s.x.double()).items():
            vals.setdefault(k, []).append(v.double().cpu().numpy())
        done += m
    model.train(was)
    seconds = time.perf_counter() - t0
    log_w = np.concatenate(lws)
    values = _select({k: np.concatenate(v) for k, v in vals.items()}, names, target)
    if not values:
        raise ConfigError(f"target '{target.name}' declares no observables (Target.observables)")
    if not np.isfinite(log_w).any():
        raise ConfigError("the model's importance weights are all zero or undefined: nothing to measure")
    log_w = np.where(np.isfinite(log_w), log_w, -np.inf)
    amort = amortise or samples
    spent = train_seconds * samples / amort + seconds
    exact = target.exact_observables()
    derived = _derived(target, names)
    rw = reweighted(values, log_w, derived=derived, ensemble="flow")
    w = np.exp(log_w - log_w.max())
    settings = {"amortise": amort, "train_seconds": train_seconds, "seed": seed,
                "ess": float(w.sum() ** 2 / (w * w).sum() / len(w))}
    out = [Measurement("reweight", samples, seconds, rw, exact, None, _costs(rw, spent), settings)]
    if mcmc:
        t1 = time.perf_counter()
        idx, acc = independence_metropolis(log_w, rng=np.random.default_rng(seed))
        chain = from_chain({k: v[idx] for k, v in values.items()}, derived=derived, ensemble="nmcmc")
        seconds_mc = seconds + time.perf_counter() - t1
        out.append(Measurement("nmcmc", samples, seconds_mc, chain, exact, acc,
                               _costs(chain, train_seconds * samples / amort + seconds_mc), settings,
                               autocorrelations({k: v[idx] for k, v in values.items()})))
    return out


def global_moves_for(target: Target) -> list[Any]:
    r"""A global move for HMC from the target's symmetry group (its :meth:`Target.symmetry`): x -> T_u x
    with u a uniformly drawn group element (a random sign flip, quadrant flip, Z_M rotation or
    global phase). The proposal is symmetric (u and u^-1 are equally likely) and volume-preserving
    (the built-in actions are orthogonal), and :mod:`sesamo_bench.analysis.hmc` accepts it with its Metropolis
    test, so the chain stays exact where the symmetry is broken and always accepts where it is not."""
    from .. import plugins

    name, params = target.symmetry()
    sym = plugins.symmetries.create(name, params).bind(target.shape)

    angles = sym.identity(1, torch.zeros(1, dtype=torch.float64)).dim() == 1  # a finite index or an angle

    def move(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if sym.finite:
            u = torch.randint(sym.order, (x.shape[0],), generator=gen, device=x.device)
        elif angles:
            u = 2 * math.pi * torch.rand(x.shape[0], generator=gen, dtype=x.dtype, device=x.device)
        else:  # another encoding (the particles' permutation and rotation): the group's own uniform
            # draw, from the global RNG forked and seeded from ``gen`` so that the chain stays reproducible
            seed = int(torch.randint(2**62, (1,), generator=gen, device=gen.device))
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                torch.manual_seed(seed)
                u = sym.random_elements(x.shape[0], like=x)
        return sym.act(x, u)

    return [move]


def measure_hmc(target: Target, *, samples: int, chains: int = 16, global_moves: bool = False,
                n_leapfrog: int = 10, burn_in: int = 200, thin: int = 1, seed: int = 0,
                names: list[str] | None = None) -> Measurement:
    r"""HMC estimates: ``chains`` independent chains of ``ceil(samples / chains)`` states each (float64,
    step size tuned to 80 % acceptance during burn-in), with the symmetry's global moves if asked."""
    from ..analysis.hmc import HMC

    moves = global_moves_for(target) if global_moves else []
    gen = torch.Generator().manual_seed(seed)
    per = -(-samples // chains)
    if hasattr(target, "initial_positions"):  # particles: the target's own starting clouds (LJ-13: relaxed)
        x0 = target.reduced(target.initial_positions(chains, generator=gen))
    else:
        x0 = torch.randn(chains, *target.shape, generator=gen, dtype=torch.float64)
    t0 = time.perf_counter()
    sampler = HMC(target.action, n_leapfrog=n_leapfrog, global_moves=moves)
    run = sampler.run(x0, n_samples=per, burn_in=burn_in, thin=thin, generator=gen)
    seconds = time.perf_counter() - t0
    x = run.samples.reshape(per * chains, *target.shape)  # step-major: row t * chains + c
    values = _select({k: v.double().numpy() for k, v in target.observables(x).items()}, names, target)
    est = from_chain(values, derived=_derived(target, names), ensemble="hmc", chains=chains)
    settings = {"chains": chains, "global_moves": bool(moves), "n_leapfrog": n_leapfrog, "burn_in": burn_in,
                "thin": thin, "eps": run.eps, "seed": seed, "mean_exp_minus_dh": run.mean_exp_minus_dh,
                "global_acceptance": run.global_acceptance, "trajectories": run.trajectories}
    return Measurement("hmc", per * chains, seconds, est, target.exact_observables(), run.acceptance,
                       _costs(est, seconds), settings, autocorrelations(values, chains))


def load_trained(record: RunRecord | dict[str, Any], *, device: str = "cpu") -> tuple[Target, Any]:
    """The target and the trained model of a finished run, from its ``checkpoint.pt`` (tensors only:
    loaded with ``weights_only=True``)."""
    from .config import RunConfig
    from .train import build

    rec = RunRecord.from_row(record)
    if rec.status != "finished":
        raise ConfigError(f"run {rec.run_id} is {rec.status}, not finished: nothing to measure")
    if not isinstance(rec.run_dir, str) or not rec.run_dir:
        raise StoreError(f"run {rec.run_id} has no run directory in its store's folder (see the warning "
                         f"above): nothing to measure")
    ckpt = Path(rec.run_dir) / "checkpoint.pt"
    cfg = dataclasses.replace(RunConfig.from_dict(rec.config), device=device)
    target, model, dev, _ = build(cfg)
    try:
        state = torch.load(ckpt, map_location=dev, weights_only=True)
        model.load_state_dict(state["model"])
    except (OSError, RuntimeError, KeyError, EOFError, ValueError) as exc:
        raise StoreError(f"cannot load the trained model of run {rec.run_id} from {ckpt}: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    return target, model


# ---------------------------------------------------------------------------------------------
# storing and showing
# ---------------------------------------------------------------------------------------------
def attach(record: RunRecord | dict[str, Any], measurements: list[Measurement]) -> RunRecord:
    """The record with ``metrics["measurements"][kind]`` set for each measurement (a copy)."""
    rec = RunRecord.from_row(record)
    metrics = dict(rec.metrics)
    stored = dict(metrics.get("measurements") or {})
    stored.update({m.kind: m.to_dict() for m in measurements})
    metrics["measurements"] = stored
    return rec.replace(metrics=metrics)


def hmc_record(target: Target, m: Measurement, *, benchmark: str | None = None) -> RunRecord:
    r"""A store row for an HMC measurement (method ``hmc``): its id is the hash of the target, its
    parameters and the HMC settings, so the same command again replaces it."""
    from .runner import _static_provenance
    from .store import run_id

    from .. import plugins

    settings = {k: m.settings[k] for k in ("chains", "global_moves", "n_leapfrog", "burn_in", "thin", "seed")}
    config = {"target": target.name, "method": "hmc", "seed": settings["seed"], "target_params": target.params(),
              "samples": m.samples, **settings}
    # a target (or, with global moves, a symmetry) plugin in place of a built-in of the same name: its own
    # row (the built-ins' ids are unchanged)
    used = [("target", plugins.targets, target.name)]
    if settings["global_moves"]:
        used.append(("symmetry", plugins.symmetries, target.symmetry()[0]))
    shadow = {f"{kind}:{name}": d for kind, reg, name in used if (d := reg.shadow_digest(name)) is not None}
    if shadow:
        config["plugin_sources"] = shadow
    rid = run_id(config, benchmark)
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    return attach(RunRecord(
        run_id=rid, benchmark=benchmark, target=target.name, method="hmc", seed=settings["seed"],
        params=target.params(), config=config, provenance={**_static_provenance(), "start": now, "end": now},
        status="finished", steps=m.settings["trajectories"], wall_s=m.seconds, run_dir="", started=now,
        finished=now), [m])


# ---------------------------------------------------------------------------------------------
# the commands' work: measure a stored run, record an HMC baseline
# ---------------------------------------------------------------------------------------------
def measure_run(store: Any, run: str, *, samples: int, amortise: int | None = None, mcmc: bool = False,
                names: list[str] | None = None, seed: int = 0) -> RunRecord:
    r"""Measure the observables of stored run ``run`` (an id or unique prefix) from ``samples``
    fresh draws of its flow (and neural MCMC with ``mcmc``); the updated record, stored, and
    written to the run's ``measurements.json``."""
    from .store import write_json

    rec = store.find(run)
    target, model = load_trained(rec)
    got = measure_flow(model, target, samples=samples, train_seconds=float(rec.wall_s or 0.0),
                       amortise=amortise, mcmc=mcmc, names=names, seed=seed)
    new = attach(rec, got)
    store.put(new)
    write_json(Path(rec.run_dir) / "measurements.json", new.metrics["measurements"])
    return new


def hmc_run(store: Any, target: Target, **settings: Any) -> RunRecord:
    """Run the HMC baseline on ``target`` (:func:`measure_hmc`'s settings) and store its record."""
    rec = hmc_record(target, measure_hmc(target, **settings))
    store.put(rec)
    return rec
