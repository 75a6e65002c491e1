"""Fuzzing (hypothesis) with arbitrary Python objects in every argument of ``preference_loss``,
``dpo_loss``, ``sequence_logps`` and ``sequence_logps_grad``: None, str, bytes, dict, set,
nested and ragged lists, complex, Decimal, Fraction, NumPy scalars, huge ints, and objects
whose ``__float__`` raises (passed through unchanged).

The invariant every case is checked for, and how cases are counted: tests/fuzz_support.py.
"""

from __future__ import annotations

import decimal
import fractions
import math
import warnings

import numpy as np
import pytest
from fuzz_support import (
    OUTPUTS,
    PREF_NAMES,
    FloatRaises,
    FloatSubclassRaises,
    RealFloatRaises,
    call_checked,
    count,
    fuzz,
    logps_arrays,
    loss_kwargs,
)
from helpers import assert_no_nan, result_no_nan
from hypothesis import given
from hypothesis import strategies as st

from dpo_fast import dpo_loss, preference_loss, sequence_logps, sequence_logps_grad

pytestmark = pytest.mark.usefixtures("_fuzz_report", "_no_hang")


def _junk_leaf():
    return st.one_of(
        st.none(), st.booleans(), st.text(max_size=4), st.binary(max_size=4),
        st.integers(min_value=-(10**400), max_value=10**400),
        st.sampled_from([10**400, -(10**400), 2**63, 2**64, -(2**63) - 1, 2**31, 0, -1, 3]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.complex_numbers(max_magnitude=10.0),
        st.sampled_from([fractions.Fraction(-1, 3), decimal.Decimal("-1.5"), np.float32(-1.5),
                         np.int8(3), np.uint64(2**64 - 1), np.bool_(True),
                         np.datetime64("2020-01-01"), np.timedelta64(5, "s"),
                         np.longdouble(-2.5), np.complex64(1 + 1j), np.float16(-0.5),
                         Ellipsis, slice(1, 2), object(), float, np.float64]),
        st.builds(FloatRaises), st.builds(RealFloatRaises),
        st.builds(FloatSubclassRaises, st.floats(-10, 10)),
    )


JUNK = st.recursive(
    _junk_leaf(),
    lambda children: st.one_of(
        st.lists(children, max_size=6), st.tuples(children, children),
        st.dictionaries(st.text(max_size=3), children, max_size=3),
        st.frozensets(st.integers(), max_size=3)),
    max_leaves=10)

PREF_SLOTS = ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps",
              "element", "beta", "loss_type", "loss_weights", "label_smoothing",
              "discopop_tau", "simpo_gamma", "f_divergence_type", "f_alpha_divergence_coef",
              "chosen_lengths", "rejected_lengths", "weights", "reduction", "compute_grad",
              "check_finite", "n_threads", "out")


