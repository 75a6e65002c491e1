"""Fuzzing (hypothesis) the dtypes of every array of ``preference_loss`` and ``sequence_logps``:
float16/32/64, longdouble, the integers, bool, object, complex, datetime64, timedelta64,
str, bytes, structured and big-endian arrays.

The invariant every case is checked for, and how cases are counted: tests/fuzz_support.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from fuzz_support import call_checked, check_preference_result, count, fuzz
from hypothesis import given
from hypothesis import strategies as st
from reference_logps import reference as logps_reference

from dpo_fast import preference_loss, sequence_logps, sequence_logps_grad

pytestmark = pytest.mark.usefixtures("_fuzz_report", "_no_hang")


DTYPES = ["float16", "float32", "float64", "longdouble", "int8", "int16", "int32", "int64",
          "uint8", "uint16", "uint32", "uint64", "bool", "object", "complex64", "complex128",
          "datetime64[s]", "timedelta64[ms]", "U4", "S4", "V8", ">f8", ">f4", ">i4",
          [("a", "f8"), ("b", "i4")]]


def _array_of(dtype, values, positive=False):
    """values (moderate negative floats, or positive ones with positive=True) as an array of
    dtype, as far as it can hold them (integers: |values| mod 100, negated for signed
    dtypes unless positive; + 1 when positive)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        magnitude = np.abs(np.round(values)).astype(np.int64) % 100 + (1 if positive else 0)
        return (magnitude if dtype.kind == "u" or positive else -magnitude).astype(dtype)
    if dtype.kind == "b":
        return values > -10
    if dtype.kind == "O":
        return np.array(values.tolist(), dtype=object)
    if dtype.kind in "fc":
        return values.astype(dtype)
    if dtype.kind in "mM":
        return np.abs(values).astype(np.int64).astype(dtype)
    if dtype.kind in "US":
        return np.array([f"{v:.1f}" for v in values.ravel()], dtype=dtype).reshape(values.shape)
    return np.zeros(values.shape, dtype=dtype)


@fuzz(700)
@given(dtypes=st.lists(st.sampled_from(DTYPES), min_size=4, max_size=4),
       n=st.sampled_from([1, 2, 7, 8, 9, 17]), seed=st.integers(0, 2**32 - 1),
       with_refs=st.booleans(), loss=st.sampled_from(["sigmoid", "hinge", "ipo", "robust"]),
       extra=st.sampled_from([None, "weights", "chosen_lengths"]))
def test_fuzz_dtypes_preference_loss(dtypes, n, seed, with_refs, loss, extra):
    """Inputs of every dtype: real float (<= 64 bits) and integer dtypes give the
    reference's result in float32 (all float16/float32) or float64; every other dtype gives
    TypeError."""
    count("dtypes_preference_loss")
    rng = np.random.default_rng(seed)
    values = [rng.uniform(-60.0, -1.0, n) for _ in range(4)]
    arrays = [_array_of(d, v) for d, v in zip(dtypes, values)]
    kw = {"loss_type": loss, "beta": 0.3, "compute_grad": True}
    if loss == "robust":
        kw["label_smoothing"] = 0.2
    used = arrays if with_refs else arrays[:2]
    used_dtypes = dtypes if with_refs else dtypes[:2]
    if extra is not None:
        extra_values = _array_of(dtypes[3], np.abs(values[3]) + 1.0, positive=True)
        if extra == "chosen_lengths":
            kw["loss_type"] = "sft"
            kw.pop("label_smoothing", None)
        kw[extra] = extra_values
    result, error = call_checked(preference_loss, *used, **kw)

    def good(d):
        d = np.dtype(d)
        return (d.kind == "f" and d.itemsize <= 8) or d.kind in "iu"

    all_good = all(good(d) for d in used_dtypes) and (extra is None or good(dtypes[3]))
    if not all_good:
        assert isinstance(error, TypeError), f"dtypes {used_dtypes}: got {error!r}"
        return
    assert error is None, f"dtypes {used_dtypes}: {error!r}"
    single = all(np.dtype(d).kind == "f" and np.dtype(d).itemsize <= 4 for d in used_dtypes)
    assert result.losses.dtype == (np.float32 if single else np.float64)
    plain = [np.asarray(a, dtype=np.float64) for a in used]
    plain_kw = dict(kw)
    if extra is not None:
        plain_kw[extra] = np.asarray(kw[extra], dtype=np.float64)
    check_preference_result(result, plain, plain_kw)


@fuzz(500)
@given(logits_dtype=st.sampled_from(DTYPES), labels_dtype=st.sampled_from(DTYPES),
       mask_dtype=st.sampled_from([None, *DTYPES]), seed=st.integers(0, 999),
       grad=st.booleans())
def test_fuzz_dtypes_sequence_logps(logits_dtype, labels_dtype, mask_dtype, seed, grad):
    """logits must be float32/float64 (native byte order), labels integers, the mask bool or
    integers: anything else is TypeError; accepted calls match the reference."""
    count("dtypes_sequence_logps")
    rng = np.random.default_rng(seed)
    b, t, v = 2, 3, 6
    logits = _array_of(logits_dtype, rng.normal(size=(b, t, v)) * 3)
    raw_labels = rng.integers(0, v, (b, t)).astype(np.float64)
    labels = (raw_labels.astype(labels_dtype) if np.dtype(labels_dtype).kind in "iu"
              else _array_of(labels_dtype, raw_labels))
    mask = None if mask_dtype is None else _array_of(mask_dtype, rng.normal(size=(b, t)))
    if grad:
        result, error = call_checked(sequence_logps_grad, logits, labels, 1.0, mask=mask)
    else:
        result, error = call_checked(sequence_logps, logits, labels, mask=mask)
    ld, bd = np.dtype(logits_dtype), np.dtype(labels_dtype)
    md = None if mask_dtype is None else np.dtype(mask_dtype)
    ok = (ld in (np.dtype(np.float32), np.dtype(np.float64)) and ld.isnative
          and bd.kind in "iu" and (md is None or md.kind in "iub"))
    if not ok:
        assert isinstance(error, (TypeError, ValueError)), (ld, bd, md, error)
        if ld.kind not in "f" or ld.itemsize not in (4, 8) or bd.kind not in "iu":
            assert isinstance(error, TypeError), (ld, bd, md, error)
        return
    if error is not None:  # labels out of range (uint wrap) can be a ValueError
        assert isinstance(error, ValueError) and "out of range" in str(error), error
        return
    ref = logps_reference(np.asarray(logits, np.float64), np.asarray(labels, np.int64),
                          mask=mask, grad_logps=1.0 if grad else None)
    if grad:
        np.testing.assert_allclose(result, ref["grad"], rtol=1e-6 if ld == np.float32 else 1e-12,
                                   atol=1e-7 if ld == np.float32 else 1e-13)
    else:  # float32 logits: the float exp's ~4e-8 a token (FLOAT32 contract: 1e-6 a token)
        tol = 1e-7 if ld == np.float32 else 1e-10
        np.testing.assert_allclose(result.logps, ref["logps"], rtol=tol, atol=10 * tol)
