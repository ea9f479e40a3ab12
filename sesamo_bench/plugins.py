"""The two plugin registries: ``symmetries`` and ``targets`` (see :mod:`sesamo_bench.registry`)."""

from __future__ import annotations

from .registry import Registry
from .symmetry import Symmetry
from .target import Target

symmetries: Registry[Symmetry] = Registry("symmetry", Symmetry, folder="symmetries", group="sesamo_bench.symmetries")
targets: Registry[Target] = Registry("target", Target, folder="targets", group="sesamo_bench.targets")


def reload() -> None:
    symmetries.reload()
    targets.reload()
