"""The plugin registries: ``symmetries``, ``targets`` and ``architectures`` (see :mod:`sesamo_bench.registry`)."""

from __future__ import annotations

from .core.architecture import Architecture
from .registry import Registry
from .core.symmetry import Symmetry
from .core.target import Target

symmetries: Registry[Symmetry] = Registry("symmetry", Symmetry, folder="symmetries", group="sesamo_bench.symmetries")
targets: Registry[Target] = Registry("target", Target, folder="targets", group="sesamo_bench.targets")
architectures: Registry[Architecture] = Registry("architecture", Architecture, folder="architectures",
                                                 group="sesamo_bench.architectures")


def reload() -> None:
    symmetries.reload()
    targets.reload()
    architectures.reload()
