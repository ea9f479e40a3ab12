r"""The architecture contract: a flow g is a bijection on a declared :class:`Domain`.

An architecture plugin is one file in ``architectures/`` defining a subclass of
:class:`Architecture` with a ``name``; it is discovered like the symmetry and target plugins
(:mod:`sesamo_bench.registry`: built-ins, ``SESAMO_BENCH_PLUGINS``, entry-point group
``sesamo_bench.architectures``). Its constructor is ``__init__(self, domain, *, ...)``: the
keyword-only arguments are the configuration schema (``--set flow.<key>=...``, a
``benchmarks.toml`` table), ``domain`` is given by the method that uses the flow. A flow built on
``realnvp``'s couplings takes their parameters, declared once, without spelling them:
``@CouplingParams.keywords`` on ``__init__(self, domain, *, ..., **coupling)``
(:class:`~sesamo_bench.core.flows.CouplingParams`; the schema shows them as keyword-only arguments).

The contract (checked by ``tests/test_architectures.py`` for every registered architecture):

- ``forward(z) -> (x, ladj)`` and ``inverse(x) -> (z, ladj_inv)`` on flat ``(N, D)`` tensors,
  ``D = domain.dim``, with ``ladj = ln|det dx/dz|`` computed together with the value, in the
  input's dtype, and ``inverse(forward(z)) = (z, -ladj)``;
- :meth:`Architecture.accepts` says whether a domain fits (``None``) or why not, so a method
  refuses a combination at construction instead of at the first forward pass;
- ``equivariance`` declares the groups the flow commutes with: ``"translation"`` (shifts of the
  lattice that keep the checkerboard, i.e. by an even total number of sites) and symmetry names
  such as ``"u1"`` (global phase rotations of a complex field) or ``"particles"`` (permutations,
  rotations and reflections of particle positions); a method may rely on them
  (:class:`~sesamo_bench.methods.sesamo.SESaMo` on U(1) does);
- ``near_identity``: a fresh flow is the identity (the last layer of each conditioner is zero);
- ``tolerance``: ``None`` for a flow whose inverse and ladj are exact up to rounding; a number for
  one that is exact only up to a discretisation error (an ODE flow's solver): the absolute error
  the contract test allows on a weakly randomised flow in float64;
- optionally, a continuous flow offers ``velocity(t, y) -> v`` (``t`` ``(N,)``, ``y`` and ``v``
  ``(N, D)``): its vector field, which the ``flow-matching`` objective regresses
  (:mod:`sesamo_bench.core.flow_matching`).

A field on a periodic lattice is flattened in C order from ``(N, *domain.shape)``, where the
first ``domain.lattice`` axes are the lattice and the rest are the components at a site
(nothing for a real field, ``(2,)`` for a complex one).
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from ..errors import ConfigError, IncompatibleError, InputOutsideDomain
from ..registry import Registry, _coerce

#: constructor arguments filled by the runner, not by the configuration (execution settings)
EXECUTION = ("kernels",)


@dataclass(frozen=True)
class Domain:
    r"""What a flow acts on: R^D, optionally with the structure of a periodic lattice.

    Attributes:
        shape: the event shape; the flow sees flat ``(N, prod(shape))`` tensors.
        lattice: number of leading axes of ``shape`` that are periodic lattice axes
            (0: no lattice structure, a plain vector).
        particles: ``(n, d)`` for ``n`` identical particles in ``d`` dimensions, stored in the
            centre-of-mass-free coordinates of :mod:`sesamo_bench.core.particles` (shape
            ``((n - 1) d,)``); ``None`` otherwise.

    Example:
        >>> d = Domain((8, 8, 2), lattice=2)
        >>> d.dim, d.sites, d.channels, d.kind
        (128, (8, 8), 2, 'lattice')
    """

    shape: tuple[int, ...]
    lattice: int = 0
    particles: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if not 0 <= self.lattice <= len(self.shape):
            raise ValueError(f"Domain: lattice={self.lattice} axes but shape {self.shape}")
        if self.particles is not None:
            n, d = (int(v) for v in self.particles)
            object.__setattr__(self, "particles", (n, d))
            if self.lattice or n < 2 or d < 1 or self.shape != ((n - 1) * d,):
                raise ValueError(f"Domain: {n} particles in {d}-D need shape ({(n - 1) * d},), got {self.shape}")

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    @property
    def sites(self) -> tuple[int, ...]:
        return self.shape[: self.lattice]

    @property
    def channels(self) -> int:
        return math.prod(self.shape[self.lattice:])

    @property
    def kind(self) -> str:
        if self.particles is not None:
            return "particles"
        return "lattice" if self.lattice else "flat"

    def describe(self) -> str:
        if self.particles is not None:
            n, d = self.particles
            return f"{n} identical particles in {d}-D (centre-of-mass-free coordinates, R^{self.dim})"
        if self.lattice:
            field_kind = {1: "real", 2: "complex"}.get(self.channels, f"{self.channels}-component")
            return f"a {field_kind} field on a periodic {'x'.join(map(str, self.sites))} lattice"
        return f"R^{self.dim} (no lattice structure)"


class Architecture(nn.Module):
    r"""Base class of architecture plugins (a bijection g on a :class:`Domain`).

    Class attributes:
        name: registry name (``--set flow=NAME``).
        description: one line for ``sesamo-bench list architectures``.
        domains: the domain kinds accepted, ``"flat"``, ``"lattice"`` and/or ``"particles"``.
        equivariance: groups g commutes with (``"translation"``, ``"u1"``, ...).
        near_identity: whether a fresh flow is the identity.
        tolerance: ``None`` (inverse and ladj exact up to rounding) or the absolute error of a
            discretised flow's inverse and ladj in the contract test.
        run_fields: the architecture takes the run configuration's ``couplings``,
            ``hidden_layers``, ``width``, ``activation`` and ``scale_bound`` (as ``realnvp`` does;
            its constructor declares them with ``@CouplingParams.keywords``,
            :class:`~sesamo_bench.core.flows.CouplingParams`).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    domains: ClassVar[tuple[str, ...]] = ("flat", "lattice", "particles")
    equivariance: ClassVar[tuple[str, ...]] = ()
    near_identity: ClassVar[bool] = True
    tolerance: ClassVar[float | None] = None
    run_fields: ClassVar[bool] = False
    domain: Domain
    dim: int

    @classmethod
    def accepts(cls, domain: Domain) -> str | None:
        """``None`` if the flow can act on ``domain``, else the reason it cannot (one phrase)."""
        if domain.kind not in cls.domains:
            return f"acts on {' or '.join(cls.domains)} domains, not on {domain.describe()}"
        return None

    @classmethod
    def fit_symmetry(cls, params: dict[str, Any], symmetry: Any) -> dict[str, Any]:
        """The constructor parameters (checked, coerced) for a method that relies on the flow commuting
        with ``symmetry`` (one of ``equivariance``): e.g. a group order filled from the symmetry;
        :class:`IncompatibleError` if the given ones do not commute with it. Default: unchanged."""
        return params

    @classmethod
    def check_values(cls, params: dict[str, Any]) -> None:
        """Refuse (:class:`ConfigError`, one line) parameter values the flow cannot be built with;
        ``params``: every keyword argument of the constructor (defaults filled in). Checked before any
        flow is built (:meth:`FlowSpec.check`). Default: nothing to refuse."""

    def check_input(self, x: Tensor) -> None:
        """Raise :class:`InputOutsideDomain` unless ``x`` is ``(N, D)``."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise InputOutsideDomain(f"Expected input shape (N, {self.dim}); got {tuple(x.shape)}")

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        """x = g(z) and ln|det dg/dz|, shapes ``(N, D)`` and ``(N,)``."""
        raise NotImplementedError

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        """z = g^{-1}(x) and ln|det dg^{-1}/dx|."""
        raise NotImplementedError


def target_domain(target: Any) -> Domain:
    """The domain of a target's field: its shape, with its periodic lattice axes (``Target.lattice``)
    or its particles (``Target.particles``)."""
    particles = getattr(target, "particles", None)
    if particles is not None:
        return Domain(tuple(target.shape), particles=tuple(particles))
    lattice = getattr(target, "lattice", None)
    axes = len(lattice) if isinstance(lattice, tuple) and tuple(target.shape[: len(lattice)]) == lattice else 0
    return Domain(tuple(target.shape), lattice=axes)


def schema(cls: type) -> dict[str, Any]:
    """An architecture's configuration schema: keyword-only constructor arguments and defaults (those of
    its :func:`inspect.signature`: a constructor decorated by ``CouplingParams.keywords`` shows the
    declared coupling parameters in place of its ``**coupling``)."""
    sig = inspect.signature(cls.__init__)
    return {p.name: p.default for p in sig.parameters.values()
            if p.kind == p.KEYWORD_ONLY and p.name not in EXECUTION}


#: the architecture plugins (also :data:`sesamo_bench.plugins.architectures`, where the other kinds
#: are): declared beside the contract, because :class:`FlowSpec` finds an architecture by its name
architectures: Registry[Architecture] = Registry("architecture", Architecture, folder="architectures",
                                                 group="sesamo_bench.architectures")


def registry() -> Registry[Architecture]:
    """The architecture registry (:data:`architectures`)."""
    return architectures


def check_params(name: str, params: dict[str, Any], *, where: str = "--set") -> dict[str, Any]:
    """Validate ``flow.<key>`` values against architecture ``name``'s schema; coerced copy."""
    cls = registry().get(name)
    sch = schema(cls)
    table = f"{where}: architecture '{name}'"
    unknown = sorted(set(params) - set(sch))
    if unknown:
        raise ConfigError(f"{table}: unknown key '{unknown[0]}'. Allowed: {', '.join(sorted(sch)) or '(none)'}")
    return {k: _coerce(v, sch[k], k, table) for k, v in params.items()}


