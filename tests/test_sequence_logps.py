"""sequence_logps / sequence_logps_grad against a plain float64 NumPy reference.

The reference below is written the textbook way (log_softmax of the whole array, then a
gather), in float64, independently of dpo_fast. Also checked: masks and ignore_index (and that
skipped positions are never read), temperature, all-masked rows, large float32 logits, strided
inputs, (N, V) logits, empty batches, gradients (analytic and finite differences),
bit-identical results for every thread count and SIMD path, validation messages, and that GCC
vectorises the row loops in every clone.
"""

from __future__ import annotations

import doctest
import importlib.util
import math
import pathlib
import platform
import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest
from helpers import CSRC, setup_constant
from hypothesis import given
from hypothesis import strategies as st

import dpo_fast
from dpo_fast import logps as logps_module
from dpo_fast import sequence_logps, sequence_logps_grad
from dpo_fast._kernels import _logps, _pairwise

# ------------------------------------------------------------------ float64 reference


def reference(logits, labels, *, ignore_index=-100, mask=None, average=False, temperature=1.0,
              grad_logps=None, grad_token_logps=None):
    """Everything sequence_logps returns (and the gradient), computed the textbook way."""
    x = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if x.ndim == 2:
        out = reference(x[None], labels[None], ignore_index=ignore_index,
                        mask=None if mask is None else np.asarray(mask)[None], average=average,
                        temperature=temperature, grad_logps=grad_logps,
                        grad_token_logps=(None if grad_token_logps is None
                                          else np.asarray(grad_token_logps)[None]))
        return {k: (v[0] if isinstance(v, np.ndarray) and v.ndim else v) for k, v in out.items()}
    z = x / temperature
    top = z.max(axis=-1, keepdims=True)
    lse = top + np.log(np.exp(z - top).sum(axis=-1, keepdims=True))
    log_softmax = z - lse
    counted = labels != ignore_index
    if mask is not None:
        counted &= np.asarray(mask) != 0
    safe = np.where(counted, labels, 0)
    token = np.take_along_axis(log_softmax, safe[..., None], axis=-1)[..., 0]
    token = np.where(counted, token, 0.0)
    counts = counted.sum(axis=-1)
    sums = token.sum(axis=-1)
    if average:
        sums = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    probs = np.exp(log_softmax)
    entropy = np.where(counted, -(probs * log_softmax).sum(axis=-1), 0.0)
    hits = (np.argmax(x, axis=-1) == labels) & counted
    n = counted.sum()
    # WPO (TRL's use_weighting): logsumexp(2 * log_softmax) per position, the adjusted token
    # log-probs averaged over counted positions (a count of 0 taken as 1), exponentiated.
    top2 = (2 * log_softmax).max(axis=-1, keepdims=True)
    log_sum_p2 = (top2 + np.log(np.exp(2 * log_softmax - top2).sum(axis=-1, keepdims=True)))
    adjusted = np.where(counted, token - log_sum_p2[..., 0], 0.0).sum(axis=-1)
    logit_sums = np.where(counted[..., None], x, 0.0).sum(axis=(-1, -2))
    result = {
        "logps": sums, "counts": counts, "token_logps": token, "entropy": entropy,
        "logsumexp": np.where(counted, lse[..., 0], 0.0),
        "token_accuracy": hits.sum() / n if n else 0.0,
        "mean_entropy": entropy[counted].mean() if n else 0.0,
        "wpo_weights": np.exp(adjusted / np.maximum(counts, 1)),
        "logit_sums": logit_sums,
        "mean_logit": x[counted].mean() if n else 0.0,
    }
    if grad_logps is not None:
        weight = np.broadcast_to(np.asarray(grad_logps, np.float64), sums.shape)[..., None]
        weight = np.broadcast_to(weight, labels.shape)
        if average:
            weight = weight / np.maximum(counts, 1)[..., None]
        if grad_token_logps is not None:
            weight = weight + np.broadcast_to(grad_token_logps, labels.shape)
        onehot = np.zeros_like(z)
        np.put_along_axis(onehot, safe[..., None], 1.0, axis=-1)
        result["grad"] = np.where(counted[..., None],
                                  weight[..., None] * (onehot - probs) / temperature, 0.0)
    return result


def make_batch(rng, b=3, t=7, v=11, dtype=np.float64, scale=3.0, p_masked=0.3,
               ignore_index=-100):
    logits = (rng.standard_normal((b, t, v)) * scale).astype(dtype)
    labels = rng.integers(0, v, size=(b, t))
    mask = rng.random((b, t)) >= p_masked
    labels[rng.random((b, t)) < 0.15] = ignore_index
    return logits, labels, mask


# float32 logits: the row loops use a float exp at temperature 1 (dpo_logps_expf, 1.05 float
# ulps) and a shorter double one otherwise (2.2e-10 relative; csrc/logps_math.h); the
# documented contract is 1e-6 absolute on token log-probs, what they reach is ~4e-8 per token
# (entropies alike). float64 logits keep the full-precision exp.
FLOAT32_TOL = 1e-7


def assert_matches(result, ref, rtol=1e-12, atol=1e-12, dtype=np.float64):
    if dtype == np.float32:
        rtol, atol = max(rtol, FLOAT32_TOL), max(atol, FLOAT32_TOL)
    np.testing.assert_allclose(result.logps, ref["logps"], rtol=rtol, atol=atol)
    np.testing.assert_array_equal(result.counts, ref["counts"])
    np.testing.assert_allclose(result.logsumexp, ref["logsumexp"], rtol=rtol, atol=atol)
    assert result.token_accuracy == pytest.approx(ref["token_accuracy"], abs=1e-15)
    if result.token_logps is not None:
        np.testing.assert_allclose(result.token_logps, ref["token_logps"], rtol=rtol, atol=atol)
    if result.entropy is not None:
        np.testing.assert_allclose(result.entropy, ref["entropy"], rtol=rtol, atol=atol)
        assert result.mean_entropy == pytest.approx(ref["mean_entropy"], rel=rtol, abs=atol)
    if result.wpo_weights is not None:
        np.testing.assert_allclose(result.wpo_weights, ref["wpo_weights"], rtol=rtol, atol=0)
    if result.logit_sums is not None:
        scale = np.abs(ref["logit_sums"]).max(initial=1.0)
        np.testing.assert_allclose(result.logit_sums, ref["logit_sums"], rtol=rtol,
                                   atol=atol * scale)
        assert result.mean_logit == pytest.approx(ref["mean_logit"], rel=rtol,
                                                  abs=atol * scale)


