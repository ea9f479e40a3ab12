r"""Measurement mathematics on top of :mod:`sesamo_bench.core`: the HMC baseline
(:mod:`~sesamo_bench.analysis.hmc`), neural MCMC (:mod:`~sesamo_bench.analysis.nmcmc`), observables with
Gamma-method errors (:mod:`~sesamo_bench.analysis.observables`, :mod:`~sesamo_bench.analysis.autocorr`),
and the suite's own reference curves (:mod:`~sesamo_bench.analysis.phi4_reference`)."""
