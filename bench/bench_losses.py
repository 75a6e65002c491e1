"""Every dpo_fast.preference_loss loss type against NumPy (issue 3, part 2).

The ``losses`` section of ``dpo-fast bench`` (dpo_fast.benchmark.losses, which says exactly what
each side computes), alone and with its own options; bench/README.md has a recorded run::

    python bench/bench_losses.py                       # N = 1e6, both dtypes, ~1 minute
    python bench/bench_losses.py --n 1e5 --repeats 15 --threads 1
    python bench/bench_losses.py --json results/loss-types-linux-x86_64-2core.json
"""

import sys

from dpo_fast.benchmark.losses import main

if __name__ == "__main__":
    sys.exit(main())
