r"""Monotone rational-quadratic spline on [0, 1] (Durkan et al. 2019, paper ref. [70]).

Used by the broken U(1) modulation as the learnable bijection h: [0, 1) -> [0, 1).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


class RQSpline(nn.Module):
    r"""A learnable monotone rational-quadratic spline h with h(0) = 0 and h(1) = 1.

    With zero parameters (the initial state) h is the identity.

    Arguments:
        bins: number of spline segments K.
        min_width: smallest bin width and height (keeps h' bounded away from zero).

    Example:
        >>> h = RQSpline(bins=4).double()
        >>> u = torch.rand(5, dtype=torch.float64)
        >>> y, ladj = h(u)
        >>> torch.allclose(h.inverse(y)[0], u)
        True
    """

    def __init__(self, bins: int = 8, *, min_width: float = 1e-3):
        super().__init__()
        self.bins, self.min_width = bins, min_width
        self.widths = nn.Parameter(torch.zeros(bins))
        self.heights = nn.Parameter(torch.zeros(bins))
        # derivatives at the knots (knot 0 and K share one value); h' = 1 everywhere at init
        init = math.log(math.expm1(1.0 - min_width))
        self.derivs = nn.Parameter(torch.full((bins,), init))

    def _knots(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k, m = self.bins, self.min_width
        w = m + (1 - m * k) * F.softmax(self.widths.to(like), -1)
        h = m + (1 - m * k) * F.softmax(self.heights.to(like), -1)
        xk = F.pad(torch.cumsum(w, -1), (1, 0))
        yk = F.pad(torch.cumsum(h, -1), (1, 0))
        xk = torch.cat([xk[:-1], xk.new_ones(1)])
        yk = torch.cat([yk[:-1], yk.new_ones(1)])
        d = m + F.softplus(self.derivs.to(like))
        d = torch.cat([d, d[:1]])  # periodic derivative: h'(0) = h'(1)
        return xk, yk, d

    def forward(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """h(u) and ln h'(u); ``u`` of any shape with values in [0, 1]."""
        xk, yk, d = self._knots(u)
        return _rqs(u, xk, yk, d, inverse=False)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """h^{-1}(y) and ln h'(h^{-1}(y)) (the forward log-derivative at the preimage)."""
        xk, yk, d = self._knots(y)
        return _rqs(y, xk, yk, d, inverse=True)


def _rqs(v: Tensor, xk: Tensor, yk: Tensor, d: Tensor, *, inverse: bool) -> tuple[Tensor, Tensor]:
    knots = yk if inverse else xk
    idx = (torch.searchsorted(knots.contiguous(), v.detach().contiguous(), right=True) - 1).clamp(0, len(knots) - 2)
    x0, x1 = xk[idx], xk[idx + 1]
    y0, y1 = yk[idx], yk[idx + 1]
    d0, d1 = d[idx], d[idx + 1]
    w, h = x1 - x0, y1 - y0
    s = h / w
    if not inverse:
        xi = (v - x0) / w
        num = h * (s * xi**2 + d0 * xi * (1 - xi))
        den = s + (d1 + d0 - 2 * s) * xi * (1 - xi)
        out = y0 + num / den
    else:
        dy = v - y0
        c = d1 + d0 - 2 * s
        a = h * (s - d0) + dy * c
        b = h * d0 - dy * c
        cc = -s * dy
        disc = (b**2 - 4 * a * cc).clamp_min(0)
        xi = (2 * cc) / (-b - torch.sqrt(disc))
        out = x0 + xi * w
        den = s + c * xi * (1 - xi)
    dnum = s**2 * (d1 * xi**2 + 2 * s * xi * (1 - xi) + d0 * (1 - xi) ** 2)
    ladj = torch.log(dnum) - 2 * torch.log(den)
    return out, ladj


def monotonic_rqs(widths: Tensor, heights: Tensor, derivatives: Tensor, *, bound: float) -> Any:
    r"""zuko's ``MonotonicRQSTransform`` with these unconstrained parameters (identity outside
    [-bound, bound]).

    zuko is imported here, where a spline is built, and not when this module or a spline
    architecture is imported: importing zuko patches ``torch.distributions.Transform`` globally, and
    discovering the plugins must leave torch as it is.
    """
    from zuko.transforms import MonotonicRQSTransform

    return MonotonicRQSTransform(widths, heights, derivatives, bound=bound)


def check_bins(bins: int) -> None:
    """A rational-quadratic spline needs at least two bins (one-line :class:`ConfigError` otherwise)."""
    if bins < 2:
        raise ConfigError(f"bins must be >= 2, got {bins}")


def rqs_coupling(raw: Tensor, x: Tensor, *, bins: int, bound: float, inverse: bool) -> tuple[Tensor, Tensor]:
    r"""Element-wise monotone RQS on [-bound, bound], identity outside: zuko's ``MonotonicRQSTransform``.

    The spline couplings (``architectures/spline.py``, ``architectures/lattice_spline.py``) use
    zuko's transform rather than :class:`RQSpline` (a periodic-derivative spline on [0, 1] for
    the U(1) phase).

    Arguments:
        raw: unconstrained parameters ``(..., 3 bins - 1)`` (widths, heights, inner derivatives);
            all zero is the identity.
        x: values ``(...)``.
        inverse: apply the inverse spline.

    Returns:
        The transformed values and the element-wise ln|dy/dx| (of the applied direction), ``(...)``.

    Example:
        >>> raw = torch.zeros(3, 11, dtype=torch.float64)
        >>> x = torch.tensor([-6.0, 0.5, 2.0], dtype=torch.float64)
        >>> y, ladj = rqs_coupling(raw, x, bins=4, bound=5.0, inverse=False)
        >>> torch.allclose(y, x), torch.allclose(ladj, torch.zeros(3, dtype=torch.float64))
        (True, True)
    """
    t = monotonic_rqs(raw[..., :bins], raw[..., bins:2 * bins], raw[..., 2 * bins:], bound=bound)
    if inverse:
        z = t.inv(x)
        return z, -t.call_and_ladj(z)[1]
    return t.call_and_ladj(x)
