r"""The results store: one SQLite file indexing every run, plus one directory per run.

Layout (default ``./sesamo-runs/``)::

    results.sqlite          table ``runs`` (one row per run_id) and table ``meta`` (schema marker)
    runs/<run_id>/          config.json, checkpoint.pt, history.csv, samples.npz, result.json

The database runs in WAL mode with a 30 s busy timeout; every write is one transaction and an
upsert by ``run_id``, so several processes can write into one store at once without losing or
duplicating rows. Files in a run directory are written atomically (temporary file, then
``os.replace``). Every failure to open, read or write the store is a :class:`StoreError` with
one line naming the path.

A run's ``run_id`` is a 12-hex-digit hash of its resolved configuration (without the
execution-only fields ``device``, ``threads``, ``compile``, ``kernels``; fields added since the first
release are left out while they hold the value that reproduces the earlier behaviour) and its
benchmark name, so running the same thing again finds the same row (``run --resume``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import secrets
import sqlite3
import sys
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Iterable

from ..errors import StoreError
# the columns of table ``runs`` and those stored as JSON, declared once in the run record; ``clean``
# (strict JSON values) lives there too and is importable from here as before
from .record import COLUMNS, JSON_COLUMNS, RunRecord, clean

SCHEMA_VERSION = 1
APPLICATION = "sesamo-bench"
DEFAULT_STORE = Path("sesamo-runs") / "results.sqlite"
STATUSES = ("running", "finished", "failed", "diverged", "interrupted")


def run_id(config: dict[str, Any], benchmark: str | None = None) -> str:
    """Deterministic id of a run: hash of its configuration (less execution-only fields and later
    fields at their defaults: :data:`sesamo_bench.harness.config.EXECUTION_ONLY`, ``LATER_FIELDS``)
    and benchmark."""
    from .config import EXECUTION_ONLY, LATER_FIELDS

    d = {k: v for k, v in config.items()
         if k not in EXECUTION_ONLY and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
    d["benchmark"] = benchmark or ""
    blob = json.dumps(d, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _oserror(path: Path, exc: BaseException) -> StoreError:
    reason = getattr(exc, "strerror", None) or str(exc)
    return StoreError(f"cannot write results store {path}: {reason}")


class Store:
    r"""The SQLite index of runs.

    Arguments:
        path: the database file (created with its folder unless ``create=False``).
        create: create a missing database; otherwise a missing file is a :class:`StoreError`.

    Example:
        >>> import tempfile
        >>> s = Store(Path(tempfile.mkdtemp()) / "r.sqlite")
        >>> s.put({"run_id": "abc", "status": "running", "params": {"beta": 1.0}})
        >>> s.get("abc")["params"]
        {'beta': 1.0}
    """

    def __init__(self, path: Path | str, *, create: bool = True):
        self.path = Path(path)
        try:
            self.runs_dir = self.path.resolve().parent / "runs"
            exists = self.path.exists()
            self.path.stat() if exists else None
        except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long, ...
            reason = getattr(exc, "strerror", None) or str(exc)
            raise StoreError(f"cannot open results store {self.path}: {reason}") from None
        if not exists:
            if not create:
                raise StoreError(f"no results database at {self.path} (run 'sesamo-bench run' first or pass --store)")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _oserror(self.path, exc) from None
        elif self.path.is_dir():
            raise StoreError(f"{self.path} is a directory, not a sesamo-bench results database")
        self.writable = create
        self._conn = self._connect()
        self._init()

    # -- connection ------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=30.0)
            conn.execute("PRAGMA busy_timeout = 30000")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open results store {self.path}: {exc}") from None
        return conn

    def _init(self) -> None:
        try:
            tables = self._tables()
        except sqlite3.DatabaseError:
            if not self._reopen_read_only():
                raise StoreError(f"{self.path} is not a sesamo-bench results database") from None
            if self.writable:
                raise StoreError(f"cannot write results store {self.path}: the database can be read but its folder "
                                 f"{self.path.resolve().parent} cannot be written (SQLite's WAL mode creates "
                                 f"{self.path.name}-wal and -shm there)") from None
            tables = self._tables()
        conn = self._conn
        if tables or not self.writable:
            self._check_marker(tables)
        if not self.writable:
            return
        cols = ", ".join(f"{k} {t}" for k, t in COLUMNS.items())
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # one write transaction: a second process creating the same store waits, then sees all of it
            conn.execute("BEGIN IMMEDIATE")
            try:
                tables = self._tables()
                if tables:
                    self._check_marker(tables)
                    self._add_new_columns()
                else:
                    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
                    conn.execute(f"CREATE TABLE runs ({cols})")
                    conn.execute("INSERT INTO meta VALUES ('application', ?)", (APPLICATION,))
                    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                # a no-op write: fails here, before any run starts, on a read-only database
                conn.execute("UPDATE meta SET value = value WHERE key = 'application'")
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write results store {self.path}: {exc}") from None

    def _add_new_columns(self) -> None:
        """Columns declared since the database was made are added (empty for the old rows)."""
        have = {r[1] for r in self._conn.execute("PRAGMA table_info(runs)")}
        for name, sql in COLUMNS.items():
            if name not in have:
                self._conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {sql}")

    def _reopen_read_only(self) -> bool:
        """For reading commands: a valid database in a folder we cannot write (SQLite's WAL mode
        wants to create ``-shm`` beside it) is opened read-only, or as immutable when no
        write-ahead log holds changes. False if that does not work either."""
        from urllib.parse import quote

        target = quote(str(self.path.resolve()))
        wal = Path(f"{self.path}-wal")
        pending = wal.exists() and wal.stat().st_size > 0
        for uri in (f"file:{target}?mode=ro", f"file:{target}?immutable=1"):
            if "immutable" in uri and pending:
                continue  # it would ignore the changes in the log
            try:
                conn = sqlite3.connect(uri, uri=True, timeout=30.0)
                conn.execute("SELECT name FROM sqlite_master").fetchall()
            except sqlite3.Error:
                continue
            self._conn.close()
            self._conn = conn
            return True
        return False

    def _tables(self) -> set[str]:
        return {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def _check_marker(self, tables: set[str]) -> None:
        try:
            meta = dict(self._conn.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
        except sqlite3.Error:
            meta = {}
        if meta.get("application") != APPLICATION or "runs" not in tables:
            raise StoreError(f"{self.path} is not a sesamo-bench results database")
        if int(meta.get("schema_version", 0)) > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer sesamo-bench (schema "
                             f"{meta['schema_version']} > {SCHEMA_VERSION}); upgrade sesamo-bench")

    def close(self) -> None:
        self._conn.close()

    # -- writing ---------------------------------------------------------------------------------
    def put(self, record: RunRecord | Mapping[str, Any]) -> None:
        """Insert or update the row ``record["run_id"]`` in one transaction: every column of a
        :class:`~sesamo_bench.harness.record.RunRecord`, only the columns given of another mapping."""
        if "run_id" not in record:
            raise ValueError("record without run_id")
        unknown = set(record) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown store columns: {sorted(unknown)}")
        if isinstance(record.get("run_dir"), str) and record["run_dir"]:
            record = {**record, "run_dir": self._relative(record["run_dir"])}
        row = {k: (json.dumps(clean(v)) if k in JSON_COLUMNS else _real(v)) for k, v in record.items()}
        keys = list(row)
        sets = ", ".join(f"{k}=excluded.{k}" for k in keys if k != "run_id") or "run_id=run_id"
        sql = (f"INSERT INTO runs ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))}) "
               f"ON CONFLICT(run_id) DO UPDATE SET {sets}")
        try:
            with self._conn:
                self._conn.execute(sql, [row[k] for k in keys])
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write results store {self.path}: {exc}") from None

    # -- reading ---------------------------------------------------------------------------------
    def get(self, run_id: str) -> RunRecord | None:
        rows = self._select("WHERE run_id = ?", [run_id])
        return rows[0] if rows else None

    def find(self, prefix: str) -> RunRecord:
        """The run whose id is ``prefix`` or starts with it (unique), else :class:`StoreError`."""
        exact = self.get(prefix)
        if exact is not None:
            return exact
        # the prefix is text, not a LIKE pattern: its % and _ match only themselves
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._select("WHERE run_id LIKE ? ESCAPE '\\'", [pattern])
        if not rows:
            raise StoreError(f"no run '{prefix}' in {self.path}")
        if len(rows) > 1:
            raise StoreError(f"run prefix '{prefix}' is ambiguous: {', '.join(r['run_id'] for r in rows[:8])}")
        return rows[0]

    def runs(self, target: str | None = None, method: str | None = None, benchmark: str | None = None,
             status: str | None = None) -> list[RunRecord]:
        """All runs matching the filters (``None``: any), in the order first written."""
        where, args = [], []
        for col, val in (("target", target), ("method", method), ("benchmark", benchmark), ("status", status)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        return self._select(("WHERE " + " AND ".join(where)) if where else "", args, skip_incomplete=True)

    def _select(self, where: str, args: list[Any], *, skip_incomplete: bool = False) -> list[RunRecord]:
        """The rows, JSON columns decoded and every damaged cell (:func:`check_row`) replaced by an
        empty value with one warning naming the run and the column; ``skip_incomplete``: rows
        without a usable target, method or seed (which the tables group and sort by) are left out."""
        sql = f"SELECT {', '.join(COLUMNS)} FROM runs {where} ORDER BY rowid"
        try:
            rows = self._conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read results store {self.path}: {exc}") from None
        out = []
        for r in rows:
            d = dict(zip(COLUMNS, r))
            damaged = []
            for k in JSON_COLUMNS:
                empty: Any = {} if k != "history" else []
                try:
                    d[k] = json.loads(d[k]) if d[k] else empty
                except (TypeError, ValueError, RecursionError):  # one damaged cell must not make every row unreadable
                    d[k] = empty
                    damaged.append(k)
                if not isinstance(d[k], type(empty)):
                    d[k] = empty
                    damaged.append(k)
            damaged += check_row(d)
            self._confine_run_dir(d)
            if skip_incomplete and isinstance(d.get("run_id"), str):
                missing = [k for k in REQUIRED_FOR_TABLES if not isinstance(d.get(k), (str, int))]
                if missing:
                    self._warn(d, damaged + missing, skipped=True)
                    continue
            if damaged:
                self._warn(d, damaged)
            if not isinstance(d.get("run_id"), str):
                continue
            out.append(RunRecord.from_row(d))
        return out

    # -- run directories: stored relative to the store's folder, never read outside it ------------
    @property
    def folder(self) -> Path:
        """The store's folder (resolved): the database, ``runs/`` and ``jobs/`` are in it."""
        return self.runs_dir.parent

    def _relative(self, run_dir: str) -> str:
        """``run_dir`` relative to the store's folder (``runs/<run_id>``) when it lies in it, so that
        a copied or moved store finds its own run directories; otherwise unchanged."""
        p = Path(run_dir)
        if not p.is_absolute():
            return run_dir
        for cand in (Path(os.path.normpath(p)), p.resolve()):
            try:
                return cand.relative_to(self.folder).as_posix()
            except ValueError:
                continue
        return run_dir

    def _confine_run_dir(self, row: dict[str, Any]) -> None:
        """Resolve ``row["run_dir"]`` against the store's folder, in place. A relative one (what
        :meth:`put` stores) is taken from the folder; an old absolute one is kept if it lies in the folder and
        otherwise, when it names the run (``.../runs/<run_id>``, a store copied or moved elsewhere),
        replaced by this store's ``runs/<run_id>``. A run directory that still leads outside the
        folder (``..``, a symlink, another absolute path) is read as ``None`` with one warning, so that
        no command reads or writes there."""
        value = row.get("run_dir")
        if not isinstance(value, str) or not value:
            return
        folder = self.folder
        rid = row.get("run_id")
        try:
            p = Path(value)
            real = (p if p.is_absolute() else folder / p).resolve()
            if real != folder and folder in real.parents:
                row["run_dir"] = str(real)
                return
            if p.is_absolute() and isinstance(rid, str) and p.name == rid:
                own = (self.runs_dir / rid).resolve()
                if self.runs_dir in own.parents:
                    row["run_dir"] = str(own)
                    return
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
            pass
        row["run_dir"] = None
        key = (rid if isinstance(rid, str) else "?", "run_dir outside")
        warned = self.__dict__.setdefault("_warned", set())
        if key not in warned:
            warned.add(key)
            print(f"warning: run {key[0]} in {self.path}: its run_dir {value!r} leads outside the store's folder "
                  f"{folder}; ignored (read as empty)", file=sys.stderr, flush=True)

    def _warn(self, row: dict[str, Any], columns: list[str], *, skipped: bool = False) -> None:
        """One ``warning:`` line on stderr per damaged row (once per store object)."""
        rid = row.get("run_id") if isinstance(row.get("run_id"), str) else "?"
        key = (rid, tuple(columns), skipped)
        warned = self.__dict__.setdefault("_warned", set())
        if key in warned:
            return
        warned.add(key)
        what = "the run is left out" if skipped else "read as empty"
        print(f"warning: run {rid} in {self.path}: damaged or missing {', '.join(dict.fromkeys(columns))} ({what})",
              file=sys.stderr, flush=True)


