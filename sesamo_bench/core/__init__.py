r"""The mathematics: what a physicist reads and extends.

- :mod:`~sesamo_bench.core.symmetry`, :mod:`~sesamo_bench.core.target`,
  :mod:`~sesamo_bench.core.architecture`: the three plugin contracts (a group with its canonical
  cell and modulation; an action exp(-f)/Z; a bijection on a domain);
- :mod:`~sesamo_bench.core.methods`, :mod:`~sesamo_bench.core.equivariant`,
  :mod:`~sesamo_bench.core.vmonf`: how a flow and a symmetry make a sampler q(x) (RealNVP,
  canonicalization, SESaMo, equivariant flows, the mixture of flows);
- :mod:`~sesamo_bench.core.flows`, :mod:`~sesamo_bench.core.spline`, :mod:`~sesamo_bench.core.lattice`,
  :mod:`~sesamo_bench.core.kernels` (and its C sources in ``native/``): the bijections;
  :mod:`~sesamo_bench.core.bijections` (a ``Chain`` of them, the affine layers) and
  :mod:`~sesamo_bench.core.magnetisation` (the frame of M, its chart, the Fourier basis): the
  parts architectures are assembled from;
- :mod:`~sesamo_bench.core.loss`, :mod:`~sesamo_bench.core.metrics`: reverse KL, ESS and ln Z;
- :mod:`~sesamo_bench.core.lattice_physics`, :mod:`~sesamo_bench.core.particles`: shared field and
  particle geometry (free field, correlators; centre-of-mass-free coordinates).

Nothing here knows about configurations, stores, workers or output formats
(``tests/test_layers.py`` checks the imports).
"""
