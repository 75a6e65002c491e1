"""A short run of the atheris (libFuzzer) harness, scripts/fuzz_atheris.py.

Skipped unless atheris is installed (``pip install atheris``), and when the tests run outside
a checkout (from an installed wheel: there is no scripts/ directory next to them).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="needs atheris (in the test extra on Linux x86-64, "
                                       "CPython 3.11-3.13)")

import dpo_fast  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
HARNESS = REPO_ROOT / "scripts" / "fuzz_atheris.py"
RUNS = 3000


def test_atheris_harness_short_run(tmp_path: Path) -> None:
    """3000 deterministic executions (-seed=1) end with exit code 0 and the summary line."""
    if not HARNESS.is_file():
        pytest.skip(f"{HARNESS} not found (tests run outside a checkout)")
    package_parent = os.path.dirname(os.path.dirname(dpo_fast.__file__))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [package_parent, *filter(None, [env.get("PYTHONPATH")])])
    completed = subprocess.run(
        [sys.executable, str(HARNESS), f"-runs={RUNS}", "-seed=1"],
        cwd=tmp_path,  # libFuzzer writes crash-* files in the working directory
        env=env, capture_output=True, text=True, timeout=120)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    match = re.search(r"fuzz_atheris summary: (\d+) executions, (\d+) returned, "
                      r"(\d+) ValueError, (\d+) TypeError", output)
    assert match, output[-4000:]
    executions, returned, value_errors, type_errors = map(int, match.groups())
    assert executions == RUNS
    assert returned > 0
    assert returned + value_errors + type_errors <= executions
