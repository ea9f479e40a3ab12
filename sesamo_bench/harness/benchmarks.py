r"""Declarative benchmarks from ``benchmarks.toml`` (format documented at the top of that file).

Each ``[benchmarks.<name>]`` table becomes a :class:`~sesamo_bench.harness.grid.GridRequest`. Every key
is checked here, against the target's constructor (``params``), the training hyperparameters
(``set``, ``method.<m>``) and the symmetry's constructor (``symmetry_params``), so an unknown key
or a wrong type is a :class:`~sesamo_bench.errors.ConfigError` naming the file, the table and the
key. Malformed TOML is a ConfigError with tomllib's line and column.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .. import plugins
from .config import HYPER, PRESETS, check_hyper
from ..errors import ConfigError, UnknownNameError
from .grid import GridRequest, refuse_set_and_swept, parse_assignments, parse_list, parse_seeds, parse_sweeps
from ..core.methods import METHODS
from ..registry import build, parameters

FILE_NAME = "benchmarks.toml"
#: the deepest nesting of tables and arrays a benchmarks file may use (the shipped ones use 5)
MAX_DEPTH = 32

#: allowed keys of a benchmark table: key -> (expected type, description)
KEYS: dict[str, tuple[type, str]] = {
    "description": (str, "a string"), "target": (str, "a string"), "methods": (list, "a list of method names"),
    "seeds": (list, "a list of integers >= 0"), "preset": (str, f"one of {', '.join(PRESETS)}"),
    "symmetry": (str, "a symmetry name"), "params": (dict, "a table"), "set": (dict, "a table"),
    "method": (dict, "a table of tables"), "sweep": (dict, "a table of lists"),
    "symmetry_params": (dict, "a table"),
}


@dataclass
class Benchmark:
    name: str
    description: str
    request: GridRequest
    file: Path


def default_file() -> Path:
    """``./benchmarks.toml`` when present, else the default one shipped inside the package."""
    local = Path.cwd() / FILE_NAME
    return local if local.is_file() else Path(str(resources.files("sesamo_bench") / FILE_NAME))


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read benchmarks file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); TOML files must be UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested inline tables and arrays recursively
        where = _deep_line(text)
        at = f"line {where[0]}{f' (in [{where[1]}])' if where[1] else ''}: " if where else ""
        raise ConfigError(f"{path}: {at}tables or arrays nested more than {MAX_DEPTH} levels deep; at most "
                          f"{MAX_DEPTH} are allowed") from None
    unknown = sorted(set(data) - {"benchmarks", "executor"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key '{unknown[0]}' (expected [benchmarks.<name>] tables "
                          "and an optional [executor.slurm] table)")
    deep = _too_deep(data)
    if deep is not None:
        raise ConfigError(f"{path}: [{'.'.join(deep[:3])}]: '{deep[3]}' nests tables or arrays more than "
                          f"{MAX_DEPTH} levels deep; at most {MAX_DEPTH} are allowed")
    return data


def _too_deep(data: dict[str, Any]) -> tuple[str, ...] | None:
    """The key path to the first value below :data:`MAX_DEPTH` levels of tables and arrays (an array
    element is named ``[i]``), found without recursion; ``None`` when there is none."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        value, keys = stack.pop()
        if len(keys) > MAX_DEPTH:
            return keys
        if isinstance(value, dict):
            stack.extend((v, (*keys, str(k))) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, (*keys, f"[{i}]")) for i, v in enumerate(value))
    return None


def _deep_line(text: str) -> tuple[int, str] | None:
    """(line, enclosing [table] header) where brackets outside strings and comments first nest deeper
    than :data:`MAX_DEPTH`, for the message when tomllib gives up with a RecursionError."""
    depth, line, table, i, n = 0, 1, "", 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        elif c in "\"'":
            q = c * 3 if text.startswith(c * 3, i) else c
            j = i + len(q)
            while True:
                j = text.find(q, j)
                if j < 0:
                    return None
                k = j
                while c == '"' and k > 0 and text[k - 1] == "\\":
                    k -= 1
                if (j - k) % 2 == 0:
                    break
                j += 1
            line += text.count("\n", i, j)
            i = j + len(q)
            continue
        elif c == "[" and depth == 0 and not text[text.rfind("\n", 0, i) + 1:i].strip():
            j = text.find("\n", i)
            j = n if j < 0 else j
            table = text[i:j].split("#")[0].strip().strip("[]").strip()
            i = j
            continue
        elif c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return line, table
        elif c in "]}":
            depth = max(depth - 1, 0)
        i += 1
    return None


