"""Fuzzing (hypothesis) the ``out=`` buffers of ``preference_loss``: good ones, unaligned
ones inside guard bytes, wrong dtypes and shapes, strided, read-only, Fortran-order and
byte-swapped ones, aliases of an input or of another output, lists, None, unknown keys, and
gradient buffers without ``compute_grad``.

The invariant every case is checked for, and how cases are counted: tests/fuzz_support.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from fuzz_support import OUTPUTS, call_checked, count, fuzz, logps_arrays
from helpers import Guarded
from hypothesis import given
from hypothesis import strategies as st
from test_threads_simd import fingerprint

from dpo_fast import preference_loss

pytestmark = pytest.mark.usefixtures("_fuzz_report", "_no_hang")


OUT_KINDS = ["good", "guarded_unaligned", "wrong_dtype", "wrong_shape", "strided", "readonly",
             "fortran_2d", "alias_input", "alias_other_output", "list", "none_value",
             "byteswapped", "unknown_key", "grad_without_flag"]


def _bad_out(kind, n, dtype, an_input, so_far):
    """An out array of the given bad kind (n items of dtype are expected)."""
    other = np.float64 if dtype is np.float32 else np.float32
    if kind == "wrong_dtype":
        return np.empty(n, other)
    if kind == "wrong_shape":
        return np.empty(n + 1, dtype)
    if kind == "strided":
        return np.empty(2 * n, dtype)[::2]
    if kind == "readonly":
        return np.broadcast_to(np.empty(1, dtype), (n,))
    if kind == "fortran_2d":
        return np.empty((n, 2), dtype, order="F")
    if kind == "alias_input":
        return an_input
    if kind == "alias_other_output":
        return next(iter(so_far.values()), an_input)
    if kind == "list":
        return [0.0] * n
    if kind == "none_value":
        return None
    return np.empty(n, np.dtype(dtype).newbyteorder())  # byteswapped


@fuzz(600)
@given(kinds=st.dictionaries(st.sampled_from(OUTPUTS), st.sampled_from(OUT_KINDS),
                             min_size=1, max_size=5),
       dtype=st.sampled_from([np.float32, np.float64]), compute_grad=st.booleans(),
       n=st.sampled_from([1, 8, 17]), offset=st.integers(1, 7), seed=st.integers(0, 999))
def test_fuzz_out(kinds, dtype, compute_grad, n, offset, seed):
    """Preallocated outputs of every kind: good ones are filled with the same bits as a
    call without out=; bad ones give ValueError / TypeError; no byte around them is
    written."""
    count("out")
    rng = np.random.default_rng(seed)
    arrays = [a.astype(dtype) for a in logps_arrays("sigmoid", n, rng)]
    out, guards, valid = {}, [], True
    for position, (name, kind) in enumerate(kinds.items()):
        if kind in ("good", "guarded_unaligned", "grad_without_flag"):
            g = Guarded(np.full(n, 7.0), dtype, offset if kind == "guarded_unaligned" else 0)
            guards.append(g)
            out[name] = g.array
            if name.startswith("grad") and not compute_grad:
                valid = False
        elif kind == "unknown_key":
            out["loss"] = np.empty(n, dtype)
            valid = False
        else:
            # A 1-element array is C-contiguous whatever its stride (NumPy's rule).
            valid = valid and kind == "strided" and n == 1 and not (
                name.startswith("grad") and not compute_grad)
            out[name] = _bad_out(kind, n, dtype, arrays[position % 4], out)
    result, error = call_checked(preference_loss, *arrays, compute_grad=compute_grad, out=out)
    for g in guards:
        assert g.guards_intact(), "bytes around an out array were written"
    if not valid:
        assert isinstance(error, (ValueError, TypeError)), f"{kinds}: {error!r}"
        return
    assert error is None, f"{kinds}: {error!r}"
    plain = preference_loss(*arrays, compute_grad=compute_grad)
    for name, array in out.items():
        assert getattr(result, name) is array
    assert fingerprint(result) == fingerprint(plain)
