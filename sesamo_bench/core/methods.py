r"""The three ways of building a flow sampler compared by the suite (paper Sec. 2-3).

- :class:`NaiveRealNVP` (``realnvp``): x = g(z).
- :class:`Canonicalization` (``canonicalization``, Sec. 2.3.2): z_c, u = C(z); x = T_u g(z_c).
  Finite groups only; the prior must be invariant (mean 0).
- :class:`SESaMo` (``sesamo``, Sec. 3.1, App. E-F): y = g(z) in the canonical cell, u ~ p_S,
  x = T_u y; p_S learnable for broken symmetries.

Every method returns a :class:`Sample` with the log density along the sampling path (what the
training objective uses) and offers :meth:`Method.log_prob`, the exact density at any x: for
SESaMo and canonicalization a sum over all preimages, which stays correct when the flow leaves
its cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .architecture import Architecture, Domain, FlowSpec
from ..errors import IncompatibleError, UnknownNameError
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


METHODS: dict[str, type[Method]] = {}


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
        flow: the architecture and its parameters (default: ``realnvp`` built from ``arch``).
        arch: ``realnvp`` keyword arguments (couplings, hidden_layers, width, activation,
            scale_bound); used when ``flow`` is not given.
        lattice: number of leading axes of ``shape`` that are a periodic lattice (0: none).
        particles: ``(n, d)`` when the field is ``n`` particles in ``d`` dimensions in the
            centre-of-mass-free coordinates of :mod:`sesamo_bench.core.particles` (``None``: not).
        prior_mean, prior_var: the Gaussian prior's parameters.
        kernels: the MLP kernels of the default architecture.
    """

    name: ClassVar[str] = ""
    needs_symmetry: ClassVar[bool] = True
    description: ClassVar[str] = ""
    #: the method picks its architecture unless the user names one (:meth:`default_flow`)
    chooses_flow: ClassVar[bool] = False
    #: the method relies on the flow commuting with its symmetry, so the flow takes its group
    #: parameters (e.g. the order of Z_M) from it (:meth:`Architecture.fit_symmetry`)
    equivariant: ClassVar[bool] = False

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

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.name:
            METHODS[cls.name] = cls

    def __init__(self, shape: tuple[int, ...], symmetry: Symmetry | None, *, flow: FlowSpec | None = None,
                 arch: dict[str, Any] | None = None, lattice: int = 0, particles: tuple[int, int] | None = None,
                 prior_mean: float = 0.0, prior_var: float = 1.0, kernels: str = "auto"):
        super().__init__()
        self.shape = tuple(shape)
        self.symmetry = symmetry
        self.lattice = int(lattice)
        self.particles = None if particles is None else tuple(particles)
        spec = flow if flow is not None else FlowSpec("realnvp", dict(arch or {}), kernels=kernels)
        self.spec = spec
        domain = self.flow_domain(spec)
        self.prior = GaussianPrior(domain.dim, mean=prior_mean, var=prior_var)
        what = f"method '{self.name}'" + (f" with symmetry '{symmetry.name}'" if symmetry is not None else "")
        relied_on = symmetry if self.equivariant else None
        self.flow = Standardized(spec.build(domain, what=what, symmetry=relied_on), mean=prior_mean,
                                 std=prior_var**0.5)

    def flow_domain(self, spec: FlowSpec) -> Domain:
        """The domain the flow acts on: the target's field (lattice or particle structure kept) by
        default; R^flow_dim when the method reduces the dimension."""
        dim = self.flow_dim()
        if dim == _prod(self.shape):
            return Domain(self.shape, lattice=self.lattice, particles=self.particles)
        return Domain((dim,))

    def flow_dim(self) -> int:
        return _prod(self.shape)

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


