"""The correctly rounded sums behind kto_loss's metrics (dpo_fast._kernels._kto) against an
exact reference: the sum of the values as Fractions, rounded once by float(Fraction) (an
integer true division, correctly rounded), and math.fsum where it does not raise."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_fast import kto_loss
from dpo_fast._kernels._kto import exact_units, fsum, fsum_differences

MAX = np.finfo(np.float64).max
TINY = 5e-324


def exact(values) -> float:
    """Fraction sum rounded once; OverflowError beyond the float64 range."""
    total = sum((Fraction(float(v)) for v in values), Fraction(0))
    return float(total)


def same(got: float, want: float) -> bool:
    return got == want and math.copysign(1.0, got) == math.copysign(1.0, want)


def make(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "log-probs":
        return rng.standard_normal(n) * 5.0 - 50.0
    if kind == "wide":
        return rng.standard_normal(n) * 10.0 ** rng.integers(-300, 300, n)
    if kind == "bits":  # every finite bit pattern, both signs
        values = rng.integers(0, 2**63, n, dtype=np.int64).view(np.float64)
        values = np.where(np.isfinite(values), values, 1.0)
        return values * rng.choice([-1.0, 1.0], n) / 4.0   # / 4: n of them stay in range
    if kind == "cancel":  # x and -x: the total is the small remainder only
        half = rng.standard_normal(n // 2) * 10.0 ** rng.integers(-30, 30, n // 2)
        values = np.concatenate([half, -half, [3e-310, -1e-320, 1e-300]])
        rng.shuffle(values)
        return values
    if kind == "subnormal":
        return rng.integers(-2**52, 2**52, n).astype(np.float64) * TINY
    if kind == "huge":  # many values near the top of the range: carries across every digit
        return rng.choice([-1.0, 1.0], n) * MAX * rng.uniform(0.5, 1.0, n) / n
    raise AssertionError(kind)


KINDS = ["log-probs", "wide", "bits", "cancel", "subnormal", "huge"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [0, 1, 2, 511, 512, 513, 1024, 5000])
def test_fsum_is_the_correctly_rounded_sum(kind, n):
    rng = np.random.default_rng(n * 31 + KINDS.index(kind))
    values = make(kind, n, rng)
    want = exact(values)
    assert same(fsum(values), want)
    # Strided and reversed views read the same values.
    assert same(fsum(values[::-1]), want)
    doubled = np.repeat(values, 2)
    doubled[1::2] = np.nan
    assert same(fsum(doubled[::2]), want)
    try:
        reference = math.fsum(values.tolist())
    except OverflowError:   # an intermediate overflow of math.fsum's partials
        return
    assert same(fsum(values), reference)


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), max_size=60))
@settings(max_examples=400, deadline=None)
def test_fsum_property(values):
    try:
        want = exact(values)
    except OverflowError:
        with pytest.raises(OverflowError, match="beyond the float64 range"):
            fsum(np.array(values, dtype=np.float64))
        return
    assert same(fsum(np.array(values, dtype=np.float64)), want)


def test_ties_round_half_to_even():
    # 2^53 + 1 is halfway between two doubles: to even (2^53); a tiny extra decides upwards.
    assert fsum(np.array([2.0**53, 1.0])) == 2.0**53
    assert fsum(np.array([2.0**53, 1.0, 2.0**-60])) == 2.0**53 + 2.0
    assert fsum(np.array([2.0**53 + 2.0, 1.0])) == 2.0**53 + 4.0
    assert fsum(np.array([-(2.0**53), -1.0, -(2.0**-60)])) == -(2.0**53) - 2.0
    assert fsum(np.array([1.0, 1e100, 1.0, -1e100])) == 2.0   # float sums give 0.0


def test_special_values_follow_math_fsum():
    assert math.isnan(fsum(np.array([1.0, np.nan])))
    assert math.isnan(fsum(np.array([np.nan, np.inf, -np.inf])))
    assert fsum(np.array([np.inf, 1.0, 1e308])) == np.inf
    assert fsum(np.array([-np.inf, -1.0])) == -np.inf
    with pytest.raises(ValueError, match="-inf \\+ inf"):
        fsum(np.array([np.inf, 2.0, -np.inf]))
    assert same(fsum(np.array([-0.0, -0.0])), 0.0)
    assert same(fsum(np.zeros(0)), 0.0)


def test_overflow_only_when_the_total_is_out_of_range():
    with pytest.raises(OverflowError, match="beyond the float64 range"):
        fsum(np.array([MAX, MAX]))
    with pytest.raises(OverflowError):
        fsum(np.array([-MAX, -MAX / 2**52]))   # rounds to -2^1024
    assert fsum(np.array([MAX, MAX / 2**54])) == MAX     # rounds back into range
    # math.fsum raises for this one (its partial sum overflows); the total is in range.
    assert fsum(np.array([1e308, 1e308, -1e308])) == 1e308
    assert fsum(np.full(4096, MAX / 4096)) == exact(np.full(4096, MAX / 4096))


def test_stride_must_be_whole_doubles():
    record = np.zeros(5, dtype=[("a", np.float64), ("b", np.int32)])
    with pytest.raises(ValueError, match="stride"):
        fsum(record["a"])
    assert fsum(np.ascontiguousarray(record["a"])) == 0.0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 7, 513, 3000])
def test_kto_sums_each_side(kind, n):
    """kto_loss's per-side sums (csrc/kto_rows.h, the side picked by index): with ref = 0 and
    beta = 1 the rewards are the log-probs themselves, so both are the values' exact sums."""
    rng = np.random.default_rng(7 + n)
    values = make(kind, n, rng)
    labels = rng.random(values.size) < 0.3
    for logps, desirable in ((values, labels), (values[::-1], labels[::-1])):
        m = kto_loss(logps, np.zeros(values.size), desirable, beta=1.0).metrics
        for side, mask in (("chosen", labels), ("rejected", ~labels)):
            want = exact(values[mask])
            assert same(m[f"logps/{side}_sum"], want)
            assert same(m[f"rewards/{side}_sum"], want)


