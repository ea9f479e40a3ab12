"""Built-in symmetry plugins, one per file, installed as ``sesamo_bench.symmetries``.

Discovered by :mod:`sesamo_bench.registry`; never listed by hand.
"""
