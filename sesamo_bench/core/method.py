r"""The method contract: a prior, a flow and (optionally) a symmetry, sampled as a :class:`Sample`.

:class:`Method` is the base class of the flow samplers the suite compares, :class:`PlainFlow`
(x = g(z)) the plain sampler that ``realnvp`` and ``equivariant`` are; the methods themselves are
plugins, one file each in ``methods/`` (:data:`sesamo_bench.core.methods.methods`, the registry).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from ..errors import UnknownNameError
from ..registry import Registry
from .architecture import Architecture, Domain, FlowSpec
from .flows import GaussianPrior
from .symmetry import Symmetry


@dataclass
class Sample:
    """One batch drawn from a method.

    Attributes:
        x: configurations ``(N, *shape)``.
        log_q: ln q(x) along the sampling path ``(N,)``.
        cell: the points the penalty is applied to ``(N, *shape)`` (``None`` without a cell).
        u: group elements ``(N,)`` (``None`` for the naive flow).
        log_v: ln of the sample weights of a stratified draw (the training objective weighs the
            samples by them; ``None``: the samples are draws of q itself).
    """

    x: Tensor
    log_q: Tensor
    cell: Tensor | None = None
    u: Tensor | None = None
    log_v: Tensor | None = None



class Standardized(nn.Module):
    r"""g(z) = mean + std * f((z - mean) / std): the flow f works in units of the prior's width.

    Same Jacobian determinant as f; the MLPs see unit-variance inputs and their translations are
    measured in prior standard deviations, so a wide prior (variance 18 for the Hubbard model)
    trains as fast as a unit one. Commutes with the linear group actions when ``mean`` is 0.
    """

    def __init__(self, flow: Architecture, *, mean: float, std: float):
        super().__init__()
        self.inner, self.mean, self.std = flow, float(mean), float(std)
        self.unit = self.mean == 0.0 and self.std == 1.0
        self.dim = flow.dim

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if self.unit:  # unit prior: skip two passes and their backward
            return self.inner(z)
        y, ladj = self.inner((z - self.mean) / self.std)
        return self.mean + self.std * y, ladj

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.unit:
            return self.inner.inverse(x)
        z, ladj = self.inner.inverse((x - self.mean) / self.std)
        return self.mean + self.std * z, ladj


class Method(nn.Module):
    r"""Base class: a prior, a flow and (optionally) a symmetry.

    The method decides which :class:`~sesamo_bench.core.architecture.Domain` its flow acts on
    (:meth:`flow_domain`) and builds the flow from the :class:`~sesamo_bench.core.architecture.FlowSpec`
    it receives, so any registered architecture whose domain fits plugs into any method.

    Arguments:
        shape: field shape of the target.
        symmetry: a bound :class:`~sesamo_bench.core.symmetry.Symmetry` (unused by ``realnvp``).
        flow: the architecture and its parameters (a :class:`FlowSpec`, or an architecture name), or
            a flow already built (an :class:`Architecture`, a
            :class:`~sesamo_bench.core.bijections.Chain`, any ``nn.Module`` bijection with ``dim``:
            :meth:`FlowSpec.of`), whose dimension must be the domain's (default: ``realnvp`` built
            from ``arch``).
        arch: ``realnvp`` keyword arguments (couplings, hidden_layers, width, activation,
            scale_bound: :class:`~sesamo_bench.core.flows.CouplingParams`); used when ``flow`` is not given.
        lattice: number of leading axes of ``shape`` that are a periodic lattice (0: none).
        particles: ``(n, d)`` when the field is ``n`` particles in ``d`` dimensions in the
            centre-of-mass-free coordinates of :mod:`sesamo_bench.core.particles` (``None``: not).
        prior_mean, prior_var: the Gaussian prior's parameters.
        kernels: the MLP kernels of the default architecture.
    """

    name: ClassVar[str] = ""
    needs_symmetry: ClassVar[bool] = True
    description: ClassVar[str] = ""
    #: how tables and plots name the method, its colour in plots (a matplotlib colour), and its
    #: place in ``--methods all`` and in tables (lower first; ties by name)
    label: ClassVar[str] = ""
    colour: ClassVar[str] = ""
    order: ClassVar[int] = 100
    #: the method picks its architecture unless the user names one (:meth:`default_flow`)
    chooses_flow: ClassVar[bool] = False
    #: the method relies on the flow commuting with its symmetry, so the flow takes its group
    #: parameters (e.g. the order of Z_M) from it (:meth:`Architecture.fit_symmetry`)
    equivariant: ClassVar[bool] = False
    #: :meth:`log_prob` is the exact density of :meth:`sample`, so the method can learn from samples of
    #: the target (``objective = ml | mixed``) and be reweighted; a method without one sets False
    exact_density: ClassVar[bool] = True
    #: the model's flow is one :attr:`flow` (a continuous one can then be trained by flow matching);
    #: a mixture of flows sets False
    one_flow: ClassVar[bool] = True

    @classmethod
    def symmetry_for(cls, target: Any) -> tuple[str, dict[str, Any]]:
        """The symmetry (registry name, parameters) the method uses on ``target``: its declared one."""
        return target.symmetry()

    @classmethod
    def default_flow(cls, target: Any, current: str) -> str:
        """The architecture name to use on ``target`` when the user named none (``current``: the preset's)."""
        return current

    @classmethod
    def options(cls, cfg: Any) -> dict[str, Any]:
        """Constructor keyword arguments of the method taken from the run configuration."""
        return {}

    def info(self) -> dict[str, Any]:
        """What the trained model says about itself, stored with the run's metrics."""
        return {}

    # -- what can be decided before anything is built (the planner validates a grid with these) ------
    @classmethod
    def check(cls, symmetry: Symmetry | None, spec: FlowSpec, **options: Any) -> None:
        """Refuse (:class:`~sesamo_bench.errors.IncompatibleError`, one line) what this method cannot run,
        from the bound symmetry, the flow's spec and the constructor's keyword arguments (``prior_mean``,
        ...) alone. Called by the constructor, and by the planner (:meth:`validate`) for every run of a
        grid before any model is built. Default: nothing to refuse."""

    @classmethod
    def relies_on_equivariance(cls, symmetry: Symmetry | None, spec: FlowSpec) -> bool:
        """Whether the method relies on the flow commuting with ``symmetry`` (default: :attr:`equivariant`)."""
        return cls.equivariant

    @classmethod
    def reduced_dim(cls, shape: tuple[int, ...], symmetry: Symmetry | None, spec: FlowSpec) -> int:
        """The dimension of the flow's domain (default: the field's)."""
        return math.prod(shape)

    @classmethod
    def domain_for(cls, shape: tuple[int, ...], symmetry: Symmetry | None, spec: FlowSpec, *, lattice: int = 0,
                   particles: tuple[int, int] | None = None) -> Domain:
        """The domain the flow acts on: the target's field (lattice or particle structure kept) by
        default; R^d when the method reduces the dimension to d (:meth:`reduced_dim`)."""
        dim = cls.reduced_dim(shape, symmetry, spec)
        if dim == math.prod(shape):
            return Domain(tuple(shape), lattice=lattice, particles=particles)
        return Domain((dim,))

    @classmethod
    def validate(cls, shape: tuple[int, ...], symmetry: Symmetry | None, spec: FlowSpec, *, lattice: int = 0,
                 particles: tuple[int, int] | None = None, **options: Any) -> Domain:
        """Every check of building this method that needs no model: :meth:`check`, the flow's domain and
        the architecture on it (:meth:`FlowSpec.check`). Returns the flow's domain."""
        cls.check(symmetry, spec, **options)
        domain = cls.domain_for(shape, symmetry, spec, lattice=lattice, particles=particles)
        what = f"method '{cls.name}'" + (f" with symmetry '{symmetry.name}'" if symmetry is not None else "")
        spec.check(domain, what=what, symmetry=symmetry if cls.relies_on_equivariance(symmetry, spec) else None)
        return domain

    def __init__(self, shape: tuple[int, ...], symmetry: Symmetry | None, *,
                 flow: FlowSpec | nn.Module | str | None = None, arch: dict[str, Any] | None = None,
                 lattice: int = 0, particles: tuple[int, int] | None = None,
                 prior_mean: float = 0.0, prior_var: float = 1.0, kernels: str = "auto"):
        super().__init__()
        self.shape = tuple(shape)
        self.symmetry = symmetry
        self.lattice = int(lattice)
        self.particles = None if particles is None else tuple(particles)
        spec = FlowSpec.of(flow, kernels=kernels) if flow is not None else FlowSpec("realnvp", dict(arch or {}),
                                                                                    kernels=kernels)
        self.spec = spec
        type(self).check(symmetry, spec, prior_mean=prior_mean, prior_var=prior_var, kernels=kernels)
        domain = self.flow_domain(spec)
        self.prior = GaussianPrior(domain.dim, mean=prior_mean, var=prior_var)
        what = f"method '{self.name}'" + (f" with symmetry '{symmetry.name}'" if symmetry is not None else "")
        relied_on = symmetry if type(self).relies_on_equivariance(symmetry, spec) else None
        self.flow = Standardized(spec.build(domain, what=what, symmetry=relied_on), mean=prior_mean,
                                 std=prior_var**0.5)

    def flow_domain(self, spec: FlowSpec) -> Domain:
        """The domain the flow acts on (:meth:`domain_for` of this method's shape and symmetry)."""
        return type(self).domain_for(self.shape, self.symmetry, spec, lattice=self.lattice, particles=self.particles)

    def flow_dim(self) -> int:
        return type(self).reduced_dim(self.shape, self.symmetry, self.spec)

    def _field(self, y: Tensor) -> Tensor:
        return y.reshape(y.shape[0], *self.shape)

    def sample(self, n: int) -> Sample:
        raise NotImplementedError

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact ln q(x) for configurations ``(N, *shape)``."""
        raise NotImplementedError

    def breaking_ratio(self) -> float | None:
        return self.symmetry.breaking_ratio() if self.symmetry is not None and self.uses_modulation else None

    def probabilities(self) -> list[float] | None:
        return self.symmetry.probabilities() if self.symmetry is not None and self.uses_modulation else None

    uses_modulation: ClassVar[bool] = False


class PlainFlow(Method):
    """x = g(z) from the Gaussian prior, ln q(x) = ln q_0(g^{-1} x) + ln|det dg^{-1}/dx|: the
    sampler of the ``realnvp`` method and of ``equivariant`` (which differs in its flow and
    prior only). Not a method itself (no ``name``)."""

    def sample(self, n: int) -> Sample:
        z = self.prior.sample(n)
        x, ladj = self.flow(z)
        return Sample(self._field(x), self.prior.log_prob(z) - ladj)

    def log_prob(self, x: Tensor) -> Tensor:
        z, ladj = self.flow.inverse(x.reshape(x.shape[0], -1))
        return self.prior.log_prob(z) + ladj


#: the method registry (a plugin kind like the others; :data:`sesamo_bench.plugins.methods` and
#: :data:`sesamo_bench.core.methods.methods` are the same)
methods: Registry[Method] = Registry("method", Method, folder="methods", group="sesamo_bench.methods")


def method_class(name: str) -> type[Method]:
    try:
        return methods.items[name]
    except KeyError:
        raise UnknownNameError("method", name, methods.names()) from None


def moved(module: str, name: str, method: str) -> type[Method]:
    """The class of the built-in ``method``, for an old import path (with a DeprecationWarning)."""
    from .. import REMOVED_IN

    cls = method_class(method)
    warnings.warn(f"{module}.{name} moved to the method plugin {cls.__module__}.{cls.__name__}; the old "
                  f"path goes in {REMOVED_IN}", DeprecationWarning, stacklevel=3)
    return cls


def __getattr__(name: str) -> Any:
    if name == "NaiveRealNVP":
        return moved(__name__, name, "realnvp")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
