r"""Z_M: rotations of a 2-vector by 2 pi k / M (paper App. E.1).

Acts on fields whose last axis has size 2 (the same rotation on every site). The canonical cell
is the exact wedge |angle(s)| <= pi/M of the summed vector s = sum_sites x (reference notes: the
wedge of paper Eq. (35) is too wide and its rotated copies overlap).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sesamo_bench.errors import ConfigError, IncompatibleError
from sesamo_bench.core.symmetry import Categorical, Symmetry


class ZM(Symmetry):
    r"""Cyclic rotation group Z_M.

    Arguments:
        m: group order M >= 2.
        broken: learn the M element probabilities (categorical logits) instead of 1/M each.
    """

    name = "zm"
    examples = [((2,), {"m": 3}), ((2,), {"m": 8, "broken": True}), ((2,), {"m": 2}),
                ((2,), {"m": 4, "broken": True})]
    finite = True

    def __init__(self, *, m: int = 8, broken: bool = False):
        super().__init__()
        if not isinstance(m, int) or m < 2:
            raise ConfigError(f"zm: 'm' must be an integer >= 2, got {m!r}")
        self.m, self.broken = m, bool(broken)
        self.modulation = Categorical(m, learnable=self.broken)

    def bind(self, shape: tuple[int, ...]) -> ZM:
        if not shape or shape[-1] != 2:
            raise IncompatibleError(
                f"zm rotates 2-vectors: needs a field whose last axis has size 2, got shape {tuple(shape)}"
            )
        return super().bind(shape)

    @property
    def order(self) -> int:
        return self.m

    def _rotate(self, x: Tensor, angle: Tensor) -> Tensor:
        c, s = torch.cos(angle), torch.sin(angle)
        c = c.reshape(-1, *([1] * (x.dim() - 2)))
        s = s.reshape(-1, *([1] * (x.dim() - 2)))
        x1, x2 = x[..., 0], x[..., 1]
        return torch.stack([c * x1 - s * x2, s * x1 + c * x2], -1)

    def act(self, x: Tensor, u: Tensor) -> Tensor:
        return self._rotate(x, u.to(x.dtype) * (2 * math.pi / self.m))

    def compose(self, u: Tensor, v: Tensor) -> Tensor:
        return (u + v) % self.m

    def inverse(self, u: Tensor) -> Tensor:
        return (-u) % self.m

    def _total(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1, 2).sum(1)

    def penalty_fn(self, x: Tensor) -> Tensor:
        s = self._total(x)
        c, sn = math.cos(math.pi / self.m), math.sin(math.pi / self.m)
        upper = c * s[:, 1] - sn * s[:, 0]
        lower = -c * s[:, 1] - sn * s[:, 0]
        return torch.maximum(upper, lower)

    def canonicalize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        s = self._total(z)
        phi = torch.atan2(s[:, 1], s[:, 0])
        u = torch.round(phi / (2 * math.pi / self.m)).long() % self.m
        return self.act(z, self.inverse(u)), u
