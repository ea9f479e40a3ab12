r"""S_N x O(D) (or S_N x SO(D)): identical particles, permuted, rotated and reflected.

The field is the centre-of-mass-free reduced coordinates y = H x of :mod:`sesamo_bench.core.particles`
(``(N, (n - 1) D)``, ``n - 1`` reduced vectors y_k of R^D); translations are removed by the
coordinates. A group element is a pair (sigma, M) of a permutation of the particles and an
orthogonal matrix, acting on the positions as

    (T_u x)_i = M x_{sigma(i)},   i.e. on y: y -> (H P_sigma H^T) y, then y_k -> M y_k.

Encoding: ``u`` is one real tensor ``(N, n + D^2)``: the index list sigma (exact small integers
stored as floats) followed by M flattened row-major, in the field's dtype. Composition
T_u T_v = T_{(tau o sigma, M S)} for u = (sigma, M), v = (tau, S) (``compose``: sigma' = tau[sigma],
M' = M S); inverse (sigma^{-1}, M^T).

Canonical cell (a fundamental domain of the group, up to measure zero). Write the reduced vectors
in reverse, v_j = y_{n-2-j}; with the Helmert basis v_0 = -sqrt(n / (n - 1)) x_n points at the
last particle. Omega is the set of configurations with

- the particles ordered by their distance from the centre of mass, r_1 < r_2 < ... < r_n
  (rotation invariant, so it fixes sigma up to measure zero);
- the frame fixed: v_j has no components beyond the j-th axis and v_j^{(j)} > 0 for
  j = 0, ..., D - 2 (v_0 along +e_1, v_1 in the upper (e_1, e_2) half-plane, ...) and, for O(D),
  v_{D-1}^{(D-1)} > 0 (the handedness).

The penalty is lambda = max(max_i (r_i - r_{i+1}), max_j (-v_j^{(j)})): negative inside, zero on the
border. ``canonicalize`` sorts the particles by radius, then takes M = Q from the QR
decomposition of (v_0, ..., v_{D-1}) with a positive diagonal of R (for SO(D) the last column
completes det Q = +1).

SESaMo embedding. The rotation's D (D - 1) / 2 degrees of freedom leave the flow: ``flow_dim`` is
(n - 1) D - D (D - 1) / 2 and ``embed`` fills v_j (j < D - 1) with j + 1 free components and zeros
(the frame pattern), the other vectors fully. For 2-D this is "v_0 = (a, 0)", for 3-D "v_0 =
(a, 0, 0), v_1 = (b_1, b_2, 0)".

Derivation of the Jacobian. The map (f, M) -> x = M embed(f) (for a fixed sigma, an isometry) has,
with respect to Lebesgue measure in f and the Haar measure dM of SO(D) normalised to the volume
V_D = prod_{k=2}^{D} |S^{k-1}| (|S^{k-1}| = 2 pi^{k/2} / Gamma(k/2); V_2 = 2 pi, V_3 = 8 pi^2),

    |det d x / d(f, M)| = prod_{j=0}^{D-2} |v_j^{(j)}|^{D-1-j}   (2-D: |a|;  3-D: a^2 |b_2|).

Proof by induction over j: the Haar measure disintegrates along the fibration
SO(D) -> S^{D-1}, M -> M e_1, with fibre SO(D - 1) (the rotations fixing e_1), so dM =
d Omega_{D-1}(m_1) dM' with total volume |S^{D-1}| V_{D-1}. x's image of v_0 is M v_0 = a m_1 with
m_1 = M e_1: spherical coordinates (a, m_1) of R^D, volume element |a|^{D-1} da d Omega_{D-1}. Given
m_1, the image of v_1 lies as (v_1^{(0)} along m_1, the rest in the orthogonal complement, where
the fibre SO(D - 1) acts): the same argument in D - 1 dimensions gives |v_1^{(1)}|^{D-2}, and so
on down to SO(1) = {1}. The remaining reduced vectors are rotated by M, an orthogonal block of a
block-triangular Jacobian, and contribute 1; the permutation and reflection are orthogonal and
discrete. Hence ``modulation_ladj`` = sum_j (D - 1 - j) ln|v_j^{(j)}|, and the exact modulation
density is p_S(u) = 1 / (n! V_D [2 for O(D)]) with respect to counting measure on S_N (x the two
reflection classes) times dM; ``haar_log_prob`` is the same number. ``tests/test_particles.py``
checks the Jacobian against autograd and the SESaMo density's normalisation by importance
sampling.

Preimages and the exact density. Given x and a permutation, the elements (sigma, M) with
T_u^{-1} x in the image of ``embed`` are M = Q diag(s) for the canonical frame Q of the
permuted configuration and every sign pattern s in {+-1}^D (det M = 1 for SO(D): 2^{D-1}
patterns; O(D): 2^D), one of which lies in the cell. Every permutation gives such a set, so the
exact density sums over n! 2^{D-1} (x 2) preimages. :meth:`preimages` enumerates all of them when
n! <= ``enumerate_max`` (3 particles: 6, DW-4: 24; exact). For larger n (LJ-13: 13! = 6.2e9) it
keeps the canonical permutation only (the particles sorted by radius) and all sign patterns:
because the cell is a fundamental domain, a flow whose embedded outputs stay in the radius order
has exactly this one preimage per sign pattern up to measure zero, and the density is then exact;
where the flow leaves the order (``outside_cell`` > 0) it is a lower bound of q (the omitted terms
are >= 0), so the importance weights p / q are overestimated on those samples.

With ``permutations=False`` the group is the subgroup O(D) (SO(D)) alone: no radius order in the
cell or the penalty, sigma the identity, one permutation in :meth:`preimages` (exact everywhere);
the flow then has to learn the permutation symmetry itself, as ``realnvp`` does.

The group is continuous, so ``canonicalization`` does not apply (it needs a finite group).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from sesamo_bench.errors import ConfigError, IncompatibleError
from sesamo_bench.core.particles import to_positions, to_reduced
from sesamo_bench.core.symmetry import Modulation, Symmetry


def rotation_group_volume(d: int) -> float:
    r"""V_D = prod_{k=2}^{D} |S^{k-1}|, the volume of SO(D) in the normalisation of the module docstring."""
    return math.prod(2 * math.pi ** (k / 2) / math.gamma(k / 2) for k in range(2, d + 1))


def haar_orthogonal(n: int, d: int, *, like: Tensor, proper: bool) -> Tensor:
    r"""``n`` Haar-distributed matrices of O(D) (``proper``: SO(D)), ``(n, D, D)`` (QR of a Gaussian
    with the signs of R's diagonal divided out; Mezzadri 2007)."""
    g = torch.randn(n, d, d, dtype=like.dtype, device=like.device)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    if proper:
        q = torch.cat([q[..., :1] * torch.det(q)[:, None, None], q[..., 1:]], -1)
    return q


class ParticleModulation(Modulation):
    r"""The uniform (Haar) p_S over S_N x SO(D) or S_N x O(D): a uniform random permutation and a
    Haar orthogonal matrix; ln p_S = -ln(n! V_D [2]) (module docstring)."""

    def __init__(self, n: int, d: int, *, reflections: bool, permutations: bool = True):
        super().__init__()
        self.n, self.d, self.reflections, self.permutations = n, d, reflections, permutations
        self.log_p = -((math.lgamma(n + 1) if permutations else 0.0) + math.log(rotation_group_volume(d))
                       + (math.log(2) if reflections else 0.0))

    def sample(self, n: int, *, like: Tensor) -> Tensor:
        if self.permutations:
            perm = torch.argsort(torch.rand(n, self.n, device=like.device), -1).to(like.dtype)
        else:
            perm = torch.arange(self.n, dtype=like.dtype, device=like.device).expand(n, -1)
        m = haar_orthogonal(n, self.d, like=like, proper=not self.reflections)
        return torch.cat([perm, m.reshape(n, -1)], -1)

    def log_prob(self, u: Tensor) -> Tensor:
        return u.new_full((u.shape[0],), self.log_p)


class Particles(Symmetry):
    r"""Permutations and rotations (and reflections) of ``n_particles`` identical particles in
    ``dim`` dimensions, on centre-of-mass-free reduced coordinates ``((n - 1) D,)``.

    Arguments:
        n_particles: n >= 2.
        dim: D >= 1.
        reflections: O(D) (True) or SO(D) (False).
        permutations: include S_N (True) or only the rotations / reflections (False: the
            subgroup O(D) or SO(D); the particle order is then the flow's business, and the cell
            has no radius order).
        enumerate_max: sum the exact density over all n! permutations when n! <= this (else the
            canonical one only, exact inside the cell; module docstring).
        broken: must be False (no learnable modulation for this group yet).
    """

    name = "particles"
    finite = False
    examples = [((6,), {}), ((4,), {"n_particles": 3, "dim": 2}),
                ((4,), {"n_particles": 3, "dim": 2, "reflections": False}), ((9,), {"n_particles": 4, "dim": 3}),
                ((6,), {"n_particles": 3, "dim": 3, "reflections": False}),
                ((9,), {"n_particles": 4, "dim": 3, "enumerate_max": 1}),
                ((4,), {"n_particles": 3, "dim": 2, "permutations": False}),
                ((6,), {"n_particles": 3, "dim": 3, "reflections": False, "permutations": False})]

    def __init__(self, *, n_particles: int = 4, dim: int = 2, reflections: bool = True, permutations: bool = True,
                 enumerate_max: int = 24, broken: bool = False):
        super().__init__()
        ok = lambda v, lo: isinstance(v, int) and not isinstance(v, bool) and v >= lo  # noqa: E731
        if not ok(n_particles, 2):
            raise ConfigError(f"particles: 'n_particles' must be an integer >= 2, got {n_particles!r}")
        if not ok(dim, 1):
            raise ConfigError(f"particles: 'dim' must be an integer >= 1, got {dim!r}")
        if not ok(enumerate_max, 1):
            raise ConfigError(f"particles: 'enumerate_max' must be an integer >= 1, got {enumerate_max!r}")
        if broken:
            raise ConfigError("particles: 'broken' must be false (only the exact, uniform modulation is implemented)")
        need = dim if reflections else dim - 1
        if n_particles - 1 < need:
            raise ConfigError(f"particles: fixing the frame of {'O' if reflections else 'SO'}({dim}) needs "
                              f"n_particles >= {need + 1}, got {n_particles}")
        self.n_particles, self.dim, self.reflections = n_particles, dim, bool(reflections)
        self.permutations, self.enumerate_max, self.broken = bool(permutations), enumerate_max, False
        self.modulation = ParticleModulation(n_particles, dim, reflections=self.reflections,
                                             permutations=self.permutations)

    def bind(self, shape: tuple[int, ...]) -> Particles:
        want = ((self.n_particles - 1) * self.dim,)
        if tuple(shape) != want:
            raise IncompatibleError(f"particles: {self.n_particles} particles in {self.dim}-D act on reduced "
                                    f"coordinates of shape {want}, got shape {tuple(shape)}")
        return super().bind(shape)

    # -- group ----------------------------------------------------------------------------------
    def _split(self, u: Tensor) -> tuple[Tensor, Tensor]:
        n, d = self.n_particles, self.dim
        return u[:, :n].round().long(), u[:, n:].reshape(-1, d, d)

    def _join(self, perm: Tensor, m: Tensor, like: Tensor) -> Tensor:
        return torch.cat([perm.to(like.dtype), m.reshape(m.shape[0], -1).to(like.dtype)], -1)

    def identity(self, n: int, like: Tensor) -> Tensor:
        perm = torch.arange(self.n_particles, device=like.device).expand(n, -1)
        eye = torch.eye(self.dim, dtype=like.dtype, device=like.device).expand(n, -1, -1)
        return self._join(perm, eye, like)

    def random_elements(self, n: int, like: Tensor) -> Tensor:
        return self.modulation.sample(n, like=like)

    def same_elements(self, a: Tensor, b: Tensor) -> bool:
        pa, ma = self._split(a)
        pb, mb = self._split(b)
        return bool((pa == pb).all()) and bool(torch.allclose(ma, mb, atol=1e-8 if a.dtype == torch.float64 else 1e-4))

    def act(self, x: Tensor, u: Tensor) -> Tensor:
        perm, m = self._split(u)
        pos = to_positions(x.reshape(x.shape[0], -1), self.n_particles, self.dim)
        pos = torch.gather(pos, 1, perm.unsqueeze(-1).expand(-1, -1, self.dim))
        return to_reduced(pos @ m.transpose(-1, -2)).reshape(x.shape)

    def compose(self, u: Tensor, v: Tensor) -> Tensor:
        pu, mu = self._split(u)
        pv, mv = self._split(v)
        return self._join(torch.gather(pv, 1, pu), mu @ mv, u)

    def inverse(self, u: Tensor) -> Tensor:
        p, m = self._split(u)
        return self._join(torch.argsort(p, -1), m.transpose(-1, -2), u)

    # -- canonical cell -------------------------------------------------------------------------
    def _vectors(self, x: Tensor) -> Tensor:
        """The reduced vectors in reverse order, v_j = y_{n-2-j}: ``(N, n - 1, D)``."""
        return x.reshape(x.shape[0], self.n_particles - 1, self.dim).flip(1)

    def _frame(self, v: Tensor) -> Tensor:
        r"""The canonical frame Q ``(N, D, D)`` of reversed reduced vectors ``v``: QR of
        (v_0, ..., v_{D-1}) with R's diagonal made positive (SO(D): the last column completes det +1)."""
        d = self.dim
        cols = v[:, :d].transpose(-1, -2)  # (N, D, D) columns v_0..v_{D-1}
        if cols.shape[-1] < d:  # SO(D) with exactly D - 1 vectors: complete with a fixed vector
            fill = torch.linspace(1.0, 2.0, d, dtype=v.dtype, device=v.device)
            cols = torch.cat([cols, fill.expand(v.shape[0], d).unsqueeze(-1)], -1)
        q, r = torch.linalg.qr(cols)
        s = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
        s = torch.where(s == 0, torch.ones_like(s), s)
        q = q * s.unsqueeze(-2)
        if not self.reflections:
            q = torch.cat([q[..., :-1], q[..., -1:] * torch.det(q)[:, None, None]], -1)
        return q

    def _radii(self, x: Tensor) -> Tensor:
        return to_positions(x.reshape(x.shape[0], -1), self.n_particles, self.dim).norm(dim=-1)

    def penalty_fn(self, x: Tensor) -> Tensor:
        terms = []
        if self.permutations:
            r = self._radii(x)
            terms.append((r[:, :-1] - r[:, 1:]).amax(-1))
        v = self._vectors(x)
        k = self.dim if self.reflections else self.dim - 1
        if k:
            terms.append((-torch.diagonal(v[:, :k, :k], dim1=-2, dim2=-1)).amax(-1))
        if not terms:  # the trivial group SO(1): the cell is everything
            return x.new_full((x.shape[0],), -1.0)
        return torch.stack(terms, -1).amax(-1)

    def _sorted(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(pi, w)``: the radius order pi ``(N, n)`` and the reduced coordinates of w_i = x_{pi(i)}."""
        pos = to_positions(x.reshape(x.shape[0], -1), self.n_particles, self.dim)
        if not self.permutations:
            return torch.arange(self.n_particles, device=x.device).expand(x.shape[0], -1), x.reshape(x.shape[0], -1)
        pi = torch.argsort(pos.norm(dim=-1), -1)
        return pi, self._permuted(pos, pi)

    def _permuted(self, pos: Tensor, pi: Tensor) -> Tensor:
        return to_reduced(torch.gather(pos, 1, pi.unsqueeze(-1).expand(-1, -1, self.dim)))

    def _rotate_back(self, w: Tensor, q: Tensor) -> Tensor:
        """The reduced vectors of ``w`` in the frame ``q``: y_k -> Q^T y_k."""
        n = w.shape[0]
        return (w.reshape(n, -1, self.dim) @ q).reshape(n, -1)

    def canonicalize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        pi, w = self._sorted(z)
        q = self._frame(self._vectors(w))
        zc = self._rotate_back(w, q)
        return zc.reshape(z.shape), self._join(torch.argsort(pi, -1), q, z)

    # -- SESaMo ---------------------------------------------------------------------------------
    @property
    def rotation_dof(self) -> int:
        return self.dim * (self.dim - 1) // 2

    def flow_dim(self, dim: int) -> int:
        return dim - self.rotation_dof

    def _frame_mask(self, like: Tensor) -> Tensor:
        """True at the components of the flattened field the flow fills (the frame pattern)."""
        n, d = self.n_particles, self.dim
        mask = torch.ones(n - 1, d, dtype=torch.bool, device=like.device)
        for j in range(d - 1):  # v_j = y_{n-2-j}: components beyond j are zero
            mask[n - 2 - j, j + 1:] = False
        return mask.reshape(-1)

    def embed(self, y: Tensor, shape: tuple[int, ...]) -> Tensor:
        mask = self._frame_mask(y)
        out = y.new_zeros(y.shape[0], mask.numel())
        out[:, mask] = y
        return out.reshape(y.shape[0], *shape)

    def unembed(self, y: Tensor) -> Tensor:
        return y.reshape(y.shape[0], -1)[:, self._frame_mask(y)]

    def modulation_ladj(self, y: Tensor) -> Tensor:
        v = self._vectors(y)
        out = y.new_zeros(y.shape[0])
        for j in range(self.dim - 1):
            out = out + (self.dim - 1 - j) * torch.log(v[:, j, j].abs())
        return out

    def haar_log_prob(self) -> float:
        return self.modulation.log_p

    def _sign_patterns(self, like: Tensor) -> list[Tensor]:
        d, out = self.dim, []
        for s in itertools.product((1.0, -1.0), repeat=d):
            if not self.reflections and math.prod(s) != 1.0:
                continue
            out.append(torch.tensor(s, dtype=like.dtype, device=like.device))
        return out

    def permutations_enumerated(self) -> bool:
        """Whether :meth:`preimages` sums over all n! permutations (exact everywhere)."""
        return self.permutations and math.factorial(self.n_particles) <= self.enumerate_max

    def preimages(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """All (y, u) with y in embed's image and T_u y = x: every sign pattern of the frame for
        every permutation (n! <= ``enumerate_max``) or for the radius order only (module docstring)."""
        pos = to_positions(x.reshape(x.shape[0], -1), self.n_particles, self.dim)
        if self.permutations_enumerated():
            pis = [torch.tensor(p, device=x.device).expand(x.shape[0], -1)
                   for p in itertools.permutations(range(self.n_particles))]
        elif not self.permutations:
            pis = [torch.arange(self.n_particles, device=x.device).expand(x.shape[0], -1)]
        else:
            pis = [torch.argsort(pos.norm(dim=-1), -1)]
        out = []
        for pi in pis:
            w = self._permuted(pos, pi)
            q0 = self._frame(self._vectors(w))
            sigma = torch.argsort(pi, -1)
            for s in self._sign_patterns(x):
                q = q0 * s
                out.append((self._rotate_back(w, q).reshape(x.shape), self._join(sigma, q, x)))
        return out

    def probabilities(self) -> list[float] | None:
        return None
