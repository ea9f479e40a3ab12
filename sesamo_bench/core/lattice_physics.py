r"""Lattice-field observables and the exact free field, shared by the phi^4 targets.

Fields live on an ``L1 x L2`` periodic lattice; axis 0 (length ``L1``) is "time". A real field has
shape ``(N, L1, L2)``, a complex one ``(N, L1, L2, 2)`` (real and imaginary parts); products of
two complex fields are ``Re(conj(a) b)``, the sum over the last axis.

With lambda = 0 the phi^4 action (hopping form) is Gaussian,
f[phi] = phi^T A phi + alpha sum_x phi_x, A = 1 - kappa sum_mu (S_mu + S_mu^T) (S_mu the shift by
one site along mu), so everything is exact: the covariance is (2A)^{-1}, the mean
-alpha (2A)^{-1} 1, and ln Z = V/2 ln 2 pi - 1/2 ln det 2A + alpha^2/2 1^T (2A)^{-1} 1
(:func:`free_field`). A is positive definite for |kappa| < 1/4.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor


def _components(phi: Tensor, complex_field: bool) -> Tensor:
    """``(N, L1, L2, c)`` with c = 1 (real) or 2 (complex)."""
    return phi if complex_field else phi.unsqueeze(-1)


def slice_correlator(phi: Tensor, *, complex_field: bool = False) -> Tensor:
    r"""Zero-momentum correlator per configuration, ``(N, L1)``:
    G(t) = 1/V sum_t' S_t' . S_{t'+t}, with S_t = sum_x phi(t, x) (the time-slice sums)."""
    p = _components(phi, complex_field)
    s = p.sum(2)  # (N, L1, c)
    v = phi.shape[1] * phi.shape[2]
    return torch.stack([(s * torch.roll(s, -t, 1)).sum((1, 2)) for t in range(phi.shape[1])], 1) / v


def two_point(phi: Tensor, *, complex_field: bool = False) -> Tensor:
    r"""Translation-averaged two-point function per configuration, ``(N, L1 * L2)`` (row-major in
    the separation x): C(x) = 1/V sum_y phi_y . phi_{y+x}, by FFT."""
    p = _components(phi, complex_field).double()
    f = torch.fft.fft2(p, dim=(1, 2))
    c = torch.fft.ifft2((f * f.conj()), dim=(1, 2)).real.sum(-1)  # sum_y phi_y phi_{y+x}, per x
    v = phi.shape[1] * phi.shape[2]
    return (c / v).reshape(phi.shape[0], -1).to(phi.dtype)


def hopping_matrix(lattice: tuple[int, int], kappa: float) -> np.ndarray:
    """A = 1 - kappa sum_mu (S_mu + S_mu^T), ``(V, V)``, row-major sites."""
    l1, l2 = lattice
    v = l1 * l2
    a = np.eye(v)
    idx = np.arange(v).reshape(l1, l2)
    for shifted in (np.roll(idx, -1, 0), np.roll(idx, -1, 1)):
        for i, j in zip(idx.ravel(), shifted.ravel()):
            a[i, j] -= kappa
            a[j, i] -= kappa
    return a


def free_min_eigenvalue(lattice: tuple[int, int], kappa: float) -> float:
    r"""The smallest eigenvalue of A (:func:`hopping_matrix`) from the lattice momenta,
    1 - 2 kappa (cos p_1 + cos p_2), p_mu = 2 pi k_mu / L_mu: the free field (lambda = 0) is
    normalisable exactly when it is > 0.

    Example:
        >>> round(free_min_eigenvalue((8, 8), 0.2), 12), round(free_min_eigenvalue((8, 8), 0.3), 12)
        (0.2, -0.2)
    """
    cos = [np.cos(2 * np.pi * np.arange(n) / n) for n in lattice]
    return float((1 - 2 * kappa * (cos[0][:, None] + cos[1][None, :])).min())


def check_normalisable(lattice: tuple[int, int], kappa: float, lam: float, who: str) -> None:
    """Refuse lambda = 0 with a kappa for which exp(-f) has no finite integral (one-line ConfigError)."""
    from ..errors import ConfigError

    if lam == 0 and free_min_eigenvalue(lattice, kappa) <= 0:
        raise ConfigError(f"{who}: with lam = 0 the action is Gaussian and needs 1 - 2 kappa (cos p1 + cos p2) > 0 "
                          f"at every lattice momentum (|kappa| < 1/4 on even lattices); kappa = {kappa} "
                          f"has no normalisable density (use lam > 0 or a smaller |kappa|)")


def phi4_parameters(shape: Any, kappa: Any, lam: Any, alpha: Any,
                    who: str) -> tuple[tuple[int, int], float, float, float]:
    """Validate the phi^4 constructor arguments of target ``who`` (one-line ConfigError): the
    lattice and kappa, lam >= 0, alpha >= 0 as floats; a free field must be normalisable."""
    from .target import check, is_real, lattice_shape

    lattice = lattice_shape(shape, who)
    check(is_real(kappa), f"{who}: 'kappa' must be a finite number, got {kappa!r}")
    check(is_real(lam) and lam >= 0, f"{who}: 'lam' must be a number >= 0, got {lam!r}")
    check(is_real(alpha) and alpha >= 0, f"{who}: 'alpha' must be a number >= 0, got {alpha!r}")
    check_normalisable(lattice, kappa, lam, who)
    return lattice, float(kappa), float(lam), float(alpha)


def free_field(lattice: tuple[int, int], kappa: float, alpha: float) -> dict[str, Any]:
    r"""The exact Gaussian (lambda = 0) real field: mean vector, covariance, A and ln Z.

    Raises:
        ValueError: where A is not positive definite (|kappa| >= 1/4 on most lattices).
    """
    a = hopping_matrix(lattice, kappa)
    b = 2 * a
    eig = np.linalg.eigvalsh(b)
    if eig.min() <= 0:
        raise ValueError(f"the free field with kappa = {kappa} has no normalisable density on {lattice}")
    cov = np.linalg.inv(b)
    ones = np.ones(len(a))
    mean = -alpha * cov @ ones
    v = len(a)
    log_z = 0.5 * v * math.log(2 * math.pi) - 0.5 * float(np.log(eig).sum()) + 0.5 * alpha**2 * float(ones @ cov @ ones)
    return {"a": a, "cov": cov, "mean": mean, "log_z": log_z}


def free_moments(lattice: tuple[int, int], cov: np.ndarray, mean: np.ndarray) -> dict[str, Any]:
    r"""Exact <m>, <m^2>, Var m, <G(t)>, <C(x)> of one real Gaussian component (the formulas of
    :func:`slice_correlator` and :func:`two_point` applied to the second moments)."""
    l1, l2 = lattice
    v = l1 * l2
    second = cov + np.outer(mean, mean)  # <phi_i phi_j>
    m = float(mean.mean())
    var_m = float(cov.sum()) / v**2
    s2 = second.reshape(l1, l2, l1, l2).sum((1, 3))  # <S_a S_b>
    g = np.array([sum(s2[tp, (tp + t) % l1] for tp in range(l1)) for t in range(l1)]) / v
    idx = np.arange(v).reshape(l1, l2)
    c = np.zeros(v)
    for dx in range(l1):
        for dy in range(l2):
            sh = np.roll(np.roll(idx, -dx, 0), -dy, 1)
            c[dx * l2 + dy] = second[idx.ravel(), sh.ravel()].sum() / v
    return {"m": m, "var_m": var_m, "m2": var_m + m * m, "G": g, "C": c}


def folded_normal_mean(mu: float, sigma: float) -> float:
    """E|X| for X ~ N(mu, sigma^2)."""
    return sigma * math.sqrt(2 / math.pi) * math.exp(-mu * mu / (2 * sigma * sigma)) + mu * math.erf(
        mu / (sigma * math.sqrt(2)))
