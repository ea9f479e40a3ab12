"""Built-in method plugins, one per file, installed as ``sesamo_bench.methods``.

Discovered by :mod:`sesamo_bench.registry` (the registry is :data:`sesamo_bench.core.methods.methods`);
never listed by hand. A method of one's own is a file in the ``methods/`` sub-folder of a
``SESAMO_BENCH_PLUGINS`` folder, an entry point of the group ``sesamo_bench.methods``, or a class
passed to :func:`sesamo_bench.core.methods.register`.

``from sesamo_bench.methods import SESaMo`` (the flat module of 0.1) still works until 0.3.0, with
a :class:`DeprecationWarning` naming the new place.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    import importlib
    import warnings

    from sesamo_bench import REMOVED_IN

    core = importlib.import_module("sesamo_bench.core.methods")
    warnings.warn(f"sesamo_bench.methods.{name} (the module of 0.1) moved to sesamo_bench.core.methods.{name}; "
                  f"the old path goes in {REMOVED_IN}", DeprecationWarning, stacklevel=2)
    return getattr(core, name)
