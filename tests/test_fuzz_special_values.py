"""Fuzzing (hypothesis) NaN, +-inf, subnormals, +-0.0 and the largest finites at every
position of every array of ``preference_loss``, and in the logits of ``sequence_logps``.

The invariant every case is checked for, and how cases are counted: tests/fuzz_support.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from fuzz_support import (
    COUPLED,
    DBL_MAX,
    DBL_MIN,
    FLT_MAX,
    FLT_MIN,
    PREF_NAMES,
    call_checked,
    check_preference_result,
    count,
    fuzz,
    logps_arrays,
    loss_kwargs,
)
from helpers import assert_no_nan, result_no_nan
from hypothesis import given
from hypothesis import strategies as st
from reference_logps import reference as logps_reference

from dpo_fast import preference_loss, sequence_logps, sequence_logps_grad

pytestmark = pytest.mark.usefixtures("_fuzz_report", "_no_hang")


SPECIAL_64 = [math.nan, -math.nan, math.inf, -math.inf, 5e-324, -5e-324, DBL_MIN, -DBL_MIN,
              1e-310, 0.0, -0.0, DBL_MAX, -DBL_MAX, 1e300, -1e300, 1e6, -1e6]
SPECIAL_32 = [math.nan, math.inf, -math.inf, 1e-45, -1e-45, FLT_MIN, 1e-40, 0.0, -0.0,
              FLT_MAX, -FLT_MAX, 1e30, -1e30, 1e6, -1e6]
SPECIAL_SLOTS = ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps",
                 "weights", "chosen_lengths", "rejected_lengths")


@fuzz(1200)
@given(n=st.sampled_from([1, 2, 7, 8, 9, 15, 16, 17, 33]), pos=st.integers(0, 10**6),
       slot=st.sampled_from(SPECIAL_SLOTS), dtype=st.sampled_from([np.float32, np.float64]),
       which=st.integers(0, 16), check_finite=st.booleans(),
       loss=st.sampled_from(["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust",
                             "bco_pair", "sppo_hard", "apo_zero", "apo_down", "discopop",
                             "sigmoid_norm", "aot", "sft", ["sigmoid", "sft"], "alphapo",
                             "rpo_bwd_kl", "rpo_sq"]),
       reduction=st.sampled_from(["mean", "none"]), seed=st.integers(0, 2**32 - 1))
def test_fuzz_special_values_every_position(n, pos, slot, dtype, which, check_finite, loss,
                                            reduction, seed):
    """NaN, +-inf, subnormals, +-0.0 and huge finites at any position of any array: NaN and
    inf give ValueError naming the argument and index (or, with check_finite=False, stay in
    their own row); finite values give a result without NaN that matches the reference
    where the reference is exact (moderate values)."""
    count("special_values")
    rng = np.random.default_rng(seed)
    specials = SPECIAL_64 if dtype is np.float64 else SPECIAL_32
    value = specials[which % len(specials)]
    pos %= n
    arrays = [a.astype(dtype) for a in logps_arrays(loss, n, rng)]
    kw = loss_kwargs(loss, n, rng, weights=slot == "weights")
    kw["reduction"] = reduction
    kw["compute_grad"] = True
    kw["check_finite"] = check_finite
    if slot in ("chosen_lengths", "rejected_lengths") and slot not in kw:
        return
    if slot in PREF_NAMES:
        index = PREF_NAMES.index(slot)
        target = arrays[index] if index < len(arrays) else None
        if target is None:
            return
    else:
        target = kw[slot]
    target[pos] = value
    stored = float(target[pos])
    original = kw.get(slot)
    result, error = call_checked(preference_loss, *arrays, **kw)
    if slot in ("weights", "chosen_lengths", "rejected_lengths"):
        # weights: finite and >= 0; lengths: finite and >= 1 (token counts)
        bad = not math.isfinite(stored) or stored < (0.0 if slot == "weights" else 1.0)
        if bad:
            assert isinstance(error, ValueError), repr(error)
            assert f"{slot}[{pos}]" in str(error)
            return
    elif not math.isfinite(stored):
        if check_finite:
            assert isinstance(error, ValueError), repr(error)
            names = PREF_NAMES
            assert f"{names[PREF_NAMES.index(slot)]}[{pos}]" in str(error), str(error)
            return
        assert error is None, repr(error)
        types = [loss] if isinstance(loss, str) else loss
        if not COUPLED.intersection(types) and reduction == "none":
            # The NaN / inf stays in its own row: every other row equals the clean call.
            clean = [a.copy() for a in arrays]
            clean[PREF_NAMES.index(slot)][pos] = -1.0
            base = preference_loss(*clean, **kw)
            others = np.arange(n) != pos
            for name in ("losses", "grad_chosen", "grad_rejected"):
                assert getattr(result, name)[others].tobytes() == \
                    getattr(base, name)[others].tobytes(), name
        return
    assert error is None, f"{slot}[{pos}] = {stored!r}: {error!r}"
    result_no_nan(result, f"{slot}[{pos}] = {stored!r}")
    if abs(stored) <= 1e3 and (original is None or np.all(np.abs(original) <= 1e3)):
        plain = [np.asarray(a, np.float64) for a in arrays]
        check_preference_result(result, plain, kw, reduction=reduction)


@fuzz(500)
@given(b=st.integers(1, 3), t=st.integers(1, 4), v=st.sampled_from([1, 2, 7, 8, 9, 16, 17, 33]),
       dtype=st.sampled_from([np.float32, np.float64]), which=st.integers(0, 16),
       pos=st.integers(0, 10**6), counted=st.booleans(), use_lse=st.booleans(),
       seed=st.integers(0, 999))
def test_fuzz_special_values_in_logits(b, t, v, dtype, which, pos, counted, use_lse, seed):
    """A special value at any logit: NaN/inf at a counted position is ValueError naming it;
    at a position that is not counted it is never read; finite ones give no NaN."""
    count("special_values_logits")
    rng = np.random.default_rng(seed)
    specials = SPECIAL_64 if dtype is np.float64 else SPECIAL_32
    value = specials[which % len(specials)]
    logits = rng.normal(size=(b, t, v)).astype(dtype)
    labels = rng.integers(0, v, (b, t))
    flat = pos % logits.size
    bi, ti, vi = np.unravel_index(flat, logits.shape)
    logits[bi, ti, vi] = value
    if not counted:
        labels[bi, ti] = -100
    result, error = call_checked(sequence_logps, logits, labels, return_entropy=True)
    stored = float(logits[bi, ti, vi])
    if counted and not math.isfinite(stored):
        assert isinstance(error, ValueError)
        assert f"[{bi}, {ti}" in str(error)
        return
    assert error is None, repr(error)
    assert_no_nan(result.logps, "logps")
    assert_no_nan(result.entropy, "entropy")
    grad, error = call_checked(sequence_logps_grad, logits, labels, 1.0,
                               logsumexp=result.logsumexp if use_lse else None)
    assert error is None, repr(error)
    assert_no_nan(grad, "grad")
    assert not grad[bi, ti].any() or counted
    if abs(stored) < 1e3:
        ref = logps_reference(logits.astype(np.float64), labels, grad_logps=1.0)
        tol = 1e-7 if dtype is np.float32 else 1e-9  # float32: the float exp
        np.testing.assert_allclose(result.logps, ref["logps"], rtol=tol, atol=10 * tol)
        np.testing.assert_allclose(grad, ref["grad"], rtol=1e-5 if dtype is np.float32
                                   else 1e-10, atol=1e-6 if dtype is np.float32 else 1e-12)
