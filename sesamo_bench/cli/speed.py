"""``sesamo-bench perf``: the training-throughput benchmark."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer



def perf_cmd(
    quick: bool = typer.Option(False, "--quick", help="a short subset: GMM and complex phi^4, about 10-30 s"),
    sections: Optional[str] = typer.Option(None, "--sections", help="comma list: time-to-ess,matmul,throughput,"
                                           "volume,ess,compile"),
    targets: Optional[str] = typer.Option(None, "--targets", help="comma list of targets"),
    presets: Optional[str] = typer.Option(None, "--presets", help="comma list of quick,paper"),
    batches: Optional[str] = typer.Option(None, "--batches", help="comma list, e.g. 1024,8192"),
    reps: Optional[int] = typer.Option(None, "--reps", min=1, help="timed repetitions"),
    threads: int = typer.Option(0, "--threads", min=0, help="torch intra-op threads (0: torch default; "
                                "training runs use 1)"),
    no_peer: bool = typer.Option(False, "--no-peer", help="skip the normflows comparison"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the results as JSON"),
    ess_steps: Optional[int] = typer.Option(None, "--ess-steps", help="time-to-ess: training steps (the "
                                            "schedule's length; default 20000)"),
    ess_budget: Optional[float] = typer.Option(None, "--ess-budget", help="time-to-ess: seconds of training at "
                                               "most per lattice (default 900)"),
) -> None:
    """Training-throughput benchmark: steps/s against normflows and against the matmul rate."""
    from ..harness.perf import PerfOptions, render, run_perf

    opt = PerfOptions.from_options(quick=quick, sections=sections, targets=targets, presets=presets,
                                   batches=batches, reps=reps, threads=threads, peer=not no_peer, device=device,
                                   out=out, ess_steps=ess_steps, ess_budget_s=ess_budget)
    res = run_perf(opt, log=lambda m: typer.echo(f"... {m}", err=True))
    typer.echo(render(res))
    if out is not None:
        out.write_text(json.dumps(res, indent=1))
