r"""The Python API: targets, symmetries and methods as objects, trained and evaluated in a notebook.

The command line is a layer over these functions: a worker of ``sesamo-bench run`` seeds torch,
builds the same objects, calls :func:`fit` and :func:`evaluate`, and records the result. None of
the functions here changes process-wide state (thread count, allocator, seeds); sampling draws
from torch's global generator, so seed it (:func:`torch.manual_seed`) for reproducible numbers.

Example:
    >>> import torch
    >>> import sesamo_bench as sb
    >>> settings = sb.preset("gaussian-mixture", "sesamo", preset="smoke", steps=20)
    >>> _ = torch.manual_seed(settings.seed)
    >>> target = sb.create_target("gaussian-mixture")
    >>> symmetry = sb.default_symmetry(target)              # Z8 rotations, bound to the shape
    >>> model = sb.create_method("sesamo", target, symmetry, settings=settings)
    >>> done = sb.fit(model, target, settings)
    >>> done.steps
    20
    >>> ev = sb.evaluate(model, target, 4096)
    >>> 0.0 < ev.ess <= 1.0
    True
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import plugins
from .harness.config import RunConfig, check_hyper, resolve
from .harness.store import DEFAULT_STORE, Store
from .core.architecture import FlowSpec
from .core.symmetry import Symmetry
from .core.target import Target
from .harness.train import Evaluation, Fit, build_model, check_exact, evaluate, fit  # noqa: F401 - re-exported

if TYPE_CHECKING:  # pragma: no cover
    import pandas

    from .core.methods import Method

__all__ = ["preset", "create_target", "create_symmetry", "default_symmetry", "create_method", "fit",
           "evaluate", "load_runs", "register", "Fit", "Evaluation"]


def register(cls: type) -> type:
    r"""Register a class defined in a notebook or a script as a plugin of its kind (a
    :class:`~sesamo_bench.core.target.Target`, :class:`~sesamo_bench.core.symmetry.Symmetry`,
    :class:`~sesamo_bench.core.architecture.Architecture` or :class:`~sesamo_bench.core.method.Method`
    subclass with a ``name``); usable as a decorator. It is known to this process (:func:`fit`,
    ``--workers 1``), not to the worker processes of ``sesamo-bench run``.

    Raises:
        PluginError: ``cls`` is none of the four kinds, or has no ``name``.
    """
    from .errors import PluginError

    for registry in (plugins.methods, plugins.architectures, plugins.targets, plugins.symmetries):
        if isinstance(cls, type) and issubclass(cls, registry.base):
            return registry.register(cls)
    raise PluginError(f"register: {cls!r} is not a Target, Symmetry, Architecture or Method subclass")


def preset(target: str, method: str, preset: str = "quick", *, seed: int = 0, **overrides: Any) -> RunConfig:
    r"""The settings the command line uses for one run: a target's preset for a method, with overrides.

    Arguments:
        target: target name (``"hubbard"``).
        method: method name (``"sesamo"``).
        preset: ``smoke``, ``quick`` or ``paper``.
        seed: the run's seed.
        overrides: what ``--set key=value`` takes (``steps=2000``, ``beta=2.0``, ...).

    Returns:
        A validated :class:`~sesamo_bench.harness.config.RunConfig` (the same as ``sesamo-bench run``'s).
    """
    return resolve(target, method, seed=seed, preset=preset, overrides=overrides)


def create_target(name: str, **params: Any) -> Target:
    r"""A target plugin by name, its constructor's keyword arguments validated as in ``--set``.

    Example:
        >>> import sesamo_bench as sb
        >>> sb.create_target("hubbard", beta=2.0).beta
        2.0
    """
    return plugins.targets.create(name, params, table=f"target '{name}'")


def create_symmetry(name: str, shape: tuple[int, ...], **params: Any) -> Symmetry:
    """A symmetry plugin by name, bound to the field shape ``shape``."""
    return plugins.symmetries.create(name, params, table=f"symmetry '{name}'").bind(tuple(shape))


def default_symmetry(target: Target, **params: Any) -> Symmetry:
    r"""The symmetry SESaMo and canonicalization use for ``target`` (its :meth:`Target.symmetry`),
    with parameters overridden by ``params``, bound to its shape; an exact one is checked against
    the action.
    """
    name, defaults = target.symmetry()
    sym = create_symmetry(name, target.shape, **{**defaults, **params})
    check_exact(sym, target)
    return sym


class _WithFlow:
    """A run configuration whose flow is an object (what :func:`build_model` reads: ``flow_spec()``)."""

    def __init__(self, cfg: RunConfig, spec: Any):
        self._cfg, self._spec = cfg, spec

    def __getattr__(self, key: str) -> Any:
        return getattr(self._cfg, key)

    def flow_spec(self) -> Any:
        return self._spec


def create_method(name: str, target: Target, symmetry: Symmetry | None = None, *,
                  settings: RunConfig | None = None, flow: Any = None, **arch: Any) -> Method:
    r"""A method (``realnvp``, ``canonicalization``, ``sesamo``) for ``target``.

    Arguments:
        name: method name.
        target: the target (its shape and dtype).
        symmetry: a bound symmetry (:func:`default_symmetry`); ignored by ``realnvp``.
        settings: architecture, prior, device and dtypes (default: the built-in defaults).
        flow: an architecture name (as ``--set flow=NAME``), or a flow object built in the notebook:
            an :class:`~sesamo_bench.core.architecture.Architecture`, a
            :class:`~sesamo_bench.core.bijections.Chain` of parts, any ``nn.Module`` with
            ``forward(z) -> (x, ladj)``, ``inverse(x) -> (z, ladj)`` and ``dim`` (its dimension must
            be the method's flow domain's; a one-line error otherwise). The object is trained in place
            (it is moved to the settings' device and dtype).
        arch: overrides of those settings (``width=64``, ``couplings=4``, ``device="cuda"``, ...).

    Returns:
        The :class:`~sesamo_bench.core.methods.Method`, on its device and dtype, its weights drawn
        from torch's global generator.

    Example:
        >>> import sesamo_bench as sb
        >>> from sesamo_bench.core.bijections import Chain, ElementwiseAffine
        >>> from sesamo_bench.core.flows import RealNVP
        >>> target = sb.create_target("gaussian-mixture")
        >>> g = Chain(RealNVP(2, couplings=2, hidden_layers=1, width=8), ElementwiseAffine(2))
        >>> model = sb.create_method("realnvp", target, flow=g)
        >>> model.flow.inner is g
        True
    """
    if isinstance(flow, str):
        arch = {**arch, "flow": flow}
    cfg = settings or RunConfig(target=target.name, method=name)
    cfg = dataclasses.replace(cfg, method=name, **{k: check_hyper(k, v, "create_method") for k, v in arch.items()})
    if flow is not None and not isinstance(flow, str):
        cfg = _WithFlow(cfg, FlowSpec.of(flow, kernels=cfg.kernels))
    return build_model(cfg, target, symmetry)


def load_runs(store: Path | str = DEFAULT_STORE, *, target: str | None = None, method: str | None = None,
              benchmark: str | None = None, status: str | None = None) -> pandas.DataFrame:
    r"""The results store as a :class:`pandas.DataFrame`, one row per run.

    Columns: the store's own (``run_id``, ``benchmark``, ``target``, ``method``, ``seed``,
    ``status``, ``steps``, ``wall_s``, ``ess``, ``log_z``, ``log_z_err``, ``breaking_ratio``,
    ``breaking_ratio_exact``, ...), the run's parameters as ``param.<name>`` and its scalar metrics
    as ``metric.<name>``; ``config``, ``provenance`` and ``history`` stay as dictionaries and lists.
    The store is opened read-only.
    """
    import pandas as pd

    s = Store(store, create=False)
    try:
        rows = s.runs(target=target, method=method, benchmark=benchmark, status=status)
    finally:
        s.close()
    flat = []
    for r in rows:
        row = {k: v for k, v in r.items() if k not in ("params", "metrics")}
        row.update({f"param.{k}": v for k, v in (r.get("params") or {}).items()})
        row.update({f"metric.{k}": v for k, v in (r.get("metrics") or {}).items()
                    if not isinstance(v, (list, dict))})
        flat.append(row)
    return pd.DataFrame(flat)
