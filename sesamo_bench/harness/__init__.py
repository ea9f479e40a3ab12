r"""The benchmark harness: configuration (:mod:`~sesamo_bench.harness.config`), planning
(:mod:`~sesamo_bench.harness.grid`, :mod:`~sesamo_bench.harness.benchmarks`), training and measuring one run
(:mod:`~sesamo_bench.harness.train`, :mod:`~sesamo_bench.harness.measure`), running grids
(:mod:`~sesamo_bench.harness.runner`: the local worker pool; :mod:`~sesamo_bench.harness.cluster`: Slurm through
submitit; :mod:`~sesamo_bench.harness.claim`: one process per run), the results database
(:mod:`~sesamo_bench.harness.store`) and the throughput benchmark (:mod:`~sesamo_bench.harness.perf`).
It uses :mod:`sesamo_bench.core` and :mod:`sesamo_bench.analysis`, never the outputs or the command line."""
