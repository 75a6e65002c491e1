"""Run the dpo_fast benchmark: ``python bench/run.py [options]`` = ``dpo-fast bench [options]``.

The benchmark lives in the package (dpo_fast.benchmark) so that an installed ``dpo-fast bench``
runs it too; see bench/README.md.
"""

import sys

from dpo_fast.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
