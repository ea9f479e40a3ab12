r"""``canonicalization`` (paper Sec. 2.3.2): z_c, u = C(z); x = T_u g(z_c).

An equivariant flow by canonicalization: the prior sample is moved into the canonical cell, the
flow acts there, and the group element that moved it is applied back. Finite groups only; the
prior must be invariant (mean 0). The exact density sums over the preimages of x, so it stays
correct where the flow leaves its cell.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sesamo_bench.core.method import Method, Sample
from sesamo_bench.errors import IncompatibleError


class Canonicalization(Method):
    """Equivariant flow by canonicalization: x = T_u g(C z) (paper Eq. 23); finite groups."""

    name = "canonicalization"
    description = "canonicalize the prior sample, flow inside the cell, map back"
    label = "Canonicalization"
    colour = "tab:green"
    order = 1

    @classmethod
    def check(cls, symmetry, spec, **options):
        if symmetry is None or not symmetry.finite:
            what = "no symmetry" if symmetry is None else f"the continuous symmetry '{symmetry.name}'"
            raise IncompatibleError(
                f"canonicalization needs a finite symmetry group, got {what}; use 'sesamo' or 'realnvp'"
            )
        if options.get("prior_mean", 0.0) != 0.0:
            raise IncompatibleError("canonicalization needs an invariant prior: prior_mean must be 0")

    def transform(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""The equivariant map g~(z) = C_z^{-1} g(C_z z) (paper Eq. 23).

        Returns ``(x, ladj, y, u)``: the output, ln|det dg/dz|, the flow output in the cell and the
        group element of the canonicalization, for ``z`` of shape ``(N, D)``.
        """
        zc, u = self.symmetry.canonicalize(self._field(z))
        y, ladj = self.flow(zc.reshape(z.shape[0], -1))
        y = self._field(y)
        return self.symmetry.act(y, u), ladj, y, u

    def sample(self, n: int) -> Sample:
        z = self.prior.sample(n)
        x, ladj, y, u = self.transform(z)
        return Sample(x, self.prior.log_prob(z) - ladj, y, u)

    def log_prob(self, x: Tensor) -> Tensor:
        terms = []
        for y, u in self.symmetry.preimages(x):
            zc, ladj = self.flow.inverse(y.reshape(y.shape[0], -1))
            inside = self.symmetry.penalty_fn(self._field(zc)) <= 0
            z = self.symmetry.act(self._field(zc), u).reshape(x.shape[0], -1)
            lp = self.prior.log_prob(z) + ladj
            terms.append(torch.where(inside, lp, torch.full_like(lp, -torch.inf)))
        return torch.logsumexp(torch.stack(terms), 0)
