"""Shared fixtures and hypothesis settings for the dpo_fast test suite."""

from __future__ import annotations

import faulthandler
import json
import os
import sys

import pytest
from hypothesis import HealthCheck, settings

from dpo_fast._kernels import _pairwise

# Every property test runs without a deadline (the machine may be noisy, and nothing here
# asserts timings); individual tests choose their own max_examples.
settings.register_profile(
    "dpo_fast",
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("DPO_FAST_HYPOTHESIS_PROFILE", "dpo_fast"))


@pytest.fixture(autouse=True)
def _restore_simd_level():
    """Put the SIMD code path back after every test, whatever the test switched to.

    The level active when the test started is restored: the best supported one, unless the
    whole run was started with DPO_FAST_SIMD forcing another.
    """
    before = _pairwise.simd_level()
    yield
    _pairwise.set_simd_level(before)
    assert _pairwise.simd_level() == before


@pytest.fixture
def simd_levels():
    """Every SIMD code path this CPU and build support, lowest ('scalar') first.

    Tests using it may switch paths freely; the autouse fixture restores the level.
    """
    return _pairwise.supported_simd_levels()


# ---- the fuzzing (tests/test_fuzz_*.py ask for these with pytest.mark.usefixtures) ----
@pytest.fixture(scope="session")
def _fuzz_report(request):
    """Print how many fuzz cases ran (and write them to $DPO_FAST_FUZZ_STATS), once, after
    the last test of the session: the counts of every fuzz module of the run together."""
    from fuzz_support import FUZZ_COUNTS, SCALE

    yield
    total = sum(FUZZ_COUNTS.values())
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\ndpo_fast fuzz: {total} cases in {len(FUZZ_COUNTS)} fuzz "
                                f"tests (DPO_FAST_FUZZ_SCALE={SCALE:g})")
    path = os.environ.get("DPO_FAST_FUZZ_STATS")
    if path:
        with open(path, "w") as fh:
            json.dump({"total": total, "scale": SCALE, "per_test": dict(FUZZ_COUNTS)}, fh,
                      indent=1, sort_keys=True)


@pytest.fixture
def _no_hang():
    """'Never a hang': a fuzz test that runs for 10 minutes dumps every thread's stack and
    ends the process, instead of blocking the run."""
    try:  # on the real stderr: pytest's capture may have replaced sys.stderr (no fileno)
        faulthandler.dump_traceback_later(600, exit=True, file=sys.__stderr__)
        armed = True
    except (AttributeError, ValueError, OSError):  # no usable stderr (e.g. pythonw)
        armed = False
    yield
    if armed:
        faulthandler.cancel_dump_traceback_later()
