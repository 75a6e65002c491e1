"""sequence_logps' plain float64 reference and the batches and comparisons its tests use
(tests/test_logps_*.py, tests/test_fuzz_*.py).

``reference`` is written the textbook way (log_softmax of the whole array, then a gather), in
float64, independently of dpo_fast.
"""

from __future__ import annotations

import numpy as np
import pytest

from dpo_fast import sequence_logps


# ---- sequence_logps' plain float64 reference (tests/test_logps_*.py, tests/test_fuzz_*.py) ----
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
