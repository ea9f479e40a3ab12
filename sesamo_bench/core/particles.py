r"""Identical particles without their centre of mass: the coordinates every particle target uses.

An energy E(x) of ``n`` particles at positions ``x`` ``(N, n, d)`` that is invariant under
translations has no normalisable Boltzmann density on R^{n d}: exp(-E) is constant along the
centre of mass. The suite therefore works on the mean-free subspace {x : sum_i x_i = 0} of
dimension ``(n - 1) d``, through the Helmert basis: the ``(n - 1, n)`` matrix ``H`` with
orthonormal rows orthogonal to ``(1, ..., 1)``,

    y = H x  (reduced coordinates, ``(N, n - 1, d)``),   x = H^T y  (mean-free positions).

Because ``H H^T = 1``, ``y -> H^T y`` is an isometry onto the mean-free subspace: a density in
``y`` is a density with respect to the Lebesgue measure of that subspace, and ESS, ln Z and
every flow's log-determinant are defined there (ln Z is the log partition function
int_{sum x_i = 0} exp(-E) dx on the subspace). Rotations and reflections act on every particle
alike and so act on ``y`` in the same way (``y_k -> R y_k``); a permutation ``P`` of the particles
acts on ``y`` as the orthogonal matrix ``H P H^T``. Flattened configurations are particle-major:
``(y_1^1, ..., y_1^d, y_2^1, ...)``.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from .target import Target


@functools.lru_cache(maxsize=None)
def _helmert(n: int) -> Tensor:
    h = torch.zeros(n - 1, n, dtype=torch.float64)
    for k in range(1, n):
        h[k - 1, :k] = 1.0
        h[k - 1, k] = -float(k)
        h[k - 1] /= float(k * (k + 1)) ** 0.5
    return h


def helmert(n: int, *, like: Tensor | None = None) -> Tensor:
    r"""The ``(n - 1, n)`` Helmert basis of the mean-free subspace of R^n (orthonormal rows).

    Example:
        >>> h = helmert(3)
        >>> torch.allclose(h @ h.T, torch.eye(2, dtype=h.dtype)), float(h.sum(1).abs().max()) < 1e-12
        (True, True)
    """
    h = _helmert(int(n))
    return h if like is None else h.to(dtype=like.dtype, device=like.device)


def to_positions(y: Tensor, n: int, d: int) -> Tensor:
    """Mean-free positions ``(N, n, d)`` of reduced coordinates ``y`` ``(N, (n - 1) d)``."""
    return torch.einsum("kn,bkd->bnd", helmert(n, like=y), y.reshape(y.shape[0], n - 1, d))


def to_reduced(x: Tensor) -> Tensor:
    r"""Reduced coordinates ``(N, (n - 1) d)`` of positions ``x`` ``(N, n, d)``; the centre of mass is
    dropped, so ``to_positions(to_reduced(x))`` is ``x`` minus its centre of mass.

    Example:
        >>> x = torch.randn(5, 4, 2, dtype=torch.float64)
        >>> back = to_positions(to_reduced(x), 4, 2)
        >>> torch.allclose(back, x - x.mean(1, keepdim=True))
        True
    """
    h = helmert(x.shape[1], like=x)
    return torch.einsum("kn,bnd->bkd", h, x).reshape(x.shape[0], -1)


def pair_indices(n: int) -> tuple[Tensor, Tensor]:
    """Indices ``(i, j)`` of the ``n (n - 1) / 2`` unordered pairs ``i < j``."""
    return torch.triu_indices(n, n, offset=1).unbind(0)


def pair_distances(x: Tensor) -> Tensor:
    """Distances ``|x_i - x_j|`` of the unordered pairs of positions ``x`` ``(N, n, d)``: ``(N, n (n - 1) / 2)``."""
    i, j = pair_indices(x.shape[1])
    return (x[:, i] - x[:, j]).norm(dim=-1)


class ParticleTarget(Target):
    r"""Base class of targets of ``n`` identical particles in ``d`` dimensions with a
    translation-invariant energy; the field is the reduced coordinates ``(N, (n - 1) d)``.

    Subclasses set ``n_particles`` and ``spatial_dim`` (in the constructor) and implement
    :meth:`energy` on positions; :meth:`action` is ``energy(to_positions(y)) / temperature``.
    """

    #: the particle count and spatial dimension (set by the constructor)
    n_particles: int = 0
    spatial_dim: int = 0
    temperature: float = 1.0
    dtype: ClassVar[torch.dtype | None] = None

    def _set_particles(self, n: int, d: int) -> None:
        self.n_particles, self.spatial_dim = int(n), int(d)
        self.shape = ((self.n_particles - 1) * self.spatial_dim,)

    @property
    def particles(self) -> tuple[int, int]:
        """``(n, d)``: what :func:`sesamo_bench.core.architecture.target_domain` reads."""
        return self.n_particles, self.spatial_dim

    def energy(self, x: Tensor) -> Tensor:
        """E(x) of positions ``x`` ``(N, n, d)`` (mean-free or not), shape ``(N,)``."""
        raise NotImplementedError

    def positions(self, y: Tensor) -> Tensor:
        """Mean-free positions ``(N, n, d)`` of configurations ``y`` ``(N, (n - 1) d)``."""
        return to_positions(y, self.n_particles, self.spatial_dim)

    def reduced(self, x: Tensor) -> Tensor:
        """Configurations ``(N, (n - 1) d)`` of positions ``x`` ``(N, n, d)`` (centre of mass dropped)."""
        return to_reduced(x)

    def action(self, y: Tensor) -> Tensor:
        return self.energy(self.positions(y)) / self.temperature

    def distributions(self, y: Tensor) -> dict[str, Tensor]:
        r"""The 1-D distributions compared with the reference samples: ``energy`` ``(N,)`` and the
        pooled pair ``distance`` ``(N n (n - 1) / 2,)`` of configurations ``y``."""
        x = self.positions(y)
        return {"energy": self.energy(x), "distance": pair_distances(x).reshape(-1)}

    def reference_metrics(self, y: Tensor) -> dict[str, float | None]:
        r"""Distances of the model's samples ``y`` (unweighted draws of q) to the reference samples:
        ``energy_w1``, ``energy_w2``, ``distance_w1``, ``distance_w2`` (the 1-D Wasserstein distances
        of the energy and the pair-distance distributions, :func:`sesamo_bench.core.metrics.wasserstein_1d`),
        with ``reference_energy_mean``, and the literature's coordinate-space ``coordinate_w2``
        (:func:`coordinate_w2` on :data:`XW2_SAMPLES` configurations of each, for at most
        :data:`XW2_MAX_PERMUTATIONS` permutations of the particles, where the alignment is exact and
        takes seconds; ``None`` beyond, e.g. LJ-13); ``None`` without reference samples. Where the
        target has an exact reference besides approximate reference samples (``exact_reference``,
        DW-4), also ``energy_w2_exact`` and ``distance_w2_exact`` against it."""
        import math

        from . import metrics

        ref = self.reference_positions() if hasattr(self, "reference_positions") else None
        exact = self.exact_reference() if hasattr(self, "exact_reference") else None
        keys = ("energy_w1", "energy_w2", "distance_w1", "distance_w2", "reference_energy_mean", "coordinate_w2")
        out: dict[str, float | None] = {}
        if exact is not None:
            out = dict.fromkeys(("energy_w2_exact", "distance_w2_exact"))
        if ref is None or y is None or y.shape[0] == 0:
            return {**dict.fromkeys(keys), **out}
        with torch.no_grad():
            got = {k: v.double().cpu().numpy() for k, v in self.distributions(y.double()).items()}
            want = {k: v.numpy() for k, v in self.distributions(to_reduced(ref)).items()}
            truth = ({k: v.numpy() for k, v in self.distributions(exact.double()).items()}
                     if exact is not None else None)
        for k in ("energy", "distance"):
            g = got[k][np.isfinite(got[k])]
            out[f"{k}_w1"] = metrics.wasserstein_1d(g, want[k], p=1) if len(g) else None
            out[f"{k}_w2"] = metrics.wasserstein_1d(g, want[k], p=2) if len(g) else None
            if truth is not None:
                out[f"{k}_w2_exact"] = metrics.wasserstein_1d(g, truth[k], p=2) if len(g) else None
        out["reference_energy_mean"] = float(want["energy"].mean())
        n, d = self.particles
        fine = torch.isfinite(y).all(1)
        out["coordinate_w2"] = (coordinate_w2(to_positions(y[fine].double(), n, d), ref)
                                if math.factorial(n) <= XW2_MAX_PERMUTATIONS and bool(fine.any()) else None)
        return out

    def symmetry(self) -> tuple[str, dict]:
        r"""The ``particles`` group S_N x O(D) (``symmetries/particles.py``); S_N x SO(D) where
        n - 1 < D, when every configuration lies in a hyperplane and a reflection is a rotation."""
        n, d = self.particles
        return "particles", {"broken": False, "n_particles": n, "dim": d, "reflections": n - 1 >= d}

    def exact_symmetries(self) -> list[tuple[str, dict]]:
        return [self.symmetry()]


def load_reference(filename: str, n: int, d: int) -> Tensor:
    r"""The shipped reference positions ``(M, n, d)`` (float64, centre of mass removed) from
    ``sesamo_bench/data/particles/<filename>`` (provenance and licence in its README)."""
    from importlib import resources

    import numpy as np

    with resources.files("sesamo_bench").joinpath("data", "particles", filename).open("rb") as fh:
        arr = np.load(fh)
    x = torch.from_numpy(arr.astype("float64")).reshape(arr.shape[0], n, d)
    return x - x.mean(1, keepdim=True)


def safe_distances(x: Tensor, *, floor: float = 0.0) -> Tensor:
    r"""Pair distances ``(N, n (n - 1) / 2)`` with a finite gradient at coincident particles:
    sqrt(max(|x_i - x_j|^2, floor^2, tiny)) (``floor`` > 0 also bounds a singular pair potential)."""
    i, j = pair_indices(x.shape[1])
    sq = (x[:, i] - x[:, j]).pow(2).sum(-1)
    tiny = torch.finfo(x.dtype).tiny ** 0.5
    return sq.clamp_min(max(floor * floor, tiny)).sqrt()


def relaxed(energy, x: Tensor, *, steps: int = 500, lr: float = 0.01, max_step: float = 0.05) -> Tensor:
    r"""``x`` ``(N, n, d)`` after ``steps`` of gradient descent on ``energy`` with every particle's
    displacement per step clipped to ``max_step``: starting points for MCMC on a singular energy
    (Lennard-Jones), where a random cloud has overlapping pairs (E ~ 1e10 and more) and HMC's step
    size would be tuned to the overlaps and never grow. Each configuration relaxes to a nearby
    local minimum; the chains' burn-in then heats them to the target's temperature.

    Example:
        >>> x = torch.tensor([[[0.0, 0.0], [0.1, 0.0]]], dtype=torch.float64)
        >>> lj = lambda x: ((x[:, 0] - x[:, 1]).norm(dim=-1) ** -12 - 2 * (x[:, 0] - x[:, 1]).norm(dim=-1) ** -6)
        >>> round(float((lambda y: (y[:, 0] - y[:, 1]).norm(dim=-1))(relaxed(lj, x))), 3)  # r_m = 1
        1.0
    """
    x = x.detach()
    for _ in range(steps):
        x = x.requires_grad_(True)
        (grad,) = torch.autograd.grad(energy(x).sum(), x)
        step = -lr * grad
        norm = step.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
        x = (x + step * torch.clamp(max_step / norm, max=1.0)).detach()
    return x


# --- the literature's coordinate-space W2 (x-W2) -----------------------------------------------
#: :func:`aligned_sq_distances` searches all n! permutations exactly up to this many (n <= 6)
MAX_PERMUTATIONS = 720
#: equal-size subsamples of :func:`coordinate_w2` (each set drawn without replacement)
XW2_SAMPLES = 500
#: coordinate_w2 is recorded for runs whose particles have at most this many permutations (exact alignment)
XW2_MAX_PERMUTATIONS = 120


def procrustes_sq(a: Tensor, b: Tensor, *, reflections: bool = True) -> Tensor:
    r"""min over R in O(d) (SO(d) without ``reflections``) of |a - b R^T|^2 for mean-free
    configurations ``a``, ``b`` ``(..., n, d)`` with the particles in the same order: |a|^2 + |b|^2
    - 2 sum_k s_k, s_k the singular values of b^T a (Kabsch; for SO(d) the smallest one counts with
    the sign of det(b^T a))."""
    m = b.transpose(-1, -2) @ a
    s = torch.linalg.svdvals(m)
    if not reflections:
        s = torch.cat([s[..., :-1], s[..., -1:] * torch.sign(torch.linalg.det(m)).unsqueeze(-1)], -1)
    return (a * a).sum((-1, -2)) + (b * b).sum((-1, -2)) - 2.0 * s.sum(-1)


def _kabsch_rotation(a: Tensor, b: Tensor, reflections: bool) -> Tensor:
    """The R of :func:`procrustes_sq` for one pair ``(n, d)``: b R^T is closest to a."""
    u, _, vh = torch.linalg.svd(b.T @ a)
    if not reflections and float(torch.linalg.det(u @ vh)) < 0:
        u = torch.cat([u[:, :-1], -u[:, -1:]], 1)
    return (u @ vh).T


def aligned_sq_distances(a: Tensor, b: Tensor, *, reflections: bool = True) -> Tensor:
    r"""``(k, l)`` squared distances min_{R, P} |a_i - P b_j R^T|^2 between mean-free configurations
    ``a`` ``(k, n, d)`` and ``b`` ``(l, n, d)`` (float64), minimised over the orthogonal group O(d)
    (SO(d) without ``reflections``) and the n! permutations P of the particles.

    Up to :data:`MAX_PERMUTATIONS` permutations the minimum is exact (every permutation, each with
    the closed-form Procrustes minimum of :func:`procrustes_sq`). Beyond, it is the usual
    alternating search, an upper bound of the minimum: from each of the 2^d sign choices of the
    two configurations' principal axes, the permutation of the rotated b by the Hungarian algorithm
    (``scipy.optimize.linear_sum_assignment``), the best rotation for it (Kabsch), once more the
    permutation and the rotation; exact for a rotated and permuted copy with distinct principal
    moments.
    """
    import itertools
    import math

    a, b = a.double(), b.double()
    k, n, d = a.shape
    if math.factorial(n) <= MAX_PERMUTATIONS:
        perms = torch.tensor(list(itertools.permutations(range(n))), dtype=torch.long)
        bp = b[:, perms]  # (l, P, n, d)
        norms = (a * a).sum((1, 2))[:, None] + (b * b).sum((1, 2))[None, :]
        chunk = max(1, 2_000_000 // max(1, b.shape[0] * perms.shape[0]))
        rows = []
        for i in range(0, k, chunk):
            m = torch.einsum("ind,jpne->ijpde", a[i:i + chunk], bp)  # a^T P b per pair: the same singular values
            if d == 2:  # closed form: the largest tr(R^T m) over rotations and over reflections
                p_, q_, r_, s_ = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
                best = torch.hypot(p_ + s_, r_ - q_)
                if reflections:
                    best = torch.maximum(best, torch.hypot(p_ - s_, q_ + r_))
                rows.append(best.amax(-1))
                continue
            s = torch.linalg.svdvals(m)
            if not reflections:
                s = torch.cat([s[..., :-1], s[..., -1:] * torch.sign(torch.linalg.det(m)).unsqueeze(-1)], -1)
            rows.append(s.sum(-1).amax(-1))
        return (norms - 2.0 * torch.cat(rows)).clamp_min(0.0)
    return _aligned_alternating(a, b, reflections)


def _principal_frames(x: Tensor) -> Tensor:
    """Principal axes ``(N, d, d)`` (columns) of mean-free configurations ``(N, n, d)``."""
    return torch.linalg.eigh(x.transpose(1, 2) @ x).eigenvectors


def _aligned_alternating(a: Tensor, b: Tensor, reflections: bool, iterations: int = 3) -> Tensor:
    import itertools

    from scipy.optimize import linear_sum_assignment

    d = a.shape[2]
    fa, fb = _principal_frames(a), _principal_frames(b)
    signs = torch.tensor(list(itertools.product((1.0, -1.0), repeat=d)), dtype=torch.float64)
    out = torch.full((a.shape[0], b.shape[0]), float("inf"), dtype=torch.float64)
    for i in range(a.shape[0]):
        ai = a[i]
        for s in signs:
            rot = fb @ torch.diag(s) @ fa[i].T  # b_j V_bj diag(s) V_a^T: b in a's principal frame
            if not reflections and not bool((torch.linalg.det(rot) > 0).any()):
                continue
            for j in range(b.shape[0]):
                r = rot[j]
                if not reflections and float(torch.linalg.det(r)) < 0:
                    continue
                for _ in range(iterations):  # permutation (Hungarian), then rotation (Kabsch)
                    cost = torch.cdist(ai, b[j] @ r).pow(2).numpy()
                    perm = torch.as_tensor(linear_sum_assignment(cost)[1])  # b's particle for each of a's
                    r = _kabsch_rotation(ai, b[j, perm], reflections).T
                    out[i, j] = min(float(out[i, j]), float(procrustes_sq(ai, b[j, perm], reflections=reflections)))
    return out.clamp_min(0.0)


def coordinate_w2(a: Tensor, b: Tensor, *, n_samples: int = XW2_SAMPLES, seed: int = 0,
                  reflections: bool = True) -> float:
    r"""The literature's coordinate-space 2-Wasserstein distance (x-W2) of two sets of particle
    configurations ``(N, n, d)`` and ``(M, n, d)`` (positions; the centre of mass is removed here).

    Equal-size subsamples of k = min(n_samples, N, M) configurations each (without replacement,
    ``seed``); the ground cost of two configurations is the squared distance in R^{n d} after the
    optimal alignment (rotations and reflections, permutations: :func:`aligned_sq_distances`), and
    x-W2 = sqrt(min over assignments of the mean cost) (:func:`~sesamo_bench.core.metrics.assignment_w2`).
    It is in units of length, over all n d coordinates (not per particle), and biased upwards by
    the finite k (not yet measured on DW-4 / LJ-13): compare numbers only at equal k. Unlike the suite's
    ``dist W2`` (the 1-D W2 of pooled pair distances) it sees the joint arrangement of the
    particles.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(50, 4, 2, dtype=torch.float64, generator=g)
        >>> moved = x[:, [2, 0, 3, 1]] @ torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
        >>> coordinate_w2(x, moved) < 1e-6
        True
    """
    from .metrics import assignment_w2

    k = min(int(n_samples), a.shape[0], b.shape[0])
    if k < 1:
        raise ValueError("coordinate_w2: both sample sets need at least one configuration")
    rng = np.random.default_rng(seed)
    ia, ib = rng.choice(a.shape[0], k, replace=False), rng.choice(b.shape[0], k, replace=False)
    xa, xb = a[torch.as_tensor(ia)].double(), b[torch.as_tensor(ib)].double()
    xa, xb = xa - xa.mean(1, keepdim=True), xb - xb.mean(1, keepdim=True)
    return assignment_w2(aligned_sq_distances(xa, xb, reflections=reflections).numpy())