class NaiveRealNVP(Method):
    """Plain RealNVP from a Gaussian prior; ignores the symmetry."""

    name = "realnvp"
    needs_symmetry = False
    description = "naive RealNVP: x = g(z)"

    def sample(self, n: int) -> Sample:
        z = self.prior.sample(n)
        x, ladj = self.flow(z)
        return Sample(self._field(x), self.prior.log_prob(z) - ladj)

    def log_prob(self, x: Tensor) -> Tensor:
        z, ladj = self.flow.inverse(x.reshape(x.shape[0], -1))
        return self.prior.log_prob(z) + ladj


class Canonicalization(Method):
    """Equivariant flow by canonicalization: x = T_u g(C z) (paper Eq. 23); finite groups."""

    name = "canonicalization"
    description = "canonicalize the prior sample, flow inside the cell, map back"

    def __init__(self, shape, symmetry, **kw):
        if symmetry is None or not symmetry.finite:
            what = "no symmetry" if symmetry is None else f"the continuous symmetry '{symmetry.name}'"
            raise IncompatibleError(
                f"canonicalization needs a finite symmetry group, got {what}; use 'sesamo' or 'realnvp'"
            )
        if kw.get("prior_mean", 0.0) != 0.0:
            raise IncompatibleError("canonicalization needs an invariant prior: prior_mean must be 0")
        super().__init__(shape, symmetry, **kw)

    def transform(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""The equivariant map g~(z) = C_z^{-1} g(C_z z) (paper Eq. 23).

        Returns ``(x, ladj, y, u)``: the output, ln|det dg/dz|, the flow output in the cell and the
        group element of the canonicalization, for ``z`` of shape ``(N, D)``.
        """
        zc, u = self.symmetry.canonicalize(self._field(z))
        y, ladj = self.flow(zc.reshape(z.shape[0], -1))
        y = self._field(y)
        return self.symmetry.act(y, u), ladj, y, u

    def sample(self, n: int) -> Sample:
        z = self.prior.sample(n)
        x, ladj, y, u = self.transform(z)
        return Sample(x, self.prior.log_prob(z) - ladj, y, u)

    def log_prob(self, x: Tensor) -> Tensor:
        terms = []
        for y, u in self.symmetry.preimages(x):
            zc, ladj = self.flow.inverse(y.reshape(y.shape[0], -1))
            inside = self.symmetry.penalty_fn(self._field(zc)) <= 0
            z = self.symmetry.act(self._field(zc), u).reshape(x.shape[0], -1)
            lp = self.prior.log_prob(z) + ladj
            terms.append(torch.where(inside, lp, torch.full_like(lp, -torch.inf)))
        return torch.logsumexp(torch.stack(terms), 0)


class SESaMo(Method):
    r"""Symmetry-enforcing stochastic modulation: x = T_u g(z), u ~ p_S (paper Eq. 13-15).

    Two constructions, chosen by what the flow's architecture declares:

    - **cell** (the paper's): y = embed(g(z)) in the canonical cell (penalised), u ~ p_S,
      x = T_u y, on ``symmetry.flow_dim`` real components (R^(2V-1) for U(1), reference notes);
    - **equivariant**, when the architecture declares the symmetry in its ``equivariance`` (e.g.
      ``lattice-u1`` for U(1)) and the prior is invariant (mean 0): the flow acts on the whole
      field, y = g(z), and the modulation replaces y's group element by a draw from p_S.

    Derivation of the equivariant density. Let q_y be the density of y = g(z) on the field space.
    g commutes with every T_h and the prior is invariant, so q_y(T_h y) = q_y(y) for all h.
    Canonicalise y = T_c y_c (``symmetry.canonicalize``), draw u ~ p_S independently and put
    x = T_u y_c. Write the field space in orbit coordinates (y_c, c): for a finite group the map
    is |G|-to-one onto the cell times G, for U(1) it is the polar decomposition
    y = e^{i phi} y_c (Im M(y_c) = 0, Re M(y_c) > 0) with volume element J(y_c) d y_c d phi. Under
    q_y, c is uniform (Haar density p_H = 1/|G| or 1/(2 pi)) and independent of y_c, because q_y is
    constant on orbits. The density of y_c in the cell is therefore q_c(y_c) = q_y(y_c) J(y_c) / p_H
    (J = 1 for finite groups), and x has, in the same coordinates, density q_c(y_c) p_S(u); back in
    field coordinates (divide by J):

        q(x) = q_y(y_c) p_S(u) / p_H = q_y(x) p_S(u) / p_H,   (x = T_u y_c, q_y invariant)

    i.e. ln q(x) = ln q_0(g^{-1}(x)) + ln|det dg^{-1}/dx| + ln p_S(u(x)) - ln p_H, with u(x) the
    group element of x's canonicalisation. Exact p_S = p_H gives q = q_y, invariant under T_h; for
    U(1) with p_S(theta) = 1 / (2 pi h'(v)), theta = 2 pi h(v), the factor is 1 / h'(v). No cell
    penalty is needed: y_c is in the cell by construction. ``tests/test_architectures.py`` checks
    normalisation by importance sampling, phase invariance and the Jacobians.
    """

    name = "sesamo"
    description = "flow into one cell, then a (learnable) stochastic modulation picks the group element"
    uses_modulation = True

    def __init__(self, shape, symmetry, **kw):
        if symmetry is None:
            raise IncompatibleError("sesamo needs a symmetry")
        spec = kw.get("flow")
        self.equivariant = spec is not None and symmetry.name in spec.cls.equivariance
        if self.equivariant and kw.get("prior_mean", 0.0) != 0.0:
            raise IncompatibleError(f"sesamo with the {symmetry.name}-equivariant architecture '{spec.name}' "
                                    "needs an invariant prior: prior_mean must be 0")
        super().__init__(shape, symmetry, **kw)

    def flow_dim(self) -> int:
        if self.equivariant:
            return _prod(self.shape)
        return self.symmetry.flow_dim(_prod(self.shape))

    def flow_domain(self, spec: FlowSpec) -> Domain:
        domain = super().flow_domain(spec)
        if not self.equivariant and domain.dim != _prod(self.shape) and spec.cls.accepts(domain) is not None:
            raise IncompatibleError(
                f"architecture '{spec.name}' {spec.cls.accepts(domain)}: sesamo with symmetry "
                f"'{self.symmetry.name}' runs its flow on R^{domain.dim}; choose an architecture that is "
                f"{self.symmetry.name}-equivariant (it then acts on the whole field) or one for flat domains")
        return domain

    def sample(self, n: int) -> Sample:
        z = self.prior.sample(n)
        yf, ladj = self.flow(z)
        if self.equivariant:
            yc, _ = self.symmetry.canonicalize(self._field(yf))
            u, log_pu = self.symmetry.modulation.sample_and_log_prob(n, like=yf)
            x = self.symmetry.act(yc, u)
            return Sample(x, self.prior.log_prob(z) - ladj + log_pu - self.symmetry.haar_log_prob(), None, u)
        y = self.symmetry.embed(yf, self.shape)
        u, log_pu = self.symmetry.modulation.sample_and_log_prob(n, like=yf)
        x = self.symmetry.act(y, u)
        log_q = self.prior.log_prob(z) - ladj + log_pu - self.symmetry.modulation_ladj(y)
        return Sample(x, log_q, y, u)

    def log_prob(self, x: Tensor) -> Tensor:
        if self.equivariant:
            _, u = self.symmetry.canonicalize(x)
            z, ladj = self.flow.inverse(x.reshape(x.shape[0], -1))
            return (self.prior.log_prob(z) + ladj + self.symmetry.modulation.log_prob(u)
                    - self.symmetry.haar_log_prob())
        terms = []
        for y, u in self.symmetry.preimages(x):
            z, ladj = self.flow.inverse(self.symmetry.unembed(y))
            terms.append(self.prior.log_prob(z) + ladj + self.symmetry.modulation.log_prob(u)
                         - self.symmetry.modulation_ladj(y))
        return torch.logsumexp(torch.stack(terms), 0)


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def method_class(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownNameError("method", name, list(METHODS)) from None


from . import equivariant as _equivariant, vmonf as _vmonf  # noqa: E402,F401 - register the other methods
