r"""``polar-zm``: a flow on R^2 that commutes exactly with the rotations by 2 pi k / M (Z_M).

In polar coordinates x = r (cos theta, sin theta), with s = ln r and u = M theta, two kinds of
coupling layers alternate (radial first):

- radial: s' = s + t(u) + [h_u(s) - s], theta' = theta, with h_u a monotone rational-quadratic
  spline on [-B, B] (identity outside) and t a bounded shift, both from an MLP of the Z_M-invariant
  features (cos u, sin u);
- angular: theta' = theta + [c_r(v) - v] / M, v = wrap(u - b(s)) in [-pi, pi), r' = r, with c_r a
  monotone rational-quadratic spline of [-pi, pi] onto itself (fixed end points, slope 1 there, so
  c_r - id is continuous and 2 pi periodic: a circle diffeomorphism of u, Rezende et al. 2020) and
  b a rotation of the circle, both from an MLP of s.

Rotating x by 2 pi / M shifts theta by 2 pi / M and u by 2 pi: every conditioner input and v are
unchanged, so each layer commutes with the rotation, and a Gaussian prior with mean 0 gives a
Z_M-invariant density (Koehler, Klein, Noe 2020). The splines are zuko's
``MonotonicRQSTransform`` (Durkan et al. 2019). Since dx = r dr dtheta = e^{2s} ds dtheta,

    ln|det dx'/dx| = sum_radial [2 (s' - s) + ln h_u'(s)] + sum_angular ln c_r'(v).

The output is x' = e^{s_L - s_0} R(theta_L - theta_0) x: a fresh flow (zero last layers) is the
identity, and x = 0 (measure zero; theta = atan2(0, 0) = 0 there) maps to 0. Near the origin
(s < -B) a radial layer is the angle-dependent scaling r' = e^{t(u)} r.

References:
    | Equivariant Flows: Exact Likelihood Generative Learning for Symmetric Densities
      (Koehler, Klein, Noe, 2020), https://arxiv.org/abs/2006.02425
    | Neural Spline Flows (Durkan et al., 2019), https://arxiv.org/abs/1906.04032
    | Normalizing Flows on Tori and Spheres (Rezende et al., 2020), https://arxiv.org/abs/2002.02428
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from sesamo_bench.core.architecture import Architecture, Domain
from sesamo_bench.core.flows import mlp
from sesamo_bench.core.spline import check_bins, monotonic_rqs
from sesamo_bench.errors import ConfigError, IncompatibleError


def wrap(a: Tensor) -> Tensor:
    """``a`` mod 2 pi, in [-pi, pi)."""
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


class PolarZM(Architecture):
    r"""Z_M-equivariant spline flow on R^2: radial and angular couplings in polar coordinates.

    Arguments:
        domain: R^2 (a flat domain of dimension 2).
        order: the group order M; the equivariant methods take it from the symmetry (``zm``'s ``m``)
            and refuse an order that is not a multiple of it.
        couplings: number of layers, alternating radial and angular (radial first).
        hidden_layers, width, activation: the conditioner MLPs.
        bins: spline bins K.
        bound: the radial splines act on ln r in [-bound, bound] (in units of the prior's
            standard deviation); the radial shift per layer is bounded by ``bound`` too.

    Example:
        >>> f = PolarZM(Domain((2,)), order=8, couplings=2, width=8).double()
        >>> for p in f.parameters():
        ...     _ = torch.nn.init.normal_(p, std=0.3)
        >>> z = torch.randn(5, 2, dtype=torch.float64)
        >>> c, s = math.cos(2 * math.pi / 8), math.sin(2 * math.pi / 8)
        >>> rot = torch.tensor([[c, s], [-s, c]], dtype=torch.float64)  # x @ rot: rotation by 2 pi / 8
        >>> x, ladj = f(z)
        >>> torch.allclose(f(z @ rot)[0], x @ rot) and torch.allclose(f.inverse(x)[0], z)
        True
    """

    name = "polar-zm"
    description = ("Z_M-equivariant: rational-quadratic splines (zuko) of ln r and of the angle M theta "
                   "in polar coordinates, conditioned on Z_M invariants")
    domains = ("flat",)
    equivariance = ("zm",)

    @classmethod
    def accepts(cls, domain: Domain) -> str | None:
        reason = super().accepts(domain)
        if reason is None and domain.dim != 2:
            reason = f"acts on R^2 (one 2-vector), not on {domain.describe()}"
        return reason

    @classmethod
    def fit_symmetry(cls, params: dict[str, Any], symmetry: Any) -> dict[str, Any]:
        m = int(symmetry.m)
        order = params.get("order")
        if order is None:
            return {**params, "order": m}
        if order % m:
            raise IncompatibleError(f"architecture 'polar-zm' with order={order} does not commute with the "
                                    f"rotations by 2 pi/{m} of symmetry 'zm' (m={m}): set flow.order to a "
                                    f"multiple of {m} or leave it unset")
        return params

    @classmethod
    def check_values(cls, params: dict[str, Any]) -> None:
        if params["order"] < 1:
            raise ConfigError(f"order must be >= 1, got {params['order']}")
        check_bins(params["bins"])
        if not params["bound"] > 0:
            raise ConfigError(f"bound must be > 0, got {params['bound']}")

    def __init__(self, domain: Domain, *, order: int = 8, couplings: int = 6, hidden_layers: int = 2,
                 width: int = 32, activation: str = "relu", bins: int = 8, bound: float = 5.0,
                 kernels: str = "auto"):
        super().__init__()
        self.check_values({"order": order, "bins": bins, "bound": bound})
        self.domain, self.dim = domain, domain.dim
        self.order, self.bins, self.bound = int(order), int(bins), float(bound)
        # radial layers see (cos u, sin u), angular ones s; each MLP gives a shift (t or b) and the
        # spline's 3K - 1 parameters; zero last layers: t = 0, b = 0 and identity splines
        self.layers = nn.ModuleList(
            mlp(2 if k % 2 == 0 else 1, 3 * bins, hidden_layers=hidden_layers, width=width, activation=activation,
                kernels=kernels) for k in range(couplings))

    def _spline(self, raw: Tensor, bound: float) -> Any:
        """zuko's ``MonotonicRQSTransform`` (:func:`~sesamo_bench.core.spline.monotonic_rqs`)."""
        k = self.bins
        return monotonic_rqs(raw[:, 1:k + 1], raw[:, k + 1:2 * k + 1], raw[:, 2 * k + 1:], bound=bound)

    def _radial(self, k: int, s: Tensor, theta: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """s' (or s from s'), and the forward ln|det| of layer k."""
        u = self.order * theta
        raw = self.layers[k](torch.stack([torch.cos(u), torch.sin(u)], -1))
        t = self.bound * torch.tanh(raw[:, 0] / self.bound)
        spline = self._spline(raw, self.bound)
        if inverse:
            s_in = spline.inv(s - t)
            y, ld = spline.call_and_ladj(s_in)
            return s_in, 2 * (y - s_in + t) + ld
        y, ld = spline.call_and_ladj(s)
        ds = (y - s) + t
        return s + ds, 2 * ds + ld

    def _angular(self, k: int, s: Tensor, theta: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """theta' (or theta from theta'), and the forward ln|det| of layer k."""
        raw = self.layers[k](s[:, None])
        v = wrap(self.order * theta - raw[:, 0])
        spline = self._spline(raw, math.pi)
        if inverse:
            v_out = v
            v = spline.inv(v_out)
            _, ld = spline.call_and_ladj(v)
            return theta - (v_out - v) / self.order, ld
        v_out, ld = spline.call_and_ladj(v)
        return theta + (v_out - v) / self.order, ld

    def _run(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        r = torch.linalg.vector_norm(x, dim=1)
        s0 = torch.log(r.clamp_min(torch.finfo(x.dtype).tiny))
        theta0 = torch.atan2(x[:, 1], x[:, 0])
        s, theta, ladj = s0, theta0, x.new_zeros(x.shape[0])
        order = reversed(range(len(self.layers))) if inverse else range(len(self.layers))
        for k in order:
            if k % 2 == 0:
                s, ld = self._radial(k, s, theta, inverse)
            else:
                theta, ld = self._angular(k, s, theta, inverse)
            ladj = ladj + ld
        ds, dtheta = s - s0, theta - theta0
        c, sn = torch.cos(dtheta), torch.sin(dtheta)
        scale = torch.exp(ds)
        out = torch.stack([c * x[:, 0] - sn * x[:, 1], sn * x[:, 0] + c * x[:, 1]], -1) * scale[:, None]
        return out, -ladj if inverse else ladj

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """x = g(z) and ln|det dg/dz|, ``(N, 2)`` and ``(N,)``."""
        return self._run(z, False)

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """z = g^{-1}(x) and ln|det dg^{-1}/dx|."""
        return self._run(x, True)
