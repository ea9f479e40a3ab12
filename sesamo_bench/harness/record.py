r"""The run record: one typed declaration of what the suite stores about a run.

:class:`RunRecord` lists every field once, with where it lives and whether it is part of the
``--json`` contract:

- a *column* of table ``runs`` in the store (:data:`COLUMNS`, with its SQL type; JSON-encoded
  where :data:`JSON_COLUMNS` says so);
- a *metric*: a key of the ``metrics`` column, written by the final evaluation
  (:data:`METRICS`; :meth:`sesamo_bench.harness.train.Result.metrics`).

``run --json`` prints :data:`JSON_FIELDS` in declaration order (:func:`summary`): the original
sixteen first, later ones appended; a field is never renamed or removed. The store keeps
passing plain dicts (``Store.get``/``Store.runs``: the columns, with ``params``, ``metrics``, ...
decoded); :meth:`RunRecord.from_row` gives the typed view, and the report reads the same names.

A new metric is one line here (``metric(json=True)`` to print it with ``--json``); a new
column one line too (``column("REAL")``), which :class:`~sesamo_bench.harness.store.Store`
adds to existing databases on open.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


def column(sql: str, *, json: bool = False, encoded: bool = False, default: Any = None) -> Any:
    """A column of table ``runs`` (``encoded``: stored as JSON text)."""
    meta = {"sql": sql, "json": json, "encoded": encoded}
    if isinstance(default, (dict, list)):
        return field(default_factory=type(default), metadata=meta)
    return field(default=default, metadata=meta)


def metric(*, json: bool = False) -> Any:
    """A key of the ``metrics`` column (``json``: also a ``--json`` field)."""
    return field(default=None, metadata={"metric": True, "json": json})


@dataclass
class RunRecord:
    """What the store holds about one run (declaration order = column and ``--json`` order)."""

    run_id: str = column("TEXT PRIMARY KEY", json=True, default="")
    benchmark: str | None = column("TEXT", json=True)
    target: str | None = column("TEXT", json=True)
    method: str | None = column("TEXT", json=True)
    seed: int | None = column("INTEGER", json=True)
    #: the target parameters and swept keys that tell the run apart
    params: dict = column("TEXT", json=True, encoded=True, default={})
    #: the whole :class:`~sesamo_bench.harness.config.RunConfig`
    config: dict = column("TEXT", encoded=True, default={})
    #: versions, host, git, plugin sources, device, ...
    provenance: dict = column("TEXT", encoded=True, default={})
    status: str | None = column("TEXT", json=True)  # store.STATUSES
    steps: int | None = column("INTEGER", json=True)
    wall_s: float | None = column("REAL", json=True)
    ess: float | None = column("REAL", json=True)
    log_z: float | None = column("REAL", json=True)
    log_z_err: float | None = column("REAL", json=True)
    breaking_ratio: float | None = column("REAL", json=True)
    breaking_ratio_exact: float | None = column("REAL", json=True)
    #: every metric below, and what a method or a measurement adds
    metrics: dict = column("TEXT", encoded=True, default={})
    #: the evaluations during training (step, wall time, ESS, loss, ...)
    history: list = column("TEXT", encoded=True, default=[])
    #: stored relative to the store's folder (``runs/<run_id>``), read back as an absolute path inside it
    #: (``None`` where it would lead outside: Store._confine_run_dir)
    run_dir: str | None = column("TEXT", json=True)
    started: str | None = column("TEXT")
    finished: str | None = column("TEXT")
    error: str | None = column("TEXT", json=True)

    # -- metrics: keys of the metrics column (added after the first release) ---------------------
    #: ESS x N, and whether it is large enough for an importance-sampling error (metrics.MIN_EFFECTIVE_SAMPLES)
    ess_n: float | None = metric(json=True)
    log_z_err_reliable: bool | None = metric(json=True)
    #: the importance-weighted breaking ratio of the final samples, and its delta-method error
    breaking_ratio_is: float | None = metric(json=True)
    breaking_ratio_is_err: float | None = metric(json=True)
    breaking_ratio_exact_err: float | None = metric(json=True)
    #: the target mass where ln q = -inf (from reference samples of p), its error and counts
    support_missing: float | None = metric(json=True)
    support_missing_err: float | None = metric(json=True)
    support_missing_count: int | None = metric()
    support_reference_n: int | None = metric()
    #: particle targets (Target.reference_metrics): 1-D Wasserstein distances of the saved samples'
    #: energy and pair-distance distributions to the reference samples, and the reference's mean energy
    energy_w1: float | None = metric(json=True)
    energy_w2: float | None = metric(json=True)
    distance_w1: float | None = metric(json=True)
    distance_w2: float | None = metric(json=True)
    reference_energy_mean: float | None = metric()
    #: the literature's coordinate-space x-W2 of the saved samples to the reference samples (optimal
    #: alignment over permutations and O(D) per pair, core.particles.coordinate_w2; where n! is small)
    coordinate_w2: float | None = metric(json=True)
    #: fraction of the final samples whose density an architecture's guard made finite but wrong
    #: (the Fourier flows: |M| below the smallest normal number, or e^rho underflowing)
    underflow: float | None = metric(json=True)
    #: the mean of -ln q over the target's held-out samples (Target.training_data("test"), never
    #: trained on), its standard error, per dimension of the field, and the number of samples
    nll: float | None = metric(json=True)
    nll_err: float | None = metric(json=True)
    nll_per_dim: float | None = metric(json=True)
    nll_n: int | None = metric()
    #: runs trained on part of the state space (``train_subset``, analysis.states): the training rows
    #: used, the fraction of the saved samples in states absent from them (unweighted, importance-
    #: weighted, and the exact mass there from the held-out HMC split), the fractions by state
    train_rows: int | None = metric()
    unseen_states: float | None = metric(json=True)
    unseen_states_is: float | None = metric(json=True)
    unseen_states_ref: float | None = metric(json=True)
    state_fractions: list | None = metric()
    state_fractions_ref: list | None = metric()

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RunRecord:
        """The typed view of a store row (a dict of columns; metrics read from ``row["metrics"]``).

        Example:
            >>> r = RunRecord.from_row({"run_id": "abc", "ess": 0.9, "metrics": {"ess_n": 900.0, "extra": 1}})
            >>> r.ess, r.ess_n, r.to_row()["metrics"] == {"ess_n": 900.0, "extra": 1}
            (0.9, 900.0, True)
        """
        m = row.get("metrics") or {}
        values = {f.name: (m.get(f.name) if f.metadata.get("metric") else row.get(f.name))
                  for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if v is not None})

    def to_row(self) -> dict[str, Any]:
        """The store row: the columns, with the metric fields merged into ``metrics``."""
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if "sql" in f.metadata}
        extra = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.metadata.get("metric") and getattr(self, f.name) is not None}
        row["metrics"] = {**(row["metrics"] or {}), **extra}
        return row


_FIELDS = dataclasses.fields(RunRecord)
#: columns of table ``runs`` and their SQL types
COLUMNS: dict[str, str] = {f.name: f.metadata["sql"] for f in _FIELDS if "sql" in f.metadata}
#: columns stored as JSON text
JSON_COLUMNS: tuple[str, ...] = tuple(f.name for f in _FIELDS if f.metadata.get("encoded"))
#: keys of the ``metrics`` column declared here
METRICS: tuple[str, ...] = tuple(f.name for f in _FIELDS if f.metadata.get("metric"))
#: keys of each object of ``run --json`` (a contract: only ever appended to)
JSON_FIELDS: tuple[str, ...] = tuple(f.name for f in _FIELDS if f.metadata.get("json"))


def summary(row: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` object of one run (a store row), NaN/Inf as null.

    Example:
        >>> s = summary({"run_id": "abc", "ess": float("nan"), "metrics": {"ess_n": 12.0}})
        >>> s["run_id"], s["ess"], s["ess_n"], list(s) == list(JSON_FIELDS)
        ('abc', None, 12.0, True)
    """
    metrics = row.get("metrics") or {}
    return clean({k: row[k] if k in row else metrics.get(k) for k in JSON_FIELDS})


def clean(value: Any) -> Any:
    """``value`` with NaN/Inf floats replaced by ``None`` (strict JSON), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def summary_line(rec: dict[str, Any]) -> str:
    """One line describing a finished (or stopped) run."""
    def f(v: Any, fmt: str = ".4g") -> str:
        return "-" if v is None else format(v, fmt)

    line = (f"{rec['status']:<11} {rec['target']}/{rec['method']}/seed{rec['seed']} "
            f"ess={f(rec.get('ess'))} log_z={f(rec.get('log_z'))} steps={rec.get('steps')} "
            f"wall={f(rec.get('wall_s'), '.1f')}s [{rec['run_id']}]")
    if rec.get("error"):
        line += f" ({rec['error']})"
    return line
