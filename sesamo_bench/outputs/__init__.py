r"""What a person reads: tables in five formats (:mod:`~sesamo_bench.outputs.report`), figures
(:mod:`~sesamo_bench.outputs.plot`) and live progress (:mod:`~sesamo_bench.outputs.progress`), all
from the records the harness stores."""
