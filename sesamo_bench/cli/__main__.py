"""``python -m sesamo_bench.cli``: the ``sesamo-bench`` command line."""

from . import main

if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in the tests
    main()