#: columns a row needs for the tables (``Store.runs`` leaves out rows without them)
REQUIRED_FOR_TABLES = ("target", "method", "seed")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_measurement(m: Any) -> bool:
    """A stored measurement (``metrics["measurements"][kind]``) that the readers can use."""
    if not (isinstance(m, dict) and _is_num(m.get("samples")) and _is_num(m.get("seconds"))
            and isinstance(m.get("estimates"), dict)):
        return False
    for e in m["estimates"].values():
        # NaN / Inf are stored as null (strict JSON)
        if not (isinstance(e, dict) and {"value", "error"} <= set(e) <= {"value", "error", "tau_int", "n_eff", "rhat"}
                and all(e.get(k) is None or _is_num(e[k]) for k in e)):
            return False
    for key, kinds in (("exact", dict), ("cost", dict), ("settings", dict), ("autocorr", dict)):
        if m.get(key) is not None and not isinstance(m[key], kinds):
            return False
    if any(v is not None and not _is_num(v) for v in (m.get("exact") or {}).values()):
        return False
    if any(v is not None and not _is_num(v) for v in (m.get("cost") or {}).values()):
        return False
    if any(not (isinstance(r, list) and all(_is_num(x) for x in r)) for r in (m.get("autocorr") or {}).values()):
        return False
    return m.get("acceptance") is None or _is_num(m["acceptance"])


