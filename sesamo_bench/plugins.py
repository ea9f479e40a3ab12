"""The plugin registries: ``symmetries``, ``targets``, ``architectures`` and ``methods``
(see :mod:`sesamo_bench.registry`)."""

from __future__ import annotations

from .core.architecture import Architecture, architectures
from .core.method import Method
from .core.methods import methods
from .registry import Registry
from .core.symmetry import Symmetry
from .core.target import Target

symmetries: Registry[Symmetry] = Registry("symmetry", Symmetry, folder="symmetries", group="sesamo_bench.symmetries")
targets: Registry[Target] = Registry("target", Target, folder="targets", group="sesamo_bench.targets")
# ``architectures`` and ``methods`` are declared beside their contracts (sesamo_bench.core.architecture:
# a FlowSpec finds its architecture by name there; sesamo_bench.core.methods) and are the same
# registries here

__all__ = ["symmetries", "targets", "architectures", "methods", "reload", "Symmetry", "Target", "Architecture",
           "Method"]


def reload() -> None:
    symmetries.reload()
    targets.reload()
    architectures.reload()
    methods.reload()
