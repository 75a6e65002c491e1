"""sequence_logps's memory layouts: strided inputs read in place with the same bits, a strided
vocabulary axis copied, inputs never written (read-only ones work), (N, V) logits as one
sequence, and empty batches.

Checked against the plain float64 reference of tests/reference_logps.py.
"""

from __future__ import annotations

import numpy as np
from reference_logps import assert_matches, assert_same_result, full, make_batch, reference

from dpo_fast import sequence_logps_grad

# ------------------------------------------------------------------ layouts


def test_strided_inputs_are_read_in_place_and_give_the_same_bits():
    rng = np.random.default_rng(10)
    base = rng.standard_normal((4, 9, 33)).astype(np.float32)
    labels = rng.integers(0, 33, (4, 9))
    views = {
        "shifted": (base[:, :-1], labels[:, 1:]),
        "every other sequence": (base[::2], labels[::2]),
        "reversed": (base[::-1, ::-1], labels[::-1, ::-1]),
        "fortran labels": (base, np.asfortranarray(labels)),
    }
    for name, (logits, lab) in views.items():
        expected = full(np.ascontiguousarray(logits), np.ascontiguousarray(lab))
        assert_same_result(full(logits, lab), expected)
        assert_matches(full(logits, lab), reference(logits, lab), dtype=np.float32)
        grad = sequence_logps_grad(logits, lab, 1.0)
        assert grad.flags.c_contiguous and grad.shape == logits.shape, name
        np.testing.assert_array_equal(
            grad, sequence_logps_grad(np.ascontiguousarray(logits), lab, 1.0))


def test_strided_vocabulary_axis_is_copied():
    rng = np.random.default_rng(11)
    logits = np.asfortranarray(rng.standard_normal((3, 5, 16)))
    wide = rng.standard_normal((3, 5, 32))[..., ::2]
    labels = rng.integers(0, 16, (3, 5))
    for x in (logits, wide, np.swapaxes(rng.standard_normal((3, 16, 5)), 1, 2)):
        assert_same_result(full(x, labels), full(np.ascontiguousarray(x), labels))


def test_inputs_are_not_written_and_read_only_inputs_work():
    rng = np.random.default_rng(12)
    logits, labels, mask = make_batch(rng)
    copies = [a.copy() for a in (logits, labels, mask)]
    for a in (logits, labels, mask):
        a.flags.writeable = False
    full(logits, labels, mask=mask)
    sequence_logps_grad(logits, labels, 1.0, mask=mask)
    for a, c in zip((logits, labels, mask), copies):
        np.testing.assert_array_equal(a, c)


def test_two_dimensional_logits_are_one_sequence():
    rng = np.random.default_rng(13)
    logits = rng.standard_normal((10, 7))
    labels = rng.integers(0, 7, 10)
    labels[3] = -100
    result = full(logits, labels)
    assert result.logps.shape == result.counts.shape == ()
    assert result.token_logps.shape == (10,)
    assert result.counts == 9
    assert_matches(result, reference(logits, labels))
    batched = full(logits[None], labels[None])
    assert result.logps == batched.logps[0]
    grad = sequence_logps_grad(logits, labels, 2.0)
    np.testing.assert_allclose(grad, reference(logits, labels, grad_logps=2.0)["grad"],
                               atol=1e-15)


def test_empty_batches():
    for shape in [(0, 5, 3), (2, 0, 3), (0, 3)]:
        logits = np.zeros(shape)
        labels = np.zeros(shape[:-1], dtype=np.int64)
        result = full(logits, labels)
        assert result.logps.shape == shape[:-2]
        assert (result.logps == 0).all() and (result.counts == 0).all()
        assert result.token_accuracy == 0.0
        assert sequence_logps_grad(logits, labels, 1.0).shape == shape
