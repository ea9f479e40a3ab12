"""Built-in architecture plugins, one per file, installed as ``sesamo_bench.architectures``.

Discovered by :mod:`sesamo_bench.registry`; never listed by hand.
"""
