r"""``kernel-cnf``: an E(D) x S_N equivariant continuous normalizing flow of particles (Koehler et al. 2020).

The flow acts on the reduced coordinates ``y`` ``(N, (n - 1) d)`` of :mod:`sesamo_bench.core.particles`:
it maps them to mean-free positions x = H^T y ``(N, n, d)``, integrates the kernel dynamics

    dx_i/dt = v_i(x, t) = sum_{j != i} (x_i - x_j) phi(r_ij, t),    r_ij = |x_i - x_j|,

from t = 0 to t = 1 and maps back, y' = H x(1). The radial kernel is Koehler, Klein and Noe's
choice, an expansion in Gaussian radial basis functions of the distance with time-dependent
weights given by Gaussian basis functions of t, plus a constant term (a global dilation,
sum_{j != i} (x_i - x_j) = n x_i on mean-free x):

    phi(r, t) = sum_l b_l(t) [W_{0 l} + sum_{k >= 1} W_{k l} exp(-(r - mu_k)^2 / (2 s^2))],

with fixed centres mu_k evenly spaced on [0, ``r_max``], s their spacing, and the learned
weights W (zero at construction: v = 0, the identity).

Symmetries. v is built from differences and distances only: it is invariant under translations
and commutes with every orthogonal R acting on all particles alike (v(R x) = R v(x), r_ij
unchanged) and with every permutation of the particles (the sum over j runs over all others).
The flow map commutes with the same group; with an invariant prior the density is invariant
(Koehler et al., Theorem 1; :mod:`sesamo_bench.core.equivariant`). The pair terms are antisymmetric,
so sum_i v_i = 0: the centre of mass stays fixed and x(t) stays mean-free.

Exact divergence. For one pair term, d/dx_i^a [(x_i^a - x_j^a) phi(r_ij)] = phi + (x_i^a -
x_j^a)^2 phi'(r_ij) / r_ij; summed over the D components a,

    div v = sum_i sum_a dv_i^a / dx_i^a = sum_{i != j} [D phi(r_ij, t) + r_ij phi'(r_ij, t)],

in closed form (phi' is the analytic derivative of the basis functions), not a stochastic trace
estimate: importance weights need the exact density. This is the trace of the full Jacobian J =
dv/dx on R^{n d}; the flow lives on the mean-free subspace, where y evolves by u(y) = H v(H^T y)
with Jacobian H J H^T (H acts on the particle index). Its trace is tr(H J H^T) = tr(J H^T H) =
tr(J P), P = H^T H the orthogonal projector onto the mean-free subspace. v is translation
invariant, so J annihilates the translation directions (1, ..., 1) x e_a, the range of 1 - P:
J (1 - P) = 0, J P = J, and the trace on the subspace equals the full trace. By Liouville's
formula ln|det dy'/dy| = int_0^1 div v(x(t), t) dt, integrated together with x (an augmented
state); the inverse integrates the same system backwards from t = 1 to 0.

Solver. The integration uses torchdiffeq's ``odeint`` (Chen et al. 2018, a maintained library,
rather than a hand-written solver), with gradients by direct backpropagation through the solver
steps. ``solver="rk4"`` (default) takes ``steps`` fixed steps of the 3/8-rule Runge-Kutta method:
reproducible and of fixed cost; ``euler`` and ``midpoint`` are the cheaper fixed-step options,
``dopri5``, ``bosh3`` and ``dopri8`` adaptive ones with tolerances ``rtol`` and ``atol``.

Discretisation error. What the flow computes is the solver's map Phi_h, not the exact ODE flow:
inverse(forward(z)) = z, and ladj = ln|det dPhi_h/dz|, hold only up to the solver's error
(O(h^4) for rk4, growing with the strength of the learned field). The contract tolerance is the
class attribute ``tolerance`` (honoured by ``tests/test_architectures.py``). For the benchmarks:
samples x = Phi_h(z) are reported with ln q = ln q_0(z) - ladj, which is the density of the
samples only up to that error, so ESS and ln Z carry a bias of the size of the ladj error
(``tests/test_kernel_cnf.py`` checks the fourth-order convergence on a random field; raise
``steps`` or use ``dopri5`` with tight tolerances to check that a reported ESS has converged in
the step size). Measured on DW-4 after the quick preset (3000 steps, seed 0): the default rk4's
ladj differs from the exact ln|det dPhi_h/dz| (autograd, 6 x 6) by 1.7e-3 rms (1.3e-2 max over
2000 samples), from a dopri5 integration at rtol 1e-10 by 2.8e-3 rms; ESS 0.0129 against 0.0130
and ln Z 29.819 against 29.817 with the exact log-determinant on the same samples.

Flow matching. :meth:`KernelCNF.velocity` exposes the field, so ``--set objective=flow-matching``
trains it without the solver (:mod:`sesamo_bench.core.flow_matching`).

Cost. 4 ``steps`` evaluations of the field per pass (forward, and again in the backward pass);
on DW-4 at batch 512 a training step costs about 6x a ``realnvp`` step (one core).

References:
    J. Koehler, L. Klein, F. Noe, "Equivariant flows: exact likelihood generative learning for
    symmetric densities", ICML 2020. R. T. Q. Chen et al., "Neural ordinary differential
    equations", NeurIPS 2018 (torchdiffeq).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchdiffeq import odeint

from sesamo_bench.core.architecture import Architecture, Domain
from sesamo_bench.errors import ConfigError
from sesamo_bench.core.particles import pair_indices, to_positions, to_reduced

FIXED = ("rk4", "midpoint", "euler")
ADAPTIVE = ("dopri5", "bosh3", "dopri8")


class KernelDynamics(nn.Module):
    r"""The vector field v(x, t) of mean-free positions ``(N, n, d)`` and its exact divergence ``(N,)``.

    Arguments:
        n, d: particle count and spatial dimension.
        basis: number K of radial basis functions of the distance (plus the constant term).
        times: number L of basis functions of t.
        r_max: the largest centre of the radial basis.
    """

    def __init__(self, n: int, d: int, *, basis: int, times: int, r_max: float):
        super().__init__()
        self.n, self.d = n, d
        i, j = pair_indices(n)
        # (n, P): +1 at particle i, -1 at particle j of pair p = (i, j), i < j
        incidence = torch.zeros(n, i.numel())
        incidence[i, torch.arange(i.numel())] = 1.0
        incidence[j, torch.arange(i.numel())] = -1.0
        width = r_max / max(basis - 1, 1)
        self.register_buffer("incidence", incidence, persistent=False)
        self.register_buffer("mu", torch.linspace(0.0, r_max, basis) / width, persistent=False)  # in widths
        self.register_buffer("tau", torch.linspace(0.0, 1.0, times), persistent=False)
        self.inv_width, self.inv_t_width = 1.0 / width, float(max(times - 1, 1))
        self.weight = nn.Parameter(torch.zeros(basis + 1, times))

    def kernel(self, r: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        r"""phi(r, t) and d phi / d r for distances ``r`` ``(N, P)``."""
        b = torch.exp(-0.5 * ((t - self.tau) * self.inv_t_width) ** 2)  # (L,)
        w = self.weight @ b  # (K + 1,)
        u = (r * self.inv_width).unsqueeze(-1) - self.mu  # (N, P, K): (r - mu_k) / s
        g = torch.exp(-0.5 * u * u)
        phi = g @ w[1:] + w[0]
        dphi = (u * g) @ (w[1:] * -self.inv_width)
        return phi, dphi

    def velocity(self, t: Tensor, x: Tensor) -> Tensor:
        r"""v(x, t) for a time per configuration, ``t`` ``(N,)`` (flow matching evaluates the field
        at random times, without the divergence)."""
        diff = torch.einsum("np,bnd->bpd", self.incidence, x)
        b = torch.exp(-0.5 * ((t.unsqueeze(-1) - self.tau) * self.inv_t_width) ** 2)  # (N, L)
        w = b @ self.weight.T  # (N, K + 1)
        u = (diff.norm(dim=-1) * self.inv_width).unsqueeze(-1) - self.mu
        phi = torch.einsum("bpk,bk->bp", torch.exp(-0.5 * u * u), w[:, 1:]) + w[:, :1]
        return torch.einsum("np,bpd->bnd", self.incidence, diff * phi.unsqueeze(-1))

    def forward(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        diff = torch.einsum("np,bnd->bpd", self.incidence, x)  # x_i - x_j of the pairs i < j, (N, P, d)
        r = diff.norm(dim=-1)
        phi, dphi = self.kernel(r, t)
        # v_i = sum_{j > i} (x_i - x_j) phi_ij - sum_{j < i} (x_j - x_i) phi_ji: the transposed incidence
        v = torch.einsum("np,bpd->bnd", self.incidence, diff * phi.unsqueeze(-1))
        div = 2.0 * (self.d * phi + r * dphi).sum(-1)  # sum over the ordered pairs i != j
        return v, div


class KernelCNF(Architecture):
    r"""E(D) x S_N equivariant continuous normalizing flow with a radial-kernel vector field.

    Arguments:
        domain: ``n`` particles in ``d`` dimensions (:class:`~sesamo_bench.core.architecture.Domain`
            with ``particles=(n, d)``).
        basis: number of radial basis functions of the pair distance.
        times: number of basis functions of t (the time dependence of the kernel weights).
        r_max: largest radial centre, in the flow's units (the prior's standard deviations).
        solver: ``rk4``, ``midpoint`` or ``euler`` (``steps`` fixed steps), or ``dopri5``,
            ``bosh3`` or ``dopri8`` (adaptive, ``rtol`` and ``atol``).
        steps: number of fixed steps on [0, 1].
        rtol, atol: tolerances of an adaptive solver.

    Example:
        >>> f = KernelCNF(Domain((6,), particles=(4, 2))).double()
        >>> with torch.no_grad():
        ...     _ = f.dynamics.weight.normal_(0.0, 0.05)
        >>> z = torch.randn(3, 6, dtype=torch.float64)
        >>> x, ladj = f(z)
        >>> z2, ladj_inv = f.inverse(x)
        >>> bool((z2 - z).abs().max() < 1e-3), bool((ladj + ladj_inv).abs().max() < 1e-3)
        (True, True)
    """

    name = "kernel-cnf"
    description = ("E(D) x S_N equivariant continuous flow of particles: radial-kernel pair dynamics, exact "
                   "divergence, torchdiffeq solver (Koehler et al. 2020)")
    domains = ("particles",)
    equivariance = ("particles",)
    #: inverse and ladj are exact up to the solver's error: the contract test's absolute tolerance
    tolerance = 1e-4

    @classmethod
    def check_values(cls, params: dict[str, Any]) -> None:
        p = params
        if p["solver"] not in FIXED + ADAPTIVE:
            raise ConfigError(f"kernel-cnf: 'solver' must be one of {', '.join(FIXED + ADAPTIVE)}, got {p['solver']!r}")
        if not isinstance(p["steps"], int) or p["steps"] < 1:
            raise ConfigError(f"kernel-cnf: 'steps' must be an integer >= 1, got {p['steps']!r}")
        if not isinstance(p["basis"], int) or p["basis"] < 1 or not isinstance(p["times"], int) or p["times"] < 1:
            raise ConfigError(f"kernel-cnf: 'basis' and 'times' must be integers >= 1, got {p['basis']!r}, "
                              f"{p['times']!r}")
        if not p["r_max"] > 0 or not p["rtol"] > 0 or not p["atol"] > 0:
            raise ConfigError(f"kernel-cnf: 'r_max', 'rtol' and 'atol' must be > 0, got {p['r_max']!r}, "
                              f"{p['rtol']!r}, {p['atol']!r}")

    def __init__(self, domain: Domain, *, basis: int = 8, times: int = 4, r_max: float = 6.0,
                 solver: str = "rk4", steps: int = 8, rtol: float = 1e-7, atol: float = 1e-9):
        super().__init__()
        self.check_values({"basis": basis, "times": times, "r_max": r_max, "solver": solver, "steps": steps,
                           "rtol": rtol, "atol": atol})
        self.domain, self.dim = domain, domain.dim
        self.n, self.d = domain.particles
        self.solver, self.steps, self.rtol, self.atol = solver, steps, float(rtol), float(atol)
        self.dynamics = KernelDynamics(self.n, self.d, basis=basis, times=times, r_max=float(r_max))

    def _field(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return self.dynamics(t, state[0])

    def _integrate(self, y: Tensor, t0: float, t1: float) -> tuple[Tensor, Tensor]:
        self.check_input(y)
        x = to_positions(y, self.n, self.d)
        state = (x, y.new_zeros(y.shape[0]))
        if self.solver in FIXED:
            t = torch.linspace(t0, t1, self.steps + 1, dtype=y.dtype, device=y.device)
            xs, ls = odeint(self._field, state, t, method=self.solver)
        else:
            t = torch.tensor([t0, t1], dtype=y.dtype, device=y.device)
            xs, ls = odeint(self._field, state, t, method=self.solver, rtol=self.rtol, atol=self.atol)
        return to_reduced(xs[-1]), ls[-1]

    def velocity(self, t: Tensor, y: Tensor) -> Tensor:
        """The vector field on the reduced coordinates, u(t, y) = H v(H^T y, t) ``(N, D)``, at times
        ``t`` ``(N,)`` (the ``flow-matching`` objective)."""
        return to_reduced(self.dynamics.velocity(t, to_positions(y, self.n, self.d)))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._integrate(z, 0.0, 1.0)

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._integrate(x, 1.0, 0.0)
