"""Regression tests of sequence_logps / sequence_logps_grad for the failures the fuzzing
found: overlapping ``out`` and logsumexp buffers, the logsumexp dtype and non-finite values,
and upstream gradients that overflow.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from dpo_fast import sequence_logps, sequence_logps_grad

# ------------------------------------------------------------------ regressions
#
# Failures the fuzzing found (tests/test_fuzz_*.py, scripts/fuzz_atheris.py; docs/reliability.md,
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
