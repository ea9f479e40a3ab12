"""``sesamo-bench measure``, ``hmc`` and ``reference``: observables of a trained flow, the HMC baseline,
the suite's own exact references."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from ..errors import ConfigError
from .results import names

REFERENCES = ("phi4-real", "dw4", "lj13")


def _count(value: int, option: str, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise ConfigError(f"{option} must be an integer in [{lo}, {hi}], got {value}")
    return value


def _print(recs: list[dict[str, Any]], wanted: list[str] | None, json_out: bool) -> None:
    from ..outputs.observables import observable_rows, render_observables

    typer.echo(render_observables(observable_rows(recs, wanted), "json" if json_out else "terminal"))


def measure_cmd(
    run: str = typer.Argument(..., help="run id or a unique prefix of it (a finished run)"),
    observables: Optional[str] = typer.Option(None, "--observables", help="comma list of the target's primary "
                                              "observables, or 'all' (default: all, with the derived ones)"),
    samples: int = typer.Option(65536, "--samples", help="fresh samples drawn from the trained flow"),
    mcmc: bool = typer.Option(False, "--mcmc", help="also run neural MCMC (independence Metropolis) on them"),
    amortise: Optional[int] = typer.Option(None, "--amortise", help="samples the training time is spread over "
                                           "in the cost per effective sample (default: --samples)"),
    seed: int = typer.Option(0, "--seed", help="seed of the draws and of the Metropolis decisions"),
    store: Optional[Path] = typer.Option(None, "--store"),
    json_out: bool = typer.Option(False, "--json", help="print only the estimates as a JSON array"),
) -> None:
    """Unbiased observables of a trained run: reweighting and neural MCMC, Gamma-method errors."""
    from ..harness.measure import measure_run
    from ..harness.store import open_existing

    _count(samples, "--samples", 2, 10**8)
    _count(seed, "--seed", 0, 2**32 - 1)
    if amortise is not None:
        _count(amortise, "--amortise", 1, 10**15)
    wanted = names(observables)
    rec = measure_run(open_existing(store), run, samples=samples, amortise=amortise, mcmc=mcmc, names=wanted,
                      seed=seed)
    _print([rec], wanted, json_out)


def hmc_cmd(
    target: str = typer.Option(..., "--target", help="target plugin (see `list targets`)"),
    set_: List[str] = typer.Option([], "--set", help="target parameter key=value (repeatable)"),
    observables: Optional[str] = typer.Option(None, "--observables", help="comma list, or 'all' (default)"),
    samples: int = typer.Option(16384, "--samples", help="states recorded, over all chains"),
    chains: int = typer.Option(16, "--chains", help="independent chains run side by side"),
    global_moves: bool = typer.Option(False, "--global-moves", help="add a global move: a random element of the "
                                      "target's symmetry group, Metropolis-tested (exact also where broken)"),
    leapfrog: int = typer.Option(10, "--leapfrog", help="leapfrog steps per trajectory"),
    burn_in: int = typer.Option(200, "--burn-in", help="trajectories before recording (step size tuned)"),
    thin: int = typer.Option(1, "--thin", help="trajectories between recorded states"),
    seed: int = typer.Option(0, "--seed"),
    store: Optional[Path] = typer.Option(None, "--store", help="results database (default: "
                                         "./sesamo-runs/results.sqlite; created if missing)"),
    json_out: bool = typer.Option(False, "--json", help="print only the estimates as a JSON array"),
) -> None:
    """HMC baseline: observables of a target with Gamma-method errors, recorded as method 'hmc'."""
    from .. import plugins
    from ..harness.grid import parse_assignments
    from ..harness.measure import hmc_run
    from ..harness.store import DEFAULT_STORE, Store

    _count(samples, "--samples", 2, 10**8)
    _count(chains, "--chains", 1, 4096)
    _count(leapfrog, "--leapfrog", 1, 10**4)
    _count(burn_in, "--burn-in", 0, 10**7)
    _count(thin, "--thin", 1, 10**4)
    _count(seed, "--seed", 0, 2**32 - 1)
    wanted = names(observables)
    tgt = plugins.targets.create(target, parse_assignments(set_, "--set"), table=f"target '{target}'")
    rec = hmc_run(Store(store or DEFAULT_STORE), tgt, samples=samples, chains=chains, global_moves=global_moves,
                  n_leapfrog=leapfrog, burn_in=burn_in, thin=thin, seed=seed, names=wanted)
    _print([rec], wanted, json_out)


def reference_cmd(
    what: str = typer.Argument(..., help="the reference to regenerate: phi4-real, dw4 or lj13"),
    out: Optional[Path] = typer.Option(None, "--out", help="output JSON (phi4-real default: "
                                       "./phi4_real_breaking_ratio.json in the current folder; the file shipped "
                                       "with the package is replaced only when named here, with --force; "
                                       "particles: none, the check is printed)"),
    force: bool = typer.Option(False, "--force", help="replace an existing --out file (checked before the "
                               "Monte Carlo starts)"),
    chains: Optional[int] = typer.Option(None, "--chains", help="independent HMC chains (default: 256 for "
                                         "phi4-real, 128 for particles)"),
    samples: Optional[int] = typer.Option(None, "--samples", help="recorded trajectories per chain (default: "
                                          "8000 for phi4-real, 500 for particles)"),
    burn_in: Optional[int] = typer.Option(None, "--burn-in", help="trajectories before recording (default: 400)"),
    seed: int = typer.Option(20261201, "--seed", help="seed of the chains' random stream"),
) -> None:
    """Regenerate an exact reference by Monte Carlo: phi4-real, the breaking ratio R(alpha) (a few CPU
    minutes); dw4 / lj13, the suite's own HMC of the particle system with its convergence check
    (energy, virial identity, R-hat) against the shipped reference samples."""
    if what not in REFERENCES:
        raise ConfigError(f"reference: unknown reference {what!r}. Available: {', '.join(REFERENCES)}")
    particles = what != "phi4-real"
    chains = _count(chains, "--chains", 1, 4096) if chains is not None else (128 if particles else 256)
    samples = _count(samples, "--samples", 2, 10**7) if samples is not None else (500 if particles else 8000)
    burn_in = _count(burn_in, "--burn-in", 0, 10**7) if burn_in is not None else 400
    from ..analysis.phi4_reference import check_out, data_path, default_out, write, write_new

    if particles:
        import json

        from .. import plugins
        from ..analysis.particle_reference import format_check, mcmc_check
        from ..harness.store import clean

        if out is not None:
            check_out(out, force=force)  # before the Monte Carlo
        rep = mcmc_check(plugins.targets.create(what), chains=chains, samples=samples, burn_in=burn_in, seed=seed)
        rep.pop("samples_y")
        typer.echo(format_check(rep))
        if out is not None:
            write_new(out, json.dumps(clean({"target": what, "seed": seed, **rep}), indent=2), force=force)
            typer.echo(str(out))
        if not rep["converged"]:
            typer.echo(f"error: reference {what}: the HMC chains did not converge (energy split R-hat "
                       f"{rep['energy']['rhat']:.4f} >= 1.01 at thin {rep['thin']}); use more --samples or "
                       f"--burn-in", err=True)
            raise typer.Exit(1)
        return
    if out is None:
        check_out(default_out(), force=force)  # an error is the only line
        typer.echo(f"note: writing {default_out()} (the reference shipped with the package, {data_path()}, is "
                   f"replaced only with --out {data_path()} --force)", err=True)
    path = write(out=out, force=force, chains=chains, samples=samples, burn_in=burn_in, seed=seed,
                 log=lambda m: typer.echo(f"... {m}", err=True))
    typer.echo(str(path))


def ceiling_cmd(
    target: str = typer.Option(..., "--target", help="phi4-real or phi4-complex"),
    set_: List[str] = typer.Option([], "--set", help="target parameter key=value (repeatable), e.g. alpha=0.005"),
    chains: int = typer.Option(64, "--chains", help="HMC chains of the unbroken (alpha = 0) theory"),
    samples: int = typer.Option(2000, "--samples", help="recorded states per chain"),
    seed: int = typer.Option(20261202, "--seed"),
    json_out: bool = typer.Option(False, "--json", help="print only a JSON object"),
) -> None:
    """The highest ESS an exactly symmetric model can reach where the target breaks its symmetry."""
    import json

    from .. import plugins
    from ..analysis.ceiling import TARGETS, ceiling_for
    from ..harness.grid import parse_assignments

    if target not in TARGETS:
        raise ConfigError(f"ceiling: --target {target!r} has no closed-form ceiling. Allowed: {', '.join(TARGETS)}")
    _count(chains, "--chains", 1, 4096)
    _count(samples, "--samples", 2, 10**7)
    _count(seed, "--seed", 0, 2**32 - 1)
    tgt = plugins.targets.create(target, parse_assignments(set_, "--set"), table=f"target '{target}'")
    c = ceiling_for(tgt, chains=chains, samples=samples, seed=seed)
    if json_out:
        typer.echo(json.dumps({"target": target, "params": tgt.params(), **c.as_dict()}))
        return
    typer.echo(f"{target} {', '.join(f'{k}={v}' for k, v in tgt.params().items())} (group {c.group}; "
               f"|M| = {c.abs_m.mean:.3f}({c.abs_m.err:.3f}) from {c.abs_m.n} HMC states at alpha = 0)")
    for key, what in (("ceiling", "best invariant model"), ("symmetrised", "symmetrised target"),
                      ("unbroken", "unbroken theory (reverse-KL optimum)"),
                      ("sesamo", "SESaMo family (best y-free modulation)")):
        e = getattr(c, key)
        typer.echo(f"  ESS of the {what:38s} {e.mean:.5f} +- {e.err:.5f}")
