"""Shared test helpers: bound symmetries on shapes they can act on, randomised models."""

from __future__ import annotations

import math

import torch

from sesamo_bench import plugins
from sesamo_bench.core.methods import METHODS
from sesamo_bench.core.symmetry import examples


def symmetry_examples() -> list[tuple[str, tuple[int, ...], dict]]:
    """``(name, shape, params)`` of every discovered symmetry plugin's examples (declared by the
    plugin or derived), so a dropped-in symmetry gets every contract test."""
    return [(name, shape, params) for name in plugins.symmetries.names()
            for shape, params in examples(plugins.symmetries.get(name))]


def example_id(case: tuple) -> str:
    return "-".join(str(c).replace(" ", "") for c in case if c not in (None, {}))


def shape_for(name: str) -> tuple[int, ...]:
    """The shape of the first example of a symmetry plugin."""
    cases = examples(plugins.symmetries.get(name))
    if not cases:
        raise RuntimeError(f"no test shape for symmetry {name}")
    return cases[0][0]


def bound(name: str, params: dict | None = None, shape: tuple[int, ...] | None = None):
    return plugins.symmetries.create(name, params or {}).bind(shape or shape_for(name)).double()


def randomise(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter so a fresh (identity) flow becomes a generic bijection."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def make_method(method: str, sym, shape, *, prior_mean: float = 0.0, prior_var: float = 1.0,
                width: int = 8, couplings: int = 4, seed: int = 0, flow_scale: float = 0.3):
    arch = dict(couplings=couplings, hidden_layers=1, width=width, activation="tanh", scale_bound=2.0)
    m = METHODS[method](shape, sym, arch=arch, prior_mean=prior_mean, prior_var=prior_var).double()
    randomise(m.flow, scale=flow_scale, seed=seed)
    return m


def importance_integral(model: torch.nn.Module, shape: tuple[int, ...], *, n: int, sigma: float,
                        generator: torch.Generator | None = None) -> tuple[float, float]:
    """E_r[q(x) / r(x)] and its standard error, r = N(0, sigma^2) on the field space: 1 for a
    normalised density ``model.log_prob`` (importance sampling, independent of the model's sampler)."""
    d = math.prod(shape)
    x = sigma * torch.randn(n, *shape, generator=generator)
    log_r = -0.5 * (x.reshape(n, -1) ** 2).sum(-1) / sigma**2 - 0.5 * d * math.log(2 * math.pi * sigma**2)
    with torch.no_grad():
        w = torch.exp(model.log_prob(x) - log_r)
    return float(w.mean()), float(w.std() / math.sqrt(n))
