"""The plugin registries: ``symmetries``, ``targets`` and ``architectures`` (see :mod:`sesamo_bench.registry`)."""

from __future__ import annotations

from .core.architecture import Architecture, architectures
from .registry import Registry
from .core.symmetry import Symmetry
from .core.target import Target

symmetries: Registry[Symmetry] = Registry("symmetry", Symmetry, folder="symmetries", group="sesamo_bench.symmetries")
targets: Registry[Target] = Registry("target", Target, folder="targets", group="sesamo_bench.targets")
# ``architectures`` is declared beside its contract (sesamo_bench.core.architecture: a FlowSpec finds
# its architecture by name there) and is the same registry here

__all__ = ["symmetries", "targets", "architectures", "reload", "Symmetry", "Target", "Architecture"]


def reload() -> None:
    symmetries.reload()
    targets.reload()
    architectures.reload()
