r"""Flows that compose: a :class:`Chain` of bijections and the affine layers architectures share.

A bijection here is any :class:`torch.nn.Module` with ``forward(z) -> (x, ladj)`` and
``inverse(x) -> (z, ladj_inv)`` on flat ``(N, D)`` tensors, ``ladj = ln|det dx/dz|`` computed
with the value (the convention of :mod:`sesamo_bench.core.flows` and of zuko, FlowJAX, bgflow),
and an attribute ``dim = D``. :class:`Chain` composes them (the log-determinants add, the inverse
runs the parts in reverse order), so an architecture is a small declaration of its parts, e.g.

    Chain(RealNVP(D, couplings=6), ElementwiseAffine(D))

and a flow built in a notebook from these parts is a flow object a method accepts
(:class:`~sesamo_bench.core.architecture.FlowSpec`, ``flow=`` of a method or of
:func:`sesamo_bench.create_method`).

Example:
    >>> import torch
    >>> from sesamo_bench.core.flows import RealNVP
    >>> f = Chain(RealNVP(4, couplings=2, hidden_layers=1, width=8), ElementwiseAffine(4)).double()
    >>> z = torch.randn(3, 4, dtype=torch.float64)
    >>> x, ladj = f(z)
    >>> torch.equal(x, z), ladj.abs().max().item()      # a fresh chain of fresh parts is the identity
    (True, 0.0)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError, InputOutsideDomain


def check_flat(x: Tensor, dim: int) -> None:
    """Raise :class:`InputOutsideDomain` unless ``x`` is ``(N, dim)``."""
    if x.dim() != 2 or x.shape[1] != dim:
        raise InputOutsideDomain(f"Expected input shape (N, {dim}); got {tuple(x.shape)}")


class Parts(nn.Module):
    r"""The parts of a :class:`Chain`, indexed and iterated in the order applied (``parts[0]`` first),
    named ``"0"``, ``"1"``, ... (so their parameters are ``parts.0.*``, ...), registered in
    ``order``: the order in which :meth:`~torch.nn.Module.parameters` lists their parameters."""

    def __init__(self, parts: Sequence[nn.Module], order: Sequence[int]):
        super().__init__()
        self.n = len(parts)
        for i in order:
            self.add_module(str(i), parts[i])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> nn.Module:
        return self._modules[str(range(self.n)[i])]

    def __iter__(self) -> Iterator[nn.Module]:
        return (self[i] for i in range(self.n))

    def __reversed__(self) -> Iterator[nn.Module]:
        return (self[i] for i in reversed(range(self.n)))


class Chain(nn.Module):
    r"""The composition g = g_K o ... o g_1 of bijections on R^D (``parts`` in the order applied).

    ``forward`` applies ``g_1`` first and adds the log-determinants, ``inverse`` undoes the parts in
    reverse order; the parts' parameters are ``parts.0.*``, ``parts.1.*``, ... A subclass (an
    architecture that is a chain) calls ``Chain.__init__(self, *parts)``.

    Arguments:
        parts: the bijections, each with ``dim``, all the same.
        order: the order in which ``parameters()`` (and so an optimizer's state and a gradient
            norm's sum) lists the parts' parameters, a permutation of their indices; default: the
            order applied. (The architectures that became chains keep their earlier order: the
            affine layer's parameters first.)

    Raises:
        ConfigError: no parts, a part without ``dim``, parts of different dimensions, or an
            ``order`` that is not a permutation of the parts' indices.
    """

    def __init__(self, *parts: nn.Module, order: Sequence[int] | None = None):
        super().__init__()
        if not parts:
            raise ConfigError("Chain: needs at least one bijection")
        dims = [getattr(p, "dim", None) for p in parts]
        if any(not isinstance(d, int) for d in dims) or len(set(dims)) != 1:
            raise ConfigError(f"Chain: the parts must share one dimension 'dim'; got {dims}")
        order = tuple(range(len(parts))) if order is None else tuple(order)
        if sorted(order) != list(range(len(parts))):
            raise ConfigError(f"Chain: order {order} is not a permutation of 0..{len(parts) - 1}")
        self.parts = Parts(parts, order)
        self.dim = dims[0]

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """x = g(z) and ln|det dg/dz| = sum of the parts', shapes ``(N, D)`` and ``(N,)``."""
        check_flat(z, self.dim)
        x, ladj = z, None
        for part in self.parts:
            x, ld = part(x)
            ladj = ld if ladj is None else ladj + ld
        return x, ladj

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """z = g^{-1}(x) and ln|det dg^{-1}/dx|: the parts' inverses in reverse order."""
        check_flat(x, self.dim)
        z, ladj = x, None
        for part in reversed(self.parts):
            z, ld = part.inverse(z)
            ladj = ld if ladj is None else ladj + ld
        return z, ladj


class _Renames:
    """A load-state-dict pre-hook reading old parameter names as new ones (picklable, unlike a closure)."""

    def __init__(self, renames: Mapping[str, str]):
        self.renames = dict(renames)

    def __call__(self, state: dict, prefix: str, *args) -> None:
        for key in list(state):
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix):]
            for old, new in self.renames.items():
                if rest == old or (old.endswith(".") and rest.startswith(old)):
                    state[prefix + new + rest[len(old):]] = state.pop(key)
                    break


