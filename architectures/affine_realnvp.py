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

from typing import Any

from torch import Tensor

from sesamo_bench.core.architecture import Architecture, Domain
from sesamo_bench.core.bijections import Chain, TriangularAffine, legacy_names
from sesamo_bench.core.flows import CouplingParams, RealNVP


class AffineRealNVP(Chain, Architecture):
    r"""RealNVP couplings, then x = mu + L y with a learned lower-triangular L:
    ``Chain(RealNVP(D), TriangularAffine(D))``.

    Arguments:
        domain: any domain (a lattice field is split by the parity of all its indices).
        couplings, hidden_layers, width, activation, scale_bound: the couplings, as ``realnvp``
            (:class:`~sesamo_bench.core.flows.CouplingParams`; ``couplings = 0``: the Gaussian layer alone).

    Example:
        >>> import torch
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

    @CouplingParams.keywords
    def __init__(self, domain: Domain, *, kernels: str = "auto", **coupling: Any):
        rnvp = [RealNVP(domain.dim, shape=domain.shape, kernels=kernels, **coupling)] if coupling["couplings"] else []
        # the affine layer's parameters listed first, as before the chain (optimizer states, a mixture's noise)
        Chain.__init__(self, *rnvp, TriangularAffine(domain.dim), order=tuple(reversed(range(len(rnvp) + 1))))
        self.domain = domain
        # checkpoints of the layout before the chain: couplings.*, shift, log_diag, lower
        k = len(rnvp)
        legacy_names(self, {"couplings.": "parts.0.", **{n: f"parts.{k}.{n}" for n in ("shift", "log_diag", "lower")}})

    @property
    def couplings(self) -> RealNVP | None:
        """The RealNVP couplings (``None`` with ``couplings = 0``)."""
        return self.parts[0] if len(self.parts) == 2 else None

    @property
    def affine(self) -> TriangularAffine:
        """The Gaussian layer x = mu + L y."""
        return self.parts[-1]

    shift = property(lambda self: self.affine.shift, doc="mu")
    log_diag = property(lambda self: self.affine.log_diag, doc="d, the log of L's diagonal")
    lower = property(lambda self: self.affine.lower, doc="W, L's strictly lower part")

    def matrix(self) -> Tensor:
        """L = diag(e^d) + tril(W, -1), ``(D, D)``."""
        return self.affine.matrix()