def check_row(row: dict[str, Any]) -> list[str]:
    """Replace the damaged cells of a decoded store row in place; the names of those replaced.

    A damaged cell is one a reader cannot use: text or bytes in a number column (``wall_s`` =
    ``'inf'`` stored as text), bytes or a number in a text column, a ``history`` entry that is
    not an object, a measurement without its samples, seconds or estimates, a declared metric
    that is not a number (or, for a list metric, not a list of numbers). Each becomes ``None`` (a
    bad history entry or measurement is dropped).

    Example:
        >>> row = {"run_id": "abc", "wall_s": "inf", "target": b"x", "history": [1, {"step": 2}],
        ...        "metrics": {"measurements": 3}}
        >>> check_row(row), row["wall_s"], row["target"], row["history"], row["metrics"]
        (['target', 'wall_s', 'metrics.measurements', 'history'], None, None, [{'step': 2}], {})
    """
    from .record import METRIC_KINDS

    bad = []
    for name, sql in COLUMNS.items():
        if name in JSON_COLUMNS or row.get(name) is None:
            continue
        v, kind = row[name], sql.split()[0]
        if kind == "TEXT":
            ok = isinstance(v, str)
        elif kind == "INTEGER":
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:
            ok = _is_num(v)
        if not ok:
            row[name] = None
            bad.append(name)
        elif kind == "REAL":
            row[name] = float(v)
    metrics = row.get("metrics")
    if isinstance(metrics, dict):
        meas = metrics.get("measurements")
        if meas is not None:
            if not isinstance(meas, dict):
                del metrics["measurements"]
                bad.append("metrics.measurements")
            else:
                for kind in [k for k, m in meas.items() if not _is_measurement(m)]:
                    del meas[kind]
                    bad.append(f"metrics.measurements.{kind}")
        for key, kind in METRIC_KINDS.items():
            v = metrics.get(key)
            if v is None:
                continue
            if kind is list:  # a list of numbers (NaN stored as null)
                ok = isinstance(v, list) and all(x is None or _is_num(x) for x in v)
            else:
                ok = isinstance(v, bool) if kind is bool else _is_num(v)
            if not ok:
                metrics[key] = None
                bad.append(f"metrics.{key}")
    history = row.get("history")
    if isinstance(history, list) and not all(isinstance(h, dict) for h in history):
        row["history"] = [h for h in history if isinstance(h, dict)]
        bad.append("history")
    return bad


