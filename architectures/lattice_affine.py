r"""``lattice-affine``: checkerboard affine couplings with circular CNN conditioners.

x_b -> x_b e^{s} + t on the sites of one colour, s = c tanh(raw / c), (s, t) per site and
channel from a CNN of the other colour; real fields (1 channel) and complex ones (2 channels,
re and im) on periodic lattices with even sides. Translation-equivariant (shifts that keep the
checkerboard).
"""

from __future__ import annotations

import torch  # noqa: F401 - the doctest

from sesamo_bench.core.architecture import Domain  # noqa: F401 - the doctest
from sesamo_bench.core.lattice import AffineCheckerboard


class LatticeAffine(AffineCheckerboard):
    r"""Affine checkerboard couplings, conditioners are circular CNNs
    (:class:`~sesamo_bench.core.lattice.AffineCheckerboard`).

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
