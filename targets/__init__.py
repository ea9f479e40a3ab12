"""Built-in target plugins, one per file, installed as ``sesamo_bench.targets``.

Discovered by :mod:`sesamo_bench.registry`; never listed by hand.
"""
