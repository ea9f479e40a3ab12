r"""The Hubbard model in the spin basis (paper Eqs. 21, 49-52, App. G.2, H.2; Schuh et al. 2025).

Auxiliary field x of ``sites * nt`` real components, laid out time-major (component
``t * sites + j`` is site j at time slice t). With the discretised couplings
kappa~ = beta kappa / nt and U~ = U beta / nt the action is

    f[x] = sum x^2 / (2 U~) - ln det M[x] - ln det M[-x]                       (Eq. 49)

with the fermion matrix of Eq. (50), rows and columns indexed by (time, site):

    M[x] = 1 - B,  block (t+1, t) of B = s_{t+1} e^{h} diag(e^{x_t}),  s_0 = -1, s_{t'} = 1 else,

h = kappa~ * (hopping adjacency), anti-periodic in time (s_0 = -1). For nt = 1 this is
``M[x] = 1 + e^h diag(e^x)`` and det M[x] = det(1 + prod_t e^h e^{x_t}) in general.

On a bipartite lattice det M[-x] = e^{-sum x} det M[x] (particle-hole symmetry), so the product
det M[x] det M[-x] is positive even where a single determinant is not (nt > 1); the action is
computed from ln|det M[x]| + ln|det M[-x]| (both from ``slogdet``), which equals ln of that
product. Odd rings are not bipartite; there the product can be negative for nt > 1, so they are
refused.

The exact references (ln Z, quadrant masses, breaking ratio) are known for 2 sites and nt = 1,
where exp(-f) = 4 h(x)^2 exp(-(x1^2 + x2^2) / (2 U~)) with
h(x) = cosh((x1+x2)/2) + cosh((x1-x2)/2) cosh(kappa~) (reference notes; paper Eq. 51 prints the
exponent as /(U beta)). Expanding h^2 into exponentials makes every quadrant integral a product of
one-dimensional Gaussian integrals over a half line, i.e. error functions, so these references are
exact (the tests check them against 2-D scipy quadrature).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from scipy.special import log_ndtr, logsumexp
from torch import Tensor

from sesamo_bench.core.target import check, is_int, is_real, SMOKE, Target




#: bounds of the discretised couplings: exp(x) of a field of scale sqrt(U~) must stay far inside
#: float64's range (e^709) out to 14 standard deviations, and exp(kappa~ h) as well
MAX_U_TILDE = 2500.0
MAX_KAPPA_TILDE = 50.0


def hopping_matrix(sites: int) -> np.ndarray:
    """Nearest-neighbour adjacency: one bond for 2 sites, a periodic ring for more, ``(V, V)``."""
    a = np.zeros((sites, sites))
    for j in range(sites if sites > 2 else 1):
        a[j, (j + 1) % sites] = a[(j + 1) % sites, j] = 1.0
    return a


def mixture_terms(u_tilde: float, kappa_tilde: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""exp(-f) for 2 sites, nt = 1, as nine Gaussians N((U~ a_i, U~ b_i), U~ I): ``(ln weight, a, b)``.

    4 h^2 = 2 (1 + c^2) + e^{x1+x2} + e^{-x1-x2} + 2c (e^{+-x1} + e^{+-x2}) + c^2 e^{+-(x1-x2)},
    c = cosh(kappa~); each term w exp(a x1 + b x2) times exp(-|x|^2 / (2 U~)) is a Gaussian of mass
    2 pi U~ w exp(U~ (a^2 + b^2) / 2) (the constant 2 pi U~ is dropped from the log weights).
    """
    c = math.cosh(kappa_tilde)
    terms = [(2 * (1 + c * c), 0, 0), (1.0, 1, 1), (1.0, -1, -1),
             (2 * c, 1, 0), (2 * c, -1, 0), (2 * c, 0, 1), (2 * c, 0, -1),
             (c * c, 1, -1), (c * c, -1, 1)]
    w = np.array([t[0] for t in terms])
    a = np.array([t[1] for t in terms], dtype=float)
    b = np.array([t[2] for t in terms], dtype=float)
    return np.log(w) + 0.5 * u_tilde * (a * a + b * b), a, b