def legacy_names(module: nn.Module, renames: Mapping[str, str]) -> None:
    r"""Let ``module`` load state dicts written with the parameter names of an earlier layout
    (checkpoints of runs started before an architecture became a chain of parts): a key that is an
    old name (``"shift"``), or starts with an old prefix ending in a dot (``"couplings."``), is read
    as the new one (``"parts.1.shift"``, ``"parts.0."``)."""
    module._register_load_state_dict_pre_hook(_Renames(renames))


class ElementwiseAffine(nn.Module):
    r"""x = shift + e^{log_scale} * z elementwise, ln|det dx/dz| = sum(log_scale); the identity at
    construction (shift = log_scale = 0).

    The diagonal preconditioning of the lattice literature (a scale per mode) and the place a mean
    (an ordered phase's magnetisation) is learned. Parameters in the input's dtype at use.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = int(dim)
        self.log_scale = nn.Parameter(torch.zeros(self.dim))
        self.shift = nn.Parameter(torch.zeros(self.dim))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        log_scale = self.log_scale.to(z)
        return torch.addcmul(self.shift.to(z), z, log_scale.exp()), log_scale.sum().expand(z.shape[0])

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        log_scale = self.log_scale.to(x)
        return (x - self.shift.to(x)) * torch.exp(-log_scale), -log_scale.sum().expand(x.shape[0])


class TriangularAffine(nn.Module):
    r"""x = mu + L z with L = diag(e^{d}) + tril(W, -1) lower triangular with a positive diagonal,
    ln|det dx/dz| = sum(d): a full-covariance Gaussian layer (the inverse is a triangular solve);
    the identity at construction (mu = d = W = 0)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = d = int(dim)
        self.shift = nn.Parameter(torch.zeros(d))
        self.log_diag = nn.Parameter(torch.zeros(d))
        self.lower = nn.Parameter(torch.zeros(d, d))
        self.register_buffer("_mask", torch.ones(d, d).tril(-1), persistent=False)

    def matrix(self) -> Tensor:
        """L = diag(e^d) + tril(W, -1), ``(D, D)``."""
        return torch.diag_embed(self.log_diag.exp()) + self.lower * self._mask

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        lm = self.matrix().to(z)
        return torch.addmm(self.shift.to(z), z, lm.t()), self.log_diag.to(z).sum().expand(z.shape[0])

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        lm = self.matrix().to(x)
        y = torch.linalg.solve_triangular(lm, (x - self.shift.to(x)).t(), upper=False).t()
        return y, -self.log_diag.to(x).sum().expand(x.shape[0])
