"""Fuzzing (hypothesis) the scalar parameters at and beyond their bounds: ``beta``,
``label_smoothing``, ``discopop_tau``, ``simpo_gamma``, ``f_alpha_divergence_coef`` of
``preference_loss``, and ``temperature`` and ``ignore_index`` of ``sequence_logps``.

The invariant every case is checked for, and how cases are counted: tests/fuzz_support.py.
"""

from __future__ import annotations

import decimal
import fractions
import math
import numbers

import numpy as np
import pytest
from fuzz_support import (
    DBL_MAX,
    DBL_MIN,
    F_DIV_TYPES,
    call_checked,
    check_preference_result,
    count,
    fuzz,
    logps_arrays,
    loss_kwargs,
)
from fuzz_support import FUZZ_SMOOTHED as SMOOTHED
from helpers import assert_no_nan, result_no_nan
from hypothesis import given
from hypothesis import strategies as st

from dpo_fast import preference_loss, sequence_logps, sequence_logps_grad

pytestmark = pytest.mark.usefixtures("_fuzz_report", "_no_hang")


BOUNDARY = [0.0, -0.0, 5e-324, DBL_MIN, 1e-300, 1e-8, 0.05, 0.1, 0.4999999999999999, 0.5,
            0.5000000000000001, 0.9999999999999999, 1.0, 1.0000000000000002, 2.0, 1e8, 1e300,
            DBL_MAX / 4, DBL_MAX, math.inf, -math.inf, math.nan, -1.0, -5e-324, 10**400,
            -(10**400), 3, np.float32(0.25), np.int64(2), fractions.Fraction(1, 3), True,
            np.bool_(False), "0.1", None, 1j, decimal.Decimal("0.1")]
SCALAR_PARAMS = ("beta", "label_smoothing", "discopop_tau", "simpo_gamma",
                 "f_alpha_divergence_coef", "dpop_lambda", "bco_delta", "alphapo_alpha")