@functools.lru_cache(maxsize=256)
def quadrant_log_masses(u_tilde: float, kappa_tilde: float) -> tuple[float, float, float, float]:
    r"""ln of the mass of exp(-f) in the quadrants (+,+), (-,-), (-,+), (+,-) for 2 sites, nt = 1.

    exp(-f) = sum_i w_i exp(a_i x1 + b_i x2 - (x1^2 + x2^2) / (2 U~)); over the quadrant
    s1 x1 > 0, s2 x2 > 0 each term integrates to w_i G(s1 a_i) G(s2 b_i) with
    G(a) = int_0^inf exp(a x - x^2 / (2 U~)) dx = sqrt(2 pi U~) exp(U~ a^2 / 2) Phi(a sqrt(U~)).

    Returns:
        the four log masses, in the z2xz2 element order u = 2 s + g.
    """
    log_mix, a, b = mixture_terms(u_tilde, kappa_tilde)
    log_w = log_mix - 0.5 * u_tilde * (a * a + b * b)  # ln w_i of the 4 h^2 expansion

    def log_g(v: np.ndarray) -> np.ndarray:
        return 0.5 * math.log(2 * math.pi * u_tilde) + 0.5 * u_tilde * v**2 + log_ndtr(v * math.sqrt(u_tilde))

    out = []
    for s1, s2 in ((1, 1), (-1, -1), (-1, 1), (1, -1)):
        out.append(float(logsumexp(log_w + log_g(s1 * a) + log_g(s2 * b))))
    return tuple(out)


