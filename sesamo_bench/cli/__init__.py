r"""The ``sesamo-bench`` command line: ``list``, ``run``, ``status``, ``collect``, ``report``, ``plot``, ``show``,
``measure``, ``hmc``, ``perf``, ``reference``.

One module per group of commands (:mod:`.catalogue`, :mod:`.running`, :mod:`.results`,
:mod:`.measuring`, :mod:`.speed`); each command parses its arguments, calls library functions
(:mod:`sesamo_bench.harness`, :mod:`sesamo_bench.outputs`) and prints what they return. Every
error a user can cause (:class:`~sesamo_bench.errors.UserError`, a bad option, an unreadable
store) becomes one line ``error: <message>`` on stderr and exit code 2, before anything is
written to the store.

Exit codes: 0 success; 1 some run ``failed``; 2 bad input or unusable store; 130 / 143 the grid
was stopped by SIGINT / SIGTERM (checkpoints kept, continue with ``--resume``); with ``run
--executor slurm --wait``, 130 means Ctrl-C stopped the waiting (the jobs go on).
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from ..errors import UserError
from ..harness.record import JSON_FIELDS, summary as run_summary  # noqa: F401 - the --json contract

__all__ = ["app", "main", "JSON_FIELDS", "run_summary"]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# usage errors of the option parser (Typer >= 0.24 vendors Click; older Typer uses Click itself)
_USAGE_ERRORS: tuple[type[BaseException], ...] = tuple(
    e for e in (getattr(typer, "TyperException", None),) if e is not None)
try:
    import click as _click

    _USAGE_ERRORS += (_click.exceptions.ClickException,)
except ImportError:  # pragma: no cover
    pass


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


class _Group(TyperGroup):
    """Turns user errors into ``error: <message>`` (one line) and exit code 2."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args=args, prog_name=prog_name or "sesamo-bench", complete_var=complete_var,
                              standalone_mode=False, **extra)
        except typer.Abort:
            rv = 130
        except _USAGE_ERRORS as exc:
            rv = _fail(exc.format_message() if hasattr(exc, "format_message") else str(exc))
        except (UserError, tomllib.TOMLDecodeError) as exc:
            rv = _fail(str(exc))
        except BrokenPipeError:  # `sesamo-bench report | head`
            rv = 1
        except OSError as exc:
            where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
            rv = _fail(f"{exc.strerror or exc}{where}")
        code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _fail(message: str) -> int:
    typer.echo(f"error: {_one_line(message)}", err=True)
    return 2


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmarks of symmetry-aware normalizing flows (SESaMo, canonicalization, RealNVP, "
                       "equivariant flows, VMONF).")

from . import catalogue, measuring, results, running, speed  # noqa: E402 - the command modules

#: every command, in the order ``--help`` lists them: (name, function); the command modules
#: define plain functions and know nothing of ``app``
COMMANDS = [
    ("list", catalogue.list_cmd),
    ("run", running.run_cmd),
    ("status", running.status_cmd),
    ("collect", running.collect_cmd),
    ("report", results.report_cmd),
    ("plot", results.plot_cmd),
    ("show", results.show_cmd),
    ("measure", measuring.measure_cmd),
    ("hmc", measuring.hmc_cmd),
    ("reference", measuring.reference_cmd),
    ("ceiling", measuring.ceiling_cmd),
    ("perf", speed.perf_cmd),
]
for _name, _fn in COMMANDS:
    app.command(_name)(_fn)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    typer.main.get_command(app).main(args=argv, prog_name="sesamo-bench")


if __name__ == "__main__":  # pragma: no cover
    main()
