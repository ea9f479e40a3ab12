r"""RealNVP: affine coupling layers with MLP conditioners and a bounded scale (Dinh et al. 2017).

Conventions follow zuko: every transform returns its value together with ``ladj``, the log
absolute determinant of its Jacobian, computed in the input's dtype. Inputs are flat
``(N, D)`` tensors.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from . import kernels as kernels_mod
from ..errors import ConfigError, InputOutsideDomain

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU, "gelu": nn.GELU, "elu": nn.ELU}


class MLP(nn.Sequential):
    r"""Linear layers with an activation between them; a subclass of :class:`torch.nn.Sequential`
    (same parameter names, ``0.weight``, ``0.bias``, ``2.weight``, ...).

    With ReLU on float32 CPU inputs the whole MLP is one fused autograd node
    (:mod:`sesamo_bench.core.kernels`, :func:`~sesamo_bench.core.kernels.select`): the native kernels, or
    oneDNN's. Otherwise, with ReLU, the forward pass is ``addmm`` (bias fused into the matrix
    product) followed by an in-place ``relu_``; other activations run the plain
    ``nn.Sequential`` forward. All agree up to float32 rounding.

    Mixed precision: an input of another dtype than the weights (a float64 flow whose conditioners
    were cast to float32, ``--set mlp_dtype=float32``) is cast to the weights' dtype and the output
    back to the input's. A coupling stays an exact bijection whatever function of x_a gives s and
    t, and its log-determinant is the sum of s, so the samples, the coupling transforms and ln q
    keep the flow's precision; only s and t themselves are rounded to float32.

    Arguments:
        layers: ``Linear, activation, Linear, ..., Linear``.
        kernels: ``"auto"`` (fused kernels where they apply), ``"native"``, ``"onednn"`` or ``"aten"`` (never).
    """

    def __init__(self, *layers: nn.Module, kernels: str = "auto"):
        super().__init__(*layers)
        self.kernels = kernels_mod.check(kernels)
        self._linears = [m for m in layers if isinstance(m, nn.Linear)]
        self._relu = all(isinstance(m, nn.ReLU) for m in layers[1::2])
        self._sizes = (self._linears[0].in_features, *[m.out_features for m in self._linears])

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        dtype = self._linears[0].weight.dtype
        if x.dtype != dtype:
            return self.forward(x.to(dtype)).to(x.dtype)
        fused = kernels_mod.select(self.kernels, x, self._relu, self._sizes)
        if fused is not None:
            return kernels_mod.relu_mlp(x, [m.weight for m in self._linears], [m.bias for m in self._linears],
                                        kernels=fused)
        if not self._relu or x.dim() != 2:
            return super().forward(x)
        last = len(self._linears) - 1
        for i, lin in enumerate(self._linears):
            x = torch.addmm(lin.bias, x, lin.weight.t())
            if i < last:
                x = x.relu_()  # addmm's backward does not need its output: in place is safe
        return x


def mlp(n_in: int, n_out: int, *, hidden_layers: int, width: int, activation: str, kernels: str = "auto") -> MLP:
    """``hidden_layers`` hidden layers of ``width`` units; the output layer starts at zero, so a
    fresh coupling is the identity."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"Unknown activation '{activation}'. Available: {', '.join(sorted(ACTIVATIONS))}")
    layers: list[nn.Module] = []
    d = n_in
    for _ in range(hidden_layers):
        layers += [nn.Linear(d, width), ACTIVATIONS[activation]()]
        d = width
    last = nn.Linear(d, n_out)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    layers.append(last)
    return MLP(*layers, kernels=kernels)


