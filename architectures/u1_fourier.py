r"""``u1-fourier``: a U(1)-equivariant flow in the frame of the magnetisation, on lattice momentum modes.

For a complex field x on a periodic lattice of V sites, M = sum_j x_j = |M| e^{i theta}. In the
frame of M, y = e^{-i theta} x has a real positive magnetisation: the coordinates

    u = (rho, a_p (p != 0), b_p (p != 0)) in R^(2V-1),    rho = ln(|M| / sqrt(V)),

with a_p, b_p the real and imaginary parts of y in a real orthonormal Fourier basis (cos and sin
modes of each lattice momentum p; the zero mode of Re y is |M| / sqrt(V), that of Im y is 0),
describe the orbit of x under U(1) exactly once, and theta is its position on the orbit. The flow is

    x -> x' = e^{i theta} y(u'),    u' = e^{s} * g(u) + t,

with g the ``realnvp`` couplings on R^(2V-1) and (s, t) a learned diagonal affine map: per momentum
mode a scale (the free-field / mean-field preconditioning of the lattice literature, Albergo,
Kanwar, Shanahan 2019) and, through rho, the size of the magnetisation of an ordered phase. Since
u ignores theta the map commutes with x -> e^{i phi} x. Jacobian: x <-> (a_0, a_p, b_p, theta)
has volume element a_0 = |M| / sqrt(V) = e^{rho}, the radius of the orbit in the orthonormal
basis: dx/dtheta = i x has the component a_0 along the imaginary zero mode, the one direction the
other coordinates do not span. (The chart of the reference notes, (a, b') with b_V = -sum(b'), has
|M| instead: its b' are not orthonormal coordinates of the plane Im M = 0, a factor sqrt(V).)
a_0 = e^{rho} gives e^{rho} more, so

    ln|det dx'/dx| = ln|det du'/du| + 2 (rho' - rho)

(beyond rho = :data:`RHO_MAX` the chart continues linearly, :func:`chart`, and these terms are
ln h + ln h' of that chart: :func:`chart_log_terms`).

Where |M| of the input is below the smallest normal number (M = 0 exactly: about one float32
prior draw in 10^6-10^7) ``_frame`` reads it as that number, and where e^{rho} of the output
underflows (rho < ln of the smallest normal, -87.3 in float32, -708 in float64) the output field
loses its magnetisation; the density returned is finite but wrong for such samples. Each call
records them (:func:`flag_underflow`) and the final evaluation counts them (metric ``underflow``).

A fresh flow is the identity. Use with SESaMo (equivariant construction: the modulation then
draws theta).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from sesamo_bench.core.architecture import Domain
from sesamo_bench.core.flows import CouplingParams
# the chart helpers and the Fourier basis live in the core (shared with z2-fourier); importable from here
from sesamo_bench.core.magnetisation import (RHO_MAX, MagnetisationFrameFlow, chart, chart_inverse,  # noqa: F401
                                             chart_log_terms, flag_underflow, fourier_basis)


class U1Fourier(MagnetisationFrameFlow):
    r"""U(1)-equivariant flow: RealNVP and a diagonal affine map on (ln|M|, momentum modes) in the frame of M.

    Arguments:
        domain: a complex field (2 components per site) on a periodic lattice.
        couplings, hidden_layers, width, activation, scale_bound: the couplings g, as ``realnvp``
            (:class:`~sesamo_bench.core.flows.CouplingParams`).

    Example:
        >>> f = U1Fourier(Domain((2, 2, 2), lattice=2), couplings=2, width=8).double()
        >>> with torch.no_grad():
        ...     _ = f.shift.fill_(0.5)
        >>> z = torch.randn(3, 8, dtype=torch.float64)
        >>> c, s = math.cos(0.3), math.sin(0.3)
        >>> rot = lambda x: (x.view(3, 4, 2) @ torch.tensor([[c, s], [-s, c]], dtype=x.dtype)).view(3, 8)
        >>> torch.allclose(f(rot(z))[0], rot(f(z)[0])) and torch.allclose(f.inverse(f(z)[0])[0], z)
        True
    """

    name = "u1-fourier"
    description = ("U(1)-equivariant: RealNVP + diagonal affine on ln|M| and the momentum modes, "
                   "in the frame of the magnetisation")
    domains = ("lattice",)
    equivariance = ("u1",)
    run_fields = True
    volume_power = 2  # the volume element a_0 d a_0 = e^{2 rho} d rho (the orbit's radius a_0 = e^rho)

    @classmethod
    def accepts(cls, domain: Domain) -> str | None:
        reason = super().accepts(domain)
        if reason is None and (domain.channels != 2 or len(domain.shape) != domain.lattice + 1):
            reason = f"acts on complex lattice fields (2 components per site), not on {domain.describe()}"
        return reason

    @CouplingParams.keywords
    def __init__(self, domain: Domain, *, kernels: str = "auto", **coupling: Any):
        super().__init__()
        self._build(domain, 2 * math.prod(domain.sites) - 1, kernels=kernels, **coupling)

    def _frame(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(u ``(N, 2V-1)``, (cos theta, sin theta) ``(N, 2)``) of fields ``(N, D)``."""
        f = x.view(x.shape[0], self.v, 2)
        m = f.sum(1)
        # M = 0 exactly (measure zero, but float32 rounding gives it to about one prior draw in 10^6-10^7):
        # theta = 0 there, and |M| the smallest normal number, so that ln|M| stays finite
        r = m.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
        c = torch.where(m.norm(dim=1, keepdim=True) > 0, m / r, torch.tensor([1.0, 0.0]).to(m))
        re = f[..., 0] * c[:, :1] + f[..., 1] * c[:, 1:]  # e^{-i theta} x
        im = f[..., 1] * c[:, :1] - f[..., 0] * c[:, 1:]
        basis = self.basis.to(x)
        a, b = re @ basis[1:].t(), im @ basis[1:].t()
        # rho from |M| itself: the projection of Re y on the zero mode can round below 0 when M ~ 0
        return torch.cat([chart_inverse(torch.log(r) - 0.5 * math.log(self.v)), a, b], 1), c

    def _field(self, u: Tensor, c: Tensor) -> Tensor:
        basis, v = self.basis.to(u), self.v
        a = torch.cat([chart(u[:, :1]), u[:, 1:v]], 1) @ basis
        b = u[:, v:] @ basis[1:]
        re = a * c[:, :1] - b * c[:, 1:]  # e^{i theta} y
        im = a * c[:, 1:] + b * c[:, :1]
        return torch.stack([re, im], -1).reshape(u.shape[0], self.dim)
