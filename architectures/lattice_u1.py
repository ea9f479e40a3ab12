r"""``lattice-u1``: U(1)- and translation-equivariant checkerboard couplings of a complex field.

For a complex field x on a periodic lattice, coupling k keeps the sites a of one colour and maps
the others by a complex affine map

    x_b -> x_b e^{s_b + i w_b} + t_b,    t_b = sum_k c_{bk} v_{bk},

where v_k = W_k * x_a are K complex circular convolutions of the kept sites (C-linear, so
e^{i theta} x_a -> e^{i theta} v_k), and s_b, w_b and the complex coefficients c_{bk} are computed
by a real circular CNN from U(1) invariants (ln(1 + |v_k|^2), ln(1 + |x_a|^2), the mask). A global
phase e^{i theta} therefore rotates t_b and x_b alike and leaves s, w, c unchanged: the coupling
commutes with x -> e^{i theta} x. Multiplying one complex number by e^{s + i w} scales area by
e^{2 s}, so ln|det| = sum_b 2 s_b.

With an invariant prior (mean 0) the density of g(z) is U(1)-invariant, which is what SESaMo's
equivariant U(1) construction needs (:class:`~sesamo_bench.methods.sesamo.SESaMo`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sesamo_bench.core.architecture import Domain
from sesamo_bench.core.lattice import LatticeFlow, circular_conv, conv_net


class U1Coupling(nn.Module):
    """One coupling's parameters: the complex convolutions and the invariant CNN."""

    def __init__(self, *, ndim: int, features: int, width: int, hidden_layers: int, kernel_size: int,
                 activation: str):
        super().__init__()
        shape = (features, *([kernel_size] * ndim))
        self.w_re = nn.Parameter(torch.randn(shape) / kernel_size**ndim)
        self.w_im = nn.Parameter(torch.randn(shape) / kernel_size**ndim)
        self.net = conv_net(features + 2, 2 + 2 * features, ndim=ndim, width=width, hidden_layers=hidden_layers,
                            kernel_size=kernel_size, activation=activation)

    def features(self, xa: Tensor) -> tuple[Tensor, Tensor]:
        """v_k = W_k * x_a for ``xa (N, 2, *sites)``: real and imaginary parts ``(N, K, *sites)``."""
        # (W_re + i W_im)(x_re + i x_im) as one real convolution with a 2 x 2 block weight
        w = torch.cat([torch.stack([self.w_re, -self.w_im], 1), torch.stack([self.w_im, self.w_re], 1)], 0)
        v = circular_conv(xa, w.to(xa))
        k = self.w_re.shape[0]
        return v[:, :k], v[:, k:]


class LatticeU1(LatticeFlow):
    r"""U(1)-equivariant complex affine checkerboard couplings.

    Arguments:
        domain: a complex field (2 components per site) on a lattice with even sides.
        couplings: number of couplings.
        features: number K of complex convolutions giving the equivariant shift.
        width, hidden_layers, kernel_size, activation: the invariant CNN.
        scale_bound: bound on |s| per coupling.

    Example:
        >>> f = LatticeU1(Domain((2, 2, 2), lattice=2), couplings=2).double()
        >>> z = torch.randn(3, 8, dtype=torch.float64)
        >>> torch.allclose(f.inverse(f(z)[0])[0], z)
        True
    """

    name = "lattice-u1"
    description = "U(1)- and translation-equivariant complex affine checkerboard couplings (CNN conditioners)"
    equivariance = ("translation", "u1")
    channels_accepted = (2,)

    def __init__(self, domain: Domain, *, couplings: int = 8, features: int = 2, width: int = 16,
                 hidden_layers: int = 1, kernel_size: int = 3, activation: str = "tanh", scale_bound: float = 3.0):
        super().__init__(domain, couplings=couplings)
        self.bound = float(scale_bound)
        for _ in range(couplings):
            self.layers.append(U1Coupling(ndim=self.ndim, features=features, width=width,
                                          hidden_layers=hidden_layers, kernel_size=kernel_size,
                                          activation=activation))

    def couple(self, k: int, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        layer, n = self.layers[k], x.shape[0]
        keep = self.mask(k, x)
        xa = x * keep
        vr, vi = layer.features(xa)
        inv = torch.cat([torch.log1p(vr * vr + vi * vi), torch.log1p((xa * xa).sum(1, keepdim=True)),
                         keep.expand(n, 1, *self.sites)], 1)
        raw = layer.net(inv)
        nf = vr.shape[1]
        s, w = self.bound * torch.tanh(raw[:, 0] / self.bound), raw[:, 1]
        cr, ci = raw[:, 2:2 + nf], raw[:, 2 + nf:]
        t_re = (cr * vr - ci * vi).sum(1)
        t_im = (cr * vi + ci * vr).sum(1)
        moved = 1 - keep[:, 0]
        re, im = x[:, 0], x[:, 1]
        if inverse:
            re, im, s = re - t_re, im - t_im, -s
            w = -w
        e = torch.exp(s)
        c, sn = e * torch.cos(w), e * torch.sin(w)
        y_re, y_im = c * re - sn * im, sn * re + c * im
        if not inverse:
            y_re, y_im = y_re + t_re, y_im + t_im
        y = torch.stack([y_re, y_im], 1)
        out = xa + y * moved.unsqueeze(1)
        return out, (2 * s * moved).flatten(1).sum(-1)
