"""sequence_logps_grad: the gradient against the reference and against finite differences,
float32 gradients at extreme temperatures and within their bound, ``out`` and a zero
upstream gradient, zero rows left unwritten, and the streamed gradient's bits equal to the
cached store's.

Checked against the plain float64 reference of tests/reference_logps.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference_logps import make_batch, reference

from dpo_fast import logps as logps_module
from dpo_fast import sequence_logps, sequence_logps_grad
from dpo_fast._kernels import _logps, _pairwise

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
    rounded to float (regression, found by test_fuzz_*.py), no flush of a tiny c to 0."""
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
