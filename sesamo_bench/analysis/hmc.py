r"""Hybrid (Hamiltonian) Monte Carlo for any target with a differentiable action, in float64.

A Markov chain for p(x) ~ exp(-S[x]): each trajectory draws Gaussian momenta p, integrates
H(x, p) = S[x] + |p|^2 / 2 with the leapfrog scheme (time-reversible and volume-preserving) for
``n_leapfrog`` steps of size ``eps``, and accepts the end point with probability
min(1, exp(-dH)). Many independent chains run side by side as one batch ``(C, *shape)``; each
chain accepts or rejects on its own.

Optional *global moves* after each trajectory: a proposal x -> g(x) that is its own inverse in
distribution and volume-preserving (a random element of a group acting linearly and
orthogonally, e.g. the global sign flip of real phi^4 or a random U(1) rotation), accepted with
min(1, exp(S[x] - S[g x])). Where g is an exact symmetry of the action the move is always
accepted and lets the chain jump between the modes that HMC alone would not cross; where the
symmetry is broken (alpha > 0 in phi^4) the Metropolis test keeps the chain exact.

The step size is tuned during burn-in towards ``target_accept`` (a multiplicative
Robbins-Monro rule on the log step size) and then frozen, so the sampling phase is a
time-homogeneous Markov chain; each trajectory's step size is jittered by +-10 % (the same for
all chains) to avoid resonant trajectory lengths.

References:
    Duane, Kennedy, Pendleton, Roweth, Hybrid Monte Carlo, Phys. Lett. B 195 (1987) 216.
    Neal, MCMC using Hamiltonian dynamics, in Handbook of MCMC (2011), arXiv:1206.1901.

Example:
    >>> import torch
    >>> hmc = HMC(lambda x: 0.5 * (x ** 2).sum(-1), eps=0.5, n_leapfrog=5)
    >>> run = hmc.run(torch.zeros(16, 3, dtype=torch.float64), n_samples=50, burn_in=20,
    ...               generator=torch.Generator().manual_seed(0))
    >>> run.samples.shape, run.samples.dtype
    (torch.Size([50, 16, 3]), torch.float64)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from ..errors import TargetError, UserError

Action = Callable[[Tensor], Tensor]
#: a global proposal: ``(x, generator) -> x'`` for a batch ``(C, *shape)``
GlobalMove = Callable[[Tensor, torch.Generator], Tensor]


def checked(fn: Callable[[Tensor], Tensor], action: Action, what: str = "action") -> Callable[[Tensor], Tensor]:
    r"""``fn`` whose exceptions (other than :class:`~sesamo_bench.errors.UserError`) become one
    :class:`~sesamo_bench.errors.TargetError` naming the target (the owner of a bound ``action``,
    e.g. ``target.action``) and the exception, the original chained as its cause.

    Example:
        >>> def bad(x):
        ...     raise RuntimeError("boom")
        >>> checked(bad, bad)(torch.zeros(1))
        Traceback (most recent call last):
        sesamo_bench.errors.TargetError: the action raised RuntimeError: boom
    """
    owner = getattr(action, "__self__", None)
    name = getattr(owner, "name", None)
    who = f"target '{name}': its {what}" if isinstance(name, str) else f"the {what}"

    def call(x: Tensor) -> Tensor:
        try:
            return fn(x)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin's code can raise anything
            lines = str(exc).strip().splitlines()
            raise TargetError(f"{who} raised {type(exc).__name__}{': ' + lines[0] if lines else ''}") from exc

    return call


def autograd_force(action: Action) -> Callable[[Tensor], Tensor]:
    r"""dS/dx by autograd, for a batch ``(C, *shape)`` (the chains are independent)."""

    def grad(x: Tensor) -> Tensor:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(action(xg).sum(), xg)
        return g

    return grad


def leapfrog(x: Tensor, p: Tensor, grad: Callable[[Tensor], Tensor], eps: float, n_steps: int,
             g0: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    r"""``n_steps`` leapfrog steps of size ``eps`` for H = S[x] + |p|^2 / 2.

    Arguments:
        x, p: positions and momenta ``(C, *shape)``.
        grad: dS/dx ``(C, *shape) -> (C, *shape)``.
        eps: step size.
        n_steps: number of steps >= 1.
        g0: dS/dx at ``x`` when already known (saves one evaluation).

    Returns:
        ``(x', p', grad(x'))``. Reversible: ``leapfrog(x', -p', ...)`` returns ``(x, -p)``.
    """
    g = grad(x) if g0 is None else g0
    p = p - 0.5 * eps * g
    for i in range(n_steps):
        x = x + eps * p
        g = grad(x)
        p = p - (eps if i < n_steps - 1 else 0.5 * eps) * g
    return x, p, g


def global_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    r"""Flip the sign of each chain's whole field with probability 1/2 (a Z2 proposal)."""
    s = torch.randint(0, 2, (x.shape[0],), generator=generator, device=x.device).to(x.dtype) * 2 - 1
    return x * s.reshape(-1, *([1] * (x.dim() - 1)))


def always_flip(x: Tensor, generator: torch.Generator) -> Tensor:  # noqa: ARG001 - GlobalMove signature
    r"""Propose x -> -x for every chain (a deterministic involution: exact with the Metropolis test)."""
    return -x


def random_phase(x: Tensor, generator: torch.Generator) -> Tensor:
    r"""Rotate each chain's complex field ``(C, ..., 2)`` (last axis: re, im) by a uniform phase (a U(1) proposal)."""
    theta = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device) * (2 * math.pi)
    c, s = torch.cos(theta), torch.sin(theta)
    shape = (-1, *([1] * (x.dim() - 2)))
    re, im = x[..., 0], x[..., 1]
    c, s = c.reshape(shape), s.reshape(shape)
    return torch.stack([c * re - s * im, s * re + c * im], -1)


def sample_states(action: Action, x0: Tensor, n: int, *, generator: torch.Generator,
                  global_moves: list[GlobalMove] | tuple[GlobalMove, ...] = (), burn_in: int = 200, thin: int = 2,
                  n_leapfrog: int = 10, eps: float = 0.1) -> Tensor:
    r"""``n`` float64 states of exp(-S) from ``C = x0.shape[0]`` chains (``ceil(n / C)`` per chain,
    ``thin`` trajectories apart, after ``burn_in``), shape ``(n, *shape)``: reference samples of a
    target for metrics that need samples of p (e.g. the missing-support mass)."""
    chains = x0.shape[0]
    per = -(-n // chains)
    hmc = HMC(action, eps=eps, n_leapfrog=n_leapfrog, global_moves=global_moves)
    run = hmc.run(x0, n_samples=per, burn_in=burn_in, thin=thin, generator=generator)
    return run.samples.reshape(per * chains, *x0.shape[1:])[:n]


@dataclass
class HMCRun:
    r"""What :meth:`HMC.run` produced.

    Attributes:
        samples: ``(n_samples, C, *shape)`` (float64), or ``None`` with ``keep=False``.
        observables: ``(n_samples, C)`` values of ``observe`` per kept trajectory (``None`` without it).
        eps: the frozen step size of the sampling phase.
        n_leapfrog: leapfrog steps per trajectory.
        acceptance: mean HMC acceptance of the sampling phase.
        global_acceptance: mean acceptance of the global moves (``None`` without them).
        mean_exp_minus_dh: mean of min-free e^{-dH} over the sampling phase (1 in equilibrium).
        trajectories: trajectories run per chain (burn-in included).
    """

    samples: Tensor | None
    observables: Tensor | None
    eps: float
    n_leapfrog: int
    acceptance: float
    global_acceptance: float | None
    mean_exp_minus_dh: float
    trajectories: int
    history: dict[str, list[float]] = field(default_factory=dict)


class HMC:
    r"""HMC sampler of exp(-S[x]) with optional exact global moves.

    Arguments:
        action: S[x], ``(C, *shape) -> (C,)``, differentiable (autograd) unless ``grad`` is given.
        eps: initial leapfrog step size.
        n_leapfrog: leapfrog steps per trajectory.
        target_accept: acceptance rate the burn-in tunes ``eps`` towards (0 < . < 1).
        global_moves: proposals applied after each trajectory, each with its Metropolis test
            (see :func:`global_flip`); they must be symmetric and volume-preserving.
        grad: dS/dx, ``(C, *shape) -> (C, *shape)``; default: autograd of ``action``.

    An exception in ``action`` or its gradient (a target plugin with a bug) is a
    :class:`~sesamo_bench.errors.TargetError` naming the target (:func:`checked`).
    """

    def __init__(self, action: Action, *, eps: float = 0.1, n_leapfrog: int = 10, target_accept: float = 0.8,
                 global_moves: list[GlobalMove] | tuple[GlobalMove, ...] = (),
                 grad: Callable[[Tensor], Tensor] | None = None):
        if not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
        if not (isinstance(n_leapfrog, int) and n_leapfrog >= 1):
            raise ValueError(f"n_leapfrog must be an integer >= 1, got {n_leapfrog!r}")
        if not 0 < target_accept < 1:
            raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}")
        self.action, self.eps, self.n_leapfrog = checked(action, action), float(eps), n_leapfrog
        self.target_accept = float(target_accept)
        self.global_moves = list(global_moves)
        self.grad = checked(grad or autograd_force(action), action, "action's gradient")

    def trajectory(self, x: Tensor, s: Tensor, eps: float, generator: torch.Generator
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""One HMC trajectory for every chain.

        Arguments:
            x: current states ``(C, *shape)``; s: their actions ``(C,)``.

        Returns:
            ``(x', S[x'], accepted (C,) bool, dH (C,))``.
        """
        p = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        xn, pn, _ = leapfrog(x, p, self.grad, eps, self.n_leapfrog)
        sn = self.action(xn).detach()
        dims = tuple(range(1, x.dim()))
        dh = (sn - s) + 0.5 * ((pn * pn).sum(dims) - (p * p).sum(dims))
        dh = torch.where(torch.isfinite(dh), dh, torch.full_like(dh, math.inf))
        u = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
        acc = u < torch.exp(-dh)
        shape = (-1, *([1] * (x.dim() - 1)))
        return torch.where(acc.reshape(shape), xn, x), torch.where(acc, sn, s), acc, dh

    def global_step(self, x: Tensor, s: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        r"""Apply every global move with its Metropolis test; returns ``(x, S[x], accepted fraction)``."""
        rates = []
        shape = (-1, *([1] * (x.dim() - 1)))
        for move in self.global_moves:
            xn = move(x, generator)
            sn = self.action(xn).detach()
            u = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
            acc = u < torch.exp(s - sn)
            x, s = torch.where(acc.reshape(shape), xn, x), torch.where(acc, sn, s)
            rates.append(acc.to(x.dtype).mean())
        return x, s, torch.stack(rates).mean() if rates else x.new_tensor(math.nan)

    @torch.no_grad()
    def run(self, x0: Tensor, *, n_samples: int, burn_in: int = 200, thin: int = 1,
            observe: Callable[[Tensor], Tensor] | None = None, keep: bool = True,
            generator: torch.Generator | None = None) -> HMCRun:
        r"""Burn in (tuning ``eps``), then record ``n_samples`` states per chain.

        Arguments:
            x0: initial states ``(C, *shape)``; converted to float64.
            n_samples: states recorded per chain.
            burn_in: trajectories before recording (``eps`` is tuned during the first 3/4 of them).
            thin: trajectories between two recorded states.
            observe: ``(C, *shape) -> (C,)`` evaluated at every recorded state.
            keep: store the states themselves (``False``: only ``observe``'s values).
            generator: the random stream (default: a fresh one seeded from torch's global RNG).

        Returns:
            An :class:`HMCRun`.
        """
        if generator is None:
            generator = torch.Generator(device=x0.device).manual_seed(int(torch.randint(0, 2**62, ()).item()))
        x = x0.detach().to(torch.float64).clone()
        s = self.action(x).detach()
        eps = self.eps
        tune_until = (3 * burn_in) // 4
        log_eps = math.log(eps)
        for t in range(burn_in):
            jit = eps * (0.9 + 0.2 * float(torch.rand((), generator=generator, dtype=torch.float64)))
            x, s, acc, dh = self.trajectory(x, s, jit, generator)
            if t < tune_until:
                # Robbins-Monro on ln eps: the mean acceptance probability towards the target
                rate = float(torch.clamp(torch.exp(-dh), max=1.0).mean())
                log_eps += (rate - self.target_accept) / math.sqrt(t + 1)
                eps = math.exp(log_eps)
            if self.global_moves:
                x, s, _ = self.global_step(x, s, generator)
        samples, obs, accs, gaccs, edh = [], [], [], [], []
        for _ in range(n_samples):
            for _ in range(thin):
                jit = eps * (0.9 + 0.2 * float(torch.rand((), generator=generator, dtype=torch.float64)))
                x, s, acc, dh = self.trajectory(x, s, jit, generator)
                accs.append(float(acc.to(x.dtype).mean()))
                edh.append(float(torch.exp(-dh).mean()))
                if self.global_moves:
                    x, s, g = self.global_step(x, s, generator)
                    gaccs.append(float(g))
            if keep:
                samples.append(x.clone())
            if observe is not None:
                obs.append(observe(x).detach())
        return HMCRun(
            samples=torch.stack(samples) if keep and samples else None,
            observables=torch.stack(obs) if obs else None,
            eps=eps, n_leapfrog=self.n_leapfrog,
            acceptance=sum(accs) / len(accs) if accs else math.nan,
            global_acceptance=sum(gaccs) / len(gaccs) if gaccs else None,
            mean_exp_minus_dh=sum(edh) / len(edh) if edh else math.nan,
            trajectories=burn_in + n_samples * thin,
        )
