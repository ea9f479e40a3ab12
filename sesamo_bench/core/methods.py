r"""The three ways of building a flow sampler compared by the suite (paper Sec. 2-3).

- :class:`NaiveRealNVP` (``realnvp``): x = g(z).
- :class:`Canonicalization` (``canonicalization``, Sec. 2.3.2): z_c, u = C(z); x = T_u g(z_c).
  Finite groups only; the prior must be invariant (mean 0).
- :class:`SESaMo` (``sesamo``, Sec. 3.1, App. E-F): y = g(z) in the canonical cell, u ~ p_S,
  x = T_u y; p_S learnable for broken symmetries.

The contract (:class:`Method`, :class:`Sample`) and :class:`NaiveRealNVP` are
:mod:`sesamo_bench.core.method`, importable from here too; :data:`METHODS` names every method,
these three and :class:`~sesamo_bench.core.equivariant.Equivariant`,
:class:`~sesamo_bench.core.vmonf.VMONF`.

Every method returns a :class:`Sample` with the log density along the sampling path (what the
training objective uses) and offers :meth:`Method.log_prob`, the exact density at any x: for
SESaMo and canonicalization a sum over all preimages, which stays correct when the flow leaves
its cell.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .architecture import Domain, FlowSpec
from ..errors import IncompatibleError, UnknownNameError
from .equivariant import Equivariant
from .method import Method, NaiveRealNVP, Sample, Standardized
from .vmonf import VMONF

__all__ = ["METHODS", "Method", "Sample", "Standardized", "NaiveRealNVP", "Canonicalization", "SESaMo",
           "Equivariant", "VMONF", "method_class"]


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


#: every method by name, in the order ``--methods all`` runs them
METHODS: dict[str, type[Method]] = {m.name: m for m in (NaiveRealNVP, Canonicalization, SESaMo, Equivariant, VMONF)}


def method_class(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownNameError("method", name, list(METHODS)) from None

