"""sequence_logps gives the same bits for every thread count and every SIMD path, and a
property test of random batches against the plain float64 reference.

Checked against the plain float64 reference of tests/reference_logps.py.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from reference_logps import assert_matches, assert_same_result, full, make_batch, reference

from dpo_fast import logps as logps_module
from dpo_fast import sequence_logps_grad
from dpo_fast._kernels import _pairwise

# ------------------------------------------------------------------ determinism


def _big_batch():
    # Enough logits that the kernel really runs in parallel (above PARALLEL_MIN_ELEMENTS),
    # small enough to stay fast.
    rng = np.random.default_rng(17)
    logits, labels, mask = make_batch(rng, b=6, t=40, v=1500, dtype=np.float32, scale=4.0)
    assert mask.sum() * 1500 > 2 * logps_module.PARALLEL_MIN_ELEMENTS
    return logits, labels, mask


def test_bit_identical_for_every_thread_count():
    logits, labels, mask = _big_batch()
    one = full(logits, labels, mask=mask, n_threads=1)
    grad_one = sequence_logps_grad(logits, labels, 0.5, mask=mask, n_threads=1)
    for n_threads in (2, 3, 4, None):
        assert_same_result(full(logits, labels, mask=mask, n_threads=n_threads), one)
        grad = sequence_logps_grad(logits, labels, 0.5, mask=mask, n_threads=n_threads)
        assert grad.tobytes() == grad_one.tobytes()


def test_bit_identical_for_every_simd_path(simd_levels):
    logits, labels, mask = _big_batch()
    logits64 = logits[:2, :10, :700].astype(np.float64)
    results = {}
    for level in simd_levels:
        _pairwise.set_simd_level(level)
        results[level] = (
            full(logits, labels, mask=mask), full(logits64, labels[:2, :10] % 700),
            sequence_logps_grad(logits, labels, 0.5, mask=mask),
            sequence_logps_grad(logits64, labels[:2, :10] % 700, 1.0, temperature=0.9))
    first = results[simd_levels[0]]
    for level in simd_levels[1:]:
        for a, b in zip(results[level][:2], first[:2]):
            assert_same_result(a, b)
        for a, b in zip(results[level][2:], first[2:]):
            assert a.tobytes() == b.tobytes(), level


@given(
    b=st.integers(1, 3), t=st.integers(1, 6), v=st.integers(1, 40),
    dtype=st.sampled_from([np.float32, np.float64]), scale=st.sampled_from([0.1, 3.0, 300.0]),
    average=st.booleans(), temperature=st.sampled_from([0.5, 1.0, 2.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_matches_reference(b, t, v, dtype, scale, average, temperature, seed):
    rng = np.random.default_rng(seed)
    logits, labels, mask = make_batch(rng, b=b, t=t, v=v, dtype=dtype, scale=scale)
    result = full(logits, labels, mask=mask, average=average, temperature=temperature)
    ref = reference(logits, labels, mask=mask, average=average, temperature=temperature,
                    grad_logps=1.0)
    assert_matches(result, ref, rtol=1e-11, atol=1e-11 * scale, dtype=dtype)
    grad = sequence_logps_grad(logits, labels, 1.0, mask=mask, average=average,
                               temperature=temperature)
    np.testing.assert_allclose(grad, ref["grad"], atol=1e-6 if dtype == np.float32 else 1e-14)
