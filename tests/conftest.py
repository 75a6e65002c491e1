"""Shared fixtures and hypothesis settings for the dpo_fast test suite."""

from __future__ import annotations

import os

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
