"""round4 / round4_list reproduce Python's round(x, 4) bit for bit."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from helpers import assert_plain_float_list, assert_same_float, assert_same_float_list
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dpo_fast._seed import round4, round4_list

TWO_51_OVER_1E4 = 2.0**51 / 1e4


def _neighbours(x: float, count: int = 3) -> list[float]:
    """x and the `count` doubles on either side of it."""
    out = [x]
    lo = hi = x
    for _ in range(count):
        lo = math.nextafter(lo, -math.inf)
        hi = math.nextafter(hi, math.inf)
        out += [lo, hi]
    return out


def _near_ties(seed: int, count: int) -> list[float]:
    """Doubles at and around the decimal ties k/10^4 + 0.00005 for k of every magnitude."""
    rng = random.Random(seed)
    values: list[float] = []
    for _ in range(count):
        digits = rng.choice([1, 2, 3, 4, 6, 9, 12, 15, 16])
        k = rng.randrange(10**digits)
        sign = rng.choice([1.0, -1.0])
        tie = sign * (k / 10000 + 0.00005)
        values += _neighbours(tie, 2)
        values.append(sign * float(f"{k}.5e-4"))  # the double nearest the exact decimal tie
    return values


SPECIAL_VALUES = [
    0.0, -0.0, 0.10575, -0.10575, 2.5e-5, -2.5e-5, 0.00005, -0.00005, 0.00015, 0.00025,
    1.00005, 0.99995, 0.4741, 0.47407698, 1.5e-4, 0.5, -0.5, 1e-4, -1e-4, 4.9999e-5,
    5e-324, -5e-324, 2.2250738585072014e-308, -2.2250738585072014e-308, 1e-310, 1e-320,
    1.7976931348623157e308, -1.7976931348623157e308, 1e300, -1e300, 1e22, 1e16, 2.0**52,
    2.0**53, 2.0**53 + 2, 123456789.00005, 1e15 + 0.3, math.pi, math.e, -math.pi,
    TWO_51_OVER_1E4, -TWO_51_OVER_1E4, TWO_51_OVER_1E4 + 0.00005, TWO_51_OVER_1E4 * 2,
    TWO_51_OVER_1E4 * 4 + 0.5, 1.7976931348623157e308 / 1e4, 1.7976931348623157e308 / 1e4 * 2,
    math.inf, -math.inf, math.nan,
]


def _special_with_neighbours() -> list[float]:
    values: list[float] = []
    for x in SPECIAL_VALUES:
        values += _neighbours(x) if math.isfinite(x) else [x]
    return values


@pytest.mark.parametrize("x", _special_with_neighbours())
def test_round4_special_values(x):
    """Zeros (signed), ties, tiny/subnormal, huge, non-finite values and their neighbours."""
    assert_same_float(round4(x), round(x, 4), f"round4({x!r})")


def test_round4_documented_tie_example():
    """0.10575 rounds to 0.1057 like Python's round (np.round gives 0.1058)."""
    assert round4(0.10575) == 0.1057
    assert float(np.round(0.10575, 4)) == 0.1058  # the difference the spec warns about


@pytest.mark.parametrize("x", [-0.00001, -0.00004, -4.9e-5, -1e-300, -5e-324, -0.0])
def test_round4_keeps_negative_zero(x):
    """Small negative values round to -0.0, as round(x, 4) does."""
    result = round4(x)
    assert result == 0.0 and math.copysign(1.0, result) == -1.0


@pytest.mark.parametrize("x", [math.nan, -math.nan])
def test_round4_nan(x):
    """NaN in, NaN out."""
    assert math.isnan(round4(x))


@pytest.mark.parametrize("seed", range(4))
def test_round4_near_ties(seed):
    """Thousands of values at and a few ulps around k/10^4 + 0.00005."""
    for x in _near_ties(seed, 1500):
        assert_same_float(round4(x), round(x, 4), f"round4({x!r})")


def test_round4_around_two_to_the_51_over_1e4():
    """Around 2^51/10^4 the fast path hands over to Python's round: both sides agree."""
    rng = random.Random(7)
    for scale in (0.5, 0.999, 1.0, 1.001, 2.0, 7.0, 1e3):
        base = TWO_51_OVER_1E4 * scale
        for x in _neighbours(base, 20):
            for y in (x, -x, x + rng.random(), x + 0.00005, x - 0.00005):
                assert_same_float(round4(y), round(y, 4), f"round4({y!r})")


@settings(max_examples=300)
@given(st.floats(allow_nan=True, allow_infinity=True))
@example(0.10575)
@example(-0.0)
@example(2.5e-5)
def test_round4_matches_round_on_all_floats(x):
    """Any double, including NaN and infinities."""
    assert_same_float(round4(x), round(x, 4), f"round4({x!r})")


@settings(max_examples=300)
@given(st.floats(min_value=-1e6, max_value=1e6))
def test_round4_matches_round_on_moderate_floats(x):
    """The range where losses and rewards usually live."""
    assert_same_float(round4(x), round(x, 4), f"round4({x!r})")


@settings(max_examples=300)
@given(st.integers(min_value=-(10**15), max_value=10**15), st.integers(min_value=-4, max_value=4))
def test_round4_matches_round_near_generated_ties(k, ulps):
    """k/10^4 + 0.00005 moved by a few ulps."""
    x = k / 10000 + 0.00005
    step = math.inf if ulps > 0 else -math.inf
    for _ in range(abs(ulps)):
        x = math.nextafter(x, step)
    assert_same_float(round4(x), round(x, 4), f"round4({x!r})")


def test_round4_list_matches_round():
    """round4_list gives a plain list of plain floats equal to [round(x, 4) ...]."""
    values = (_special_with_neighbours() + _near_ties(11, 300)
              + [random.Random(3).uniform(-10, 10) for _ in range(500)])
    result = round4_list(np.array(values, dtype=np.float64))
    assert_plain_float_list(result, "round4_list")
    assert_same_float_list(result, [round(x, 4) for x in values], "round4_list")


@settings(max_examples=100)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=50))
def test_round4_list_matches_round_hypothesis(values):
    """round4_list over arbitrary lists, including the empty one."""
    result = round4_list(np.array(values, dtype=np.float64))
    assert_plain_float_list(result, "round4_list")
    assert_same_float_list(result, [round(x, 4) for x in values], "round4_list")


def test_round4_list_needs_contiguous_float64():
    """round4_list takes a C-contiguous float64 buffer; other inputs are refused."""
    with pytest.raises((ValueError, TypeError)):
        round4_list(np.zeros(4, dtype=np.float32))
    with pytest.raises((ValueError, TypeError)):
        round4_list(np.zeros(8)[::2])