def _expected_param_error(name, value, types):
    """ValueError / TypeError / None that preference_loss should give for name=value."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return TypeError
    try:
        x = float(value)
    except OverflowError:
        x = math.inf if value > 0 else -math.inf
    if name in ("beta", "discopop_tau"):
        return None if 1e-300 <= x <= 1e300 else ValueError
    if name in ("dpop_lambda", "bco_delta"):  # their type's parameter; the default elsewhere
        user, default = ("dpop", 50.0) if name == "dpop_lambda" else ("bco_pair", 0.0)
        if not math.isfinite(x) or (name == "dpop_lambda" and x < 0):
            return ValueError
        return None if user in types or x == default else ValueError
    if name == "alphapo_alpha":  # alphapo's: 0 or |alpha| in [1e-300, 1e300]; 0 elsewhere
        if x != 0.0 and not 1e-300 <= abs(x) <= 1e300:
            return ValueError
        return None if "alphapo" in types or x == 0.0 else ValueError
    if name == "f_alpha_divergence_coef":
        return None if abs(x) <= 1e300 else ValueError
    if name == "simpo_gamma":
        return None if math.isfinite(x) else ValueError
    users = [t for t in types if t in SMOOTHED or t == "exo_pair"]
    if not users:
        return None if x == 0.0 else ValueError
    for t in users:
        if t == "exo_pair" and not 0.0 < x < 1.0:
            return ValueError
        if t != "exo_pair" and not 0.0 <= x < 0.5:
            return ValueError
    return None


@fuzz(1200)
@given(name=st.sampled_from(SCALAR_PARAMS), value=st.sampled_from(BOUNDARY),
       loss=st.sampled_from(["sigmoid", "exo_pair", "robust", "discopop", "simpo", "aot",
                             "ipo", "hinge", ["sigmoid", "exo_pair"], "apo_zero", "dpop",
                             "bco_pair", ["dpop", "sigmoid"], "alphapo", "rpo_sq",
                             ["rpo_fwd_kl", "sigmoid"]]),
       fdiv=st.sampled_from(["reverse_kl", "alpha_divergence"]),
       dtype=st.sampled_from([np.float32, np.float64]), n=st.sampled_from([1, 5, 17]),
       seed=st.integers(0, 2**32 - 1))
def test_fuzz_scalar_parameters_at_and_beyond_bounds(name, value, loss, fdiv, dtype, n, seed):
    """beta, label_smoothing, discopop_tau, simpo_gamma and f_alpha_divergence_coef at and
    beyond their bounds: exactly the promised TypeError / ValueError, and otherwise a result
    without NaN (and equal to the reference for moderate values)."""
    count("scalar_parameters")
    types = [loss] if isinstance(loss, str) else loss
    rng = np.random.default_rng(seed)
    arrays = [a.astype(dtype) for a in logps_arrays(loss, n, rng, spread=3.0)]
    kw = loss_kwargs(loss, n, rng, fdiv=fdiv)
    kw[name] = value
    kw["compute_grad"] = True
    if name == "f_alpha_divergence_coef":
        kw["f_divergence_type"] = "alpha_divergence"
    expected = _expected_param_error(name, value, types)
    # (within 1e-6 of 1 the alpha-divergence is reverse KL, TRL's rule: every type takes it)
    if name == "f_alpha_divergence_coef" and expected is None and \
            abs(float(value) - 1.0) >= 1e-6 and \
            not all(t in F_DIV_TYPES or t == "sft" for t in types):
        expected = ValueError
    result, error = call_checked(preference_loss, *arrays, **kw)
    if expected is not None:
        assert isinstance(error, expected), f"{name}={value!r}: {error!r}"
        assert name in str(error) or "f_divergence_type" in str(error), str(error)
        return
    assert error is None, f"{name}={value!r}: {error!r}"
    result_no_nan(result, f"{name}={value!r}")
    x = float(value)
    moderate = abs(x) <= 1e3 and (name != "beta" or x >= 1e-3) and \
        (name != "discopop_tau" or x >= 1e-3) and \
        (name != "f_alpha_divergence_coef" or abs(x) <= 10)
    if moderate:
        kw[name] = x
        if name == "label_smoothing" and "robust" in types and x > 0.45:
            return  # 1 / (1 - 2 eps) amplifies rounding beyond the fuzz tolerance
        check_preference_result(result, [np.asarray(a, np.float64) for a in arrays], kw,
                                rtol=1e-8)


TEMPERATURES = [5e-324, DBL_MIN, 1e-300, 1e-8, 0.01, 1.0, 7.5, 1e300, DBL_MAX, 0.0, -0.0,
                -1.0, math.inf, math.nan, 10**400, np.float32(2.0), 3, True, "1", None, 1j]


@fuzz(400)
@given(temperature=st.sampled_from(TEMPERATURES), ignore=st.sampled_from(
    [-100, -1, 0, 2**63 - 1, -(2**63), 2**63, 2**64, np.int8(-1), np.uint64(5), 1.0, True,
     "x", None]), dtype=st.sampled_from([np.float32, np.float64]), grad=st.booleans(),
       scale=st.sampled_from([1.0, 1e3, 1e30]), seed=st.integers(0, 999))
def test_fuzz_temperature_and_ignore_index(temperature, ignore, dtype, grad, scale, seed):
    """temperature and ignore_index at and beyond their bounds."""
    count("temperature_ignore_index")
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(2, 3, 9)) * scale).astype(dtype)
    labels = rng.integers(0, 9, (2, 3))
    fn = (lambda *a, **k: sequence_logps_grad(*a, 1.0, **k)) if grad else sequence_logps
    result, error = call_checked(fn, logits, labels, temperature=temperature,
                                 ignore_index=ignore)
    # The order of the checks: ignore_index (type, range), then temperature (type, value).
    if isinstance(ignore, (bool, np.bool_)) or not isinstance(ignore, numbers.Integral):
        assert isinstance(error, TypeError), repr(error)
        return
    if not -(2**63) <= int(ignore) < 2**63:
        assert isinstance(error, ValueError), repr(error)
        return
    if isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, numbers.Real):
        assert isinstance(error, TypeError), repr(error)
        return
    t = math.inf if isinstance(temperature, int) and temperature > 1e308 else float(temperature)
    if not (math.isfinite(t) and t > 0):
        assert isinstance(error, ValueError), repr(error)
        return
    if error is not None:  # 1 / temperature, or a logit / temperature, overflows
        assert isinstance(error, ValueError) and "overflow" in str(error), repr(error)
        return
    values = result if grad else result.logps
    assert_no_nan(values, "result")