def test_kto_sums_keep_non_finite_rewards_per_side():
    # Finite log-probs whose difference overflows: the reward is +-inf, on its own side only.
    logps = np.array([1e308, 1.0, -1e308, 2.0])
    ref = np.array([-1e308, 0.0, 0.0, 0.0])
    m = kto_loss(logps, ref, np.array([True, True, False, False]), beta=1.0).metrics
    assert m["rewards/chosen_sum"] == np.inf and m["rewards/rejected_sum"] == -1e308 + 2.0
    with pytest.raises(ValueError, match="-inf \\+ inf"):
        kto_loss(np.array([1e308, -1e308]), np.array([-1e308, 1e308]), np.array([True, True]),
                 beta=1.0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 512, 1500])
def test_fsum_differences_sums_the_rounded_differences(kind, n):
    rng = np.random.default_rng(11 + n)
    first = make(kind, n, rng)
    second = make(kind, n, rng)[::-1][:first.size].copy()
    first = first[:second.size]
    with np.errstate(over="ignore"):
        differences = first - second
    try:
        want = exact(differences) if np.isfinite(differences).all() else fsum(differences)
    except (OverflowError, ValueError) as error:
        with pytest.raises(type(error)):
            fsum_differences(first, second)
        return
    total, finite = fsum_differences(first, second)
    assert finite and same(total, want)


def test_fsum_differences_flags_non_finite_inputs_and_overflow():
    assert fsum_differences(np.array([1.0, np.nan]), np.zeros(2)) == (None, False)
    assert fsum_differences(np.zeros(2), np.array([0.0, -np.inf])) == (None, False)
    assert fsum_differences(np.array([MAX]), np.array([-MAX])) == (np.inf, True)
    with pytest.raises(ValueError, match="-inf \\+ inf"):
        fsum_differences(np.array([MAX, -MAX]), np.array([-MAX, MAX]))
    with pytest.raises(ValueError, match="lengths differ"):
        fsum_differences(np.zeros(2), np.zeros(3))
    assert fsum_differences(np.zeros(0), np.zeros(0)) == (0.0, True)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [0, 1, 513, 3000])
def test_exact_units_is_the_exact_total(kind, n):
    """The scorer's mergeable sums: the exact total in units of 2^-1074, not rounded."""
    rng = np.random.default_rng(23 + n)
    values = make(kind, n, rng)
    want = sum((Fraction(float(v)) for v in values), Fraction(0)) * 2**1074
    assert want.denominator == 1
    assert exact_units(values) == want.numerator
    assert exact_units(values[::-1]) == want.numerator
    halves = exact_units(values[: values.size // 2]) + exact_units(values[values.size // 2:])
    assert halves == want.numerator


def test_exact_units_takes_finite_values_only():
    assert exact_units(np.array([-TINY, -TINY, MAX])) == -2 + (int(Fraction(MAX) * 2**1074))
    with pytest.raises(ValueError, match="finite values only"):
        exact_units(np.array([1.0, np.inf]))


def test_inputs_are_not_modified():
    values = np.array([1e308, -1e308, 3.0, np.inf])
    labels = np.array([True, False, True, False])
    before = values.copy(), labels.copy()
    fsum(values)
    exact_units(values[:3])
    kto_loss(values[:3], values[:3] - 1.0, labels[:3])
    np.testing.assert_array_equal(values, before[0])
    np.testing.assert_array_equal(labels, before[1])
