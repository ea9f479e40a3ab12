r"""``lattice-affine``: checkerboard affine couplings with circular CNN conditioners.

x_b -> x_b e^{s} + t on the sites of one colour, s = c tanh(raw / c), (s, t) per site and
channel from a CNN of the other colour; real fields (1 channel) and complex ones (2 channels,
re and im) on periodic lattices with even sides. Translation-equivariant (shifts that keep the
checkerboard).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sesamo_bench.core.architecture import Domain
from sesamo_bench.core.lattice import ElementwiseCoupling


class LatticeAffine(ElementwiseCoupling):
    r"""Affine checkerboard couplings, conditioners are circular CNNs.

    Arguments:
        domain: a lattice field.
        couplings: number of couplings (alternating colours).
        width: channels of the hidden convolutions.
        hidden_layers: number of hidden convolutions.
        kernel_size: odd kernel side.
        activation: relu, tanh, silu, gelu or elu.
        scale_bound: bound c on |s| per coupling.

    Example:
        >>> f = LatticeAffine(Domain((4, 4), lattice=2)).double()
        >>> z = torch.randn(3, 16, dtype=torch.float64)
        >>> bool((f(z)[0] == z).all())  # a fresh flow is the identity
        True
    """

    name = "lattice-affine"
    description = "checkerboard affine couplings, circular CNN conditioners (translation-equivariant)"
    n_params = 2

    def __init__(self, domain: Domain, *, couplings: int = 8, width: int = 16, hidden_layers: int = 1,
                 kernel_size: int = 3, activation: str = "tanh", scale_bound: float = 3.0):
        super().__init__(domain, couplings=couplings, width=width, hidden_layers=hidden_layers,
                         kernel_size=kernel_size, activation=activation)
        self.bound = float(scale_bound)

    def elementwise(self, raw: Tensor, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        s, t = self.bound * torch.tanh(raw[..., 0] / self.bound), raw[..., 1]
        if inverse:
            return (x - t) * torch.exp(-s), -s
        return x * torch.exp(s) + t, s
