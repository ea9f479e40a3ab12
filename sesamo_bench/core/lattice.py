r"""Checkerboard couplings with convolutional conditioners on a periodic lattice.

The machinery shared by the lattice architectures (``architectures/lattice_*.py``): a field
``(N, D)`` is viewed channel-first as ``(N, C, *sites)``; coupling k keeps the sites of one
checkerboard colour (parity k mod 2) and transforms the others, each site and channel by an
element-wise bijection whose parameters a small CNN with circular padding computes from the kept
sites. The checkerboard and circular convolutions commute with every lattice shift that keeps
the colouring (an even total shift), so the flow is equivariant under those translations
(Albergo, Kanwar, Shanahan 2019).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .architecture import Architecture, Domain
from ..errors import ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU, "gelu": nn.GELU, "elu": nn.ELU}
_FCONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class _CircularPad(torch.autograd.Function):
    """Periodic padding by ``pad`` on the last ``ndim`` dimensions, with a backward that folds the
    padded borders back in one pass per dimension.

    The forward is ``F.pad(mode="circular")``. Its autograd backward allocates and zero-fills a
    padded-size tensor for every slice it took (about ten per 2-D convolution) and was half of a
    ``lattice-affine`` training step; this one adds the two borders of each dimension onto the
    opposite edges, first dimension first and the high border first, the order autograd's backward
    sums in (it matters where the borders overlap, 2 pad > side), so the gradient is the same bit
    for bit (``tests/test_circular_pad.py``). The backward is made of
    differentiable operations, so higher derivatives work."""

    @staticmethod
    def forward(ctx, x: Tensor, pad: int, ndim: int) -> Tensor:  # noqa: D102
        ctx.pad, ctx.ndim = pad, ndim
        return F.pad(x, (pad, pad) * ndim, mode="circular")

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102
        return fold_circular(g, ctx.pad, ctx.ndim), None, None


def fold_circular(g: Tensor, pad: int, ndim: int) -> Tensor:
    """The adjoint of periodic padding: ``g`` of the padded shape -> the unpadded shape."""
    for d in range(g.dim() - ndim, g.dim()):
        n = g.shape[d] - 2 * pad
        h = g.narrow(d, pad, n).clone()
        h.narrow(d, 0, pad).add_(g.narrow(d, n + pad, pad))  # the high border wraps to the low edge,
        h.narrow(d, n - pad, pad).add_(g.narrow(d, 0, pad))  # then the low border to the high one
        g = h
    return g


def circular_pad(x: Tensor, pad: int, ndim: int) -> Tensor:
    """``x`` padded periodically by ``pad`` on its last ``ndim`` dimensions (``pad <= size``)."""
    return _CircularPad.apply(x, pad, ndim) if pad else x


class _CircularConv:
    """Mixin for ``nn.Conv1d/2d/3d`` built with ``padding_mode="circular"``: :func:`circular_pad` in
    place of the module's own padding (the same parameters and state dict, a faster backward)."""

    ndim: int

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return _FCONV[self.ndim](circular_pad(input, self.padding[0], self.ndim), weight, bias, self.stride, 0,
                                 self.dilation, self.groups)


class CircularConv1d(_CircularConv, nn.Conv1d):
    ndim = 1


class CircularConv2d(_CircularConv, nn.Conv2d):
    ndim = 2


class CircularConv3d(_CircularConv, nn.Conv3d):
    ndim = 3


_CONV = {1: CircularConv1d, 2: CircularConv2d, 3: CircularConv3d}


def checkerboard(sites: tuple[int, ...]) -> Tensor:
    """Boolean ``sites``-shaped mask: True where the sum of the site's indices is even."""
    grids = torch.meshgrid(*[torch.arange(s) for s in sites], indexing="ij")
    return sum(grids) % 2 == 0


