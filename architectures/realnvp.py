r"""``realnvp``: the fully connected affine RealNVP (paper Table 3), the default architecture.

Its parameters are the run configuration's ``couplings``, ``hidden_layers``, ``width``,
``activation`` and ``scale_bound`` (``--set width=100`` or ``--set flow.width=100``, the same
run), so configurations from before the architecture registry keep their run ids. Float32
conditioners run the fused native or oneDNN MLP kernels (:mod:`sesamo_bench.core.kernels`).
"""

from __future__ import annotations

from sesamo_bench.core.architecture import Architecture, Domain
from sesamo_bench.core.flows import RealNVP


class MLPRealNVP(RealNVP, Architecture):
    r"""Affine couplings with MLP conditioners on R^D, alternating a checkerboard split of the field.

    Arguments:
        domain: any domain; a lattice field is split by the parity of all its indices.
        couplings, hidden_layers, width, activation: the paper's N_C, N_L, N_N and activation.
        scale_bound: bound of the per-layer log-scale.

    Example:
        >>> f = MLPRealNVP(Domain((4,)), couplings=2, width=8)
        >>> f.dim
        4
    """

    name = "realnvp"
    description = "affine couplings, fully connected MLP conditioners (paper Table 3)"

    def __init__(self, domain: Domain, *, couplings: int = 6, hidden_layers: int = 4, width: int = 40,
                 activation: str = "relu", scale_bound: float = 3.0, kernels: str = "auto"):
        super().__init__(domain.dim, shape=domain.shape, couplings=couplings, hidden_layers=hidden_layers,
                         width=width, activation=activation, scale_bound=scale_bound, kernels=kernels)
        self.domain = domain
