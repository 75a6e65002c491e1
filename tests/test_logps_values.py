"""sequence_logps's values against the plain float64 NumPy reference: the optional outputs
(WPO weights, logit sums), averages and sequences without tokens, temperature, mask dtypes
and ignore_index (skipped positions are never read), all-masked rows, large float32 logits,
extreme spreads within a row and the token accuracy's argmax.

Checked against the plain float64 reference of tests/reference_logps.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from reference_logps import (
    FLOAT32_TOL,
    assert_matches,
    assert_same_result,
    full,
    make_batch,
    reference,
)

import dpo_fast
from dpo_fast import sequence_logps, sequence_logps_grad

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
