"""``sesamo-bench list``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from ..outputs.text import LIST_WHAT, listing


def list_cmd(
    what: Optional[str] = typer.Argument(
        None, help="targets | symmetries | methods | benchmarks | presets | architectures"),
    benchmarks_file: Optional[Path] = typer.Option(None, "--benchmarks-file", help="benchmarks.toml to list"),
) -> None:
    """List plugins, methods, benchmarks and presets with their parameters and defaults."""
    if what is not None and what not in LIST_WHAT:
        raise ConfigError(f"cannot list '{what}'. Choose one of: {', '.join(LIST_WHAT)}")
    typer.echo(listing(what, benchmarks_file))
