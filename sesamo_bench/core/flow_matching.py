r"""Conditional flow matching for continuous flows, with the equivariant pairing of Klein et al. 2023.

A continuous flow y(1) = y(0) + int_0^1 v(t, y(t)) dt (``kernel-cnf``) can be trained without
integrating it: draw a prior sample z ~ q_0 and a training sample x ~ p, pair them, and regress
the vector field on the velocity of the straight path between them (Lipman et al. 2023; Tong et
al. 2024, with sigma = 0):

    y_t = (1 - t) z + t x,    u_t = x - z,    L = E_{t ~ U(0, 1), (z, x)} |v(t, y_t) - u_t|^2.

The minimiser over all fields is v*(t, y) = E[u_t | y_t = y], whose flow carries q_0 to the
distribution of the paired x (the marginal-preserving property). Only the field is evaluated, one
pass per batch, so a step costs a fraction of a likelihood step through the ODE solver; the trained
flow's density is still the exact one of the solver's map (:meth:`Architecture.inverse` with the
exact divergence), so ESS and ln Z are measured as for every other objective.

Pairing (``fm_pairing``). The closer the paired z and x, the straighter the paths and the fewer
solver steps a flow needs. For identical particles, z and x are only defined up to the group
S_N x O(D), under which q_0 and p are invariant and the flow is equivariant; Klein, Krämer and Noé
(Equivariant flow matching, NeurIPS 2023) therefore pair in the quotient:

- ``independent``: z and x drawn independently (plain CFM);
- ``aligned``: each prior sample is replaced by the element of its orbit closest to its data
  sample: z <- P z R with the permutation P and the orthogonal R that minimise |P z R - x|^2
  (every permutation with the closed-form Kabsch minimum for n! <= :data:`EXACT_PERMUTATIONS`,
  else alternating Hungarian / Kabsch steps from the 2^D sign choices of the principal axes). q_0
  is invariant, so the aligned z is again a sample of q_0. Cost O(B n! D^3) (exact) per batch;
- ``ot``: additionally the batch's prior samples are assigned to its data samples by minimising
  the summed aligned cost (the Hungarian algorithm on the B x B matrix of
  :func:`~sesamo_bench.core.particles.aligned_sq_distances`), then aligned: Klein et al.'s
  equivariant OT. Cost O(B^2 n! D^3) per batch (about 0.7 s at B = 256 on DW-4, one core), so it
  pays off only where solver steps are expensive.

The pairing minimises over the same group under which the flow is equivariant, so relabelling or
rotating the data leaves the loss unchanged (``tests/test_flow_matching.py``).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import Tensor

from .particles import to_positions, to_reduced

PAIRINGS = ("aligned", "ot", "independent")
#: up to this many permutations the alignment tries every one (4! = 24 for DW-4)
EXACT_PERMUTATIONS = 120


def velocity_field(model):
    """The vector field ``v(t, y)`` of ``model``'s flow in the flow's units, with the scale ``std``
    of the prior (the flow sees ``y / std``), or ``None`` when the flow is not continuous."""
    flow = getattr(model, "flow", None)
    inner = getattr(flow, "inner", flow)
    if inner is None or not callable(getattr(inner, "velocity", None)):
        return None
    return inner.velocity, float(getattr(flow, "std", 1.0)), getattr(getattr(inner, "domain", None), "particles", None)


def interpolant(z: Tensor, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """The straight path's point y_t = (1 - t) z + t x and velocity u = x - z (``t`` ``(N,)``)."""
    tt = t.unsqueeze(-1)
    return (1.0 - tt) * z + tt * x, x - z


