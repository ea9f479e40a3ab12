r"""Z2: the sign flip x -> -x of all components or of a chosen subset (paper Eqs. 6, 16, 36).

Canonical cell: sum of the flipped components >= 0, penalty lambda(x) = -sum_S x (Eq. 38).
Exact: u ~ Bernoulli(1/2); broken: u ~ Bernoulli(e^b) with learnable b.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sesamo_bench.core.symmetry import Bernoulli, Symmetry, subset_mask


class Z2(Symmetry):
    r"""Sign flip of the components ``flip`` (all when empty).

    Arguments:
        broken: learn the flip probability e^b (paper App. E.2) instead of fixing it to 1/2.
        flip: flat component indices to flip; empty means all components.
    """

    name = "z2"
    examples = [((3,), {}), ((1,), {"broken": True}), ((2,), {}), ((3,), {"flip": [0, 2]})]
    finite = True

    def __init__(self, *, broken: bool = False, flip: list[int] = []):  # noqa: B006 - schema default
        super().__init__()
        self.broken, self.flip = bool(broken), list(flip)
        self.modulation = Bernoulli(learnable=self.broken)
        self.register_buffer("mask", torch.ones(0, dtype=torch.bool), persistent=False)

    def bind(self, shape: tuple[int, ...]) -> Z2:
        super().bind(shape)
        self.mask = subset_mask(self.flip, self.shape, "z2 'flip'").to(self.mask.device)
        return self

    @property
    def order(self) -> int:
        return 2

    def _sign(self, x: Tensor, u: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        flipped = u.bool()[:, None] & self.mask[None, :]
        return torch.where(flipped, -flat, flat).reshape(x.shape)

    def act(self, x: Tensor, u: Tensor) -> Tensor:
        return self._sign(x, u)

    def compose(self, u: Tensor, v: Tensor) -> Tensor:
        return u ^ v

    def inverse(self, u: Tensor) -> Tensor:
        return u

    def penalty_fn(self, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        return -(flat * self.mask).sum(-1)

    def canonicalize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        u = (self.penalty_fn(z) > 0).long()
        return self._sign(z, u), u

    def breaking_ratio(self) -> float | None:
        if not self.broken:
            return None
        return 1.0 - 2.0 * float(self.modulation.probabilities()[1])

    def breaking_sign(self, x: Tensor) -> Tensor:
        """+1 in the canonical cell (u = 0), -1 in its flipped copy (u = 1)."""
        return 1 - 2 * self.canonicalize(x)[1]