class Hubbard(Target):
    r"""Hubbard model on a ring of ``sites`` sites with ``nt`` time slices (fermion-matrix form).

    Arguments:
        u: on-site interaction U > 0.
        beta: inverse temperature > 0.
        kappa: hopping amplitude >= 0.
        nt: number of time slices >= 1.
        sites: number of spatial sites >= 2 (2: one bond; more: a periodic ring, which must have
            an even number of sites when nt > 1).

    References:
        Schuh et al., Simulating the Hubbard model with equivariant normalizing flows,
        arXiv:2501.07371; Wynen et al., PRB 100, 075141 (2019).

    Example:
        >>> t = Hubbard()
        >>> x = torch.zeros(1, 2, dtype=torch.float64)
        >>> round(float(t.action(x)), 6)  # -ln(4 h(0)^2), h(0) = 1 + cosh(1)
        -3.253047
    """

    name = "hubbard"
    examples = [{}, {"sites": 4, "nt": 2, "beta": 2.0}, {"sites": 3, "nt": 1}]
    dtype = torch.float64

    # float64 for the physics (reference notes): samples, coupling transforms, ln q and the
    # action; the conditioner MLPs run in float32 (mlp_dtype; `--set mlp_dtype=auto` for
    # float64 everywhere), which leaves every coupling an exact bijection with an exact ln det
    presets = {
        "smoke": {**SMOKE, "prior_var": 18.0, "mlp_dtype": "float32"},
        "quick": {"steps": 3000, "batch_size": 2048, "lr": 2e-3, "lr_schedule": "cosine", "couplings": 6,
                  "hidden_layers": 2, "width": 40, "prior_var": 18.0, "lr_breaking": 1e-2, "penalty_a": 10.0,
                  "eval_every": 100, "eval_samples": 4096, "final_samples": 65536, "checkpoint_every": 500,
                  "mlp_dtype": "float32"},
        "paper": {"steps": 6000, "batch_size": 8192, "lr": 5e-4, "couplings": 6, "hidden_layers": 4,
                  "width": 40, "eval_every": 100, "eval_samples": 8192, "final_samples": 262144,
                  "checkpoint_every": 500, "lr_patience": 2000,
                  "prior_var": 18.0, "mlp_dtype": "float32"},
    }

    def __init__(self, *, u: float = 18.0, beta: float = 1.0, kappa: float = 1.0, nt: int = 1,
                 sites: int = 2):
        check(is_real(u) and u > 0, f"hubbard: 'u' must be a number > 0, got {u!r}")
        check(is_real(beta) and beta > 0, f"hubbard: 'beta' must be a number > 0, got {beta!r}")
        check(is_real(kappa) and kappa >= 0, f"hubbard: 'kappa' must be a number >= 0, got {kappa!r}")
        check(is_int(nt) and nt >= 1, f"hubbard: 'nt' must be an integer >= 1, got {nt!r}")
        check(is_int(sites) and sites >= 2, f"hubbard: 'sites' must be an integer >= 2, got {sites!r}")
        check(nt == 1 or sites % 2 == 0,
              f"hubbard: 'sites' must be even when nt > 1 (odd rings are not bipartite and "
              f"det M[x] det M[-x] can be negative), got sites={sites}, nt={nt}")
        check(u * beta / nt <= MAX_U_TILDE,
              f"hubbard: U beta / nt must be <= {MAX_U_TILDE:g} (the field's scale sqrt(U beta / nt) enters exp(x) "
              f"in the fermion matrix, which overflows beyond it), got u={u!r}, beta={beta!r}, nt={nt}")
        check(kappa * beta / nt <= MAX_KAPPA_TILDE,
              f"hubbard: kappa beta / nt must be <= {MAX_KAPPA_TILDE:g} (exp of the hopping matrix overflows "
              f"beyond it), got kappa={kappa!r}, beta={beta!r}, nt={nt}")
        self.u, self.beta, self.kappa = float(u), float(beta), float(kappa)
        self.nt, self.sites = nt, sites
        self.u_tilde = self.u * self.beta / nt
        self.kappa_tilde = self.beta * self.kappa / nt
        self.shape = (sites * nt,)
        self._expm_h = torch.linalg.matrix_exp(
            torch.as_tensor(self.kappa_tilde * hopping_matrix(sites), dtype=torch.float64))

    # -- physics --------------------------------------------------------------------------------
    def fermion_matrix(self, x: Tensor) -> Tensor:
        r"""M[x] of Eq. (50) for a batch.

        Arguments:
            x: fields ``(N, nt * sites)`` (time-major).

        Returns:
            ``(N, nt * sites, nt * sites)`` in x's dtype and device.
        """
        n, nt, v = x.shape[0], self.nt, self.sites
        k = self._expm_h.to(dtype=x.dtype, device=x.device)
        a = k * torch.exp(x.reshape(n, nt, 1, v))  # A_t = e^h diag(e^{x_t}): (N, nt, V, V)
        t = torch.arange(nt, device=x.device)
        rows = (t + 1) % nt
        sign = torch.where(rows == 0, 1.0, -1.0).to(x)  # -s_{t+1}: +1 across the anti-periodic wrap
        blocks = x.new_zeros(n, nt, nt, v, v)
        blocks[:, rows, t] = sign[None, :, None, None] * a
        m = blocks.permute(0, 1, 3, 2, 4).reshape(n, nt * v, nt * v)
        return m + torch.eye(nt * v, dtype=x.dtype, device=x.device)

    def log_det_pair(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(sign, ln|.|)`` of det M[x] det M[-x], each ``(N,)``."""
        sgn, logabs = torch.linalg.slogdet(self.fermion_matrix(torch.cat([x, -x], 0)))
        n = x.shape[0]
        return sgn[:n] * sgn[n:], logabs[:n] + logabs[n:]

    def action(self, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        _, logdet = self.log_det_pair(flat)  # = ln(det M[x] det M[-x]): the product is > 0
        return (flat * flat).sum(-1) / (2 * self.u_tilde) - logdet

    def symmetry(self) -> tuple[str, dict[str, Any]]:
        # broken flip of site 0 (all its time slices) times the exact global flip
        return "z2xz2", {"broken": True, "flip": [t * self.sites for t in range(self.nt)]}

    def exact_symmetries(self) -> list[tuple[str, dict[str, Any]]]:
        return [("z2", {"broken": False})]

    # -- references (2 sites, nt = 1) ------------------------------------------------------------
    def _exact(self) -> bool:
        return self.sites == 2 and self.nt == 1

    def log_z(self) -> float | None:
        if not self._exact():
            return None
        return float(logsumexp(quadrant_log_masses(self.u_tilde, self.kappa_tilde)))

    def mode_probabilities(self) -> list[float] | None:
        if not self._exact():
            return None
        lm = np.array(quadrant_log_masses(self.u_tilde, self.kappa_tilde))
        return [float(p) for p in np.exp(lm - logsumexp(lm))]

    def reference_samples(self, n: int, *, generator: torch.Generator) -> Tensor | None:
        r"""Exact draws for 2 sites, nt = 1: exp(-f) = sum_i w_i exp(a_i x1 + b_i x2 - |x|^2 / (2 U~))
        (the expansion of :func:`quadrant_log_masses`) is a mixture of nine Gaussians with means
        U~ (a_i, b_i), variance U~ and weights w_i exp(U~ (a_i^2 + b_i^2) / 2). Otherwise HMC with
        the exact global flip as a global move."""
        from sesamo_bench.analysis.hmc import global_flip, sample_states

        if not self._exact():
            x0 = torch.randn(256, *self.shape, dtype=torch.float64, generator=generator) * math.sqrt(self.u_tilde)
            return sample_states(self.action, x0, n, generator=generator, global_moves=[global_flip],
                                 eps=0.3 * math.sqrt(self.u_tilde))
        lw, a, b = mixture_terms(self.u_tilde, self.kappa_tilde)
        comp = torch.multinomial(torch.softmax(torch.as_tensor(lw), 0), n, replacement=True, generator=generator)
        mean = self.u_tilde * torch.stack([torch.as_tensor(a), torch.as_tensor(b)], -1)[comp]
        return mean + math.sqrt(self.u_tilde) * torch.randn(n, 2, dtype=torch.float64, generator=generator)

    def breaking_ratio(self) -> float | None:
        p = self.mode_probabilities()
        if p is None:
            return None
        return (p[0] + p[1]) - (p[2] + p[3])

    # -- observables ----------------------------------------------------------------------------
    def observables(self, x: Tensor) -> dict[str, Tensor]:
        r"""x_1 x_2 (the first two components), |x| and the quadrant indicators ``(N, 4)`` in the
        z2xz2 element order (+,+), (-,-), (-,+), (+,-), whose means are the quadrant masses."""
        x1, x2 = x[:, 0], x[:, 1]
        quad = torch.stack([(x1 > 0) & (x2 > 0), (x1 < 0) & (x2 < 0), (x1 < 0) & (x2 > 0), (x1 > 0) & (x2 < 0)], 1)
        return {"x1x2": x1 * x2, "abs_x": x.reshape(x.shape[0], -1).norm(dim=1), "quadrant": quad.to(x.dtype)}

    def exact_observables(self) -> dict[str, float] | None:
        r"""For 2 sites and nt = 1: <x1 x2> and <|x|> by 2-D quadrature of the closed form
        exp(-f) = 4 h(x)^2 exp(-(x1^2 + x2^2) / (2 U~)) (module docstring), the quadrant masses from
        :func:`quadrant_log_masses`."""
        if not self._exact():
            return None
        from scipy import integrate

        ut, c = self.u_tilde, math.cosh(self.kappa_tilde)
        log_z = self.log_z()

        def density(x1: float, x2: float) -> float:
            h = math.cosh((x1 + x2) / 2) + math.cosh((x1 - x2) / 2) * c
            return 4 * h * h * math.exp(-(x1 * x1 + x2 * x2) / (2 * ut) - log_z)

        box = 12 * math.sqrt(ut) + 4
        out = {}
        for name, fn in (("x1x2", lambda a, b: a * b), ("abs_x", lambda a, b: math.hypot(a, b))):
            out[name] = integrate.dblquad(lambda b, a, fn=fn: fn(a, b) * density(a, b), -box, box, -box, box,
                                          epsabs=1e-10, epsrel=1e-10)[0]
        out.update({f"quadrant[{j}]": p for j, p in enumerate(self.mode_probabilities())})
        return out
