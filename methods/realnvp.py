r"""``realnvp``: the naive flow, x = g(z) from a Gaussian prior; it ignores the symmetry."""

from __future__ import annotations

from sesamo_bench.core.method import PlainFlow


class NaiveRealNVP(PlainFlow):
    """Plain RealNVP (any architecture) from a Gaussian prior; ignores the symmetry."""

    name = "realnvp"
    needs_symmetry = False
    description = "naive RealNVP: x = g(z)"
    label = "RealNVP"
    colour = "tab:blue"
    order = 0