def _real(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


# ---------------------------------------------------------------------------------------------
# run directories (atomic files)
# ---------------------------------------------------------------------------------------------
def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``; OSError -> StoreError."""
    # a fresh random name, created exclusively and never through a link: a planted file or
    # symbolic link of a predictable name is neither followed nor overwritten
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(clean(obj), indent=2, default=str) + "\n").encode())


def write_history_csv(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    rows = list(rows)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys or ["step"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_atomic(path, buf.getvalue().encode())


def read_history_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``history.csv`` (numbers parsed back exactly; empty cells left out); ``[]`` if missing."""
    try:
        text = path.read_text(encoding="utf-8") if path.is_file() else ""  # not a FIFO
    except OSError:
        return []
    return [{k: _number(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(io.StringIO(text))]


def _number(text: str) -> Any:
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        return float(text)  # repr of a float round-trips exactly
    except ValueError:
        return text


def write_samples(path: Path, x: Any, log_w: Any) -> None:
    """``samples.npz`` with ``x`` (float32, ``(N, *shape)``) and ``log_w`` (float64, ``(N,)``)."""
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, x=np.asarray(x, dtype=np.float32), log_w=np.asarray(log_w, dtype=np.float64))
    write_atomic(path, buf.getvalue())


def check_store_file(path: Path) -> None:
    """A store path that exists must be an SQLite file (checked without opening it, so that
    ``status`` also works where the database is read-only)."""
    try:
        if not (path.exists() or path.is_symlink()):
            return
        regular = path.is_file()  # a FIFO, a device or a folder is not opened (a FIFO waits for a writer)
        head = b""
        if regular:
            with open(path, "rb") as fh:
                head = fh.read(16)
    except (OSError, RuntimeError) as exc:
        raise StoreError(f"cannot open results store {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not regular:
        raise StoreError(f"{path} is not a sesamo-bench results database (not a regular file)")
    if head != b"SQLite format 3\x00":
        raise StoreError(f"{path} is not a sesamo-bench results database")


def open_existing(path: Path | str | None = None) -> Store:
    """The store at ``path`` (default :data:`DEFAULT_STORE`) for reading commands: it must exist."""
    return Store(path or DEFAULT_STORE, create=False)
