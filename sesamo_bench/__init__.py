r"""sesamo-bench: a benchmark suite and library for symmetry-aware normalizing flows.

The Python API (:mod:`sesamo_bench.api`) is importable from here: :func:`preset`,
:func:`create_target`, :func:`create_symmetry`, :func:`default_symmetry`, :func:`create_method`,
:func:`fit`, :func:`evaluate`, :func:`load_runs`. The built-in plugins are the sub-packages
``sesamo_bench.symmetries``, ``sesamo_bench.targets`` and ``sesamo_bench.architectures``.

The layers (one job per module; ``tests/test_layers.py`` checks who imports whom):

- :mod:`sesamo_bench.core`: the mathematics (symmetries, targets, architectures, methods, loss, metrics);
- :mod:`sesamo_bench.analysis`: HMC, neural MCMC, observables with Gamma-method errors, references;
- :mod:`sesamo_bench.harness`: configuration, planning, training, running, executors, the store;
- :mod:`sesamo_bench.outputs`: tables, plots, progress;
- :mod:`sesamo_bench.cli`: the ``sesamo-bench`` commands, which parse arguments and call the above;
- shared by all: :mod:`sesamo_bench.errors`, the plugin mechanism (:mod:`sesamo_bench.registry`,
  :mod:`sesamo_bench.plugins`) and this facade (:mod:`sesamo_bench.api`).

Modules of the flat layout before the layers (``sesamo_bench.symmetry``, ``sesamo_bench.train``,
...) still import until 0.3.0, with a :class:`DeprecationWarning`, as modules that stand for the
ones under their new names (same attributes, same classes and functions), names that moved to
another module included (:data:`MOVED_NAMES`), so plugins written against them keep working.
"""

from __future__ import annotations

import importlib as _importlib
import importlib.abc as _abc
import importlib.util as _util
import sys as _sys
import types as _types
import warnings as _warnings
from importlib import metadata as _metadata
from typing import Any

try:
    __version__ = _metadata.version("sesamo-bench")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

_API = ("preset", "create_target", "create_symmetry", "default_symmetry", "create_method", "fit", "evaluate",
        "load_runs", "register", "Fit", "Evaluation")

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:  # PEP 562: the API (and torch) load on first use
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'sesamo_bench' has no attribute {name!r}")


#: module paths of the flat layout -> their place in the layers
MOVED = {
    **{m: f"core.{m}" for m in ("symmetry", "target", "architecture", "particles", "lattice_physics", "flows",
                                 "spline", "lattice", "kernels", "native", "equivariant", "vmonf",
                                 "loss", "metrics")},
    **{m: f"analysis.{m}" for m in ("hmc", "autocorr", "observables", "nmcmc", "phi4_reference",
                                     "particle_reference")},
    **{m: f"harness.{m}" for m in ("config", "grid", "benchmarks", "runner", "store", "cluster", "cluster_job",
                                    "claim", "train", "measure", "perf")},
    **{m: f"outputs.{m}" for m in ("report", "plot", "progress")},
}


#: names that left their flat-layout module for another one: old module -> {name: "new.module:name"}
#: (names that left a module of the layers are kept by that module's own ``__getattr__``)
MOVED_NAMES = {
    "store": {"EXECUTION_ONLY": "harness.config:EXECUTION_ONLY", "LATER_FIELDS": "harness.config:LATER_FIELDS"},
    "grid": {"grid_request": "harness.benchmarks:grid_request"},
    "measure": {"OBS_HEADERS": "outputs.observables:OBS_HEADERS",
                "observable_rows": "outputs.observables:observable_rows",
                "render_observables": "outputs.observables:render_observables",
                "summary": "outputs.observables:estimate_rows"},
}
#: the release that removes the flat module paths and :data:`MOVED_NAMES` (CHANGELOG.md)
REMOVED_IN = "0.3.0"


class _OldModule(_types.ModuleType):
    """``sesamo_bench.<old>``: a module of its own whose attributes are those of the module now at
    ``sesamo_bench.<MOVED[old]>`` (reading, setting and deleting them acts on that module), plus the
    names in :data:`MOVED_NAMES`, with a :class:`DeprecationWarning`. The module it stands for is
    left as it is (its ``__spec__`` included, so ``importlib.reload`` of it works)."""

    def _new(self) -> Any:
        old = _types.ModuleType.__getattribute__(self, "__name__").partition(".")[2]
        return _importlib.import_module(f"{__name__}.{MOVED[old]}")

    def __getattr__(self, name: str) -> Any:  # only names this module's own namespace lacks
        old = _types.ModuleType.__getattribute__(self, "__name__")
        moved = MOVED_NAMES.get(old.partition(".")[2], {}).get(name)
        if moved is not None:
            where, _, attr = moved.partition(":")
            _warnings.warn(f"{old}.{name} moved to {__name__}.{where}.{attr}; the old path goes in {REMOVED_IN}",
                           DeprecationWarning, stacklevel=2)
            return getattr(_importlib.import_module(f"{__name__}.{where}"), attr)
        new = self._new()
        if name == "__all__" and not hasattr(new, "__all__"):  # `from <old> import *`
            return [k for k in vars(new) if not k.startswith("_")]
        return getattr(new, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("__") and name.endswith("__"):  # the import system's own attributes
            super().__setattr__(name, value)
        else:
            setattr(self._new(), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._new(), name)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._new())) | set(MOVED_NAMES.get(self.__name__.partition(".")[2], {})))


class _MovedModules(_abc.MetaPathFinder, _abc.Loader):
    """Imports ``sesamo_bench.<old>`` as an :class:`_OldModule` standing for ``sesamo_bench.<MOVED[old]>``."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        head, _, old = fullname.partition(".")
        if head == __name__ and old in MOVED:
            return _util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: Any) -> Any:
        new = f"{__name__}.{MOVED[spec.name.partition('.')[2]]}"
        _warnings.warn(f"{spec.name} moved to {new}; the old path goes in {REMOVED_IN}", DeprecationWarning,
                       stacklevel=3)
        return _OldModule(spec.name)

    def exec_module(self, module: Any) -> None:
        module._new()  # the module it stands for loads now (its import errors surface here)


if not any(isinstance(f, _MovedModules) for f in _sys.meta_path):
    _sys.meta_path.append(_MovedModules())
