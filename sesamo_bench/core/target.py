r"""The target contract: an unnormalised density p(x) = exp(-f[x]) / Z on a real field.

A target plugin is one file in ``targets/`` defining a subclass of :class:`Target` with a
``name``. Its keyword-only constructor arguments are its configuration schema (a
``benchmarks.toml`` table or ``--set key=value`` maps onto them). Constructors validate their
arguments and raise :class:`~sesamo_bench.errors.ConfigError` with the allowed range.

Fields are real tensors of shape ``(N, *shape)``; a complex field on ``L1 x L2`` sites is stored
as ``(N, L1, L2, 2)`` with the last axis (real, imaginary).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError


class Target:
    r"""Base class of targets.

    Class attributes:
        name: registry name (``"hubbard"``).
        presets: ``{"smoke" | "quick" | "paper": {key: value}}`` training and architecture
            hyperparameters (keys of :class:`sesamo_bench.harness.config.RunConfig`), with an optional
            ``"methods": {method: {key: value}}`` table of per-method overrides.
        dtype: ``torch.float64`` where the physics needs double precision, else ``None``.
        examples: small parameter sets the contract tests run (action, gradients, symmetries,
            presets, the exact ln Z against importance sampling); empty: the defaults alone.
    """

    name: ClassVar[str] = ""
    examples: ClassVar[list[dict[str, Any]]] = []
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    dtype: ClassVar[torch.dtype | None] = None

    #: shape of one configuration (set by the constructor)
    shape: tuple[int, ...] = ()
    #: sides of the periodic lattice when the leading axes of ``shape`` are one (phi^4: ``(L1, L2)``),
    #: else ``None``; the lattice architectures (``architectures/lattice_*.py``) need it
    lattice: tuple[int, ...] | None = None

    # -- physics --------------------------------------------------------------------------------
    def action(self, x: Tensor) -> Tensor:
        r"""The action f[x].

        Arguments:
            x: configurations, shape ``(N, *shape)``.

        Returns:
            f[x], shape ``(N,)``, in the dtype of ``x``.
        """
        raise NotImplementedError

    def log_prob(self, x: Tensor) -> Tensor:
        """Unnormalised log density ``-f[x]``, shape ``(N,)``."""
        return -self.action(x)

    def symmetry(self) -> tuple[str, dict[str, Any]]:
        """The symmetry SESaMo and canonicalization use: ``(registry name, parameters)``."""
        raise NotImplementedError

    def exact_symmetries(self) -> list[tuple[str, dict[str, Any]]]:
        """Symmetries (name, parameters with ``broken=False``) that leave the action invariant.

        Default: what :meth:`symmetry` declares when it declares it unbroken (a target written to
        the earlier contract, with an unbroken ``symmetry()`` only, needs nothing more), else none.
        """
        try:
            sym_name, sym_params = self.symmetry()
        except NotImplementedError:
            return []
        if sym_params.get("broken", False):
            return []
        return [(sym_name, {**sym_params, "broken": False})]

    # -- references -----------------------------------------------------------------------------
    def log_z(self) -> float | None:
        """Exact ln Z of exp(-f), where known independently, else ``None``."""
        return None

    def breaking_ratio(self) -> float | None:
        """Exact breaking ratio R of paper Eq. (39) for :meth:`symmetry`, where known."""
        return None

    def mode_probabilities(self) -> list[float] | None:
        """Exact probability of each group element's cell, ordered as the symmetry's elements."""
        return None

    def reference_samples(self, n: int, *, generator: torch.Generator) -> Tensor | None:
        r"""``n`` samples of p for metrics that need them (the mass where a model has no support).

        Exact draws where the target can make them, else the suite's HMC
        (:mod:`sesamo_bench.analysis.hmc`); ``None`` where the target offers neither.

        Arguments:
            n: number of samples.
            generator: the random stream (the training run's own RNG is left untouched).

        Returns:
            float64 configurations ``(n, *shape)``, or ``None``.
        """
        return None

    def training_data(self, split: str = "train") -> Tensor | None:
        r"""Samples of p for objectives that learn from samples (``objective = ml | mixed``).

        Arguments:
            split: ``"train"`` (what training draws its batches from) or ``"test"`` (held out:
                never used in training; the held-out NLL of every run is computed on it).

        Returns:
            float64 configurations ``(M, *shape)``, or ``None`` where the target has none (the
            default). The two splits must not share rows.
        """
        return None

    def offers_training_data(self) -> bool:
        """Whether :meth:`training_data` is provided (asked without generating anything)."""
        return type(self).training_data is not Target.training_data

    def reference_metrics(self, x: Tensor) -> dict[str, float | None]:
        r"""Distances of the model's samples ``x`` ``(N, *shape)`` (unweighted draws of q) to this
        target's reference samples, stored with the run (particle targets: the Wasserstein
        distances of the energy and pair-distance distributions); none by default."""
        return {}

    # -- observables (optional; see sesamo_bench.analysis.observables) -----------------------------------
    def observables(self, x: Tensor) -> dict[str, Tensor]:
        r"""Primary observables of configurations ``x`` ``(N, *shape)``: ``{name: (N,) or (N, k)}``.

        Their expectation values are estimated by reweighting, neural MCMC or HMC
        (``sesamo-bench measure``); none by default.
        """
        return {}

    def derived_observables(self, means: dict[str, Any]) -> dict[str, Any]:
        r"""Derived observables from the primary expectation values ``means`` (vector observables as
        lists), written with arithmetic and numpy functions only, so they apply alike to numbers
        and to error-carrying estimates (e.g. ``{"chi": V * (means["m2"] - means["m"] ** 2)}``)."""
        return {}

    def exact_observables(self) -> dict[str, float] | None:
        """Exact expectation values, independently known, keyed like the estimates (vector
        components as ``name[j]``); ``None`` where unknown."""
        return None

    # -- helpers --------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def params(self) -> dict[str, Any]:
        """The constructor arguments this target was built with (stored as same-named attributes)."""
        from ..registry import parameters

        return {k: getattr(self, k) for k in parameters(type(self)) if hasattr(self, k)}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({inner})"


#: the ``smoke`` preset every built-in target uses: seconds on a CPU, for tests
SMOKE: dict[str, Any] = {
    "steps": 30, "batch_size": 256, "lr": 1e-3, "couplings": 2, "hidden_layers": 1, "width": 16,
    "eval_every": 10, "eval_samples": 512, "final_samples": 2048, "save_samples": 512,
    "checkpoint_every": 10, "lr_patience": 20,
}


def is_real(v: Any) -> bool:
    """A finite int or float (not a bool): the type check of real-valued plugin parameters."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_int(v: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def lattice_shape(shape: Any, who: str) -> tuple[int, int]:
    """Validate a 2-D lattice size ``[L1, L2]`` (each >= 1) for target ``who``."""
    check(isinstance(shape, (list, tuple)) and len(shape) == 2 and all(is_int(s) and s >= 1 for s in shape),
          f"{who}: 'shape' must be two integers >= 1 (a 2-D lattice), got {shape!r}")
    return int(shape[0]), int(shape[1])


def check(cond: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``cond`` holds (validation helper)."""
    if not cond:
        raise ConfigError(message)
