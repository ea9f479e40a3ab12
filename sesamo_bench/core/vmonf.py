r"""The ``vmonf`` method moved to the ``methods/`` plugin folder (``sesamo_bench.methods.vmonf``);
``VMONF`` still imports from here until 0.3.0, with a :class:`DeprecationWarning`."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "VMONF":
        from .method import moved

        return moved(__name__, name, "vmonf")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
