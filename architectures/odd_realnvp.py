r"""``odd-realnvp``: affine couplings equivariant under the global sign flip x -> -x (Z2).

Each coupling maps x_b -> x_b e^{s(x_a)} + t(x_a) with s even and t odd in x_a,

    s(x_a) = [s_net(x_a) + s_net(-x_a)] / 2,    t(x_a) = [t_net(x_a) - t_net(-x_a)] / 2,

(the symmetrised MLP of the paper's Table 3 architecture), so g(-z) = -g(z) coupling by coupling:
the odd networks of the phi^4 literature (SESaMo paper Sec. 2.3.1), for any conditioner. With a
sign-symmetric prior the density of g(z) is Z2-invariant (Koehler, Klein, Noe 2020, Theorem 1).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sesamo_bench.core.architecture import Architecture, Domain
from sesamo_bench.core.flows import AffineCoupling, CouplingParams, RealNVP


class OddAffineCoupling(AffineCoupling):
    """An affine coupling whose log-scale is even and whose shift is odd in the conditioning half."""

    def _raw(self, xa: Tensor) -> Tensor:
        if self.net is None:  # nothing to condition on: s constant (even), t must vanish (odd)
            raw = super()._raw(xa)
            return torch.cat([raw[:, : self.n_out], torch.zeros_like(raw[:, self.n_out:])], -1)
        plus, minus = self.net(torch.cat([xa, -xa])).chunk(2)
        n = self.n_out
        return torch.cat([(plus[:, :n] + minus[:, :n]) / 2, (plus[:, n:] - minus[:, n:]) / 2], -1)


class OddRealNVP(RealNVP, Architecture):
    r"""RealNVP whose couplings commute with x -> -x.

    Arguments:
        domain: any domain (a lattice field is split by the parity of all its indices).
        couplings, hidden_layers, width, activation, scale_bound: as ``realnvp``
            (:class:`~sesamo_bench.core.flows.CouplingParams`).

    Example:
        >>> f = OddRealNVP(Domain((4,)), couplings=2, width=8, activation="tanh").double()
        >>> for p in f.parameters():
        ...     _ = torch.nn.init.normal_(p, std=0.3)
        >>> z = torch.randn(5, 4, dtype=torch.float64)
        >>> torch.allclose(f(-z)[0], -f(z)[0]) and torch.allclose(f(-z)[1], f(z)[1])
        True
    """

    name = "odd-realnvp"
    description = "affine couplings with odd (sign-flip-equivariant) MLP conditioners"
    equivariance = ("z2",)
    run_fields = True
    coupling = OddAffineCoupling

    @CouplingParams.keywords
    def __init__(self, domain: Domain, **coupling: Any):
        super().__init__(domain.dim, shape=domain.shape, kernels="aten", **coupling)
        self.domain = domain
