r"""The run record: one typed declaration of what the suite stores about a run.

:class:`RunRecord` lists every field once, with where it lives and whether it is part of the
``--json`` contract:

- a *column* of table ``runs`` in the store (:data:`COLUMNS`, with its SQL type; JSON-encoded
  where :data:`JSON_COLUMNS` says so);
- a *metric* (:class:`Metric`): a key of the ``metrics`` column, written by the final evaluation
  (:data:`METRICS`, :data:`RESULT_METRICS`), read and set as an attribute of the record.

One record goes end to end: the runner builds it (:func:`sesamo_bench.harness.runner.execute_in_dir`),
the store writes and returns it (``Store.put``, ``Store.get``, ``Store.runs``), report, cluster and
measure read it. The final evaluation's :class:`~sesamo_bench.harness.train.Result` and
:class:`~sesamo_bench.harness.evaluate.Evaluation` take their metric names from here too
(:class:`Values`), so a metric is declared once.

``run --json`` prints :data:`JSON_FIELDS` in declaration order (:func:`summary`): the original
sixteen first, later ones appended; a field is never renamed or removed.

A new metric is one line here (``Metric(float, json=True)`` to print it with ``--json``); a new
column one line too (``Column("REAL")``), which :class:`~sesamo_bench.harness.store.Store`
adds to existing databases on open.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class Column:
    r"""A column of table ``runs`` (``encoded``: stored as JSON text; ``json``: a ``--json`` field),
    read and written as an attribute of a :class:`RunRecord` (``record.ess`` is ``record["ess"]``)."""

    def __init__(self, sql: str, *, json: bool = False, encoded: bool = False, default: Any = None):
        self.sql, self.json, self.encoded, self.default, self.name = sql, json, encoded, default, ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else obj.get(self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        obj[self.name] = value

    def empty(self) -> Any:
        """The value of a column not given (a fresh ``{}`` or ``[]`` for the JSON columns)."""
        return type(self.default)() if isinstance(self.default, (dict, list)) else self.default


class Metric:
    r"""A key of the ``metrics`` column, read and written as an attribute of a :class:`RunRecord`
    (``record.nll`` is ``record.metrics.get("nll")``; setting ``None`` removes the key).

    Arguments:
        kind: the value's type (``float``, ``int``, ``bool`` or ``list``: a list of numbers).
        json: also a ``--json`` field.
        later: added after the first release (``False``: one of the first release's metrics).
    """

    def __init__(self, kind: type, *, json: bool = False, later: bool = True):
        self.kind, self.json, self.later, self.name = kind, json, later, ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        metrics = obj.get("metrics")
        return metrics.get(self.name) if isinstance(metrics, dict) else None

    def __set__(self, obj: Any, value: Any) -> None:
        metrics = obj.get("metrics")
        if not isinstance(metrics, dict):
            metrics = obj["metrics"] = {}
        if value is None:
            metrics.pop(self.name, None)
        else:
            metrics[self.name] = value


class RunRecord(dict):
    r"""What the store holds about one run: the columns of table ``runs`` (declaration order =
    column and ``--json`` order) and the declared keys of its ``metrics`` column, all as typed
    attributes (``rec.status``, ``rec.nll``).

    A record is the dict of its columns, as the store's rows were before the record was typed
    (``rec["status"]``, ``json.dumps(rec)``, ``rec == {...}``); every column is present, those not
    given at their empty value. An unknown column is a :class:`ValueError`.

    Example:
        >>> r = RunRecord(run_id="abc", ess=0.9, metrics={"ess_n": 900.0, "extra": 1})
        >>> r.ess, r.ess_n, r["metrics"]["extra"], r.status, r.history
        (0.9, 900.0, 1, None, [])
        >>> r.nll = 7.5
        >>> r.metrics["nll"], r.replace(status="finished").status, r.status
        (7.5, 'finished', None)
    """

    def __init__(self, row: Mapping[str, Any] | None = None, /, **columns: Any):
        given = {**(row or {}), **columns}
        unknown = set(given) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown store columns: {sorted(unknown)}")
        super().__init__({name: given[name] if given.get(name) is not None else col.empty()
                          for name, col in _COLUMNS.items()})

    run_id: str = Column("TEXT PRIMARY KEY", json=True, default="")
    benchmark: str | None = Column("TEXT", json=True)
    target: str | None = Column("TEXT", json=True)
    method: str | None = Column("TEXT", json=True)
    seed: int | None = Column("INTEGER", json=True)
    #: the target parameters and swept keys that tell the run apart
    params: dict = Column("TEXT", json=True, encoded=True, default={})
    #: the whole :class:`~sesamo_bench.harness.config.RunConfig`
    config: dict = Column("TEXT", encoded=True, default={})
    #: versions, host, git, plugin sources, device, ...
    provenance: dict = Column("TEXT", encoded=True, default={})
    status: str | None = Column("TEXT", json=True)  # store.STATUSES
    steps: int | None = Column("INTEGER", json=True)
    wall_s: float | None = Column("REAL", json=True)
    ess: float | None = Column("REAL", json=True)
    log_z: float | None = Column("REAL", json=True)
    log_z_err: float | None = Column("REAL", json=True)
    breaking_ratio: float | None = Column("REAL", json=True)
    breaking_ratio_exact: float | None = Column("REAL", json=True)
    #: every metric below (the final evaluation's numbers, :data:`RESULT_METRICS`), and what a
    #: method (``Method.info``) or a measurement adds
    metrics: dict = Column("TEXT", encoded=True, default={})
    #: the evaluations during training (step, wall time, ESS, loss, ...)
    history: list = Column("TEXT", encoded=True, default=[])
    #: stored relative to the store's folder (``runs/<run_id>``), read back as an absolute path inside it
    #: (``None`` where it would lead outside: Store._confine_run_dir)
    run_dir: str | None = Column("TEXT", json=True)
    started: str | None = Column("TEXT")
    finished: str | None = Column("TEXT")
    error: str | None = Column("TEXT", json=True)

    # -- metrics: keys of the metrics column ---------------------------------------------------------
    #: the ESS of the learned distribution's own samples without the preimage sum (SESaMo), and the
    #: fraction of samples outside the canonical cell
    ess_path = Metric(float, later=False)
    outside_cell = Metric(float, later=False)
    #: a mixture's learned component probabilities, the target's exact mode probabilities, its exact ln Z
    probabilities = Metric(list, later=False)
    probabilities_exact = Metric(list, later=False)
    log_z_exact = Metric(float, later=False)
    # (added after the first release, the --json ones appended to the contract in this order)
    #: ESS x N, and whether it is large enough for an importance-sampling error (metrics.MIN_EFFECTIVE_SAMPLES)
    ess_n = Metric(float, json=True)
    log_z_err_reliable = Metric(bool, json=True)
    #: the importance-weighted breaking ratio of the final samples, and its delta-method error
    breaking_ratio_is = Metric(float, json=True)
    breaking_ratio_is_err = Metric(float, json=True)
    breaking_ratio_exact_err = Metric(float, json=True)
    #: the target mass where ln q = -inf (from reference samples of p), its error and counts
    support_missing = Metric(float, json=True)
    support_missing_err = Metric(float, json=True)
    support_missing_count = Metric(int)
    support_reference_n = Metric(int)
    #: particle targets (Target.reference_metrics): 1-D Wasserstein distances of the saved samples'
    #: energy and pair-distance distributions to the reference samples, and the reference's mean energy
    energy_w1 = Metric(float, json=True)
    energy_w2 = Metric(float, json=True)
    distance_w1 = Metric(float, json=True)
    distance_w2 = Metric(float, json=True)
    reference_energy_mean = Metric(float)
    #: the literature's coordinate-space x-W2 of the saved samples to the reference samples (optimal
    #: alignment over permutations and O(D) per pair, core.particles.coordinate_w2; where n! is small)
    coordinate_w2 = Metric(float, json=True)
    #: fraction of the final samples whose density an architecture's guard made finite but wrong
    #: (the Fourier flows: |M| below the smallest normal number, or e^rho underflowing)
    underflow = Metric(float, json=True)
    #: the mean of -ln q over the target's held-out samples (Target.training_data("test"), never
    #: trained on), its standard error, per dimension of the field, and the number of samples
    nll = Metric(float, json=True)
    nll_err = Metric(float, json=True)
    nll_per_dim = Metric(float, json=True)
    nll_n = Metric(int)
    #: runs trained on part of the state space (``train_subset``, analysis.states): the training rows
    #: used, the fraction of the saved samples in states absent from them (unweighted, importance-
    #: weighted, and the exact mass there from the held-out HMC split), the fractions by state
    train_rows = Metric(int)
    unseen_states = Metric(float, json=True)
    unseen_states_is = Metric(float, json=True)
    unseen_states_ref = Metric(float, json=True)
    state_fractions = Metric(list)
    state_fractions_ref = Metric(list)
    #: targets whose shipped reference samples are approximate (DW-4's literature files): energy and
    #: pair-distance W2 and the mass without support measured against the exact reference as well
    #: (the held-out split of the suite's converged HMC, Target.exact_reference), and its size
    energy_w2_exact = Metric(float, json=True)
    distance_w2_exact = Metric(float, json=True)
    support_missing_exact = Metric(float, json=True)
    support_missing_exact_err = Metric(float, json=True)
    exact_reference_n = Metric(int)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], *, strict: bool = True) -> RunRecord:
        """The record of a store row (a mapping of columns; ``None`` cells take the empty values;
        a key that is no column is a :class:`ValueError`, or left out with ``strict=False``)."""
        if isinstance(row, RunRecord):
            return row
        return cls({k: v for k, v in row.items() if strict or k in COLUMNS})

    def replace(self, **columns: Any) -> RunRecord:
        """A copy with these columns changed (the metrics column copied, not shared)."""
        return RunRecord({**self, "metrics": dict(self.metrics or {}), **columns})


_COLUMNS = {n: c for n, c in vars(RunRecord).items() if isinstance(c, Column)}
_METRICS = {n: m for n, m in vars(RunRecord).items() if isinstance(m, Metric)}
#: columns of table ``runs`` and their SQL types
COLUMNS: dict[str, str] = {n: c.sql for n, c in _COLUMNS.items()}
#: columns stored as JSON text
JSON_COLUMNS: tuple[str, ...] = tuple(n for n, c in _COLUMNS.items() if c.encoded)
#: keys of the ``metrics`` column declared here, and their types
METRICS: tuple[str, ...] = tuple(_METRICS)
METRIC_KINDS: dict[str, type] = {n: m.kind for n, m in _METRICS.items()}
#: the columns whose value the final evaluation also writes into the metrics column
COLUMN_METRICS: tuple[str, ...] = ("ess", "log_z", "log_z_err", "breaking_ratio", "breaking_ratio_exact")
#: the final evaluation's numbers (:class:`~sesamo_bench.harness.train.Result`), in the metrics column's order
RESULT_METRICS: tuple[str, ...] = ("ess", "log_z", "log_z_err", "ess_path", "outside_cell", "breaking_ratio",
                                   "breaking_ratio_exact", "probabilities", "probabilities_exact", "log_z_exact",
                                   *(n for n in METRICS if _METRICS[n].later))
#: keys of each object of ``run --json`` (a contract: only ever appended to)
JSON_FIELDS: tuple[str, ...] = (*(n for n, c in _COLUMNS.items() if c.json),
                                *(n for n, m in _METRICS.items() if m.json))


class Values:
    r"""Attribute access to the declared metrics held in ``self.values`` (:data:`RESULT_METRICS`;
    ``None`` where absent): the final evaluation's :class:`~sesamo_bench.harness.train.Result` and an
    :class:`~sesamo_bench.harness.evaluate.Evaluation` carry their numbers this way, so that each
    metric is declared once, on :class:`RunRecord`."""

    values: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        if name in RESULT_METRICS:
            return self.__dict__.get("values", {}).get(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @staticmethod
    def check(values: dict[str, Any], where: str) -> dict[str, Any]:
        unknown = sorted(set(values) - set(RESULT_METRICS))
        if unknown:
            raise TypeError(f"{where}: unknown metric {unknown[0]!r} (declare it on harness.record.RunRecord)")
        return values


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
    if isinstance(value, Mapping):  # a dict, a RunRecord
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
