r"""``lattice-spline``: checkerboard rational-quadratic spline couplings with circular CNN conditioners.

Each transformed site and channel goes through a monotone rational-quadratic spline on
[-B, B] (identity outside; Durkan et al. 2019), zuko's ``MonotonicRQSTransform``; its 3K - 1
parameters come from a CNN of the kept sites. Real and complex (2-channel) lattice fields;
translation-equivariant.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from sesamo_bench.core.architecture import Domain
from sesamo_bench.core.lattice import ElementwiseCoupling
from sesamo_bench.core.spline import check_bins, rqs_coupling


class LatticeSpline(ElementwiseCoupling):
    r"""Spline checkerboard couplings, conditioners are circular CNNs.

    Arguments:
        domain: a lattice field.
        couplings: number of couplings.
        width, hidden_layers, kernel_size, activation: the CNN.
        bins: spline bins K.
        bound: the spline acts on [-bound, bound] (in prior standard deviations).

    Example:
        >>> f = LatticeSpline(Domain((2, 2), lattice=2), bins=4)
        >>> f.layers[0][-1].out_channels  # 3 K - 1 parameters per site
        11
    """

    name = "lattice-spline"
    description = "checkerboard rational-quadratic spline couplings (zuko), circular CNN conditioners"

    @classmethod
    def check_values(cls, params: dict[str, Any]) -> None:
        check_bins(params["bins"])

    def __init__(self, domain: Domain, *, couplings: int = 8, width: int = 16, hidden_layers: int = 1,
                 kernel_size: int = 3, activation: str = "tanh", bins: int = 8, bound: float = 5.0):
        self.check_values({"bins": bins})
        self.n_params = 3 * bins - 1
        super().__init__(domain, couplings=couplings, width=width, hidden_layers=hidden_layers,
                         kernel_size=kernel_size, activation=activation)
        self.bins, self.bound = bins, float(bound)

    def elementwise(self, raw: Tensor, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        return rqs_coupling(raw, x, bins=self.bins, bound=self.bound, inverse=inverse)
