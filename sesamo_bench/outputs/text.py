r"""Plain-text views: the catalogue of ``sesamo-bench list``, one run (``show``), cluster jobs (``status``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.kernels import describe as kernel_choice

#: what ``sesamo-bench list`` can list
LIST_WHAT = ("targets", "symmetries", "methods", "benchmarks", "presets", "architectures")


def listing(what: str | None, benchmarks_file: Path | None = None) -> str:
    """The text of ``sesamo-bench list [what]``."""
    from .. import plugins
    from ..core.methods import METHODS
    from ..harness import benchmarks
    from ..harness.config import HYPER, PRESETS
    from ..registry import parameters

    out: list[str] = []

    def fmt_params(cls: type) -> str:
        ps = parameters(cls)
        return ", ".join(f"{k}={v!r}" for k, v in ps.items()) or "(no parameters)"

    def doc(cls: type) -> str:
        return ((cls.__doc__ or "").strip().splitlines() or [""])[0]

    def section(title: str, registry: Any) -> None:
        out.append(f"{title}:")
        for name in registry.names():
            cls = registry.get(name)
            out.append(f"  {name:<18} {doc(cls)}")
            out.append(f"  {'':<18} parameters: {fmt_params(cls)}")
        for err in registry.errors.values():
            out.append(f"  ! plugin failed to load: {err}")

    sections = [what] if what else list(LIST_WHAT)
    for sec in sections:
        if sec == "targets":
            section("targets", plugins.targets)
        elif sec == "symmetries":
            section("symmetries", plugins.symmetries)
        elif sec == "architectures":
            from ..core.architecture import schema

            out.append("architectures (--set flow=NAME flow.<param>=value):")
            for name in plugins.architectures.names():
                cls = plugins.architectures.get(name)
                eq = ", ".join(cls.equivariance) or "none"
                out.append(f"  {name:<18} {cls.description or doc(cls)}")
                out.append(f"  {'':<18} domains: {', '.join(cls.domains)}; equivariant under: {eq}")
                out.append(f"  {'':<18} parameters: "
                           + (", ".join(f"{k}={v!r}" for k, v in schema(cls).items()) or "(no parameters)"))
            for err in plugins.architectures.errors.values():
                out.append(f"  ! plugin failed to load: {err}")
        elif sec == "methods":
            out.append("methods:")
            for name, cls in METHODS.items():
                sym = "needs a symmetry" if cls.needs_symmetry else "no symmetry"
                out.append(f"  {name:<18} {cls.description} ({sym})")
        elif sec == "presets":
            out.append(f"presets: {', '.join(PRESETS)} (per target; `--set key=value` overrides)")
            for name in plugins.targets.names():
                cls = plugins.targets.get(name)
                for p in PRESETS:
                    table = {k: v for k, v in cls.presets.get(p, {}).items() if k != "methods"}
                    per = cls.presets.get(p, {}).get("methods", {})
                    extra = "".join(f"; {m}: " + ", ".join(f"{k}={v}" for k, v in mv.items()) for m, mv in per.items())
                    out.append(f"  {name}/{p}: " + (", ".join(f"{k}={v}" for k, v in table.items()) or "(defaults)")
                               + extra)
            out.append("  defaults: " + ", ".join(f"{k}={v!r}" for k, v in HYPER.items()))
        elif sec == "benchmarks":
            path = benchmarks_file or benchmarks.default_file()
            out.append(f"benchmarks ({path}):")
            for b in benchmarks.load(path).values():
                r = b.request
                methods = ",".join(r.methods) if r.methods else "all"
                sweep = " ".join(f"{k}={','.join(map(str, v))}" for k, v in r.sweeps.items())
                out.append(f"  {b.name:<22} {b.description}")
                out.append(f"  {'':<22} target={r.target} methods={methods} seeds={','.join(map(str, r.seeds))} "
                           f"preset={r.preset}" + (f" sweep {sweep}" if sweep else ""))
            slurm = benchmarks.executor_settings(path)
            if not slurm.is_empty():
                out.append("  [executor.slurm] (defaults of run --executor slurm): "
                           + " ".join(f"{k}={v}" for k, v in vars(slurm).items() if v not in (None, {})))
        out.append("")
    return "\n".join(out).rstrip()


def status_text(statuses: list) -> str:
    """The text of ``sesamo-bench status``."""
    from ..harness.cluster import STATES

    lines: list[str] = []
    current = None
    for s in statuses:
        if s.submission != current:
            current = s.submission
            lines.append(f"submission {s.submission} ({s.executor})")
        lines.append(f"  {s.entry['job_id']:<14} {s.entry['run_id']}  {s.entry['label']:<40} {s.state}"
                     + (f"  ({s.detail})" if s.detail else ""))
        if s.log_tail:
            lines.append(f"    last lines of {s.log}:")
            lines.extend(f"    | {line}" for line in s.log_tail.splitlines())
    counts = {k: sum(s.state == k for s in statuses) for k in STATES}
    lines.append(", ".join(f"{n} {k}" for k, n in counts.items() if n))
    return "\n".join(lines)


def show_text(rec: dict[str, Any]) -> str:
    lines = [f"run {rec['run_id']}: {rec['target']}/{rec['method']}/seed{rec['seed']}"
             + (f" (benchmark {rec['benchmark']})" if rec.get("benchmark") else ""),
             f"status:   {rec['status']}" + (f" ({rec['error']})" if rec.get("error") else ""),
             f"steps:    {rec['steps']}   wall: {rec['wall_s'] or 0:.2f} s   "
             f"history: {len(rec.get('history') or [])} rows",
             f"run dir:  {rec['run_dir']}",
             f"started:  {rec['started']}   finished: {rec['finished'] or '-'}",
             "params:   " + ", ".join(f"{k}={v}" for k, v in (rec.get("params") or {}).items())]
    for title in ("metrics", "config", "provenance"):
        lines.append(f"{title}:")
        for k, v in (rec.get(title) or {}).items():
            if k == "mlp_kernels_choice" and isinstance(v, list):  # kernels=auto's measured decisions
                lines.append(f"  {k:<22} {len(v)} MLP shape{'s' if len(v) != 1 else ''}")
                lines.extend(f"    {_kernel_choice_text(c)}" for c in v)
                continue
            lines.append(f"  {k:<22} {v}")
    return "\n".join(lines)


def _kernel_choice_text(c: Any) -> str:
    """One decision of ``kernels=auto`` as a line; a stored entry that is not one, as it is."""
    try:
        return kernel_choice(c)
    except (TypeError, ValueError, AttributeError, KeyError):
        return str(c)