def full(logits, labels, **kwargs):
    return sequence_logps(logits, labels, return_token_logps=True, return_entropy=True,
                          return_wpo_weights=True, return_logit_sums=True, **kwargs)


def assert_same_result(a, b):
    """Two SequenceLogpsResults are equal bit for bit."""
    for name in ("logps", "counts", "logsumexp", "token_logps", "entropy", "wpo_weights",
                 "logit_sums"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape, name
            assert x.tobytes() == y.tobytes(), name
    assert a.token_accuracy == b.token_accuracy
    assert a.mean_entropy == b.mean_entropy
    assert a.mean_logit == b.mean_logit


# ------------------------------------------------------------------ values


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("v", [1, 5, 8, 11, 513, 1031])
def test_matches_reference(dtype, v):
    rng = np.random.default_rng(v)
    logits, labels, mask = make_batch(rng, v=v, dtype=dtype)
    result = full(logits, labels, mask=mask)
    assert result.logps.dtype == np.float64 and result.logps.shape == (3,)
    assert result.counts.dtype == np.int64
    assert result.token_logps.shape == result.entropy.shape == result.logsumexp.shape == (3, 7)
    # float32 logits are exact in float64, so the float64 reference on the same values
    # is the right yardstick for both dtypes.
    assert_matches(result, reference(logits, labels, mask=mask), dtype=dtype)


def test_defaults_leave_optional_outputs_out():
    rng = np.random.default_rng(1)
    logits, labels, _ = make_batch(rng)
    result = sequence_logps(logits, labels)
    assert result.token_logps is None and result.entropy is None and result.mean_entropy is None
    assert_matches(result, reference(logits, labels))
    assert isinstance(result, dpo_fast.SequenceLogpsResult)


def test_wpo_weights_and_logit_sums_only_when_asked():
    rng = np.random.default_rng(3)
    logits, labels, _ = make_batch(rng)
    plain = sequence_logps(logits, labels)
    assert plain.wpo_weights is None and plain.logit_sums is None and plain.mean_logit is None
    for flags in ({"return_wpo_weights": True}, {"return_logit_sums": True}):
        one = sequence_logps(logits, labels, **flags)
        # Asking for an extra changes nothing else, bit for bit.
        assert one.logps.tobytes() == plain.logps.tobytes()
        assert one.logsumexp.tobytes() == plain.logsumexp.tobytes()
        assert (one.wpo_weights is None) != (one.logit_sums is None)
        assert_matches(one, reference(logits, labels))
    both = full(logits, labels)
    entropy_only = sequence_logps(logits, labels, return_entropy=True)
    assert both.entropy.tobytes() == entropy_only.entropy.tobytes()


def test_wpo_weights_as_trl_combines_them():
    """TRL 1.16 (DPOTrainer, use_weighting): per pair
    clamp(exp(mean_c(logp - logsumexp(2 logp)) + mean_r(...)), max=1), written here on the
    whole log_softmax in float64 the way TRL writes it in torch."""
    rng = np.random.default_rng(4)
    n = 3
    logits, labels, mask = make_batch(rng, b=2 * n, t=9, v=40, scale=2.0)
    out = sequence_logps(logits, labels, mask=mask, return_wpo_weights=True)
    z = logits - logits.max(axis=-1, keepdims=True)
    log_softmax = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    counted = (labels != -100) & mask
    token = np.take_along_axis(log_softmax, np.where(counted, labels, 0)[..., None], -1)[..., 0]
    two = 2 * log_softmax
    top = two.max(axis=-1)
    adjustment = top + np.log(np.exp(two - top[..., None]).sum(axis=-1))
    per_sequence = ((token - adjustment) * counted).sum(-1) / np.maximum(counted.sum(-1), 1)
    trl = np.minimum(np.exp(per_sequence[:n] + per_sequence[n:]), 1.0)
    ours = np.minimum(out.wpo_weights[:n] * out.wpo_weights[n:], 1.0)
    np.testing.assert_allclose(ours, trl, rtol=1e-13)
    assert (ours <= 1.0).all() and (ours > 0.0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wpo_weights_at_extremes(dtype):
    """A peaked row (sum p^2 -> 1), a flat row (sum p^2 = 1/V), huge logits and a tiny
    temperature: finite, positive, and as the float64 reference."""
    v = 300
    big = 1e30 if dtype == np.float32 else 1e300
    logits = np.zeros((4, 2, v), dtype=dtype)
    logits[0, :, 7] = 200.0                       # one token takes all the mass
    logits[2] = np.linspace(-big, big, v, dtype=dtype)
    logits[3] = np.linspace(-1, 1, v, dtype=dtype)
    labels = np.array([[7, 7], [0, 299], [299, 0], [5, -100]])
    for temperature in (1.0, 1e-3):
        if temperature != 1.0:
            logits[2] = np.linspace(-1e30, 1e30, v).astype(dtype)
        out = full(logits, labels, temperature=temperature)
        ref = reference(logits, labels, temperature=temperature)
        assert np.isfinite(out.wpo_weights).all() and (out.wpo_weights >= 0).all()
        assert np.isfinite(out.logit_sums).all() and math.isfinite(out.mean_logit)
        tol = FLOAT32_TOL if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(out.wpo_weights, ref["wpo_weights"], rtol=tol)
        # A sum of terms of both signs: its error bound is relative to the sum of |x|.
        magnitude = np.abs(logits.astype(np.float64)).sum(axis=(-1, -2))
        assert (np.abs(out.logit_sums - ref["logit_sums"]) <= 1e-13 * magnitude).all()
    # peaked: p_label ~ 1 and sum p^2 ~ 1, so the weight is ~1; flat: log(1/V) - log(1/V) = 0
    assert out.wpo_weights[1] == pytest.approx(1.0, abs=1e-14)


def test_logit_sums_overflowing_double_is_an_error_not_nan():
    """Only float64 logits near the largest double can overflow a sum of logits; the WPO
    weights of the same rows stay finite."""
    big = np.finfo(np.float64).max / 4
    logits = np.full((1, 2, 16), big)
    labels = np.array([[1, 2]])
    with pytest.raises(ValueError, match=r"return_logit_sums: the sum of logits\[0, 0, :\]"):
        sequence_logps(logits, labels, return_logit_sums=True)
    weights = sequence_logps(logits, labels, return_wpo_weights=True).wpo_weights
    assert weights[0] == pytest.approx(1.0)  # flat rows: p = sum p^2 = 1/16


def test_wpo_weight_of_a_sequence_without_counted_positions_is_one():
    rng = np.random.default_rng(5)
    logits, labels, mask = make_batch(rng, b=3)
    mask[1] = False
    out = full(logits, labels, mask=mask)
    assert out.wpo_weights[1] == 1.0 and out.logit_sums[1] == 0.0
    nothing = full(logits, np.full_like(labels, -100))
    assert (nothing.wpo_weights == 1.0).all() and nothing.mean_logit == 0.0


def test_rejects_bad_extra_flags():
    rng = np.random.default_rng(6)
    logits, labels, _ = make_batch(rng)
    for name in ("return_wpo_weights", "return_logit_sums"):
        with pytest.raises(TypeError, match=name):
            sequence_logps(logits, labels, **{name: 1})


def test_average_and_sequences_without_tokens():
    rng = np.random.default_rng(2)
    logits, labels, mask = make_batch(rng, b=4)
    mask[1] = False                         # a sequence with nothing counted
    labels[2] = -100                        # and one with everything ignored
    result = full(logits, labels, mask=mask, average=True)
    ref = reference(logits, labels, mask=mask, average=True)
    assert_matches(result, ref)
    assert result.counts[1] == result.counts[2] == 0
    assert result.logps[1] == 0.0 and result.logps[2] == 0.0
    assert np.isfinite(result.logps).all()
    plain = sequence_logps(logits, labels, mask=mask)
    assert plain.logps[1] == 0.0
    counts = result.counts[[0, 3]]
    np.testing.assert_allclose(result.logps[[0, 3]], plain.logps[[0, 3]] / counts, rtol=1e-15)


@pytest.mark.parametrize("temperature", [0.25, 0.7, 1.0, 3.0, 1e3])
def test_temperature(temperature):
    rng = np.random.default_rng(3)
    logits, labels, mask = make_batch(rng, v=37)
    result = full(logits, labels, mask=mask, temperature=temperature)
    assert_matches(result, reference(logits, labels, mask=mask, temperature=temperature))
    # The arg-max does not depend on the temperature.
    assert result.token_accuracy == sequence_logps(logits, labels, mask=mask).token_accuracy


@pytest.mark.parametrize("mask_dtype", [bool, np.int64, np.int32, np.uint8])
def test_mask_dtypes(mask_dtype):
    rng = np.random.default_rng(4)
    logits, labels, mask = make_batch(rng)
    int_mask = mask.astype(mask_dtype) * (2 if mask_dtype is not bool else 1)
    assert_same_result(full(logits, labels, mask=int_mask), full(logits, labels, mask=mask))
    assert_matches(full(logits, labels, mask=int_mask), reference(logits, labels, mask=mask))


@pytest.mark.parametrize("ignore_index", [-100, -1, 0, 3])
def test_ignore_index(ignore_index):
    rng = np.random.default_rng(5)
    logits, labels, mask = make_batch(rng, ignore_index=ignore_index)
    result = full(logits, labels, mask=mask, ignore_index=ignore_index)
    assert_matches(result, reference(logits, labels, mask=mask, ignore_index=ignore_index))


def test_skipped_positions_are_not_read():
    """NaN logits and any label at masked / ignored positions change nothing."""
    rng = np.random.default_rng(6)
    logits, labels, mask = make_batch(rng)
    clean = full(logits, labels, mask=mask)
    dirty_logits, dirty_labels = logits.copy(), labels.copy()
    skipped = ~mask | (labels == -100)
    dirty_logits[skipped] = np.nan
    dirty_labels[~mask] = 10**9             # out of range, but masked: not checked
    dirty = full(dirty_logits, dirty_labels, mask=mask)
    assert_same_result(dirty, clean)
    grad = sequence_logps_grad(dirty_logits, dirty_labels, 1.0, mask=mask)
    assert np.isfinite(grad).all()
    assert (grad[skipped] == 0).all()


def test_all_positions_masked():
    rng = np.random.default_rng(7)
    logits, labels, _ = make_batch(rng)
    mask = np.zeros(labels.shape, dtype=bool)
    for average in (False, True):
        result = full(logits, labels, mask=mask, average=average)
        assert (result.logps == 0).all() and (result.counts == 0).all()
        assert result.token_accuracy == 0.0 and result.mean_entropy == 0.0
        assert (result.token_logps == 0).all() and (result.entropy == 0).all()
    assert (sequence_logps_grad(logits, labels, 1.0, mask=mask) == 0).all()


@pytest.mark.parametrize("magnitude", [1e4, -1e4])
def test_large_float32_logits(magnitude):
    """|logits| ~ 1e4 in float32: no overflow, exact against float64 (exp(1e4) would
    overflow; the log-sum-exp subtracts the max first)."""
    rng = np.random.default_rng(8)
    logits, labels, mask = make_batch(rng, v=300, dtype=np.float32, scale=1.0)
    logits = (logits * 50 + magnitude).astype(np.float32)
    logits[0, 0, :] = magnitude            # a row of equal logits: log(1/V) each
    labels[0, 0] = 17
    mask[0, 0] = True
    result = full(logits, labels, mask=mask)
    assert np.isfinite(result.logps).all() and np.isfinite(result.entropy).all()
    assert_matches(result, reference(logits, labels, mask=mask), rtol=1e-12, atol=1e-9,
                   dtype=np.float32)
    assert result.token_logps[0, 0] == pytest.approx(-np.log(300), rel=1e-15)
    assert result.entropy[0, 0] == pytest.approx(np.log(300), rel=1e-14)
    grad = sequence_logps_grad(logits, labels, 1.0, mask=mask, logsumexp=result.logsumexp)
    ref = reference(logits, labels, mask=mask, grad_logps=1.0)["grad"]
    np.testing.assert_allclose(grad, ref, atol=1e-6)


def test_extreme_spread_within_a_row():
    rng = np.random.default_rng(9)
    logits = rng.standard_normal((2, 3, 40))
    logits[0, 0, 5] = 700.0                # exp(700) alone would be finite, exp(710) not
    logits[0, 1, :] = -1e300
    logits[0, 1, 3] = 1e300
    labels = np.full((2, 3), 5)
    labels[0, 1] = 3
    result = full(logits, labels)
    assert result.token_logps[0, 0] == pytest.approx(0.0, abs=1e-250)
    assert result.token_logps[0, 1] == 0.0 and result.entropy[0, 1] == 0.0
    assert_matches(result, reference(logits, labels))


def test_token_accuracy_uses_the_first_argmax():
    logits = np.zeros((1, 4, 5))
    logits[0, 0] = [0, 3, 1, 3, 2]          # tie: argmax is 1
    logits[0, 1] = [0, 3, 1, 3, 2]
    logits[0, 2] = [0, 1, 4, 3, 2]
    logits[0, 3] = [-0.0, 0.0, -1, -2, -3]  # -0.0 == 0.0: argmax is 0
    labels = np.array([[1, 3, 0, 0]])
    result = sequence_logps(logits, labels)
    assert result.token_accuracy == 0.5     # rows 0 and 3
    assert result.token_accuracy == np.mean(np.argmax(logits, -1) == labels)
    assert sequence_logps(logits.astype(np.float32), labels).token_accuracy == 0.5


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


# ------------------------------------------------------------------ gradients


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("average", [False, True])
def test_gradient_matches_reference(dtype, average):
    rng = np.random.default_rng(14)
    logits, labels, mask = make_batch(rng, v=21, dtype=dtype)
    upstream = rng.standard_normal(3)
    token_upstream = rng.standard_normal((3, 7))
    for temperature in (1.0, 0.6):
        forward = sequence_logps(logits, labels, mask=mask, average=average,
                                 temperature=temperature)
        ref = reference(logits, labels, mask=mask, average=average, temperature=temperature,
                        grad_logps=upstream, grad_token_logps=token_upstream)["grad"]
        kwargs = dict(mask=mask, average=average, temperature=temperature,
                      grad_token_logps=token_upstream)
        with_lse = sequence_logps_grad(logits, labels, upstream, logsumexp=forward.logsumexp,
                                       **kwargs)
        recomputed = sequence_logps_grad(logits, labels, upstream, **kwargs)
        assert with_lse.dtype == dtype and with_lse.shape == logits.shape
        # The normaliser is computed by the same code either way: same bits.
        assert with_lse.tobytes() == recomputed.tobytes()
        if dtype == np.float64:
            np.testing.assert_allclose(with_lse, ref, rtol=1e-14, atol=1e-15)
        else:  # float arithmetic (see the next test)
            np.testing.assert_allclose(with_lse, ref, rtol=3e-7, atol=1e-7)


@pytest.mark.parametrize("temperature", [2.2250738585072014e-308, 1e-35, 1e35])
def test_float32_gradient_at_extreme_temperatures_is_the_double_one(temperature):
    """Where upstream / temperature leaves float's range (|c| beyond 1e30 or below 1e-30) the
    float32 gradient falls back to double arithmetic rounded once: no inf * 0 = NaN from a c
    rounded to float (regression, found by test_fuzz), no flush of a tiny c to 0."""
    rng = np.random.default_rng(22)
    logits = rng.standard_normal((1, 5, 7)).astype(np.float32) * 1e-30
    labels = rng.integers(0, 7, size=(1, 5))
    got = sequence_logps_grad(logits, labels, 1.0, temperature=temperature)
    ref = reference(logits, labels, temperature=temperature, grad_logps=[1.0])["grad"]
    with np.errstate(over="ignore"):
        assert np.array_equal(got, ref.astype(np.float32))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("scale", [0.5, 3.0, 30.0])
def test_float32_gradient_within_its_bound(temperature, scale):
    """float32 logits: the softmax terms of the gradient come from float arithmetic
    (csrc/logps_math.h dpo_logps_expf; z - lse in float too at temperature 1), so each is
    within 3e-7 * |c| of the float64 reference, c = upstream weight / temperature, and within
    3e-7 + 1.2e-7 * |z - lse| relative wherever it is above 1e-30 * |c| (the float rounding of
    z - lse, up to a float ulp of it, moves exp by that much; the terms where it matters are
    small: e^-20 |c| at |z - lse| = 20). The label's term stays double, rounded once."""
    rng = np.random.default_rng(21)
    logits = (rng.standard_normal((2, 16, 5000)) * scale).astype(np.float32)
    labels = rng.integers(0, 5000, size=(2, 16))
    upstream = np.array([1.7, -0.3])
    got = sequence_logps_grad(logits, labels, upstream, temperature=temperature)
    ref = reference(logits, labels, temperature=temperature, grad_logps=upstream)["grad"]
    c = (np.abs(upstream) / temperature)[:, None, None]
    err = np.abs(got.astype(np.float64) - ref)
    assert (err <= 3e-7 * c).all(), (err / c).max()
    z = logits.astype(np.float64) / temperature
    lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        + z.max(-1, keepdims=True)
    bound = (3e-7 + 1.2e-7 * np.abs(z - lse)) * np.abs(ref)
    normal = np.abs(ref) > 1e-30 * c
    assert (err[normal] <= bound[normal]).all(), (err / bound)[normal].max()
    onehot = np.zeros(logits.shape, bool)
    np.put_along_axis(onehot, labels[..., None], True, axis=-1)
    assert (got[onehot] == ref[onehot].astype(np.float32)).all()


def test_gradient_by_finite_differences():
    """Central differences of sum(w * logps) + sum(u * token_logps) in float64."""
    rng = np.random.default_rng(15)
    logits, labels, mask = make_batch(rng, b=2, t=3, v=5)
    w = rng.standard_normal(2)
    u = rng.standard_normal((2, 3))
    for average, temperature in [(False, 1.0), (True, 0.7)]:
        kwargs = dict(mask=mask, average=average, temperature=temperature)

        def value(x, kwargs=kwargs):
            r = sequence_logps(x, labels, return_token_logps=True, **kwargs)
            return float(w @ r.logps + (u * r.token_logps).sum())

        grad = sequence_logps_grad(logits, labels, w, grad_token_logps=u, **kwargs)
        h = 1e-6
        numeric = np.zeros_like(logits)
        for index in np.ndindex(logits.shape):
            plus, minus = logits.copy(), logits.copy()
            plus[index] += h
            minus[index] -= h
            numeric[index] = (value(plus) - value(minus)) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_gradient_out_and_zero_upstream():
    rng = np.random.default_rng(16)
    logits, labels, mask = make_batch(rng, dtype=np.float32)
    out = np.full(logits.shape, np.nan, dtype=np.float32)
    returned = sequence_logps_grad(logits, labels, [1.0, 0.0, 2.0], mask=mask, out=out)
    assert returned is out
    assert (out[1] == 0).all()                           # zero upstream: exact zeros
    counted = mask & (labels != -100)
    assert (out[~counted] == 0).all()
    np.testing.assert_allclose(out.sum(axis=-1), 0.0, atol=1e-6)   # softmax sums to one
    expected = reference(logits, labels, mask=mask, grad_logps=[1.0, 0.0, 2.0])["grad"]
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradient_allocated_zeroed_leaves_zero_rows_unwritten(monkeypatch, dtype):
    """A large gradient is allocated by np.zeros and the kernel skips the rows that do not
    count (grad_zeroed): the same bits as writing their zeros, for every thread count."""
    rng = np.random.default_rng(18)
    logits, labels, mask = make_batch(rng, b=3, t=40, v=1500, dtype=dtype)
    upstream = [1.0, 0.0, 2.0]
    lse = sequence_logps(logits, labels, mask=mask).logsumexp
    written = sequence_logps_grad(logits, labels, upstream, mask=mask, logsumexp=lse,
                                  out=np.full(logits.shape, np.nan, dtype=dtype))
    monkeypatch.setattr(logps_module, "ZEROED_GRAD_MIN_BYTES", 0)
    calls = []
    backward = _logps.backward
    monkeypatch.setattr(_logps, "backward",
                        lambda *a, **k: calls.append(k["grad_zeroed"]) or backward(*a, **k))
    for threads in (1, 2):
        for logsumexp in (lse, None):
            zeroed = sequence_logps_grad(logits, labels, upstream, mask=mask,
                                         logsumexp=logsumexp, n_threads=threads)
            assert zeroed.tobytes() == written.tobytes()
    assert calls == [True] * 4
    assert (written[1] == 0).all() and (written[~(mask & (labels != -100))] == 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streamed_gradient_has_the_cached_stores_bits(simd_levels, dtype):
    """A gradient of STREAM_GRAD_MIN_BYTES or more is written with streaming stores (aligned
    runs of the widest store, plain copies for the head and tail of each block): the same bits
    as the same rows written through the cache by smaller calls, on every SIMD path, into
    fresh zeros, into out= (zero rows written too) and at an odd vocabulary size (rows start
    misaligned)."""
    rng = np.random.default_rng(19)
    itemsize = np.dtype(dtype).itemsize
    vocab = 4099
    t = -(-_logps.STREAM_GRAD_MIN_BYTES // (2 * vocab * itemsize))
    logits, labels, mask = make_batch(rng, b=2, t=t, v=vocab, dtype=dtype)
    upstream = [1.5, 0.0]
    for level in simd_levels:
        _pairwise.set_simd_level(level)
        cached = np.concatenate([
            sequence_logps_grad(logits[b:b + 1], labels[b:b + 1], upstream[b],
                                mask=mask[b:b + 1]) for b in range(2)])
        assert cached.nbytes >= _logps.STREAM_GRAD_MIN_BYTES > cached[:1].nbytes
        streamed = sequence_logps_grad(logits, labels, upstream, mask=mask, n_threads=2)
        assert streamed.tobytes() == cached.tobytes(), level
        out = np.full(logits.shape, np.nan, dtype=dtype)
        sequence_logps_grad(logits, labels, upstream, mask=mask, out=out)
        assert out.tobytes() == cached.tobytes(), level


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


# ------------------------------------------------------------------ validation


def _setup():
    rng = np.random.default_rng(18)
    return make_batch(rng, b=2, t=4, v=6, p_masked=0.0)


def test_rejects_bad_logits():
    _, labels, _ = _setup()
    with pytest.raises(TypeError, match="logits must be float32 or float64, got dtype int64"):
        sequence_logps(np.zeros((2, 4, 6), dtype=np.int64), labels)
    with pytest.raises(TypeError, match="float16.*astype"):
        sequence_logps(np.zeros((2, 4, 6), dtype=np.float16), labels)
    with pytest.raises(ValueError, match=r"shape \(B, T, V\) or \(N, V\)"):
        sequence_logps(np.zeros(6), labels)
    with pytest.raises(ValueError, match=r"shape \(B, T, V\) or \(N, V\)"):
        sequence_logps(np.zeros((1, 2, 4, 6)), labels)
    with pytest.raises(ValueError, match="empty vocabulary"):
        sequence_logps(np.zeros((2, 4, 0)), labels)


def test_rejects_bad_labels():
    logits, labels, _ = _setup()
    with pytest.raises(TypeError, match="labels must be integers, got dtype float64"):
        sequence_logps(logits, labels.astype(float))
    with pytest.raises(TypeError, match="labels must be integers, got dtype bool"):
        sequence_logps(logits, labels > 2)
    with pytest.raises(ValueError, match=r"labels has shape \(2, 3\).*must have shape \(2, 4\)"):
        sequence_logps(logits, labels[:, :3])
    bad = labels.copy()
    bad[1, 2] = 6
    with pytest.raises(ValueError, match=r"labels\[1, 2\] = 6 is out of range for a "
                                         r"vocabulary of 6"):
        sequence_logps(logits, bad)
    bad[0, 3] = -5
    with pytest.raises(ValueError, match=r"labels\[0, 3\] = -5 is out of range"):
        sequence_logps(logits, bad)
    with pytest.raises(ValueError, match=r"labels\[0, 3\] = -5"):
        sequence_logps_grad(logits, bad, 1.0)
    with pytest.raises(ValueError, match=r"labels\[1\] = 18446744073709551615"):
        sequence_logps(logits[0], np.array([1, 2**64 - 1, 0, 0], dtype=np.uint64))
    with pytest.raises(ValueError, match=r"labels\[2\] = 9"):
        sequence_logps(logits[0], np.array([1, 2, 9, 0]))


def test_rejects_non_finite_logits_at_counted_positions():
    logits, labels, mask = _setup()
    for value, text in [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")]:
        bad = logits.copy()
        bad[1, 2, 4] = value
        bad[1, 3, 0] = value
        with pytest.raises(ValueError, match=rf"logits\[1, 2, 4\] is {text}: logits must be "
                                             "finite"):
            sequence_logps(bad, labels)
        with pytest.raises(ValueError, match=rf"logits\[1, 2, 4\] is {text}"):
            sequence_logps(bad.astype(np.float32), labels)
        with pytest.raises(ValueError, match=rf"logits\[1, 2, 4\] is {text}"):
            sequence_logps_grad(bad, labels, 1.0)
        masked = mask.copy()
        masked[1, 2:] = False
        sequence_logps(bad, labels, mask=masked)        # not read: fine
    with pytest.raises(ValueError, match=r"logits\[3, 1\] is nan"):
        x = logits[0].copy()
        x[3, 1] = np.nan
        sequence_logps(x, labels[0])
    with pytest.raises(ValueError, match="overflows double precision"):
        sequence_logps(logits * 1e300, labels, temperature=1e-300)


def test_rejects_bad_mask():
    logits, labels, mask = _setup()
    with pytest.raises(TypeError, match="mask must be boolean or integer.*float64"):
        sequence_logps(logits, labels, mask=mask.astype(float))
    with pytest.raises(ValueError, match=r"mask has shape \(2, 3\) but labels have shape"):
        sequence_logps(logits, labels, mask=mask[:, :3])


@pytest.mark.parametrize("temperature, error", [
    (0.0, ValueError), (-1.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
    (1e-320, ValueError), (10**400, ValueError), ("1", TypeError), (True, TypeError),
    (None, TypeError),
])
def test_rejects_bad_temperature(temperature, error):
    logits, labels, _ = _setup()
    with pytest.raises(error, match="temperature"):
        sequence_logps(logits, labels, temperature=temperature)


def test_rejects_bad_scalars():
    logits, labels, _ = _setup()
    for n_threads in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="n_threads"):
            sequence_logps(logits, labels, n_threads=n_threads)
    for name in ("average", "return_token_logps", "return_entropy"):
        with pytest.raises(TypeError, match=name):
            sequence_logps(logits, labels, **{name: 1})
    for ignore_index in (1.5, True, None):
        with pytest.raises(TypeError, match="ignore_index must be an integer"):
            sequence_logps(logits, labels, ignore_index=ignore_index)
    with pytest.raises(ValueError, match="ignore_index"):
        sequence_logps(logits, labels, ignore_index=2**70)
    assert sequence_logps(logits, labels, ignore_index=np.int16(-100), n_threads=np.int64(2))


def test_gradient_rejects_bad_arguments():
    logits, labels, _ = _setup()
    with pytest.raises(ValueError, match=r"grad_logps has shape \(3,\).*broadcast to \(2,\)"):
        sequence_logps_grad(logits, labels, np.ones(3))
    with pytest.raises(TypeError, match="grad_logps must hold real numbers"):
        sequence_logps_grad(logits, labels, "x")
    with pytest.raises(ValueError, match="grad_token_logps"):
        sequence_logps_grad(logits, labels, 1.0, grad_token_logps=np.ones((2, 5)))
    with pytest.raises(ValueError, match="logsumexp has shape"):
        sequence_logps_grad(logits, labels, 1.0, logsumexp=np.zeros(2))
    with pytest.raises(TypeError, match="out has dtype float32"):
        sequence_logps_grad(logits, labels, 1.0, out=np.empty(logits.shape, np.float32))
    with pytest.raises(ValueError, match="out has shape"):
        sequence_logps_grad(logits, labels, 1.0, out=np.empty((2, 4, 5)))
    with pytest.raises(ValueError, match="C-contiguous"):
        sequence_logps_grad(logits, labels, 1.0, out=np.empty((2, 4, 12))[..., ::2])
    with pytest.raises(ValueError, match="overlaps logits"):
        sequence_logps_grad(logits, labels, 1.0, out=logits)
    with pytest.raises(TypeError, match="out must be a numpy.ndarray"):
        sequence_logps_grad(logits, labels, 1.0, out=[0.0])


def test_docstring_examples():
    result = doctest.testmod(logps_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_simd_level_follows_the_pairwise_kernels(simd_levels):
    """DPO_FAST_SIMD / set_simd_level switch these loops too (the level is read per call)."""
    ids = {"scalar": 0, "avx2": 2, "avx512": 3}
    for level in simd_levels:
        _pairwise.set_simd_level(level)
        assert _logps.simd_level_id() == ids.get(level, 1)


def test_compiled_module_has_a_type_stub():
    origin = pathlib.Path(importlib.util.find_spec("dpo_fast._kernels._logps").origin)
    assert origin.suffix in {".so", ".pyd"}, f"not compiled: {origin}"
    assert (origin.parent / "_logps.pyi").is_file()


# ------------------------------------------------------------------ vectoriser report


def _loop_lines():
    """Line numbers (in logps_row.h) of the loops that must be vectorised: the `for` line
    just above each marker statement."""
    lines = (CSRC / "logps_row.h").read_text().splitlines()
    markers = {
        "max and NaN check": "key_max = (key > key_max)",
        "exp map": "ebuf[i] = LOGPS_EXP((double)xb[i] * inv_t - m);",
        "exp map with the extras": "const double xd = (double)xb[i];",
        "float exp map": "ebuf[i] = (double)dpo_logps_expf((float)xb[i] - m_f);",
        "float exp map with the extras": "float d_f = (float)xb[i] - m_f;",
        "gradient": "out[i] = (LOGPS_T)(-(c * LOGPS_EXP(",
        "gradient in float": "out[i] = (LOGPS_T)(-(c_f * dpo_logps_expf((d > 0.0f)",
        "gradient in float, z - lse in double":
            "out[i] = (LOGPS_T)(-(c_f * dpo_logps_expf((float)(",
    }
    found = {}
    for name, marker in markers.items():
        index = next(i for i, line in enumerate(lines) if marker in line)
        while not lines[index].lstrip().startswith("for ("):
            index -= 1
        found[name] = index + 1
    return found


EXP_CHECK = r"""
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "logps_math.h"
/* dpo_logps_exp against dpo_exp: the same bits on [-708, 0], 0 below, NaN through. */
int main(void)
{
    long bad = 0, n = 0;
    unsigned long long state = 88172645463325252ULL;
    for (long i = 0; i <= 2000000; i++, n++) {
        double d;
        if (i % 2) {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            d = -708.0 * (double)(state >> 11) / 9007199254740992.0;
        } else {
            d = -708.0 * (double)i / 2000000.0;
        }
        if (memcmp(&(double){dpo_logps_exp(d)}, &(double){dpo_exp(d)}, 8) != 0 && bad++ < 5)
            printf("differs at %.17g: %.17g vs %.17g\n", d, dpo_logps_exp(d), dpo_exp(d));
    }
    double below[] = {-708.0000001, -745.0, -1e4, -1e300, -INFINITY};
    for (int i = 0; i < 5; i++, n++)
        if (dpo_logps_exp(below[i]) != 0.0 && bad++ < 5)
            printf("not 0 at %g\n", below[i]);
    if (!isnan(dpo_logps_exp(NAN)) || dpo_logps_exp(-0.0) != 1.0)
        bad++;
    printf("%ld of %ld differ\n", bad, n);
    return bad != 0;
}
"""


EXPF_CHECK = r"""
#include <math.h>
#include <stdio.h>
#include "logps_math.h"
/* dpo_logps_expf against exp in double: the largest error in float ulps over [-87, 0] (a grid
 * of step 2^-24 on [-1, 0], of step 3.1e-5 below), the mean relative error, 0 below -87, NaN
 * through. */
int main(void)
{
    double worst = 0.0, mean = 0.0;
    long n = 0, bad = 0;
    for (float d = -0.0f; d >= -87.0f; n++) {
        if (d > -1.0f)
            d = -(float)n * 0x1p-24f;
        double ref = exp((double)d);
        double got = (double)dpo_logps_expf(d);
        double ulp = (double)nextafterf((float)ref, INFINITY) - (double)(float)ref;
        double err = fabs(got - ref) / ulp;
        worst = err > worst ? err : worst;
        mean += (got - ref) / ref;
        d = (d > -1.0f) ? -(float)(n + 1) * 0x1p-24f : d - 3.1e-5f;
    }
    float below[] = {-87.0001f, -88.0f, -104.0f, -1e30f, -INFINITY};
    for (int i = 0; i < 5; i++)
        bad += dpo_logps_expf(below[i]) != 0.0f;
    bad += !isnan(dpo_logps_expf(NAN)) || dpo_logps_expf(-0.0f) != 1.0f;
    printf("%ld %.4f %.3g %ld\n", n, worst, mean / (double)n, bad);
    return 0;
}
"""


@pytest.mark.skipif(not (CSRC / "logps_math.h").exists(), reason="needs the source tree")
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_float_gradient_exp_is_within_its_stated_bound(tmp_path):
    """dpo_logps_expf (float32 logits' gradient): within 1.05 float ulps of exp over [-87, 0]
    with no bias (mean relative error below 1e-9), exactly 0 below and 1 at 0, on every
    level this machine runs."""
    (tmp_path / "check.c").write_text(EXPF_CHECK)
    level_flags = setup_constant("SIMD_LEVEL_FLAGS")
    x86 = platform.machine() in ("x86_64", "AMD64")
    results = set()
    for level in level_flags:
        flags = level_flags[level]["unix"]
        if not x86 and level in setup_constant("X86_LEVELS"):
            continue
        exe = tmp_path / "check"
        subprocess.run(["gcc", *setup_constant("GCC_FLAGS"), *flags, "-I", str(CSRC),
                        str(tmp_path / "check.c"), "-o", str(exe), "-lm"], check=True)
        if flags and not _cpu_runs(flags):
            continue
        out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
        count, worst, mean, bad = out.split()
        assert int(count) > 19_000_000 and float(worst) <= 1.05, out
        assert abs(float(mean)) < 1e-9 and int(bad) == 0, out
        results.add(out)
    assert len(results) == 1  # the same numbers on every level


@pytest.mark.skipif(not (CSRC / "logps_math.h").exists(), reason="needs the source tree")
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_row_exp_is_bitwise_dpo_exp(tmp_path):
    """The row loops' exp (no upper clamp, one 2^k factor) is dpo_exp wherever the result is
    a normal number, compiled with the build's flags for the baseline and every clone."""
    (tmp_path / "check.c").write_text(EXP_CHECK)
    level_flags = setup_constant("SIMD_LEVEL_FLAGS")
    x86 = platform.machine() in ("x86_64", "AMD64")
    flag_sets = [level_flags[level]["unix"] for level in level_flags
                 if x86 or level not in setup_constant("X86_LEVELS")]
    for flags in flag_sets:
        exe = tmp_path / "check"
        subprocess.run(["gcc", *setup_constant("GCC_FLAGS"), *flags, "-I", str(CSRC),
                        str(tmp_path / "check.c"), "-o", str(exe), "-lm"], check=True)
        if flags and not _cpu_runs(flags):
            continue
        out = subprocess.run([str(exe)], capture_output=True, text=True)
        assert out.returncode == 0, f"{flags}: {out.stdout}"


def _cpu_runs(flags):
    """Whether this CPU can run code compiled with the clone flags (-mavx2, -mavx512...)."""
    try:
        cpu_flags = next(line for line in open("/proc/cpuinfo")
                         if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return all(flag[2:] in cpu_flags for flag in flags if flag.startswith("-m"))


@pytest.mark.skipif(not (CSRC / "logps_row.h").exists(), reason="needs the source tree")
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 clones only")
def test_row_loops_vectorised_in_every_clone(tmp_path):
    level_flags = setup_constant("SIMD_LEVEL_FLAGS")
    cases = [("logps_simd.c", [f"-DDPO_ISA={level}", *level_flags[level]["unix"]], width)
             for level, width in (("baseline", "16"), ("avx2", "32"), ("avx512", "64"))]
    loops = _loop_lines()
    for source, flags, width in cases:
        report = subprocess.run(
            ["gcc", *setup_constant("GCC_FLAGS"), *flags, "-fopt-info-vec-optimized", "-I",
             str(CSRC), "-c", str(CSRC / source), "-o", str(tmp_path / "out.o")],
            capture_output=True, text=True, check=True,
        ).stderr
        for name, line in loops.items():
            widths = re.findall(
                rf"logps_row\.h:{line}:\d+: optimized: loop vectorized using (\d+) byte", report)
            # float32 and float64 each, except the baseline max over float64 (SSE2 has no
            # 64-bit integer compare) and the float exp's loops (float32 only); the scalar
            # path must stay scalar.
            expected = 1 if ((name == "max and NaN check" and width == "16")
                             or name.startswith(("gradient in float", "float exp"))) else 2
            assert widths.count(width) >= expected, (
                f"{name} loop (logps_row.h:{line}) of {source} {flags} not vectorised with "
                f"{width}-byte vectors; report:\n{report}")


# ------------------------------------------------------------------ regressions
#
# Failures the fuzzing found (tests/test_fuzz.py, scripts/fuzz_atheris.py; docs/reliability.md,
# section 6), pinned beside the code they guard. A crash runs in a subprocess.


def test_regression_grad_out_overlapping_logsumexp():
    """Found by the fuzzing: sequence_logps_grad checked out= for overlap with the logits
    only; an out sharing memory with logsumexp made the kernel overwrite normalisers it still
    had to read (a wrong gradient). Now ValueError naming logsumexp."""
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(2, 3, 4)), rng.integers(0, 4, (2, 3))
    lse_values = sequence_logps(logits, labels).logsumexp
    buffer = np.zeros(logits.size)
    out, lse = buffer.reshape(logits.shape), buffer[:6].reshape(2, 3)
    lse[...] = lse_values
    with pytest.raises(ValueError, match="overlap"):
        sequence_logps_grad(logits, labels, 1.0, logsumexp=lse, out=out)


@pytest.mark.parametrize("bad", [np.full((2, 3), None), np.full((2, 3), "1.5"),
                                 np.zeros((2, 3), "M8[s]"), np.full((2, 3), 1.5 + 1j),
                                 np.ones((2, 3), bool)],
                         ids=["object-None", "str", "datetime64", "complex", "bool"])
def test_regression_logsumexp_dtype_is_checked(bad):
    """Found by the fuzzing: logsumexp was converted with np.ascontiguousarray(dtype=float64)
    unchecked: None objects gave a silent NaN gradient, strings were parsed, datetimes and
    complex numbers accepted. Now TypeError naming logsumexp."""
    logits, labels = np.zeros((2, 3, 5)), np.zeros((2, 3), int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(TypeError, match="logsumexp"):
            sequence_logps_grad(logits, labels, 1.0, logsumexp=bad)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_regression_non_finite_logsumexp_is_refused(value):
    """Found with the fix above: a NaN / inf logsumexp at a counted position gave NaN
    gradients silently. Now ValueError naming the position; uncounted positions are not
    read, so anything may stand there."""
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(2, 3, 5)), rng.integers(0, 5, (2, 3))
    labels[1, 2] = -100
    lse = sequence_logps(logits, labels).logsumexp
    lse[1, 2] = value  # ignored position: accepted
    want = sequence_logps_grad(logits, labels, 1.0)
    assert np.array_equal(sequence_logps_grad(logits, labels, 1.0, logsumexp=lse), want)
    lse[0, 1] = value
    with pytest.raises(ValueError, match=r"logsumexp\[0, 1\]"):
        sequence_logps_grad(logits, labels, 1.0, logsumexp=lse)


@pytest.mark.parametrize("name", ["labels", "mask", "grad_logps", "grad_token_logps"])
def test_regression_grad_out_overlapping_any_input(name):
    """out= of sequence_logps_grad must not share memory with any array argument (the kernel
    reads labels and mask while it writes; the upstream gradients are the caller's)."""
    logits = np.random.default_rng(2).normal(size=(2, 3, 4))
    buffer = np.zeros(logits.size)
    out = buffer.reshape(logits.shape)
    shared = {"labels": buffer.view(np.int64)[:6].reshape(2, 3),
              "mask": buffer.view(np.uint8)[:6].reshape(2, 3).view(bool),
              "grad_logps": buffer[:2], "grad_token_logps": buffer[:6].reshape(2, 3)}[name]
    kwargs = {"labels": np.zeros((2, 3), np.int64), "mask": None, "grad_logps": np.ones(2),
              "grad_token_logps": None, name: shared}
    with pytest.raises(ValueError, match=f"out overlaps {name}"):
        sequence_logps_grad(logits, kwargs.pop("labels"), kwargs.pop("grad_logps"), out=out,
                            **kwargs)


@pytest.mark.parametrize(("grad_logps", "grad_token_logps", "temperature", "message"), [
    (1e308, None, 0.5, "overflows"), (1e308, 1e308, 1.0, "overflows"),
    (math.inf, None, 1.0, "grad_logps"), (math.nan, None, 1.0, "grad_logps"),
    (1.0, math.inf, 1.0, r"grad_token_logps\[0\]")])
def test_regression_upstream_gradient_overflowing(grad_logps, grad_token_logps, temperature,
                                                  message):
    """Found by the atheris harness: an upstream weight whose value divided by the temperature
    overflows (grad_logps = 1e308 at temperature 0.5, or grad_logps + grad_token_logps
    overflowing) gave inf * 0 = NaN where the softmax is 0. Now ValueError naming the cause."""
    logits, labels = np.array([[0.0, -1000.0, 1.0]]), np.array([0])
    token = None if grad_token_logps is None else np.array([grad_token_logps])
    with pytest.raises(ValueError, match=message):
        sequence_logps_grad(logits, labels, grad_logps, grad_token_logps=token,
                            temperature=temperature)
    # The largest weight that does not overflow still gives no NaN.
    grad = sequence_logps_grad(logits, labels, 1e308, temperature=1.0)
    assert not np.isnan(grad).any() and grad[0, 1] == 0.0
