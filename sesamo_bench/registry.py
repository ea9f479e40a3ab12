r"""Plugin discovery: one symmetry or target per file, found without editing any list.

Plugins come from three places, in this order (a later one with the same name wins):

1. the built-in plugins: the repository's top-level folders ``symmetries/`` and ``targets/``,
   installed as the sub-packages ``sesamo_bench.symmetries`` and ``sesamo_bench.targets`` (so a
   built-in class imports by module name, e.g. ``from sesamo_bench.targets.hubbard import
   Hubbard``, and pickles);
2. folders named in the environment variable ``SESAMO_BENCH_PLUGINS`` (``os.pathsep``-separated),
   through their sub-folders ``symmetries/``, ``targets/`` and ``architectures/`` only: nothing
   else in such a folder is executed, and a folder with none of them is reported (in
   :attr:`Registry.errors`, shown by ``sesamo-bench list``) instead of searched;
3. installed packages, through the entry-point groups ``sesamo_bench.symmetries`` and
   ``sesamo_bench.targets`` (each entry point names a class).

A plugin file is any ``*.py`` file not starting with ``_``. Every class defined in it that
subclasses the registry's base class and sets a ``name`` is registered. A file that fails to
import is recorded in :attr:`Registry.errors` (with its file name) and does not break the others.
"""

from __future__ import annotations

import importlib
import importlib.util
import hashlib
import inspect
import math
import os
import sys
import traceback
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

from .errors import ConfigError, PluginError, UnknownNameError

T = TypeVar("T")

def builtin_dir(sub: str) -> Path:
    """The folder of the built-in plugins of kind ``sub`` (the package ``sesamo_bench.<sub>``)."""
    return Path(importlib.import_module(f"{__package__}.{sub}").__file__).parent


#: the plugin kinds, i.e. the sub-folders a ``SESAMO_BENCH_PLUGINS`` folder may hold
KINDS = ("symmetries", "targets", "architectures", "methods")


def extra_folders() -> list[Path]:
    """The folders named in ``SESAMO_BENCH_PLUGINS``, in order."""
    return [Path(p) for p in filter(None, os.environ.get("SESAMO_BENCH_PLUGINS", "").split(os.pathsep))]


def plugin_dirs(sub: str) -> list[Path]:
    """Folders searched for plugins of kind ``sub`` (one of :data:`KINDS`): the built-ins and the
    ``sub`` sub-folder of each ``SESAMO_BENCH_PLUGINS`` folder (never the folder itself)."""
    dirs = [builtin_dir(sub)] + [p / sub for p in extra_folders()]
    return [d for d in dirs if d.is_dir()]


def unusable_folders() -> dict[str, str]:
    """``SESAMO_BENCH_PLUGINS`` folders from which nothing is loaded, with the reason (one line)."""
    out = {}
    for p in extra_folders():
        if not p.is_dir():
            out[str(p)] = f"SESAMO_BENCH_PLUGINS folder {p}: not a folder; nothing loaded from it"
        elif not any((p / k).is_dir() for k in KINDS):
            subs = ", ".join(k + "/" for k in KINDS)
            out[str(p)] = (f"SESAMO_BENCH_PLUGINS folder {p}: none of the sub-folders {subs}; "
                           f"plugin files belong in those (nothing in it was executed)")
    return out


