"""Training-throughput benchmark (issue 6); see docs/performance.md.

    python benchmarks/perf.py --quick --out perf.json      # ~10 s on 2 idle cores
    python benchmarks/perf.py --out perf.json              # full run, about a minute
"""

from __future__ import annotations

import argparse
import json
import sys

from sesamo_bench.harness.perf import SECTIONS, PerfOptions, render, run_perf


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s.split(",") if v)


def _strs(s: str) -> tuple[str, ...]:
    return tuple(v for v in s.split(",") if v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a short subset: GMM and complex phi^4, about 10-30 s")
    ap.add_argument("--sections", type=_strs, help=f"comma list of {','.join(SECTIONS)}")
    ap.add_argument("--targets", type=_strs)
    ap.add_argument("--presets", type=_strs, help="quick,paper")
    ap.add_argument("--batches", type=_ints, help="e.g. 1024,8192")
    ap.add_argument("--lattices", type=_ints, help="phi4 L values, e.g. 8,16,24,32")
    ap.add_argument("--nts", type=_ints, help="Hubbard time slices, e.g. 1,2,4,8")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--ess-max-steps", type=int)
    ap.add_argument("--ess-steps", type=int, help="time-to-ess: training steps (default 20000)")
    ap.add_argument("--ess-budget", type=float, dest="ess_budget_s", help="time-to-ess: seconds per lattice")
    ap.add_argument("--out", help="write the results as JSON")
    a = ap.parse_args(argv)
    opt = PerfOptions.quick_defaults() if a.quick else PerfOptions()
    for name in ("sections", "targets", "presets", "batches", "lattices", "nts", "reps", "ess_max_steps", "ess_steps",
                 "ess_budget_s"):
        v = getattr(a, name)
        if v is not None:
            setattr(opt, name, v)
    opt.threads, opt.device, opt.peer = a.threads, a.device, not a.no_peer
    res = run_perf(opt, log=lambda m: print(f"... {m}", file=sys.stderr, flush=True))
    print(render(res))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