def _kabsch(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """For configurations ``a``, ``b`` ``(..., n, d)``: the orthogonal R ``(..., d, d)`` minimising
    |a R - b|^2 and the sum of the singular values of a^T b (the minimum is |a|^2 + |b|^2 - 2 sum)."""
    m = a.transpose(-1, -2) @ b
    if m.shape[-1] == 2:  # closed form in 2-D (a batched 2 x 2 SVD is ~20x slower on a CPU)
        p, q, r, s = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
        # tr(R^T m) for R a rotation by th: cos(th) (p + s) + sin(th) (r - q);
        # for a reflection: cos(th) (p - s) + sin(th) (q + r)
        rot_c, rot_s, ref_c, ref_s = p + s, r - q, p - s, q + r
        rot_n, ref_n = torch.hypot(rot_c, rot_s), torch.hypot(ref_c, ref_s)
        use_rot = rot_n >= ref_n
        c = torch.where(use_rot, rot_c, ref_c) / torch.where(use_rot, rot_n, ref_n).clamp_min(1e-300)
        sn = torch.where(use_rot, rot_s, ref_s) / torch.where(use_rot, rot_n, ref_n).clamp_min(1e-300)
        c = torch.where(torch.maximum(rot_n, ref_n) > 0, c, torch.ones_like(c))
        sign = torch.where(use_rot, torch.ones_like(c), -torch.ones_like(c))
        rmat = torch.stack([torch.stack([c, -sign * sn], -1), torch.stack([sn, sign * c], -1)], -2)
        return rmat, torch.maximum(rot_n, ref_n)
    u, sv, vh = torch.linalg.svd(m)
    return u @ vh, sv.sum(-1)


def align(z: Tensor, x: Tensor, *, generator: np.random.Generator | None = None) -> Tensor:
    r"""``z`` ``(N, n, d)`` moved within its S_n x O(d) orbit to be closest to ``x`` ``(N, n, d)`` (mean-free
    positions, pair by pair): P z R with min |P z R - x|^2 (module docstring)."""
    n = z.shape[1]
    if math.factorial(n) <= EXACT_PERMUTATIONS:
        perms = torch.tensor(list(itertools.permutations(range(n))), dtype=torch.long, device=z.device)
        zp = z[:, perms]  # (N, P, n, d)
        rot, score = _kabsch(zp, x.unsqueeze(1))  # (N, P, d, d), (N, P)
        best = score.argmax(1)
        idx = torch.arange(z.shape[0], device=z.device)
        return zp[idx, best] @ rot[idx, best]
    return _align_alternating(z, x)


def _align_alternating(z: Tensor, x: Tensor, iterations: int = 3) -> Tensor:
    """:func:`align` for many particles: from each sign choice of the principal axes, the
    permutation by the Hungarian algorithm and the rotation by Kabsch, alternately."""
    from scipy.optimize import linear_sum_assignment

    d = z.shape[2]
    zn, xn = z.detach().double().cpu().numpy(), x.detach().double().cpu().numpy()
    out = np.empty_like(zn)
    signs = list(itertools.product((1.0, -1.0), repeat=d))
    for k in range(zn.shape[0]):
        a, b = zn[k], xn[k]
        fa, fb = np.linalg.eigh(a.T @ a)[1], np.linalg.eigh(b.T @ b)[1]
        best, best_cost = a, np.inf
        for s in signs:
            r = fa @ np.diag(s) @ fb.T  # a's principal frame onto b's
            for _ in range(iterations):
                ar = a @ r
                cost = ((b[:, None, :] - ar[None, :, :]) ** 2).sum(-1)
                perm = linear_sum_assignment(cost)[1]  # a's particle for each of b's
                u, _, vh = np.linalg.svd(a[perm].T @ b)
                r = u @ vh
            cand = a[perm] @ r
            c = float(((cand - b) ** 2).sum())
            if c < best_cost:
                best, best_cost = cand, c
        out[k] = best
    return torch.from_numpy(out).to(dtype=z.dtype, device=z.device)


def pair(z: Tensor, x: Tensor, pairing: str, particles: tuple[int, int] | None) -> Tensor:
    """The prior samples ``z`` ``(N, m)`` re-ordered (``ot``) and aligned (``aligned``, ``ot``) to the data
    ``x`` ``(N, m)``, both reduced coordinates of ``particles = (n, d)``; unchanged for ``independent``
    or where the flow is not one of particles."""
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
    if pairing == "independent" or particles is None:
        return z
    n, d = particles
    zp, xp = to_positions(z, n, d), to_positions(x, n, d)
    if pairing == "ot":
        from scipy.optimize import linear_sum_assignment

        from .particles import aligned_sq_distances

        cost = aligned_sq_distances(xp.detach(), zp.detach())
        zp = zp[torch.as_tensor(linear_sum_assignment(cost.cpu().numpy())[1], device=z.device)]
    return to_reduced(align(zp, xp))


def flow_matching_loss(model, x: Tensor, *, pairing: str = "aligned", generator: torch.Generator | None = None,
                       t: Tensor | None = None, z: Tensor | None = None) -> Tensor:
    r"""Conditional flow-matching loss (module docstring) of ``model``'s continuous flow on training
    samples ``x`` ``(N, m)``: mean over the batch of |v(t, y_t) - u_t|^2 (summed over coordinates),
    in the flow's units (coordinates divided by the prior's standard deviation). ``t`` and ``z``
    (prior samples in the flow's units, ``N(0, 1)``) are drawn unless given."""
    field = velocity_field(model)
    if field is None:
        raise ValueError("flow_matching_loss: the model's flow has no vector field (Architecture.velocity)")
    velocity, std, particles = field
    xu = x.reshape(x.shape[0], -1) / std
    if z is None:
        z = torch.randn(xu.shape, dtype=xu.dtype, device=xu.device, generator=generator)
    if t is None:
        t = torch.rand(xu.shape[0], dtype=xu.dtype, device=xu.device, generator=generator)
    with torch.no_grad():
        z = pair(z, xu, pairing, particles)
    yt, ut = interpolant(z, xu, t)
    return (velocity(t, yt) - ut).pow(2).sum(-1).mean()
