r"""``lattice-odd``: checkerboard affine couplings equivariant under translations and x -> -x.

``lattice-affine`` with the conditioner symmetrised as in ``odd-realnvp``: per site and channel
s = [s_net(x_a) + s_net(-x_a)] / 2 (even) and t = [t_net(x_a) - t_net(-x_a)] / 2 (odd), so each
coupling commutes with the global sign flip and with the shifts that keep the checkerboard. The
Z2-equivariant lattice flow of the phi^4 literature (odd networks).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sesamo_bench.core.lattice import AffineCheckerboard


class LatticeOdd(AffineCheckerboard):
    r"""Sign-flip- and translation-equivariant affine checkerboard couplings.

    Arguments: as ``lattice-affine`` (:class:`~sesamo_bench.core.lattice.AffineCheckerboard`).

    Example:
        >>> from sesamo_bench.core.architecture import Domain
        >>> f = LatticeOdd(Domain((4, 4), lattice=2), couplings=2).double()
        >>> for p in f.parameters():
        ...     _ = torch.nn.init.normal_(p, std=0.3)
        >>> z = torch.randn(3, 16, dtype=torch.float64)
        >>> torch.allclose(f(-z)[0], -f(z)[0])
        True
    """

    name = "lattice-odd"
    description = "checkerboard affine couplings, odd circular CNN conditioners (Z2- and translation-equivariant)"
    equivariance = ("translation", "z2")

    def couple(self, k: int, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        keep = self.mask(k, x)
        xa = x * keep
        m = keep.expand(n, 1, *self.sites)
        raw = self.layers[k](torch.cat([torch.cat([xa, m], 1), torch.cat([-xa, m], 1)]))
        raw = raw.reshape(2 * n, self.channels, self.n_params, *self.sites).movedim(2, -1)
        plus, minus = raw[:n], raw[n:]
        raw = torch.stack([(plus[..., 0] + minus[..., 0]) / 2, (plus[..., 1] - minus[..., 1]) / 2], -1)
        y, ld = self.elementwise(raw, x, inverse)
        moved = 1 - keep
        return xa + y * moved, (ld * moved).flatten(1).sum(-1)
