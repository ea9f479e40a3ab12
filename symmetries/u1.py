r"""U(1): one global phase rotation x -> e^{i theta} x of a complex field (paper App. F).

Fields have shape ``(..., 2)`` with the last axis (real, imaginary). The paper's continuous
modulation (a real flow output times one phase) has no density on C^V for V > 1, so this plugin
uses the bijective construction of the reference notes instead: the flow produces (a, b') in
R^(2V-1), b_V = -sum(b'), y = a + i b has a real magnetisation M(y) = sum(a), the canonical cell
is sum(a) > 0 (penalty lambda = -Re M), and x = e^{i theta} y with theta = 2 pi h(u), u ~ U[0, 1).
The Jacobian of (a, b', theta) -> x is |M(x)|, so

    ln q(x) = ln q_flow(a, b') - ln|M(x)| - ln(2 pi) - ln h'(u).

Exact U(1): h = identity; broken: h is a learnable monotone rational-quadratic spline.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sesamo_bench.errors import ConfigError, IncompatibleError
from sesamo_bench.core.spline import RQSpline
from sesamo_bench.core.symmetry import Modulation, Symmetry

TWO_PI = 2 * math.pi


class PhaseModulation(Modulation):
    r"""Density of theta = 2 pi h(u), u ~ U[0, 1): p(theta) = 1 / (2 pi h'(u))."""

    def __init__(self, *, learnable: bool, bins: int):
        super().__init__()
        self.h = RQSpline(bins) if learnable else None

    def sample(self, n: int, *, like: Tensor) -> Tensor:
        return self.sample_and_log_prob(n, like=like)[0]

    def sample_and_log_prob(self, n: int, *, like: Tensor) -> tuple[Tensor, Tensor]:
        u = torch.rand(n, dtype=like.dtype, device=like.device)
        if self.h is None:
            return u * TWO_PI, u.new_full((n,), -math.log(TWO_PI))
        phi, ladj = self.h(u)  # theta carries the gradient of h (reparametrised)
        return phi * TWO_PI, -math.log(TWO_PI) - ladj

    def log_prob(self, theta: Tensor) -> Tensor:
        if self.h is None:
            return theta.new_full(theta.shape, -math.log(TWO_PI))
        phi = torch.remainder(theta, TWO_PI) / TWO_PI
        _, ladj = self.h.inverse(phi.clamp(0, 1))
        return -math.log(TWO_PI) - ladj


class U1(Symmetry):
    r"""Global U(1) phase rotation of a complex field.

    Arguments:
        broken: learn the angular distribution through a spline h (paper Eq. 43).
        bins: number of spline bins for the broken case.
    """

    name = "u1"
    examples = [((1, 2), {}), ((1, 2), {"broken": True, "bins": 4}), ((2, 2), {}),
                ((2, 2), {"broken": True, "bins": 4})]
    finite = False

    def __init__(self, *, broken: bool = False, bins: int = 8):
        super().__init__()
        if not isinstance(bins, int) or bins < 1:
            raise ConfigError(f"u1: 'bins' must be an integer >= 1, got {bins!r}")
        self.broken, self.bins = bool(broken), bins
        self.modulation = PhaseModulation(learnable=self.broken, bins=bins)

    def bind(self, shape: tuple[int, ...]) -> U1:
        if not shape or shape[-1] != 2:
            raise IncompatibleError(
                f"u1 rotates complex fields: needs a last axis (re, im) of size 2, got shape {tuple(shape)}"
            )
        return super().bind(shape)

    # group: angles in [0, 2 pi)
    def act(self, x: Tensor, u: Tensor) -> Tensor:
        c = torch.cos(u).reshape(-1, *([1] * (x.dim() - 2)))
        s = torch.sin(u).reshape(-1, *([1] * (x.dim() - 2)))
        re, im = x[..., 0], x[..., 1]
        return torch.stack([c * re - s * im, s * re + c * im], -1)

    def compose(self, u: Tensor, v: Tensor) -> Tensor:
        return torch.remainder(u + v, TWO_PI)

    def inverse(self, u: Tensor) -> Tensor:
        return torch.remainder(-u, TWO_PI)

    def magnetisation(self, x: Tensor) -> Tensor:
        """M(x) = sum_j x_j as (N, 2) (real, imaginary)."""
        return x.reshape(x.shape[0], -1, 2).sum(1)

    def penalty_fn(self, x: Tensor) -> Tensor:
        return -self.magnetisation(x)[:, 0]

    def canonicalize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        m = self.magnetisation(z)
        theta = torch.remainder(torch.atan2(m[:, 1], m[:, 0]), TWO_PI)
        return self.act(z, self.inverse(theta)), theta

    # SESaMo construction
    def flow_dim(self, dim: int) -> int:
        return dim - 1

    def embed(self, y: Tensor, shape: tuple[int, ...]) -> Tensor:
        v = y.shape[1] // 2 + 1
        a, bp = y[:, :v], y[:, v:]
        b = torch.cat([bp, -bp.sum(-1, keepdim=True)], -1)
        return torch.stack([a, b], -1).reshape(y.shape[0], *shape)

    def unembed(self, y: Tensor) -> Tensor:
        flat = y.reshape(y.shape[0], -1, 2)
        return torch.cat([flat[..., 0], flat[:, :-1, 1]], -1)

    def modulation_ladj(self, y: Tensor) -> Tensor:
        return torch.log(self.magnetisation(y)[:, 0].abs())

    def preimages(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        y, theta = self.canonicalize(x)
        return [(y, theta), (-y, torch.remainder(theta + math.pi, TWO_PI))]

    def probabilities(self) -> list[float] | None:
        return None

    def haar_log_prob(self) -> float:
        return -math.log(TWO_PI)

    def random_elements(self, n: int, like: Tensor) -> Tensor:
        return torch.rand(n, dtype=like.dtype, device=like.device) * TWO_PI
