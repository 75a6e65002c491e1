"""dpo_fast.sequence_logps against NumPy and PyTorch CPU (issue 5): time and peak memory.

The ``logps`` section of ``dpo-fast bench`` (dpo_fast.benchmark.logps), alone and with its own
options; bench/README-logps.md explains the columns and has a recorded run::

    python bench/bench_logps.py                  # both shapes, ~1-2 minutes, ~3 GB of RAM
    python bench/bench_logps.py --shapes small --repeats 5
    python bench/bench_logps.py --json results.json
    python bench/bench_logps.py --threshold      # when does a second thread pay?
"""

import sys

from dpo_fast.benchmark.logps import main

if __name__ == "__main__":
    sys.exit(main())
