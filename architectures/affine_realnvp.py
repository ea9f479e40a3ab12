r"""``affine-realnvp``: MLP RealNVP couplings followed by a learned global affine map (a Gaussian layer).

x = mu + L g(z), with g the ``realnvp`` couplings and L lower triangular with a positive diagonal,

    L = diag(e^{d}) + tril(W, -1),    ln|det dx/dz| = ln|det dg/dz| + sum_i d_i,

so the layer is a full-covariance Gaussian fitted by the training objective itself: mu carries
the magnetisation of an ordered phase (SESaMo's canonical cell of phi^4 puts all of it in the
real parts) and L L^T the long-range correlations, which the couplings would otherwise have to
build from many bounded affine steps; g then corrects what is not Gaussian, in whitened
coordinates. The map is exact and cheap (one D x D triangular product, a triangular solve for the
inverse); mu = 0, d = 0, W = 0 at construction, so a fresh flow is the identity. Any domain.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sesamo_bench.core.architecture import Architecture, Domain
from sesamo_bench.core.flows import RealNVP


class AffineRealNVP(Architecture):
    r"""RealNVP couplings, then x = mu + L y with a learned lower-triangular L.

    Arguments:
        domain: any domain (a lattice field is split by the parity of all its indices).
        couplings, hidden_layers, width, activation, scale_bound: the couplings, as ``realnvp``
            (``couplings = 0``: the Gaussian layer alone).

    Example:
        >>> f = AffineRealNVP(Domain((3,)), couplings=2, width=8).double()
        >>> with torch.no_grad():
        ...     _ = f.shift.fill_(1.0)
        >>> z = torch.zeros(1, 3, dtype=torch.float64)
        >>> f(z)[0].tolist()
        [[1.0, 1.0, 1.0]]
    """

    name = "affine-realnvp"
    description = "MLP RealNVP couplings, then a learned full-covariance affine map x = mu + L y (exact ladj)"
    run_fields = True

    def __init__(self, domain: Domain, *, couplings: int = 6, hidden_layers: int = 4, width: int = 40,
                 activation: str = "relu", scale_bound: float = 3.0, kernels: str = "auto"):
        super().__init__()
        self.domain, self.dim = domain, domain.dim
        self.couplings = RealNVP(domain.dim, shape=domain.shape, couplings=couplings, hidden_layers=hidden_layers,
                                 width=width, activation=activation, scale_bound=scale_bound,
                                 kernels=kernels) if couplings else None
        d = domain.dim
        self.shift = nn.Parameter(torch.zeros(d))
        self.log_diag = nn.Parameter(torch.zeros(d))
        self.lower = nn.Parameter(torch.zeros(d, d))
        self.register_buffer("_mask", torch.ones(d, d).tril(-1), persistent=False)

    def matrix(self) -> Tensor:
        """L = diag(e^d) + tril(W, -1), ``(D, D)``."""
        return torch.diag_embed(self.log_diag.exp()) + self.lower * self._mask

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """x = mu + L g(z) and ln|det dx/dz|."""
        self.check_input(z)
        if self.couplings is not None:
            y, ladj = self.couplings(z)
        else:
            y, ladj = z, z.new_zeros(z.shape[0])
        lm = self.matrix().to(z)
        return torch.addmm(self.shift.to(z), y, lm.t()), ladj + self.log_diag.to(z).sum()

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """z = g^{-1}(L^{-1}(x - mu)) and ln|det dz/dx|."""
        self.check_input(x)
        lm = self.matrix().to(x)
        y = torch.linalg.solve_triangular(lm, (x - self.shift.to(x)).t(), upper=False).t()
        ladj = -self.log_diag.to(x).sum().expand(x.shape[0])
        if self.couplings is None:
            return y, ladj
        z, ld = self.couplings.inverse(y)
        return z, ladj + ld
