"""Shared test helpers: bound symmetries on shapes they can act on, randomised models."""

from __future__ import annotations

import torch

from sesamo_bench import plugins
from sesamo_bench.methods import METHODS

#: a field shape each built-in symmetry acts on, and a parameter set per variant
SHAPES = {"z2": (3,), "zm": (2,), "z2xz2": (2,), "u1": (2, 2)}
VARIANTS = {
    "z2": [{}, {"broken": True}, {"flip": [0, 2]}],
    "zm": [{"m": 3}, {"m": 8, "broken": True}, {"m": 2}],
    "z2xz2": [{}, {"broken": False}],
    "u1": [{}, {"broken": True, "bins": 4}],
}


def shape_for(name: str) -> tuple[int, ...]:
    """A shape the symmetry acts on: built-ins have one listed; plugins get (2,) or (2, 2)."""
    if name in SHAPES:
        return SHAPES[name]
    for shape in [(2,), (2, 2), (4,)]:
        try:
            plugins.symmetries.create(name, {}).bind(shape)
            return shape
        except Exception:  # noqa: BLE001
            continue
    raise RuntimeError(f"no test shape for symmetry {name}")


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
