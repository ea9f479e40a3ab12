r"""The symmetry contract: group action, canonical cell, penalty and modulation distribution.

A symmetry plugin is one file in ``symmetries/`` defining a subclass of :class:`Symmetry` with a
``name``. It supplies (paper Sec. 2.3, 3.1, App. E, F):

- the group: elements ``u`` (integer indices ``0..order-1`` for a finite group, angles for a
  continuous one), :meth:`act` ``T_u x``, :meth:`compose`, :meth:`inverse`;
- the canonical cell Omega through the penalty function :meth:`penalty_fn` lambda(x)
  (negative inside, zero on the border, positive outside) and :meth:`canonicalize` C_{T,z};
- the modulation distribution p_S(u) (:attr:`modulation`), learnable where ``broken=True``;
- for SESaMo: :meth:`embed` of the flow output into the cell and the log-Jacobian
  :meth:`modulation_ladj` of (flow output, u) -> x, plus :meth:`preimages` for exact densities.

Fields have shape ``(N, *shape)``; group elements ``u`` have shape ``(N,)``, or ``(N, k)`` where a
plugin encodes an element as k numbers (``particles``: a permutation and an orthogonal matrix);
:meth:`Symmetry.same_elements` compares elements in either encoding.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# ---------------------------------------------------------------------------------------------
# modulation distributions p_S(u)
# ---------------------------------------------------------------------------------------------
class Modulation(nn.Module):
    """A distribution over group elements, with named breaking parameters."""

    def sample(self, n: int, *, like: Tensor) -> Tensor:
        """Draw ``n`` group elements on ``like``'s device."""
        raise NotImplementedError

    def log_prob(self, u: Tensor) -> Tensor:
        """ln p_S(u), shape ``(N,)`` (probability mass for finite groups, density for continuous)."""
        raise NotImplementedError

    def sample_and_log_prob(self, n: int, *, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(u, ln p_S(u))`` for ``n`` draws; continuous modulations keep the gradient path."""
        u = self.sample(n, like=like)
        return u, self.log_prob(u)

    def probabilities(self) -> Tensor | None:
        """p_S over all elements of a finite group (``None`` for continuous groups)."""
        return None


class Categorical(Modulation):
    r"""p_S(u) over ``order`` elements: uniform (exact) or with learnable logits (broken).

    Arguments:
        order: number of group elements.
        learnable: whether the logits are trained.
    """

    def __init__(self, order: int, *, learnable: bool):
        super().__init__()
        logits = torch.zeros(order)
        if learnable:
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)

    def log_probs(self) -> Tensor:
        return F.log_softmax(self.logits, -1)

    def sample(self, n: int, *, like: Tensor) -> Tensor:
        p = self.log_probs().detach().exp().to(like.device)
        return torch.multinomial(p, n, replacement=True)

    def log_prob(self, u: Tensor) -> Tensor:
        return self.log_probs().to(u.device)[u]

    def probabilities(self) -> Tensor:
        return self.log_probs().detach().exp()


class Bernoulli(Modulation):
    r"""Broken Z2 modulation of paper Eq. (36): flip (u = 1) with probability e^b.

    The breaking parameter is stored as a logit ``theta`` with e^b = sigmoid(theta), which keeps
    b <= 0 and both ln p_S(0) and ln p_S(1) finite and smooth.
    """

    def __init__(self, *, learnable: bool):
        super().__init__()
        theta = torch.zeros(())
        if learnable:
            self.theta = nn.Parameter(theta)
        else:
            self.register_buffer("theta", theta)

    @property
    def b(self) -> float:
        """The paper's breaking parameter b = ln p_S(u = 1)."""
        return float(F.logsigmoid(self.theta.detach()))

    def sample(self, n: int, *, like: Tensor) -> Tensor:
        p = torch.sigmoid(self.theta.detach()).to(like.device)
        return (torch.rand(n, device=like.device, dtype=like.dtype) < p).long()

    def log_prob(self, u: Tensor) -> Tensor:
        theta = self.theta.to(u.device)
        return torch.where(u.bool(), F.logsigmoid(theta), F.logsigmoid(-theta))

    def probabilities(self) -> Tensor:
        p = torch.sigmoid(self.theta.detach())
        return torch.stack([1 - p, p])


# ---------------------------------------------------------------------------------------------
# symmetries
# ---------------------------------------------------------------------------------------------
class Symmetry(nn.Module):
    r"""Base class of symmetry plugins.

    Keyword-only constructor arguments are the configuration schema; every plugin accepts
    ``broken`` (learnable modulation) and stores each argument as a same-named attribute.

    Class attributes:
        name: registry name.
        finite: whether the group is finite (canonicalization needs a finite group).
        examples: small ``(shape, parameters)`` configurations the contract tests run (group
            laws, canonical cell, modulation bijectivity, normalised densities of every method);
            empty: the tests derive them (:func:`examples`).
    """

    name: ClassVar[str] = ""
    finite: ClassVar[bool] = True
    examples: ClassVar[list[tuple[tuple[int, ...], dict[str, Any]]]] = []
    modulation: Modulation
    broken: bool = False

    # -- group --------------------------------------------------------------------------------
    @property
    def order(self) -> int:
        """Number of group elements (finite groups)."""
        raise NotImplementedError

    def elements(self, like: Tensor) -> Tensor:
        """All group elements, shape ``(order,)`` (finite groups)."""
        return torch.arange(self.order, device=like.device)

    def identity(self, n: int, like: Tensor) -> Tensor:
        return torch.zeros(n, dtype=torch.long if self.finite else like.dtype, device=like.device)

    def random_elements(self, n: int, like: Tensor) -> Tensor:
        """Uniformly drawn group elements (for tests and checks)."""
        if self.finite:
            return torch.randint(self.order, (n,), device=like.device)
        return torch.rand(n, dtype=like.dtype, device=like.device) * 2 * math.pi

    def same_elements(self, a: Tensor, b: Tensor) -> bool:
        """Whether two batches of elements are equal: exactly for a finite group, angles modulo
        2 pi (to 1e-9) for a continuous one; plugins with another encoding override it."""
        if self.finite:
            return bool((a == b).all())
        d = torch.remainder(a - b + math.pi, 2 * math.pi) - math.pi
        return bool((d.abs() < 1e-9).all())

    def act(self, x: Tensor, u: Tensor) -> Tensor:
        """T_u x for a batch: ``x`` of shape ``(N, *shape)``, ``u`` of shape ``(N,)``."""
        raise NotImplementedError

    def compose(self, u: Tensor, v: Tensor) -> Tensor:
        """The element w with T_w = T_u T_v."""
        raise NotImplementedError

    def inverse(self, u: Tensor) -> Tensor:
        """The element w with T_w = T_u^{-1}."""
        raise NotImplementedError

    shape: tuple[int, ...] = ()

    def bind(self, shape: tuple[int, ...]) -> Symmetry:
        """Fix the field shape the group acts on (called before use); raise
        :class:`~sesamo_bench.errors.IncompatibleError` if it cannot act on that shape."""
        self.shape = tuple(shape)
        return self

    # -- canonical cell -----------------------------------------------------------------------
    def penalty_fn(self, x: Tensor) -> Tensor:
        """lambda(x), shape ``(N,)``: negative inside the canonical cell, 0 on its border."""
        raise NotImplementedError

    def canonicalize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """C_{T,z}: ``(z_c, u)`` with ``z_c`` in the cell and ``z = T_u z_c``."""
        raise NotImplementedError

    # -- SESaMo -------------------------------------------------------------------------------
    def flow_dim(self, dim: int) -> int:
        """Number of real components the flow produces under SESaMo (the field's, by default)."""
        return dim

    def embed(self, y: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Map the flow output ``(N, flow_dim)`` to a point of the field space ``(N, *shape)``."""
        return y.reshape(y.shape[0], *shape)

    def unembed(self, y: Tensor) -> Tensor:
        """Inverse of :meth:`embed` on its image: ``(N, *shape)`` -> ``(N, flow_dim)``."""
        return y.reshape(y.shape[0], -1)

    def modulation_ladj(self, y: Tensor) -> Tensor:
        """ln|det d x / d(flow output, u)| at the embedded point ``y``; 0 for orthogonal finite
        actions."""
        return y.new_zeros(y.shape[0])

    def haar_log_prob(self) -> float:
        """ln of the uniform (Haar) density of the group elements: -ln |G| for a finite group;
        continuous groups override it (U(1): -ln 2 pi). Used by SESaMo's equivariant construction."""
        return -math.log(self.order)

    def preimages(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """All ``(y, u)`` with ``y`` in the image of :meth:`embed` and ``T_u y = x``.

        The exact SESaMo density is a sum over these, whether or not the flow stays in its cell.
        """
        out = []
        for g in self.elements(x):
            u = g.expand(x.shape[0])
            out.append((self.act(x, self.inverse(u)), u))
        return out

    # -- reporting ----------------------------------------------------------------------------
    def probabilities(self) -> list[float] | None:
        p = self.modulation.probabilities()
        return None if p is None else [float(v) for v in p]

    def breaking_ratio(self) -> float | None:
        """The learned breaking ratio R of paper Eq. (39), where the symmetry defines one."""
        return None

    def breaking_sign(self, x: Tensor) -> Tensor | None:
        """+1 (-1) for configurations ``(N, *shape)`` in a cell that Eq. (39) counts as unbroken
        (broken), ``(N,)``; ``None`` where the symmetry defines no breaking ratio. The
        importance-weighted R of the samples is the weighted mean of this sign."""
        return None

    def describe(self) -> dict[str, Any]:
        from ..registry import parameters

        return {k: getattr(self, k) for k in parameters(type(self)) if hasattr(self, k)}


def subset_mask(indices: list[int] | tuple[int, ...], shape: tuple[int, ...], what: str) -> Tensor:
    """Boolean mask over the flattened field for a list of component indices (empty = all)."""
    from ..errors import IncompatibleError

    dim = math.prod(shape)
    mask = torch.zeros(dim, dtype=torch.bool)
    if not indices:
        mask[:] = True
        return mask
    for i in indices:
        if not -dim <= i < dim:
            raise IncompatibleError(f"{what}: component index {i} outside a field of {dim} components")
        mask[i] = True
    return mask


#: field shapes tried, in order, for a symmetry that declares no examples
EXAMPLE_SHAPES: tuple[tuple[int, ...], ...] = ((2,), (2, 2), (4,), (1,))


def examples(cls: type[Symmetry]) -> list[tuple[tuple[int, ...], dict[str, Any]]]:
    r"""The small configurations on which a symmetry plugin is tested: its declared
    :attr:`Symmetry.examples`, else the first of :data:`EXAMPLE_SHAPES` it binds to, exact and
    broken (every plugin accepts ``broken``).
    """
    if cls.examples:
        return [(tuple(shape), dict(params)) for shape, params in cls.examples]
    for shape in EXAMPLE_SHAPES:
        try:
            cls().bind(shape)
        except Exception:  # noqa: BLE001 - a shape it cannot act on; try the next
            continue
        return [(shape, {"broken": False}), (shape, {"broken": True})]
    return []
