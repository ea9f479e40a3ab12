r"""The frame of the magnetisation: the chart of |M|, the real Fourier basis, and a flow in that frame.

Shared by the symmetric lattice architectures (``u1-fourier`` for a complex field, ``z2-fourier``
for a real one): a field x on V sites with magnetisation M = sum_j x_j is written in the frame of
M (rotated or sign-flipped so that M is real and positive) as its orbit coordinates

    u = (rho, the non-zero momentum modes of the rotated field),    rho = h^{-1}(|M| / sqrt(V)),

and its position on the orbit (the phase of M, or its sign). :class:`MagnetisationFrameFlow`
transforms u with a bijection (a :class:`~sesamo_bench.core.bijections.Chain`) and keeps the
orbit position, so the flow commutes with the symmetry; the volume element of the chart is
e^{k rho} (k = 2 for the U(1) orbit of a complex field, 1 for a real one), whence the
log-determinant ``ladj(u) + k (rho' - rho)`` (plus :func:`chart_log_terms` beyond RHO_MAX).

These helpers were defined in ``architectures/u1_fourier.py`` and are still importable from there.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import Tensor, nn

from .architecture import Architecture
from .bijections import Chain, ElementwiseAffine, legacy_names
from .flows import RealNVP


#: the chart a_0 = e^rho of the magnetisation's size continues linearly beyond rho = RHO_MAX,
#: a_0 = e^RHO_MAX (1 + rho - RHO_MAX) (C^1 and monotone, so still a bijection), so that no rho
#: overflows; a trained flow stays far below (|M| / sqrt(V) = e^RHO_MAX is ~5e8 per mode)
RHO_MAX = 20.0


def chart(rho: Tensor) -> Tensor:
    """a_0 = h(rho): e^rho up to :data:`RHO_MAX`, then its tangent line."""
    big = math.exp(RHO_MAX) * (1 + (rho - RHO_MAX).clamp(min=0))
    return torch.where(rho <= RHO_MAX, torch.exp(rho.clamp(max=RHO_MAX)), big)


def chart_inverse(log_a0: Tensor) -> Tensor:
    """rho = h^{-1}(a_0) from ln a_0."""
    return torch.where(log_a0 <= RHO_MAX, log_a0, RHO_MAX + torch.expm1((log_a0 - RHO_MAX).clamp(min=0)))


def chart_log_terms(rho: Tensor, *, log_h: bool) -> Tensor:
    r"""ln h'(rho) (+ ln h(rho) with ``log_h``) minus its value rho (2 rho) of the pure exponential
    chart: exactly 0 for rho <= RHO_MAX, so the log-determinants there are those of a_0 = e^rho."""
    excess = (rho - RHO_MAX).clamp(min=0)
    out = -excess  # ln h' = min(rho, RHO_MAX)
    if log_h:
        out = out + torch.log1p(excess) - excess  # ln h = RHO_MAX + log1p(rho - RHO_MAX) beyond
    return torch.where(rho <= RHO_MAX, torch.zeros_like(rho), out)


def flag_underflow(module: nn.Module, x_in: Tensor, rho_out: Tensor, v: int) -> None:
    r"""OR into ``module.underflow`` (a bool mask ``(N,)``; a new one where the batch size changed)
    the samples whose density is finite but wrong: |M| of the input ``(N, D)`` below the smallest
    normal number (the M = 0 guard of ``_frame``), or a_0 = e^{rho_out} of the output not a normal
    number. :func:`sesamo_bench.harness.train.evaluate` reads and clears it."""
    tiny = torch.finfo(x_in.dtype).tiny
    with torch.no_grad():
        guarded = x_in.reshape(x_in.shape[0], v, -1).sum(1).norm(dim=1) < tiny
        hit = guarded | (chart(rho_out.detach()) < tiny)
    prev = getattr(module, "underflow", None)
    module.underflow = hit if prev is None or prev.shape != hit.shape else prev | hit


def fourier_basis(sites: tuple[int, ...]) -> Tensor:
    r"""Real orthonormal Fourier basis of fields on a periodic lattice, ``(V, V)`` float64, one mode a row.

    Row 0 is the zero mode 1 / sqrt(V); a momentum p with p = -p (mod L) gives one row
    cos(p . j) / sqrt(V), any other pair (p, -p) gives sqrt(2 / V) cos(p . j) and sqrt(2 / V) sin(p . j).

    Example:
        >>> f = fourier_basis((4, 2))
        >>> torch.allclose(f @ f.T, torch.eye(8, dtype=torch.float64))
        True
    """
    v = math.prod(sites)
    js = torch.tensor(list(itertools.product(*[range(s) for s in sites])), dtype=torch.float64)  # (V, d)
    two_pi_over_l = torch.tensor([2 * math.pi / s for s in sites], dtype=torch.float64)
    rows, seen = [], set()
    for p in itertools.product(*[range(s) for s in sites]):
        minus = tuple((-pi) % s for pi, s in zip(p, sites))
        if p in seen:
            continue
        seen.update({p, minus})
        phase = js @ (torch.tensor(p, dtype=torch.float64) * two_pi_over_l)
        if minus == p:
            rows.append(torch.cos(phase) / math.sqrt(v))
        else:
            rows += [torch.cos(phase) * math.sqrt(2 / v), torch.sin(phase) * math.sqrt(2 / v)]
    return torch.stack(rows)


class MagnetisationFrameFlow(Architecture):
    r"""x -> x' = field(g(u), c), (u, c) = frame(x): a bijection g of the orbit coordinates u in the
    frame of the magnetisation, the orbit position c kept (the base of ``u1-fourier`` and
    ``z2-fourier``; not an architecture itself, it has no ``name``).

    A subclass sets ``volume_power`` (k: the chart's volume element is e^{k rho}), and defines
    ``_frame(x) -> (u, c)`` and ``_field(u, c) -> x``; its constructor calls :meth:`_build`, which
    makes g = ``Chain(RealNVP(n), ElementwiseAffine(n))`` on the n orbit coordinates (a scale per
    momentum mode, and through rho the size of an ordered phase's magnetisation).
    """

    #: the power k of e^{rho} in the volume element of the orbit coordinates
    volume_power: int = 1

    def _build(self, domain, n: int, *, kernels: str, **coupling: Any) -> None:
        """g on the ``n`` orbit coordinates; ``coupling``: the :class:`~sesamo_bench.core.flows.CouplingParams`."""
        self.domain, self.dim = domain, domain.dim
        self.v = math.prod(domain.sites)
        self.register_buffer("basis", fourier_basis(domain.sites), persistent=False)
        self.inner = Chain(RealNVP(n, kernels=kernels, **coupling), ElementwiseAffine(n),
                           order=(1, 0))  # the parameters' order before the chain
        # checkpoints of the layout before the chain: couplings.*, log_scale, shift
        legacy_names(self, {"couplings.": "inner.parts.0.", "log_scale": "inner.parts.1.log_scale",
                            "shift": "inner.parts.1.shift"})

    @property
    def couplings(self) -> RealNVP:
        """The couplings of g."""
        return self.inner.parts[0]

    @property
    def shift(self) -> nn.Parameter:
        """The shift t of g's elementwise affine map."""
        return self.inner.parts[1].shift

    @property
    def log_scale(self) -> nn.Parameter:
        """The log-scale s of g's elementwise affine map."""
        return self.inner.parts[1].log_scale

    def _frame(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def _field(self, u: Tensor, c: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def _log_terms(self, rho_in: Tensor, rho_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """ln|det dx'/dx| minus that of g, in three terms: k (rho_out - rho_in), and the corrections
        of the linear continuation of the chart beyond RHO_MAX at the output and at the input."""
        log_h = self.volume_power == 2
        return (self.volume_power * (rho_out - rho_in), chart_log_terms(rho_out, log_h=log_h),
                chart_log_terms(rho_in, log_h=log_h))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """x = g(z) and ln|det dx/dz|."""
        self.check_input(z)
        u, c = self._frame(z)
        w, ladj = self.inner(u)
        volume, chart_out, chart_in = self._log_terms(u[:, 0], w[:, 0])
        ladj = ladj + volume + chart_out - chart_in
        flag_underflow(self, z, w[:, 0], self.v)
        return self._field(w, c), ladj

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """z = g^{-1}(x) and ln|det dz/dx|."""
        self.check_input(x)
        w, c = self._frame(x)
        u, ladj = self.inner.inverse(w)
        volume, chart_out, chart_in = self._log_terms(w[:, 0], u[:, 0])
        ladj = ladj + volume + chart_out - chart_in
        flag_underflow(self, x, u[:, 0], self.v)
        return self._field(u, c), ladj
