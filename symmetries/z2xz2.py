r"""Z2 x Z2, the Klein four-group of the Hubbard model (the paper's "broken Z4", App. E.2, H.2).

Elements u = 2*s + g: g flips every component (exact, probability 1/2), s flips the components
``flip`` (broken: probability e^b learnable). Canonical cell: the positive "quadrant"
sum_S x > 0 and sum_{not S} x > 0; lambda(x) = max(-sum_S x, -sum_{not S} x).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sesamo_bench.errors import IncompatibleError
from sesamo_bench.core.symmetry import Bernoulli, Modulation, Symmetry, subset_mask


class KleinModulation(Modulation):
    """p_S(u) = p(s) * 1/2: a (learnable) subset flip followed by an exact global flip."""

    def __init__(self, *, learnable: bool):
        super().__init__()
        self.single = Bernoulli(learnable=learnable)

    def sample(self, n: int, *, like: Tensor) -> Tensor:
        s = self.single.sample(n, like=like)
        g = torch.randint(2, (n,), device=like.device)
        return 2 * s + g

    def log_prob(self, u: Tensor) -> Tensor:
        return self.single.log_prob(u // 2) - math.log(2.0)

    def probabilities(self) -> Tensor:
        ps = self.single.probabilities()
        return torch.stack([ps[0], ps[0], ps[1], ps[1]]) / 2


class Z2xZ2(Symmetry):
    r"""Klein four-group: global sign flip x subset sign flip.

    Arguments:
        broken: learn the probability of the subset flip (the global flip stays exact).
        flip: flat component indices of the subset flip (a proper, non-empty subset).
    """

    name = "z2xz2"
    examples = [((2,), {}), ((2,), {"broken": False})]
    finite = True

    def __init__(self, *, broken: bool = True, flip: list[int] = [0]):  # noqa: B006
        super().__init__()
        self.broken, self.flip = bool(broken), list(flip)
        self.modulation = KleinModulation(learnable=self.broken)
        self.register_buffer("mask", torch.ones(0, dtype=torch.bool), persistent=False)

    def bind(self, shape: tuple[int, ...]) -> Z2xZ2:
        super().bind(shape)
        mask = subset_mask(self.flip, self.shape, "z2xz2 'flip'")
        if not self.flip or bool(mask.all()):
            raise IncompatibleError(
                f"z2xz2 'flip' must be a proper non-empty subset of the {mask.numel()} components, got {self.flip}"
            )
        self.mask = mask.to(self.mask.device)
        return self

    @property
    def order(self) -> int:
        return 4

    def act(self, x: Tensor, u: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        g = (u % 2).bool()[:, None]
        s = (u // 2).bool()[:, None] & self.mask[None, :]
        return torch.where(g ^ s, -flat, flat).reshape(x.shape)

    def compose(self, u: Tensor, v: Tensor) -> Tensor:
        return u ^ v

    def inverse(self, u: Tensor) -> Tensor:
        return u

    def _sums(self, x: Tensor) -> tuple[Tensor, Tensor]:
        flat = x.reshape(x.shape[0], -1)
        return (flat * self.mask).sum(-1), (flat * ~self.mask).sum(-1)

    def penalty_fn(self, x: Tensor) -> Tensor:
        s_in, s_out = self._sums(x)
        return torch.maximum(-s_in, -s_out)

    def canonicalize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        s_in, s_out = self._sums(z)
        g = (s_out < 0).long()
        s = g ^ (s_in < 0).long()
        u = 2 * s + g
        return self.act(z, u), u

    def breaking_ratio(self) -> float | None:
        if not self.broken:
            return None
        return 1.0 - 2.0 * float(self.modulation.single.probabilities()[1])

    def breaking_sign(self, x: Tensor) -> Tensor:
        """+1 where the subset flip s is 0 (the cells u = 0, 1), -1 where it is 1 (u = 2, 3)."""
        return 1 - 2 * (self.canonicalize(x)[1] // 2)
