"""``python -m sesamo_bench``: the ``sesamo-bench`` command line."""

from .cli import main

if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in the tests
    main()