@dataclass
class FlowSpec:
    r"""An architecture chosen by name with its parameters, or a flow already built; :meth:`build`
    makes (or hands over) the flow.

    A method receives a ``FlowSpec`` (it knows the domain its flow acts on only after looking at
    the symmetry and at what the architecture declares) and calls :meth:`build` once. A flow object
    (:meth:`of`: an :class:`Architecture`, a :class:`~sesamo_bench.core.bijections.Chain`, any
    :class:`torch.nn.Module` with ``forward(z) -> (x, ladj)``, ``inverse(x) -> (z, ladj)`` and
    ``dim``) is used as it is, once its dimension is checked against the method's domain; a method
    relying on an equivariance the object's class declares gets the object unchanged (its group
    parameters are the object's own).

    Example:
        >>> spec = FlowSpec("realnvp", {"couplings": 2, "width": 8})
        >>> f = spec.build(Domain((4,)))
        >>> f.dim, type(f).name
        (4, 'realnvp')
        >>> FlowSpec.of(f).build(Domain((4,))) is f
        True
    """

    name: str = "realnvp"
    params: dict[str, Any] = field(default_factory=dict)
    kernels: str = "auto"
    #: a flow already built (``None``: build architecture ``name`` with ``params``)
    module: nn.Module | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, flow: Any, *, kernels: str = "auto") -> FlowSpec:
        """A spec for ``flow``: a :class:`FlowSpec` (returned as it is), an architecture name, or a
        flow object; :class:`ConfigError` (one line) for anything else or an object without ``dim``."""
        if isinstance(flow, FlowSpec):
            return flow
        if isinstance(flow, str):
            return cls(flow, {}, kernels=kernels)
        if not isinstance(flow, nn.Module) or not callable(getattr(flow, "inverse", None)):
            raise ConfigError(f"flow: expected an architecture name, a FlowSpec or a flow object (an nn.Module with "
                              f"forward and inverse), got {type(flow).__name__}")
        dim = getattr(flow, "dim", None)
        if not isinstance(dim, int) or isinstance(dim, bool):
            raise ConfigError(f"flow: the {type(flow).__name__} object has no integer 'dim' (the D of the (N, D) "
                              f"tensors it acts on)")
        return cls(getattr(type(flow), "name", "") or type(flow).__name__, {}, kernels=kernels, module=flow)

    @functools.cached_property
    def cls(self) -> type[Architecture]:
        """The architecture class (for a flow object that is no :class:`Architecture`: the base
        class, which declares no equivariance and accepts any domain)."""
        if self.module is not None:
            return type(self.module) if isinstance(self.module, Architecture) else Architecture
        return registry().get(self.name)

    def check(self, domain: Domain, *, what: str = "", symmetry: Any = None) -> dict[str, Any]:
        """Every check of :meth:`build` that needs no flow built (:class:`IncompatibleError` or
        :class:`ConfigError`, one line): the architecture accepts ``domain``, its parameters fit its
        schema and its values (:meth:`Architecture.check_values`), and commute with ``symmetry``;
        a flow object's dimension is the domain's. Returns the constructor's keyword arguments."""
        reason = self.cls.accepts(domain)
        if self.module is not None:
            if reason is None and self.module.dim != domain.dim:
                reason = f"acts on R^{self.module.dim}, but the flow must act on {domain.describe()} (D = {domain.dim})"
            if reason is not None:
                raise IncompatibleError(f"flow object {self.name}: {reason}" + (f" ({what})" if what else ""))
            return {}
        if reason is not None:
            raise IncompatibleError(f"architecture '{self.name}' {reason}" + (f" ({what})" if what else ""))
        params = check_params(self.name, self.params)
        if symmetry is not None and symmetry.name in self.cls.equivariance:
            params = self.cls.fit_symmetry(params, symmetry)
        self.cls.check_values({**schema(self.cls), **params})
        if "kernels" in inspect.signature(self.cls.__init__).parameters:
            params["kernels"] = self.kernels
        return params

    def build(self, domain: Domain, *, what: str = "", symmetry: Any = None) -> Architecture:
        """The flow on ``domain``; :class:`IncompatibleError` if the architecture does not fit.

        ``symmetry``: the bound symmetry a method relies on the flow to commute with (its parameters,
        such as a group order, then come from it: :meth:`Architecture.fit_symmetry`)."""
        params = self.check(domain, what=what, symmetry=symmetry)
        if self.module is not None:
            return self.module
        try:
            return self.cls(domain, **params)
        except (ConfigError, IncompatibleError):
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"architecture '{self.name}': {exc}") from None

    def label(self) -> str:
        if self.module is not None:
            return f"{self.name}(object)"
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return self.name + (f"({inner})" if inner else "")
