r"""``spline``: rational-quadratic spline couplings with fully connected MLP conditioners.

The neural spline flow of Durkan et al. (2019) on R^D, with zuko's ``MonotonicRQSTransform``
(identity outside [-B, B]); the same checkerboard split as ``realnvp``. Any domain.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sesamo_bench.core.architecture import Architecture, Domain
from sesamo_bench.core.flows import mlp, partition
from sesamo_bench.core.spline import check_bins, rqs_coupling


class SplineFlow(Architecture):
    r"""Spline couplings on R^D alternating a checkerboard split.

    Arguments:
        domain: any domain.
        couplings, hidden_layers, width, activation: as for ``realnvp``.
        bins: spline bins K.
        bound: the splines act on [-bound, bound].

    Example:
        >>> f = SplineFlow(Domain((3,)), couplings=2, width=8).double()
        >>> z = torch.randn(4, 3, dtype=torch.float64)
        >>> torch.allclose(f.inverse(f(z)[0])[0], z)
        True
    """

    name = "spline"
    description = "rational-quadratic spline couplings (zuko), fully connected MLP conditioners"

    @classmethod
    def check_values(cls, params: dict[str, Any]) -> None:
        check_bins(params["bins"])

    def __init__(self, domain: Domain, *, couplings: int = 6, hidden_layers: int = 2, width: int = 64,
                 activation: str = "relu", bins: int = 8, bound: float = 5.0, kernels: str = "auto"):
        super().__init__()
        self.check_values({"bins": bins})
        self.domain, self.dim, self.bins, self.bound = domain, domain.dim, bins, float(bound)
        mask = partition(domain.shape) if domain.dim > 1 else torch.tensor([True])
        self.register_buffer("idx", torch.stack([mask, ~mask]).long(), persistent=False)
        self.layers = nn.ModuleList()
        self.halves = []
        for k in range(couplings):
            keep = mask if k % 2 == 0 else ~mask
            n_keep, n_move = int(keep.sum()), int((~keep).sum())
            if n_move == 0:  # D = 1: the one component is moved with constant parameters
                n_keep, n_move = 0, n_keep
            self.halves.append((n_keep, n_move))
            if n_keep:
                self.layers.append(mlp(n_keep, n_move * (3 * bins - 1), hidden_layers=hidden_layers, width=width,
                                       activation=activation, kernels=kernels))
            else:
                self.layers.append(nn.ParameterList([nn.Parameter(torch.zeros(n_move * (3 * bins - 1)))]))

    def _masks(self, k: int) -> Tensor:
        keep = self.idx[k % 2].bool()
        return keep if self.halves[k][0] else torch.zeros_like(keep)

    def _couple(self, k: int, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        keep = self._masks(k)
        xa, xb = x[:, keep], x[:, ~keep]
        layer = self.layers[k]
        raw = layer(xa) if self.halves[k][0] else layer[0].expand(x.shape[0], -1)
        raw = raw.reshape(x.shape[0], xb.shape[1], 3 * self.bins - 1)
        yb, ld = rqs_coupling(raw.to(x.dtype), xb, bins=self.bins, bound=self.bound, inverse=inverse)
        out = x.clone()
        out[:, ~keep] = yb
        return out, ld.sum(-1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """x = g(z) and ln|det dg/dz|."""
        self.check_input(z)
        ladj = z.new_zeros(z.shape[0])
        for k in range(len(self.layers)):
            z, ld = self._couple(k, z, False)
            ladj = ladj + ld
        return z, ladj

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """z = g^{-1}(x) and ln|det dg^{-1}/dx|."""
        self.check_input(x)
        ladj = x.new_zeros(x.shape[0])
        for k in reversed(range(len(self.layers))):
            x, ld = self._couple(k, x, True)
            ladj = ladj + ld
        return x, ladj
