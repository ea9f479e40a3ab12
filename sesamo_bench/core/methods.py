r"""The methods: how a flow and a symmetry make a sampler q(x) (paper Sec. 2-3), as plugins.

Each method is one file of the ``methods/`` folder (installed as ``sesamo_bench.methods``),
discovered like the symmetries, targets and architectures (:mod:`sesamo_bench.registry`): the
built-in ones, the ``methods/`` sub-folder of every ``SESAMO_BENCH_PLUGINS`` folder, entry points
of the group ``sesamo_bench.methods``, and classes handed to :func:`register` (e.g. from a
notebook). The built-ins:

- ``realnvp`` (:class:`NaiveRealNVP`): x = g(z).
- ``canonicalization`` (Sec. 2.3.2): z_c, u = C(z); x = T_u g(z_c). Finite groups only; the prior
  must be invariant (mean 0).
- ``sesamo`` (Sec. 3.1, App. E-F): y = g(z) in the canonical cell, u ~ p_S, x = T_u y; p_S
  learnable for broken symmetries.
- ``equivariant`` (Koehler, Klein, Noe 2020): an invariant prior through an equivariant flow.
- ``vmonf`` (Pires & Figueiredo 2020): a mixture of flows with learned weights.

A method class declares its ``name``, ``description``, ``label`` and ``colour`` (tables and
plots) and ``order`` (its place in ``--methods all``). Every method returns a :class:`Sample`
with the log density along the sampling path (what the training objective uses) and offers
:meth:`Method.log_prob`, the exact density at any x: for SESaMo and canonicalization a sum over
all preimages, which stays correct when the flow leaves its cell. The contract tests in
``tests/test_methods.py`` run over every discovered method.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .method import Method, PlainFlow, Sample, Standardized, method_class, methods, moved

__all__ = ["METHODS", "methods", "register", "method_class", "moved", "Method", "PlainFlow", "Sample", "Standardized"]



def register(cls: type[Method]) -> type[Method]:
    r"""Register a method class defined outside the plugin folders (a notebook, a script); usable
    as a decorator. Its ``name`` must be set; it replaces a method of the same name.

    Example:
        >>> from sesamo_bench.core.method import PlainFlow
        >>> @register
        ... class Mine(PlainFlow):
        ...     name = "mine-doctest"
        ...     needs_symmetry = False
        >>> method_class("mine-doctest") is Mine
        True
        >>> methods.unregister("mine-doctest")
    """
    return methods.register(cls)


class _Catalogue(Mapping):
    """Name -> method class of every discovered method, in ``order`` (then name): what
    ``--methods all`` runs."""

    def _items(self) -> dict[str, type[Method]]:
        found = methods.items
        return {n: found[n] for n in sorted(found, key=lambda n: (getattr(found[n], "order", 100), n))}

    def __getitem__(self, name: str) -> type[Method]:
        return methods.items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(methods.items)

    def __repr__(self) -> str:
        return f"METHODS({', '.join(self)})"


#: every method by name, in the order ``--methods all`` runs them
METHODS: Mapping[str, type[Method]] = _Catalogue()


#: the built-in classes that lived in this module (and in core.equivariant, core.vmonf, core.method)
_MOVED = {"NaiveRealNVP": "realnvp", "Canonicalization": "canonicalization", "SESaMo": "sesamo",
          "Equivariant": "equivariant", "VMONF": "vmonf"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return moved(__name__, name, _MOVED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
