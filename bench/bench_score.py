"""End-to-end benchmark of ``dpo-fast score --out`` (issue 6): throughput and peak memory.

The ``score`` section of ``dpo-fast bench`` (dpo_fast.benchmark.score), alone and with its own
options (needs pyarrow and pandas)::

    python bench/bench_score.py                      # 10M rows, 3 interleaved rounds
    python bench/bench_score.py --rows 2e6 --repeats 1 --json score.json
"""

import sys

from dpo_fast.benchmark.score import main

if __name__ == "__main__":
    sys.exit(main())