class Registry(Generic[T]):
    r"""Name -> class mapping for one kind of plugin.

    Arguments:
        kind: singular noun used in messages (``"symmetry"``).
        base: the base class plugins subclass.
        folder: sub-folder name searched by :func:`plugin_dirs`.
        group: entry-point group for installed plugins.
    """

    def __init__(self, kind: str, base: type, *, folder: str, group: str):
        self.kind, self.base, self.folder, self.group = kind, base, folder, group
        self._items: dict[str, type] | None = None
        self.errors: dict[str, str] = {}
        self.sources: dict[str, Path] = {}
        self.builtins: set[str] = set()
        #: classes handed to :meth:`register` (they outlive :meth:`reload`)
        self.registered: dict[str, type] = {}

    # discovery -------------------------------------------------------------------------------
    def _load_file(self, path: Path, found: dict[str, type], *, builtin: bool = False) -> None:
        if builtin:  # an installed module: imported by its name, so its classes pickle
            modname = f"{__package__}.{self.folder}.{path.stem}"
        else:
            modname = f"sesamo_bench_plugins.{self.folder}.{path.stem}"
        try:
            if builtin:
                module = importlib.import_module(modname)
            else:
                spec = importlib.util.spec_from_file_location(modname, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[modname] = module
                spec.loader.exec_module(module)
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # noqa: BLE001 - reported, not raised
            sys.modules.pop(modname, None)
            last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
            where = f" (line {last[0].lineno})" if last and last[0].filename == str(path) else ""
            if isinstance(exc, SyntaxError) and exc.lineno:
                where = f" (line {exc.lineno})"
            self.errors[str(path)] = f"{path.name}{where}: {type(exc).__name__}: {exc}"
            return
        for obj in vars(module).values():
            if (inspect.isclass(obj) and issubclass(obj, self.base) and obj is not self.base
                    and obj.__module__ == modname and getattr(obj, "name", None)):
                found[obj.name] = obj
                self.sources[obj.name] = path
                if builtin:
                    self.builtins.add(obj.name)

    def _discover(self) -> dict[str, type]:
        found: dict[str, type] = {}
        self.errors = {}
        self.sources: dict[str, Path] = {}
        self.builtins: set[str] = set()
        self.errors.update(unusable_folders())
        builtin = builtin_dir(self.folder)
        for d in plugin_dirs(self.folder):
            for path in sorted(d.glob("*.py")):
                if not path.name.startswith("_"):
                    self._load_file(path, found, builtin=d == builtin)
        for ep in entry_points(group=self.group):
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001
                self.errors[f"entry point {ep.name}"] = f"entry point {ep.name}: {type(exc).__name__}: {exc}"
                continue
            if inspect.isclass(obj) and issubclass(obj, self.base):
                name = getattr(obj, "name", ep.name)
                found[name] = obj
                try:
                    self.sources[name] = Path(inspect.getsourcefile(obj) or "")
                except TypeError:
                    self.sources.pop(name, None)
        for name, obj in self.registered.items():
            found[name] = obj
            self._source_of(name, obj)
        return found

    def _source_of(self, name: str, obj: type) -> None:
        try:
            self.sources[name] = Path(inspect.getsourcefile(obj) or "")
        except (TypeError, OSError):  # defined in a notebook or at the prompt
            self.sources.pop(name, None)

    def register(self, cls: type) -> type:
        r"""Add a class defined outside the plugin folders (a notebook, a script), in this process;
        usable as a decorator. It replaces a plugin of the same name (its runs then get their own
        run ids: :meth:`shadow_digest`). Worker processes of ``sesamo-bench run`` do not see it:
        train it with :func:`sesamo_bench.fit` or ``--workers 1``.

        Raises:
            PluginError: ``cls`` is not a subclass of the registry's base class, or has no ``name``.
        """
        if not (inspect.isclass(cls) and issubclass(cls, self.base)) or cls is self.base:
            raise PluginError(f"register: {cls!r} is not a subclass of {self.base.__name__}")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"register: {cls.__name__} sets no 'name' (the {self.kind} name to use)")
        self.registered[name] = cls
        if self._items is not None:
            self._items[name] = cls
            self._source_of(name, cls)
        return cls

    def unregister(self, name: str) -> None:
        """Forget a class added by :meth:`register` (the plugin it replaced, if any, comes back)."""
        if self.registered.pop(name, None) is not None:
            self.reload()

    def shadow_digest(self, name: str) -> str | None:
        """sha256 of the source file of plugin ``name`` when it replaces a built-in plugin of that
        name (then its runs must not share the built-in's run ids); None otherwise."""
        items = self.items
        src = self.sources.get(name)
        if name in self.registered and name in self.builtins:  # a class handed to register()
            body = inspect.getsource(items[name]) if src is not None else repr(items[name])
            return hashlib.sha256(body.encode()).hexdigest()
        if name not in items or name not in self.builtins or src is None:
            return None
        try:
            if src.resolve().parent == builtin_dir(self.folder).resolve():  # the built-in itself
                return None
            return hashlib.sha256(src.read_bytes()).hexdigest()
        except (OSError, RuntimeError):
            return hashlib.sha256(repr(items[name]).encode()).hexdigest()

    @property
    def items(self) -> dict[str, type]:
        if self._items is None:
            self._items = self._discover()
        return self._items

    def reload(self) -> None:
        self._items = None

    # lookup ----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self.items)

    def get(self, name: str) -> type:
        try:
            return self.items[name]
        except KeyError:
            stem = name.replace("-", "_")
            broken = [e for e in self.errors.values() if e.startswith((f"{name}.py", f"{stem}.py"))]
            if broken:
                raise PluginError(f"{self.kind} plugin {broken[0]}") from None
            err = UnknownNameError(self.kind, name, self.names())
            if self.errors:  # the plugin may be in a file of another name that failed to load
                err.args = (f"{err.args[0]}; plugin files that failed to load: " + "; ".join(self.errors.values()),)
            raise err from None

    def create(self, name: str, params: dict[str, Any] | None = None, *, table: str | None = None) -> T:
        """Instantiate plugin ``name`` with keyword arguments ``params`` (validated)."""
        cls = self.get(name)
        return build(cls, params or {}, table=table or f"{self.kind} '{name}'")


def parameters(cls: type) -> dict[str, Any]:
    """A plugin's configuration schema: its keyword-only constructor parameters and defaults."""
    sig = inspect.signature(cls.__init__)
    return {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in sig.parameters.values()
        if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def _coerce(value: Any, default: Any, key: str, table: str) -> Any:
    """Check a configuration value against the type of its default (bool/int/float/str/list)."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif isinstance(default, float):
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"{table}: '{key}' must be a finite number, got {value!r}")
            if number != 0.0 and abs(number) < sys.float_info.min:  # e.g. 1e-320: no precision left
                raise ConfigError(f"{table}: '{key}' must be 0 or at least {sys.float_info.min:.3g} in magnitude "
                                  f"(a subnormal number carries no precision), got {value!r}")
            return number
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return type(default)(value)
        if isinstance(value, str):
            try:
                return type(default)(int(v) for v in value.replace(";", ",").split(",") if v.strip())
            except ValueError:
                pass
    else:
        return value
    raise ConfigError(
        f"{table}: '{key}' expects {type(default).__name__}, got {type(value).__name__} {value!r}"
    )


def build(cls: type, params: dict[str, Any], *, table: str) -> Any:
    """Instantiate ``cls`` from a configuration table; unknown keys and wrong types are errors."""
    schema = parameters(cls)
    unknown = sorted(set(params) - set(schema))
    if unknown:
        raise ConfigError(
            f"{table}: unknown key '{unknown[0]}'. Allowed: {', '.join(sorted(schema)) or '(none)'}"
        )
    kwargs = {k: _coerce(v, schema[k], k, table) for k, v in params.items()}
    try:
        return cls(**kwargs)
    except (ConfigError, UnknownNameError):
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{table}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a plugin's own bug: one line naming it
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(f"{table}: the plugin's constructor raised {type(exc).__name__}: {first}") from None