def _normalised(value):
    """The float64 array NumPy makes of value, or None if it cannot."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.array(value, dtype=np.float64)
    except Exception:
        return None


@fuzz(1000)
@given(slot=st.sampled_from(PREF_SLOTS), junk=JUNK, index=st.integers(0, 4),
       loss_type=st.sampled_from(["sigmoid", "ipo", "discopop", "sigmoid_norm", "simpo",
                                  "exo_pair", ["sigmoid", "sft"], "aot"]),
       as_list=st.booleans())
def test_fuzz_arbitrary_objects_preference_loss(slot, junk, index, loss_type, as_list):
    """Any object in any argument of preference_loss: a correct result or ValueError /
    TypeError (or the caller's own __float__ exception), never anything else."""
    count("arbitrary_objects_preference_loss")
    n = 5
    rng = np.random.default_rng(index)
    arrays = logps_arrays(loss_type, n, rng)
    kw = loss_kwargs(loss_type, n, rng)
    args = [a.tolist() if as_list else a for a in arrays]
    if slot in PREF_NAMES:
        position = PREF_NAMES.index(slot)
        while len(args) <= position:
            args.append(None)
        args[position] = junk
    elif slot == "element":
        args[0] = list(args[0])
        args[0][index] = junk
    else:
        kw[slot] = junk
    result, error = call_checked(preference_loss, *args, **kw)
    if error is not None:
        return
    # Accepted: check against the same call with the odd argument made plain.
    plain_args = [None if a is None else _normalised(a) for a in args]
    if any(p is None for a, p in zip(args, plain_args) if a is not None):
        return  # NumPy itself cannot make floats of it; the API did (e.g. a float subclass)
    result_no_nan(result, "accepted junk")
    if slot in PREF_NAMES or slot == "element":
        while plain_args and plain_args[-1] is None:
            plain_args.pop()
        if all(p.ndim == 1 and np.isfinite(p).all() for p in plain_args):
            plain = preference_loss(*plain_args, **kw)
            for name in OUTPUTS[:3]:
                np.testing.assert_allclose(getattr(result, name), getattr(plain, name),
                                           rtol=1e-6, err_msg=name)


@fuzz(600)
@given(slot=st.integers(0, 4), element=st.booleans(), junk=JUNK, index=st.integers(0, 3),
       kind=st.sampled_from(["list", "tuple", "array"]))
def test_fuzz_arbitrary_objects_dpo_loss(slot, element, junk, index, kind):
    """dpo_loss (list fast path and array path) with any object in any argument."""
    count("arbitrary_objects_dpo_loss")
    rng = np.random.default_rng(index)
    columns = [rng.uniform(-30.0, 0.0, 4) for _ in range(4)]
    convert = {"list": lambda a: a.tolist(), "tuple": lambda a: tuple(a.tolist()),
               "array": lambda a: a}[kind]
    args = [convert(c) for c in columns] + [0.5]
    if slot == 4:
        args[4] = junk
    elif element:
        column = list(args[slot])
        column[index] = junk
        args[slot] = type(args[slot])(column) if kind != "array" else column
    else:
        args[slot] = junk
    result, error = call_checked(dpo_loss, *args)
    if error is not None:
        return
    assert set(result) == {"loss", "chosen_rewards", "rejected_rewards"}
    assert type(result["loss"]) is float and not math.isnan(result["loss"])
    for key in ("chosen_rewards", "rejected_rewards"):
        assert type(result[key]) is list
        assert all(type(v) is float and not math.isnan(v) for v in result[key])


LOGPS_SLOTS = ("logits", "labels", "ignore_index", "mask", "average", "temperature",
               "return_token_logps", "return_entropy", "n_threads")
GRAD_SLOTS = ("logits", "labels", "grad_logps", "ignore_index", "mask", "average",
              "temperature", "grad_token_logps", "n_threads", "out")


@fuzz(700)
@given(grad=st.booleans(), slot=st.integers(0, 9), junk=JUNK, seed=st.integers(0, 99))
def test_fuzz_arbitrary_objects_sequence_logps(grad, slot, junk, seed):
    """sequence_logps / sequence_logps_grad with any object in any argument. (logsumexp is
    left out: see test_regression_logsumexp_dtype_is_checked.)"""
    count("arbitrary_objects_sequence_logps")
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(2, 3, 5))
    labels = rng.integers(0, 5, (2, 3))
    if grad:
        kw = {"logits": logits, "labels": labels, "grad_logps": np.ones(2)}
        kw[GRAD_SLOTS[slot % len(GRAD_SLOTS)]] = junk
        result, error = call_checked(
            lambda logits, labels, grad_logps, **rest: sequence_logps_grad(
                logits, labels, grad_logps, **rest), **kw)
        if error is None:
            assert isinstance(result, np.ndarray)
            assert_no_nan(result, "grad")
    else:
        kw = {"logits": logits, "labels": labels}
        kw[LOGPS_SLOTS[slot % len(LOGPS_SLOTS)]] = junk
        result, error = call_checked(
            lambda logits, labels, **rest: sequence_logps(logits, labels, **rest), **kw)
        if error is None:
            assert_no_nan(result.logps, "logps")
            assert not math.isnan(result.token_accuracy)