class AffineCoupling(nn.Module):
    r"""x_b -> x_b * exp(s(x_a)) + t(x_a), with s = bound * tanh(raw / bound).

    One MLP produces s and t together. The flow keeps the two halves as separate tensors
    (:class:`RealNVP` alternates which half conditions), so no gather happens inside the flow.

    Arguments:
        n_cond: size of the conditioning half x_a (may be 0: s and t are then learned constants).
        n_out: size of the transformed half x_b.
        scale_bound: bound on |s| per layer.
    """

    def __init__(self, n_cond: int, n_out: int, *, hidden_layers: int, width: int, activation: str,
                 scale_bound: float, kernels: str = "auto"):
        super().__init__()
        self.n_out, self.bound = n_out, scale_bound
        if n_cond > 0:
            self.net = mlp(n_cond, 2 * n_out, hidden_layers=hidden_layers, width=width, activation=activation,
                           kernels=kernels)
        else:
            self.net = None
            self.const = nn.Parameter(torch.zeros(2 * n_out))

    def _raw(self, xa: Tensor) -> Tensor:
        return self.net(xa) if self.net is not None else self.const.to(xa).expand(xa.shape[0], -1)

    def forward(self, xa: Tensor, xb: Tensor) -> tuple[Tensor, Tensor]:
        return _BoundedAffine.apply(self._raw(xa), xb, self.bound)

    def inverse(self, xa: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._raw(xa).split(self.n_out, dim=-1)
        s = bounded(s, self.bound)
        return (yb - t) * torch.exp(-s), -s.sum(-1)


def bounded(raw: Tensor, bound: float) -> Tensor:
    r"""c tanh(raw / c), computed as c (2 sigmoid(2 raw / c) - 1).

    The same function; PyTorch's CPU ``sigmoid`` is about ten times faster than its ``tanh``
    (vectorised differently), and the absolute error is a few float eps of c.
    """
    s = torch.sigmoid(raw * (2.0 / bound))
    if s.requires_grad:  # sigmoid's backward needs its output: no in-place update under autograd
        return s * (2.0 * bound) - bound
    return s.mul_(2.0 * bound).sub_(bound)


class _BoundedAffine(torch.autograd.Function):
    r"""(raw, x_b) -> (y_b, ladj): s = c tanh(raw_s / c), y_b = x_b e^s + raw_t, ladj = sum s.

    One fused autograd node instead of split/div/tanh/mul/exp/addcmul/sum and their backward
    nodes; tanh is evaluated through a sigmoid as in :func:`bounded`, sigma = sigmoid(2 raw_s / c),
    ds/draw_s = 1 - tanh^2 = 4 sigma (1 - sigma). The backward writes
    d raw = [(g_y x_b e^s + g_l) ds/draw_s, g_y] straight into one
    contiguous ``(N, 2 n)`` buffer, which the last Linear's backward reads. First-order only (the
    training loss and the Jacobian tests need no more). Shapes: raw ``(N, 2 n)``, x_b ``(N, n)``;
    returns ``(N, n)`` and ``(N,)``.
    """

    @staticmethod
    def forward(ctx, raw: Tensor, xb: Tensor, bound: float) -> tuple[Tensor, Tensor]:
        n = xb.shape[-1]
        sig = torch.sigmoid(raw[:, :n] * (2.0 / bound))
        e = torch.mul(sig, 2.0 * bound).sub_(bound)  # s
        ladj = e.sum(-1)
        e = e.exp_()
        y = torch.addcmul(raw[:, n:], xb, e)
        dsdr = sig.addcmul_(sig, sig, value=-1.0).mul_(4.0)  # 4 sigma (1 - sigma), in sig's buffer
        ctx.save_for_backward(dsdr, e, xb)
        return y, ladj

    @staticmethod
    def backward(ctx, gy: Tensor | None, gl: Tensor | None):  # noqa: D102
        dsdr, e, xb = ctx.saved_tensors
        n = e.shape[-1]
        if gy is None:
            gy = torch.zeros_like(e)
        graw = e.new_empty(e.shape[0], 2 * n)
        gs = graw[:, :n]
        gxb = gy * e  # d y / d x_b = e^s
        if gl is None:
            torch.mul(gxb, xb, out=gs)
        else:
            torch.addcmul(gl.unsqueeze(-1), gxb, xb, out=gs)  # d y / d s = x_b e^s; d ladj / d s = 1
        gs.mul_(dsdr)
        graw[:, n:] = gy
        return graw, (gxb if ctx.needs_input_grad[1] else None), None


def partition(shape: tuple[int, ...]) -> Tensor:
    """Checkerboard split of a field of this shape: parity of the sum of the site's indices."""
    grids = torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij")
    return (sum(grids) % 2 == 0).reshape(-1) if shape else torch.ones(1, dtype=torch.bool)


def _param(default: Any, **allowed: float) -> Any:
    """A field of :class:`CouplingParams`: its default and the range the run configuration allows
    (``lo <= v`` or ``above < v``, and ``v <= hi``: the arguments of ``harness.config.hyper``)."""
    return dataclasses.field(default=default, metadata={"allowed": allowed})


@dataclasses.dataclass(frozen=True)
class CouplingParams:
    r"""The parameters of :class:`RealNVP`'s couplings (paper Table 3), declared once.

    ``realnvp`` and the architectures built on its couplings (``run_fields``: ``affine-realnvp``,
    ``odd-realnvp``, ``z2-fourier``, ``u1-fourier``) take them through :meth:`keywords`; the run
    configuration's fields of these names, their defaults and their ranges (``--set width=...``)
    are generated from this declaration (``harness.config.RunConfig``, ``REALNVP_FIELDS``).

    Attributes:
        couplings, hidden_layers, width, activation: the paper's N_C, N_L, N_N and activation.
        scale_bound: bound of the per-layer log-scale.

    The ranges (:meth:`allowed`) are what a run's configuration accepts; building a flow does not
    check them (``affine-realnvp`` takes ``couplings = 0``: its Gaussian layer alone).

    Example:
        >>> CouplingParams.defaults()
        {'couplings': 6, 'hidden_layers': 4, 'width': 40, 'activation': 'relu', 'scale_bound': 3.0}
        >>> CouplingParams.allowed()["scale_bound"]
        {'above': 0, 'hi': 10.0}
        >>> CouplingParams(width=8).width
        8
    """

    couplings: int = _param(6, lo=1)
    hidden_layers: int = _param(4, lo=0)
    width: int = _param(40, lo=1)
    activation: str = _param("relu")
    scale_bound: float = _param(3.0, above=0, hi=10.0)

    #: set on an ``__init__`` decorated by :meth:`keywords` (the declaration it takes)
    MARK: ClassVar[str] = "__coupling_params__"

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The parameter names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """``{name: default}``."""
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def allowed(cls) -> dict[str, dict[str, float]]:
        """``{name: range}``, the range as keyword arguments ``lo``/``above``/``hi`` (empty: any value)."""
        return {f.name: dict(f.metadata["allowed"]) for f in dataclasses.fields(cls)}

    @classmethod
    def parameters(cls) -> list[inspect.Parameter]:
        """The declaration as keyword-only :class:`inspect.Parameter` objects (name, default, type)."""
        return [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
                for f in dataclasses.fields(cls)]

    def asdict(self) -> dict[str, Any]:
        """``{name: value}`` (keyword arguments of :class:`RealNVP`)."""
        return dataclasses.asdict(self)

    @classmethod
    def keywords(cls, init: Callable) -> Callable:
        r"""Decorator of an ``__init__(self, ..., **coupling)`` that takes these parameters.

        The decorated constructor receives all of them in ``coupling`` (the defaults filled in; a
        name not declared is a :class:`TypeError`, as for any constructor), and its signature
        (:func:`inspect.signature`, hence an architecture's configuration schema,
        ``sesamo-bench list architectures`` and ``flow.<key>`` validation) shows them as keyword-only
        arguments with their defaults and types, in place of ``**coupling``.

        Example:
            >>> class Two(torch.nn.Module):
            ...     @CouplingParams.keywords
            ...     def __init__(self, dim, *, kernels="auto", **coupling):
            ...         super().__init__()
            ...         self.flow = RealNVP(dim, kernels=kernels, **coupling)
            >>> [p for p in inspect.signature(Two.__init__).parameters][-3:]
            ['width', 'activation', 'scale_bound']
            >>> Two(4, couplings=2).flow.layers.__len__()
            2
        """
        sig = inspect.signature(init)
        *named, var = sig.parameters.values()
        if var.kind is not var.VAR_KEYWORD:
            raise TypeError(f"CouplingParams.keywords: {init.__qualname__} needs a **kwargs argument to take them")
        own = {p.name for p in named}
        clash = sorted(own & set(cls.names()))
        if clash:
            raise TypeError(f"CouplingParams.keywords: {init.__qualname__} spells '{clash[0]}' itself")
        defaults = cls.defaults()

        @functools.wraps(init)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
            unknown = [k for k in kwargs if k not in defaults and k not in own]
            if unknown:
                raise TypeError(f"{init.__qualname__}() got an unexpected keyword argument '{unknown[0]}'")
            init(self, *args, **{**defaults, **kwargs})

        wrapper.__signature__ = sig.replace(parameters=[*named, *cls.parameters()])
        setattr(wrapper, cls.MARK, cls)
        return wrapper


class RealNVP(nn.Module):
    r"""A stack of ``couplings`` affine couplings on R^D alternating a checkerboard split.

    Arguments:
        dim: D.
        shape: field shape used for the checkerboard split (defaults to ``(dim,)``).
        couplings, hidden_layers, width, activation, scale_bound: the couplings' parameters
            (:class:`CouplingParams`: the paper's N_C, N_L, N_N, activation and the bound of the
            per-layer log-scale).
        kernels: the MLPs' kernels, ``"auto"`` | ``"native"`` | ``"onednn"`` | ``"aten"``
            (:mod:`sesamo_bench.core.kernels`).

    Example:
        >>> f = RealNVP(4, couplings=2, hidden_layers=1, width=8).double()
        >>> z = torch.randn(3, 4, dtype=torch.float64)
        >>> x, ladj = f(z)
        >>> torch.allclose(f.inverse(x)[0], z)
        True
    """

    #: the coupling class (a subclass may change the conditioner, e.g. odd networks)
    coupling: type[AffineCoupling] = AffineCoupling

    @CouplingParams.keywords
    def __init__(self, dim: int, *, shape: tuple[int, ...] | None = None, kernels: str = "auto", **coupling: Any):
        super().__init__()
        p = CouplingParams(**coupling)
        shape = tuple(shape) if shape is not None else (dim,)
        if math.prod(shape) != dim:
            raise ConfigError(f"RealNVP: shape {shape} does not have {dim} components")
        self.dim = dim
        mask = partition(shape)
        idx_a, idx_b = torch.nonzero(mask).squeeze(-1), torch.nonzero(~mask).squeeze(-1)
        self.register_buffer("idx_a", idx_a, persistent=False)
        self.register_buffer("idx_b", idx_b, persistent=False)
        self.register_buffer("inv_perm", torch.argsort(torch.cat([idx_a, idx_b])), persistent=False)
        self.na, self.nb = len(idx_a), len(idx_b)
        self.layers = nn.ModuleList()
        for k in range(p.couplings):
            n_cond, n_out = (self.na, self.nb) if k % 2 == 0 else (self.nb, self.na)
            if n_out == 0:
                n_cond, n_out = 0, n_cond
            self.layers.append(self.coupling(n_cond, n_out, hidden_layers=p.hidden_layers, width=p.width,
                                              activation=p.activation, scale_bound=p.scale_bound, kernels=kernels))

    def _check(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise InputOutsideDomain(f"Expected input shape (N, {self.dim}); got {tuple(x.shape)}")

    def _halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return _Split.apply(x, self.idx_a, self.idx_b, self.inv_perm)

    def _join(self, a: Tensor, b: Tensor) -> Tensor:
        return _Join.apply(a, b, self.idx_a, self.idx_b, self.inv_perm)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """x = g(z) and ln|det dg/dz|, shapes ``(N, D)`` and ``(N,)``."""
        self._check(z)
        a, b = self._halves(z)
        ladj = z.new_zeros(z.shape[0])
        for k, layer in enumerate(self.layers):
            if self.nb == 0:
                a, ld = layer(a[:, :0], a)
            elif k % 2 == 0:
                b, ld = layer(a, b)
            else:
                a, ld = layer(b, a)
            ladj = ladj + ld
        return self._join(a, b), ladj

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """z = g^{-1}(x) and ln|det dg^{-1}/dx|."""
        self._check(x)
        a, b = self._halves(x)
        ladj = x.new_zeros(x.shape[0])
        for k in reversed(range(len(self.layers))):
            layer = self.layers[k]
            if self.nb == 0:
                a, ld = layer.inverse(a[:, :0], a)
            elif k % 2 == 0:
                b, ld = layer.inverse(a, b)
            else:
                a, ld = layer.inverse(b, a)
            ladj = ladj + ld
        return self._join(a, b), ladj


class _Split(torch.autograd.Function):
    r"""x ``(N, D)`` -> (x[:, idx_a], x[:, idx_b]), two contiguous halves; :class:`_Join` inverts it.

    Both directions and both backward passes are gathers (``index_select``): the adjoint of a
    permutation is its inverse, so no scatter-add (the backward of advanced indexing) is needed.
    """

    @staticmethod
    def forward(ctx, x: Tensor, idx_a: Tensor, idx_b: Tensor, inv_perm: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        ctx.save_for_backward(inv_perm)
        return x.index_select(1, idx_a), x.index_select(1, idx_b)

    @staticmethod
    def backward(ctx, ga: Tensor | None, gb: Tensor | None):  # noqa: D102
        (inv_perm,) = ctx.saved_tensors
        return _join_halves(ga, gb, inv_perm), None, None, None


def _join_halves(a: Tensor | None, b: Tensor | None, inv_perm: Tensor) -> Tensor:
    d = len(inv_perm)
    if a is None:  # an unused half: its gradient is zero
        a = b.new_zeros(b.shape[0], d - b.shape[1])
    if b is None:
        b = a.new_zeros(a.shape[0], d - a.shape[1])
    return torch.cat([a, b], -1).index_select(1, inv_perm)


class _Join(torch.autograd.Function):
    """(a, b) -> x with x[:, idx_a] = a, x[:, idx_b] = b; the inverse of :class:`_Split`."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, idx_a: Tensor, idx_b: Tensor, inv_perm: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(idx_a, idx_b)
        return _join_halves(a, b, inv_perm)

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102
        idx_a, idx_b = ctx.saved_tensors
        return g.index_select(1, idx_a), g.index_select(1, idx_b), None, None, None


class GaussianPrior(nn.Module):
    r"""Isotropic Gaussian q_0 = N(mean, var I) on R^D.

    Arguments:
        dim: D.
        mean, var: scalar mean and variance (paper Table 3).
    """

    def __init__(self, dim: int, *, mean: float = 0.0, var: float = 1.0):
        super().__init__()
        if not var > 0:
            raise ConfigError(f"prior_var must be > 0, got {var}")
        self.dim, self.mean, self.var = dim, float(mean), float(var)
        self.register_buffer("_ref", torch.zeros(()), persistent=False)

    def sample(self, n: int, *, dtype: torch.dtype | None = None) -> Tensor:
        dtype = dtype or self._ref.dtype
        return self.mean + math.sqrt(self.var) * torch.randn(n, self.dim, dtype=dtype, device=self._ref.device)

    def log_prob(self, z: Tensor) -> Tensor:
        d = z - self.mean
        return -0.5 * (d * d).sum(-1) / self.var - 0.5 * self.dim * math.log(2 * math.pi * self.var)
