"""``python -m dpo_fast``: the ``dpo-fast`` command line."""

import sys

from dpo_fast.cli import main

if __name__ == "__main__":
    sys.exit(main())
