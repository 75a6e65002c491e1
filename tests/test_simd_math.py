"""The accuracy of the kernels' own scalar math (csrc/simd_math.h) against mpmath, in ulps.

README.md states these bounds; the functions are reached through
``dpo_fast._kernels._pairwise.math_values`` (the same inline functions every kernel compiles,
and bit-identical on every SIMD path, which tests/test_threads_simd.py checks on the losses).
The error is measured against a 1200-bit mpmath value, in units of the spacing of doubles at
the exact result, over seeded samples of each function's domain (results below the smallest
normal double are left out: there ulps are absolute).
"""

from __future__ import annotations

import numpy as np
import pytest

from dpo_fast._kernels import _pairwise

mpmath = pytest.importorskip("mpmath")

N = 2500
DBL_MIN = 2.2250738585072014e-308


def _samples(name: str, rng: np.random.Generator) -> np.ndarray:
    def mag(low, high, n):  # log-uniform magnitudes
        return 10.0 ** rng.uniform(low, high, n)

    if name == "exp":
        return rng.uniform(-708.0, 709.7, N)
    if name == "expm1":
        return np.concatenate([rng.uniform(-40.0, 40.0, N // 2),
                               rng.choice([-1.0, 1.0], N // 2) * mag(-20, 0, N // 2)])
    if name == "log":
        return np.concatenate([mag(-307, 308, N // 2), rng.uniform(0.5, 2.0, N // 2)])
    if name == "log1m":
        return np.concatenate([rng.uniform(0.0, 1.0, N // 2), 0.999 * mag(-300, 0, N // 2)])
    if name == "log1mexp":
        # (plus the neighbourhoods of the worst points found by dense scans: 2.14 ulp near
        # -0.99476, 2.08 near -0.48634, where exp's ulp is amplified by log(1 - y)'s
        # condition number y / ((1 - y) |log(1 - y)|) ~ 1.3)
        return np.concatenate([-mag(-300, 2.8, N // 2), -rng.uniform(0.01, 3.0, N // 2),
                               np.linspace(-0.99480, -0.99470, 400),
                               np.linspace(-0.48640, -0.48628, 400)])
    if name == "log1p_exp_neg_abs":
        return rng.uniform(-60.0, 60.0, N)
    if name == "sigmoid":
        return rng.uniform(-700.0, 700.0, N)
    raise AssertionError(name)


def _exact(name: str, x: float):
    v = mpmath.mpf(x)
    if name == "exp":
        return mpmath.exp(v)
    if name == "expm1":
        return mpmath.expm1(v)
    if name == "log":
        return mpmath.log(v)
    if name == "log1m":
        return mpmath.log1p(-v)
    if name == "log1mexp":
        return mpmath.log(-mpmath.expm1(v))
    if name == "log1p_exp_neg_abs":
        return mpmath.log1p(mpmath.exp(-abs(v)))
    return 1 / (1 + mpmath.exp(-v))


# (function, the bound README.md states, in ulps)
BOUNDS = [("exp", 1.0), ("expm1", 2.5), ("log", 1.0), ("log1m", 1.0), ("log1mexp", 2.5),
          ("log1p_exp_neg_abs", 1.5), ("sigmoid", 2.0)]


def test_every_function_is_measured():
    # (orpo_log1mexp: log1mexp's bits, test_orpo_log1mexp_is_log1mexp_bit_for_bit)
    assert {name for name, _ in BOUNDS} | {"orpo_log1mexp"} == set(_pairwise.MATH_FUNCTIONS)


@pytest.mark.parametrize(("name", "bound"), BOUNDS, ids=[name for name, _ in BOUNDS])
def test_ulp_error_within_the_stated_bound(name, bound):
    rng = np.random.default_rng([7, len(name), ord(name[-1])])
    x = np.ascontiguousarray(_samples(name, rng))
    got = _pairwise.math_values(name, x)
    worst, at = 0.0, None
    with mpmath.workprec(1200):
        for value, result in zip(x.tolist(), got.tolist()):
            exact = _exact(name, value)
            nearest = float(exact)
            if nearest == 0.0 or abs(nearest) < DBL_MIN:
                continue
            ulps = abs(float((mpmath.mpf(result) - exact) / float(np.spacing(abs(nearest)))))
            if ulps > worst:
                worst, at = ulps, value
    assert worst <= bound, f"{name}: {worst:.3f} ulp at x = {at!r}"


def test_special_values():
    inf, nan = float("inf"), float("nan")
    log = _pairwise.math_values("log", np.array([0.0, inf, 1.0, 5e-324, nan]))
    assert log[0] == -inf and log[1] == inf and log[2] == 0.0 and np.isnan(log[4])
    assert log[3] == pytest.approx(-744.4400719213812, rel=1e-15)  # subnormal input
    assert _pairwise.math_values("log1m", np.array([0.0]))[0] == 0.0
    assert _pairwise.math_values("exp", np.array([-inf, inf]))[0] == 0.0
    with pytest.raises(ValueError, match="unknown function 'cos'"):
        _pairwise.math_values("cos", np.zeros(1))


def test_orpo_log1mexp_is_log1mexp_bit_for_bit():
    """orpo's one-kernel log1mexp (csrc/pair_losses.h) against simd_math.h's, over the forms'
    boundaries (a = -ln 2, e^a = 1/2, 1 - e^a near sqrt(2)/2, subnormal 1 - e^a) and the
    special values."""
    rng = np.random.default_rng(3)
    ln2 = 0.6931471805599453
    edges = np.array([-ln2, -np.log(2.0 - np.sqrt(2.0)), -0.5 * ln2, -np.log(np.sqrt(2.0))])
    around = (edges[:, None] + np.linspace(-64, 64, 129) * 1e-16 * edges[:, None]).ravel()
    x = np.concatenate([
        around, -(10.0 ** rng.uniform(-320.0, 3.0, 20000)), -rng.uniform(0.0, 2.0, 20000),
        [0.0, -0.0, -5e-324, -1e-310, -745.2, -1e300, -np.inf, np.nan]])
    x = np.ascontiguousarray(x)
    got = _pairwise.math_values("orpo_log1mexp", x)
    want = _pairwise.math_values("log1mexp", x)
    assert got.tobytes() == want.tobytes()
