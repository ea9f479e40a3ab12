r"""sesamo-bench: a benchmark suite and library for symmetry-aware normalizing flows.

The Python API (:mod:`sesamo_bench.api`) is importable from here: :func:`preset`,
:func:`create_target`, :func:`create_symmetry`, :func:`default_symmetry`, :func:`create_method`,
:func:`fit`, :func:`evaluate`, :func:`load_runs`. The built-in plugins are the sub-packages
``sesamo_bench.symmetries`` and ``sesamo_bench.targets``.
"""

from __future__ import annotations

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
