"""dpo_fast.linear_sequence_logps against the GEMM alone and PyTorch CPU (issue 17): time and
peak memory, forward and forward + backward.

The ``fused`` section of ``dpo-fast bench`` (dpo_fast.benchmark.fused), alone and with its own
options; bench/README-fused.md explains the columns and has a recorded run::

    python bench/bench_fused.py                      # both shapes, several minutes, ~3 GB
    python bench/bench_fused.py --shapes issue --repeats 5
    python bench/bench_fused.py --json results.json
"""

import sys

from dpo_fast.benchmark.fused import main

if __name__ == "__main__":
    sys.exit(main())
