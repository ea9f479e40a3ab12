r"""What the ``equivariant`` method (``methods/equivariant.py``) needs of the architectures: which
registered ones are equivariant under a group (:func:`architectures_for`).

The method itself is a plugin of the ``methods/`` folder; ``Equivariant`` still imports from
here until 0.3.0 (a :class:`DeprecationWarning` names its new place).
"""

from __future__ import annotations

from typing import Any

from .architecture import target_domain


def architectures_for(group: str, target: Any | None = None) -> list[str]:
    """Names of the registered architectures equivariant under ``group`` (and acting on ``target``'s
    field when given), lattice ones first for a lattice target."""
    from .. import plugins

    names = []
    for name in plugins.architectures.names():
        cls = plugins.architectures.get(name)
        if group in cls.equivariance and (target is None or cls.accepts(target_domain(target)) is None):
            names.append(name)
    if target is not None and target_domain(target).kind == "lattice":
        names.sort(key=lambda n: plugins.architectures.get(n).domains != ("lattice",))
    return names


def __getattr__(name: str) -> Any:
    if name == "Equivariant":
        from .method import moved

        return moved(__name__, name, "equivariant")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