def conv_net(c_in: int, c_out: int, *, ndim: int, width: int, hidden_layers: int, kernel_size: int,
             activation: str) -> nn.Sequential:
    r"""``hidden_layers`` circular convolutions of ``width`` channels and an output convolution that
    starts at zero (a fresh coupling is the identity). Shapes ``(N, c_in, *sites) -> (N, c_out, *sites)``."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"Unknown activation '{activation}'. Available: {', '.join(sorted(ACTIVATIONS))}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ConfigError(f"kernel_size must be an odd integer >= 1, got {kernel_size}")
    conv, pad = _CONV[ndim], kernel_size // 2
    layers: list[nn.Module] = []
    c = c_in
    for _ in range(hidden_layers):
        layers += [conv(c, width, kernel_size, padding=pad, padding_mode="circular"), ACTIVATIONS[activation]()]
        c = width
    last = conv(c, c_out, kernel_size, padding=pad, padding_mode="circular")
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


def circular_conv(x: Tensor, weight: Tensor) -> Tensor:
    """Convolution of ``(N, C, *sites)`` with ``weight`` (odd kernel), periodic boundary."""
    ndim = x.dim() - 2
    pad = weight.shape[-1] // 2
    return _FCONV[ndim](circular_pad(x, pad, ndim), weight)


class LatticeFlow(Architecture):
    r"""Base of the checkerboard lattice flows: reshaping, masks and the coupling loop.

    Subclasses build ``self.layers`` (one module per coupling) and implement
    :meth:`couple` ``(k, x, inverse) -> (x', ladj)`` on channel-first fields ``(N, C, *sites)``.

    Arguments:
        domain: a lattice :class:`~sesamo_bench.core.architecture.Domain` with even side lengths.
        couplings: number of couplings (alternating checkerboard colours).
    """

    domains = ("lattice",)
    equivariance = ("translation",)
    channels_accepted: tuple[int, ...] | None = None

    @classmethod
    def accepts(cls, domain: Domain) -> str | None:
        reason = super().accepts(domain)
        if reason is None and len(domain.sites) not in _CONV:
            reason = f"handles 1- to 3-dimensional lattices, not {domain.describe()}"
        if reason is None and any(s % 2 for s in domain.sites):
            reason = f"needs even lattice sides for its checkerboard, not {domain.describe()}"
        if reason is None and cls.channels_accepted is not None and domain.channels not in cls.channels_accepted:
            reason = f"needs a complex field (2 components per site), not {domain.describe()}"
        return reason

    def __init__(self, domain: Domain, *, couplings: int):
        super().__init__()
        if couplings < 1:
            raise ConfigError(f"couplings must be >= 1, got {couplings}")
        self.domain, self.dim = domain, domain.dim
        self.sites, self.channels, self.ndim = domain.sites, domain.channels, len(domain.sites)
        board = checkerboard(self.sites).to(torch.get_default_dtype())
        # masks[p]: 1 on the kept (conditioning) sites of coupling parity p, shape (1, 1, *sites)
        self.register_buffer("masks", torch.stack([board, 1 - board]).unsqueeze(1).unsqueeze(1), persistent=False)
        self.couplings = couplings
        self.layers = nn.ModuleList()

    # (N, D) <-> (N, C, *sites)
    def _to_field(self, x: Tensor) -> Tensor:
        f = x.reshape(x.shape[0], *self.sites, self.channels)
        return f.movedim(-1, 1)

    def _to_flat(self, f: Tensor) -> Tensor:
        return f.movedim(1, -1).reshape(f.shape[0], -1)

    def mask(self, k: int, like: Tensor) -> Tensor:
        return self.masks[k % 2].to(like)

    def couple(self, k: int, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """x = g(z) and ln|det dg/dz|, shapes ``(N, D)`` and ``(N,)``."""
        self.check_input(z)
        f, ladj = self._to_field(z), z.new_zeros(z.shape[0])
        for k in range(len(self.layers)):
            f, ld = self.couple(k, f, False)
            ladj = ladj + ld
        return self._to_flat(f), ladj

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """z = g^{-1}(x) and ln|det dg^{-1}/dx|."""
        self.check_input(x)
        f, ladj = self._to_field(x), x.new_zeros(x.shape[0])
        for k in reversed(range(len(self.layers))):
            f, ld = self.couple(k, f, True)
            ladj = ladj + ld
        return self._to_flat(f), ladj


class ElementwiseCoupling(LatticeFlow):
    r"""Checkerboard coupling whose CNN gives ``n_params`` numbers per site and channel for an
    element-wise bijection (:meth:`elementwise`) of the transformed sites.

    The CNN sees the kept sites (the others zeroed) and the mask as an extra channel.
    """

    n_params: int = 2

    def __init__(self, domain: Domain, *, couplings: int, width: int, hidden_layers: int, kernel_size: int,
                 activation: str):
        super().__init__(domain, couplings=couplings)
        c = self.channels
        for _ in range(couplings):
            self.layers.append(conv_net(c + 1, c * self.n_params, ndim=self.ndim, width=width,
                                        hidden_layers=hidden_layers, kernel_size=kernel_size, activation=activation))

    def elementwise(self, raw: Tensor, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:  # pragma: no cover
        """Per-element bijection: ``raw (..., n_params)``, ``x (...)`` -> ``(y, ladj)``, both ``(...)``."""
        raise NotImplementedError

    def couple(self, k: int, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        keep = self.mask(k, x)
        xa = x * keep
        raw = self.layers[k](torch.cat([xa, keep.expand(n, 1, *self.sites)], 1))
        raw = raw.reshape(n, self.channels, self.n_params, *self.sites).movedim(2, -1)
        y, ld = self.elementwise(raw, x, inverse)
        moved = 1 - keep
        out = xa + y * moved
        return out, (ld * moved).flatten(1).sum(-1)


class AffineCheckerboard(ElementwiseCoupling):
    r"""Affine checkerboard couplings x_b -> x_b e^{s} + t, s = c tanh(raw / c) (per site and channel),
    conditioners circular CNNs: the shared part of ``lattice-affine`` and ``lattice-odd`` (not an
    architecture itself, it has no ``name``).

    Arguments:
        domain: a lattice field.
        couplings: number of couplings (alternating colours).
        width: channels of the hidden convolutions.
        hidden_layers: number of hidden convolutions.
        kernel_size: odd kernel side.
        activation: relu, tanh, silu, gelu or elu.
        scale_bound: bound c on |s| per coupling.
    """

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
