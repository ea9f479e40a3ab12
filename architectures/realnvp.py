r"""``realnvp``: the fully connected affine RealNVP (paper Table 3), the default architecture.

Its parameters are those of :class:`~sesamo_bench.core.flows.CouplingParams`, which are also the
run configuration's fields ``couplings``, ``hidden_layers``, ``width``, ``activation`` and
``scale_bound`` (``--set width=100`` or ``--set flow.width=100``, the same run), so
configurations from before the architecture registry keep their run ids. Float32 conditioners run
the fused native or oneDNN MLP kernels (:mod:`sesamo_bench.core.kernels`).
"""

from __future__ import annotations

from typing import Any

from sesamo_bench.core.architecture import Architecture, Domain
from sesamo_bench.core.flows import CouplingParams, RealNVP


class MLPRealNVP(RealNVP, Architecture):
    r"""Affine couplings with MLP conditioners on R^D, alternating a checkerboard split of the field.

    Arguments:
        domain: any domain; a lattice field is split by the parity of all its indices.
        couplings, hidden_layers, width, activation, scale_bound: the paper's N_C, N_L, N_N,
            activation and the bound of the per-layer log-scale, declared once in
            :class:`~sesamo_bench.core.flows.CouplingParams`.

    Example:
        >>> f = MLPRealNVP(Domain((4,)), couplings=2, width=8)
        >>> f.dim
        4
    """

    name = "realnvp"
    description = "affine couplings, fully connected MLP conditioners (paper Table 3)"

    @CouplingParams.keywords
    def __init__(self, domain: Domain, *, kernels: str = "auto", **coupling: Any):
        super().__init__(domain.dim, shape=domain.shape, kernels=kernels, **coupling)
        self.domain = domain