def executor_settings(path: Path | None = None) -> Any:
    r"""The validated ``[executor.slurm]`` table of ``path`` (default :func:`default_file`).

    Returns:
        A :class:`~sesamo_bench.harness.cluster.SlurmSettings` (all fields ``None`` when the table is absent).
    """
    from .cluster import SlurmSettings

    path = Path(path) if path is not None else default_file()
    executor = _read(path).get("executor", {})
    if not isinstance(executor, dict):
        raise ConfigError(f"{path}: 'executor' must be a table with an [executor.slurm] table")
    for key in executor:
        if key != "slurm":
            raise ConfigError(f"{path}: [executor]: unknown key '{key}'. Allowed: slurm")
    return SlurmSettings.from_table(executor.get("slurm", {}), f"{path}: [executor.slurm]")


def load(path: Path | None = None) -> dict[str, Benchmark]:
    """All benchmarks of ``path`` (default :func:`default_file`), validated (with its [executor.slurm] table)."""
    path = Path(path) if path is not None else default_file()
    data = _read(path)
    if "executor" in data:
        executor_settings(path)
    tables = data.get("benchmarks", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{path}: 'benchmarks' must be a table of [benchmarks.<name>] tables")
    out = {}
    for name, table in tables.items():
        try:
            out[name] = _parse(path, name, table)
        except ConfigError as exc:  # messages from target/symmetry constructors: add file and table
            if str(path) in str(exc):
                raise
            raise ConfigError(f"{path}: [benchmarks.{name}]: {exc}") from None
    return out


def get(name: str, path: Path | None = None) -> Benchmark:
    benches = load(path)
    if name not in benches:
        raise UnknownNameError("benchmark", name, list(benches))
    return benches[name]


def _parse(path: Path, name: str, table: Any) -> Benchmark:
    where = f"{path}: [benchmarks.{name}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    for key, value in table.items():
        if key not in KEYS:
            raise ConfigError(f"{where}: unknown key '{key}'. Allowed: {', '.join(sorted(KEYS))}")
        typ, what = KEYS[key]
        if not isinstance(value, typ):
            raise ConfigError(f"{where}: '{key}' must be {what}, got {type(value).__name__} {value!r}")
    if "target" not in table:
        raise ConfigError(f"{where}: missing key 'target'")
    tcls = _lookup(plugins.targets, table["target"], where, "target")
    tschema = parameters(tcls)
    methods = table.get("methods")
    if methods is not None:
        if not methods:
            raise ConfigError(f"{where}: 'methods' is empty")
        for m in methods:
            if not isinstance(m, str) or m not in METHODS:
                raise ConfigError(f"{where}: 'methods' has unknown method {m!r}. Available: {', '.join(METHODS)}")
    seeds = table.get("seeds", [0, 1, 2])
    if not seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
        raise ConfigError(f"{where}: 'seeds' must be a non-empty list of integers >= 0, got {seeds!r}")
    preset = table.get("preset", "quick")
    if preset not in PRESETS:
        raise ConfigError(f"{where}: 'preset' must be one of {', '.join(PRESETS)}, got {preset!r}")

    params = table.get("params", {})
    for key in params:
        if key not in tschema:
            raise ConfigError(f"{where[:-1]}.params]: unknown key '{key}'. Allowed: {', '.join(sorted(tschema))}")
    target = _create(table["target"], params, f"{where[:-1]}.params]")
    sets = {k: check_hyper(k, v, f"{where[:-1]}.set]") if k in HYPER else _bad_key(where, "set", k, HYPER)
            for k, v in table.get("set", {}).items()}
    method_overrides: dict[str, dict[str, Any]] = {}
    for m, mt in table.get("method", {}).items():
        t = f"{where[:-1]}.method.{m}]"
        if m not in METHODS:
            raise ConfigError(f"{where[:-1]}.method]: unknown method '{m}'. Available: {', '.join(METHODS)}")
        if not isinstance(mt, dict):
            raise ConfigError(f"{t} must be a table, got {type(mt).__name__}")
        method_overrides[m] = {k: check_hyper(k, v, t) if k in HYPER else _bad_key(where, f"method.{m}", k, HYPER)
                               for k, v in mt.items()}
    sweeps: dict[str, list[Any]] = {}
    for key, values in table.get("sweep", {}).items():
        t = f"{where[:-1]}.sweep]"
        if key not in tschema and key not in HYPER:
            raise ConfigError(f"{t}: unknown key '{key}'. Allowed: {', '.join(sorted(set(tschema) | set(HYPER)))}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{t}: '{key}' must be a non-empty list of values, got {values!r}")
        for v in values:
            if key in HYPER:
                check_hyper(key, v, t)
            else:
                _create(table["target"], {**params, key: v}, t)
        sweeps[key] = values
    symmetry = table.get("symmetry")
    sparams = table.get("symmetry_params", {})
    if symmetry is not None or sparams:
        default, dparams = target.symmetry()
        scls = _lookup(plugins.symmetries, symmetry or default, where, "symmetry")
        base = dparams if (symmetry or default) == default else {}
        build(scls, {**base, **sparams}, table=f"{where[:-1]}.symmetry_params]")
    overrides = {**params, **sets, **{f"symmetry.{k}": v for k, v in sparams.items()}}
    req = GridRequest(target=table["target"], methods=list(methods) if methods is not None else None,
                      seeds=list(seeds), preset=preset, overrides=overrides, method_overrides=method_overrides,
                      sweeps=sweeps, symmetry=symmetry, benchmark=name)
    return Benchmark(name, table.get("description", ""), req, path)


def _create(target: str, params: dict[str, Any], table: str) -> Any:
    try:
        return plugins.targets.create(target, params, table=table)
    except ConfigError as exc:
        if table in str(exc):
            raise
        raise ConfigError(f"{table}: {exc}") from None


def _lookup(registry: Any, name: str, where: str, kind: str) -> type:
    try:
        return registry.get(name)
    except UnknownNameError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _bad_key(where: str, sub: str, key: str, allowed: dict[str, Any]) -> Any:
    raise ConfigError(f"{where[:-1]}.{sub}]: unknown key '{key}'. Allowed: {', '.join(sorted(allowed))}")


# ---------------------------------------------------------------------------------------------
# the request of `sesamo-bench run`: its options, over a benchmark of the file
# ---------------------------------------------------------------------------------------------
def grid_request(*, target: str | None, methods: str | None, preset: str | None, seeds: str | None,
                 sets: list[str], sweeps: list[str], device: str | None, dtype: str | None,
                 benchmark: str | None, benchmarks_file: Path | None) -> GridRequest:
    """Combine the options of ``sesamo-bench run`` (strings as typed; ``None`` where not given) and
    a benchmark of ``benchmarks.toml`` into a :class:`GridRequest` (the options win)."""
    from .config import canonical_key, check_hyper

    overrides: dict[str, Any] = dict(parse_assignments(sets, "--set"))
    if device is not None:
        overrides["device"] = check_hyper("device", device, "--device")
    if dtype is not None:
        overrides["dtype"] = check_hyper("dtype", dtype, "--dtype")
    sweep_values = parse_sweeps(sweeps)
    refuse_set_and_swept(overrides, sweep_values)
    method_list = None if methods is None or methods.strip() == "all" else parse_list(methods, "--methods")
    seed_list = parse_seeds(seeds) if seeds is not None else None
    if benchmark is not None:
        if target is not None:
            raise ConfigError("--target cannot be combined with --benchmark (the benchmark names its target)")
        req = get(benchmark, benchmarks_file).request
        # the options win: a key given on the command line replaces the file's (any spelling of it,
        # set or swept there)
        given = {canonical_key(k) for k in (*overrides, *sweep_values)}
        for table in (req.overrides, req.sweeps):
            for k in [k for k in table if canonical_key(k) in given]:
                del table[k]
        req.overrides.update(overrides)
        req.sweeps.update(sweep_values)
        if methods is not None:
            req.methods = method_list
        if seed_list is not None:
            req.seeds = seed_list
        if preset is not None:
            req.preset = preset
        return req
    if benchmarks_file is not None:
        raise ConfigError("--benchmarks-file needs --benchmark NAME")
    if target is None:
        raise ConfigError("give --target NAME (see `sesamo-bench list targets`) or --benchmark NAME")
    return GridRequest(target=target, methods=method_list, seeds=seed_list or [0, 1, 2],
                       preset=preset or "quick", overrides=overrides, sweeps=sweep_values)
