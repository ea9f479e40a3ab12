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
...) still import, as the same module objects under their new names, with a
:class:`DeprecationWarning`, so plugins written against them keep working.
"""

from __future__ import annotations

import importlib as _importlib
import importlib.abc as _abc
import importlib.util as _util
import sys as _sys
import warnings as _warnings
from importlib import metadata as _metadata
from typing import Any

try:
    __version__ = _metadata.version("sesamo-bench")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

_API = ("preset", "create_target", "create_symmetry", "default_symmetry", "create_method", "fit", "evaluate",
        "load_runs", "Fit", "Evaluation")

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:  # PEP 562: the API (and torch) load on first use
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'sesamo_bench' has no attribute {name!r}")


#: module paths of the flat layout -> their place in the layers
MOVED = {
    **{m: f"core.{m}" for m in ("symmetry", "target", "architecture", "particles", "lattice_physics", "flows",
                                 "spline", "lattice", "kernels", "native", "methods", "equivariant", "vmonf",
                                 "loss", "metrics")},
    **{m: f"analysis.{m}" for m in ("hmc", "autocorr", "observables", "nmcmc", "phi4_reference",
                                     "particle_reference")},
    **{m: f"harness.{m}" for m in ("config", "grid", "benchmarks", "runner", "store", "cluster", "cluster_job",
                                    "claim", "train", "measure", "perf")},
    **{m: f"outputs.{m}" for m in ("report", "plot", "progress")},
}


class _MovedModules(_abc.MetaPathFinder, _abc.Loader):
    """Imports ``sesamo_bench.<old>`` as the module now at ``sesamo_bench.<MOVED[old]>`` (one object)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        head, _, old = fullname.partition(".")
        if head == __name__ and old in MOVED:
            return _util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: Any) -> Any:
        new = f"{__name__}.{MOVED[spec.name.partition('.')[2]]}"
        _warnings.warn(f"{spec.name} moved to {new}", DeprecationWarning, stacklevel=3)
        return _importlib.import_module(new)

    def exec_module(self, module: Any) -> None:
        pass


if not any(isinstance(f, _MovedModules) for f in _sys.meta_path):
    _sys.meta_path.append(_MovedModules())
