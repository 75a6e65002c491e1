"""dpo_fast.linear_sequence_logps (+ _grad) and dpo_fast.torch.linear_sequence_logps.

Checked against a plain NumPy float64 reference (the logits built whole, log-softmax by
hand): values and all three gradients, with bias, mask, ignore_index, temperature, average,
float32/float64/float16, (N, H) inputs, several vocabulary and row tiles (the tile sizes
shrunk); that the result does not depend on the rows per tile or the thread count; the
optional outputs and the token accuracy (ties across tiles) against dpo_fast.sequence_logps on
the built logits; bad input naming the argument and position; the frozen-head path
(linear_sequence_logps_and_token_grads + linear_hidden_grad) against the reference, confident
rows included; the torch adapter against torch autograd, gradcheck (finite differences), half
precision, a frozen head, and the DPO step composed with dpo_fast.torch.preference_loss. No
timings.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess

import numpy as np
import pytest
from helpers import CSRC, NEEDS_TORCH, setup_constant

import dpo_fast.linear_logps as linear
from dpo_fast import (
    linear_sequence_logps,
    linear_sequence_logps_grad,
    sequence_logps,
)

try:
    import torch

    import dpo_fast.torch as dft
except ImportError:  # pragma: no cover - the CI installs torch
    torch = dft = None

needs_torch = pytest.mark.skipif(torch is None, reason=NEEDS_TORCH)
TOL = {np.float64: 1e-12, np.float32: 1e-5}


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 7 vocabulary columns and a few rows: every code path of the tiling on small
    shapes (ragged last tiles included)."""
    monkeypatch.setattr(linear, "VOCAB_TILE", 7)
    monkeypatch.setattr(linear, "TILE_BYTES", 5 * 7 * 8)


def _data(dtype, *, b=3, t=6, h=5, v=23, seed=0, with_bias=True):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(b, t, h)).astype(dtype)
    weight = rng.normal(size=(v, h)).astype(dtype)
    bias = rng.normal(size=v).astype(dtype) if with_bias else None
    labels = rng.integers(0, v, size=(b, t))
    labels[0, 1] = -100
    mask = rng.random((b, t)) > 0.25
    mask[2] = False  # a sequence with nothing counted
    return hidden, weight, bias, labels, mask


def _reference(hidden, weight, bias, labels, mask, temperature, average, g_seq, g_tok):
    """Plain float64: (logps, token_logps, d_hidden, d_weight, d_bias)."""
    h = hidden.astype(np.float64)
    w = weight.astype(np.float64)
    logits = h @ w.T + (0.0 if bias is None else bias.astype(np.float64))
    z = logits / temperature
    m = z.max(-1, keepdims=True)
    logp = z - (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))
    counted = (labels != -100) & (mask if mask is not None else True)
    safe = np.where(counted, labels, 0)
    tok = np.take_along_axis(logp, safe[..., None], -1)[..., 0] * counted
    counts = counted.sum(-1)
    logps = tok.sum(-1)
    per_seq = g_seq * np.ones(logps.shape)
    if average:
        logps = np.where(counts > 0, logps / np.maximum(counts, 1), 0.0)
        per_seq = np.where(counts > 0, per_seq / np.maximum(counts, 1), 0.0)
    row_w = (per_seq[:, None] + (0.0 if g_tok is None else g_tok)) * counted
    onehot = np.zeros_like(logits)
    np.put_along_axis(onehot, safe[..., None], 1.0, -1)
    d_logits = row_w[..., None] * (onehot - np.exp(logp)) / temperature
    d_hidden = d_logits @ w
    d_weight = np.einsum("btv,bth->vh", d_logits, h)
    d_bias = d_logits.sum((0, 1))
    return logps, tok, d_hidden, d_weight, d_bias


def _close(actual, expected, tol, what):
    scale = max(np.max(np.abs(expected)), 1e-300)
    err = np.max(np.abs(np.asarray(actual, np.float64) - expected)) / scale
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("average", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_values_and_gradients_match_a_float64_reference(small_tiles, dtype, with_bias, average,
                                                        temperature):
    hidden, weight, bias, labels, mask = _data(dtype, with_bias=with_bias)
    rng = np.random.default_rng(1)
    g_seq = rng.normal(size=3)
    g_tok = rng.normal(size=(3, 6))
    kw = dict(bias=bias, mask=mask, average=average, temperature=temperature)
    out = linear_sequence_logps(hidden, weight, labels, return_token_logps=True, **kw)
    ref = _reference(hidden, weight, bias, labels, mask, temperature, average, g_seq, g_tok)
    tol = TOL[dtype]
    _close(out.logps, ref[0], tol, "logps")
    _close(out.token_logps, ref[1], tol, "token_logps")
    assert out.counts.tolist() == ((labels != -100) & mask).sum(-1).tolist()
    assert out.logps[2] == 0.0
    grads = linear_sequence_logps_grad(hidden, weight, labels, g_seq, grad_token_logps=g_tok,
                                       logsumexp=out.logsumexp, **kw)
    for got, want, name in zip(grads, ref[2:], ("d_hidden", "d_weight", "d_bias")):
        if name == "d_bias" and bias is None:
            assert got is None
            continue
        assert got.dtype == dtype and got.shape == want.shape
        _close(got, want, tol, name)
    # Without the forward's logsumexp the backward recomputes it: the same gradients.
    again = linear_sequence_logps_grad(hidden, weight, labels, g_seq, grad_token_logps=g_tok,
                                       **kw)
    for got, want in zip(grads, again):
        if got is not None:
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("average", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_frozen_head_token_grads_match_a_float64_reference(small_tiles, dtype, with_bias,
                                                           average, temperature):
    """linear_sequence_logps_and_token_grads + linear_hidden_grad (no product backward)."""
    hidden, weight, bias, labels, mask = _data(dtype, with_bias=with_bias)
    rng = np.random.default_rng(1)
    g_seq = rng.normal(size=3)
    g_tok = rng.normal(size=(3, 6))
    kw = dict(bias=bias, mask=mask, average=average, temperature=temperature)
    out, token_grads = linear.linear_sequence_logps_and_token_grads(
        hidden, weight, labels, return_token_logps=True, return_entropy=True, **kw)
    plain = linear_sequence_logps(hidden, weight, labels, return_token_logps=True,
                                  return_entropy=True, **kw)
    for field in ("logps", "token_logps", "entropy", "logsumexp"):
        np.testing.assert_array_equal(getattr(out, field), getattr(plain, field))
    assert token_grads.dtype == dtype
    assert token_grads.shape == (((labels != -100) & mask).sum(), hidden.shape[-1])
    ref = _reference(hidden, weight, bias, labels, mask, temperature, average, g_seq, g_tok)
    d_hidden = linear.linear_hidden_grad(hidden, weight, labels, g_seq, token_grads,
                                         grad_token_logps=g_tok, **kw)
    assert d_hidden.dtype == dtype and d_hidden.shape == hidden.shape
    _close(d_hidden, ref[2], TOL[dtype], "d_hidden")
    assert not d_hidden[2].any()  # nothing counted in the third sequence


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_frozen_head_token_grads_of_confident_rows(dtype):
    """Rows whose label takes almost all the probability (1 - p_label ~ 1e-6): their gradient
    is small, and ``1 - p_label`` in double keeps it accurate; default tiles, a vocabulary
    over several tiles."""
    rng = np.random.default_rng(7)
    b, t, h, v = 2, 8, 64, linear.VOCAB_TILE + 300
    hidden = rng.normal(size=(b, t, h)).astype(dtype)
    weight = (rng.normal(size=(v, h)) * 0.1).astype(dtype)
    labels = rng.choice(v, size=(b, t), replace=False)
    weight[labels.ravel()] = (hidden.reshape(-1, h) * 0.3).astype(dtype)
    out, token_grads = linear.linear_sequence_logps_and_token_grads(hidden, weight, labels)
    ref = _reference(hidden, weight, None, labels, None, 1.0, False, 1.0, None)
    assert np.exp(ref[1]).min() > 0.99
    d_hidden = linear.linear_hidden_grad(hidden, weight, labels, 1.0, token_grads)
    _close(d_hidden, ref[2], TOL[dtype], "d_hidden")
    with pytest.raises(ValueError, match="token_grads must be"):
        linear.linear_hidden_grad(hidden, weight, labels, 1.0, token_grads[1:])


def test_default_tiles_and_a_vocabulary_over_several_tiles():
    hidden, weight, bias, labels, mask = _data(np.float64, v=linear.VOCAB_TILE * 2 + 5, h=4)
    out = linear_sequence_logps(hidden, weight, labels, bias=bias, mask=mask)
    ref = _reference(hidden, weight, bias, labels, mask, 1.0, False, 1.0, None)
    _close(out.logps, ref[0], 1e-12, "logps")
    d_hidden, d_weight, d_bias = linear_sequence_logps_grad(hidden, weight, labels, 1.0,
                                                            bias=bias, mask=mask)
    _close(d_hidden, ref[2], 1e-12, "d_hidden")
    _close(d_weight, ref[3], 1e-12, "d_weight")
    _close(d_bias, ref[4], 1e-12, "d_bias")


def test_results_do_not_depend_on_threads_and_barely_on_rows_per_tile(monkeypatch):
    """The fold is the same bits for every thread count; the rows per tile only change the
    shape of the BLAS call, which OpenBLAS may round differently: float32 products can differ
    in their last bits, so a token log-prob by about an ulp of the largest logit (1.1e-7 of
    the largest value seen on an AMD EPYC's OpenBLAS kernels, ~1e-9 elsewhere)."""
    hidden, weight, bias, labels, mask = _data(np.float32, b=4, t=40, v=50, h=16)
    monkeypatch.setattr(linear, "VOCAB_TILE", 16)
    kw = dict(bias=bias, mask=mask, return_token_logps=True, return_entropy=True,
              return_wpo_weights=True, return_logit_sums=True)
    fields = ("logps", "token_logps", "entropy", "wpo_weights", "logit_sums", "logsumexp")
    first = None
    for tile_bytes in (16 * 4 * 3, 16 * 4 * 64, 1 << 20):
        monkeypatch.setattr(linear, "TILE_BYTES", tile_bytes)
        one, two = (linear_sequence_logps(hidden, weight, labels, n_threads=threads, **kw)
                    for threads in (1, 2))
        for field in fields:
            np.testing.assert_array_equal(getattr(one, field), getattr(two, field))
        assert one.token_accuracy == two.token_accuracy
        first = first or one
        for field in fields:
            _close(getattr(one, field), getattr(first, field), 1e-6, field)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_optional_outputs_match_sequence_logps_on_the_built_logits(small_tiles, dtype):
    hidden, weight, bias, labels, mask = _data(dtype, b=4, t=9, v=30)
    logits = hidden.astype(np.float64) @ weight.T.astype(np.float64) + bias
    kw = dict(mask=mask, temperature=0.8, return_token_logps=True, return_entropy=True,
              return_wpo_weights=True, return_logit_sums=True)
    out = linear_sequence_logps(hidden, weight, labels, bias=bias, **kw)
    ref = sequence_logps(logits, labels, **kw)
    tol = TOL[dtype]
    for field in ("logps", "token_logps", "entropy", "wpo_weights", "logit_sums",
                  "logsumexp"):
        _close(getattr(out, field), getattr(ref, field), tol, field)
    assert out.mean_entropy == pytest.approx(ref.mean_entropy, rel=tol)
    assert out.mean_logit == pytest.approx(ref.mean_logit, rel=tol, abs=tol)
    np.testing.assert_array_equal(out.counts, ref.counts)


def test_token_accuracy_takes_the_first_maximum_across_tiles(small_tiles):
    # One feature: logits are weight[:, 0] exactly. Maxima (3.0) at vocabulary 2, 9 and 20,
    # in three different tiles of 7 columns.
    vocab = 23
    weight = np.zeros((vocab, 1))
    weight[[2, 9, 20], 0] = 3.0
    weight[5, 0] = 1.0
    hidden = np.ones((1, 4, 1))
    labels = np.array([[2, 9, 20, 5]])
    out = linear_sequence_logps(hidden, weight, labels)
    ref = sequence_logps(hidden @ weight.T, labels)
    assert out.token_accuracy == ref.token_accuracy == 0.25
    # The maximum only in a later tile.
    weight[[2, 9], 0] = 0.0
    out = linear_sequence_logps(hidden, weight, labels)
    assert out.token_accuracy == sequence_logps(hidden @ weight.T, labels).token_accuracy == 0.25


def test_two_dimensional_inputs_are_one_sequence(small_tiles):
    hidden, weight, bias, labels, mask = _data(np.float64)
    out = linear_sequence_logps(hidden[0], weight, labels[0], bias=bias)
    full = linear_sequence_logps(hidden[:1], weight, labels[:1], bias=bias)
    assert out.logps.shape == ()
    assert out.logps == full.logps[0]
    d_hidden, _, _ = linear_sequence_logps_grad(hidden[0], weight, labels[0], 1.0, bias=bias)
    assert d_hidden.shape == hidden[0].shape


def test_strided_hidden_and_masked_rows_are_not_projected(small_tiles):
    hidden, weight, bias, labels, mask = _data(np.float64, t=7)
    hidden[~mask] = np.nan  # never read: positions not counted are not projected
    view = hidden[:, :-1]
    out = linear_sequence_logps(view, weight, labels[:, :-1], bias=bias, mask=mask[:, :-1])
    clean = np.where(mask[..., None], hidden, 0.0)
    ref = _reference(clean[:, :-1], weight, bias, labels[:, :-1], mask[:, :-1], 1.0, False,
                     1.0, None)
    _close(out.logps, ref[0], 1e-12, "logps")
    d_hidden, _, _ = linear_sequence_logps_grad(view, weight, labels[:, :-1], 1.0, bias=bias,
                                                mask=mask[:, :-1])
    assert np.isfinite(d_hidden).all()
    assert (d_hidden[~mask[:, :-1]] == 0.0).all()


def test_float16_is_computed_in_float32(small_tiles):
    hidden, weight, bias, labels, mask = _data(np.float16)
    out = linear_sequence_logps(hidden, weight, labels, bias=bias, mask=mask)
    up = linear_sequence_logps(hidden.astype(np.float32), weight.astype(np.float32), labels,
                               bias=bias.astype(np.float32), mask=mask)
    np.testing.assert_array_equal(out.logps, up.logps)
    grads = linear_sequence_logps_grad(hidden, weight, labels, 1.0, bias=bias, mask=mask)
    assert all(g.dtype == np.float32 for g in grads)


def test_bfloat16_bits_are_upcast_per_tile(small_tiles):
    hidden, weight, bias, labels, mask = _data(np.float32)
    # Round to bfloat16 (truncate the low 16 bits): those values exactly, in float32.
    h_bits = (hidden.view(np.uint32) >> 16).astype(np.uint16)
    w_bits = (weight.view(np.uint32) >> 16).astype(np.uint16)
    h32 = (h_bits.astype(np.uint32) << 16).view(np.float32)
    w32 = (w_bits.astype(np.uint32) << 16).view(np.float32)
    out = linear_sequence_logps(linear.BFloat16Array(h_bits[:, ::2]),
                                linear.BFloat16Array(w_bits), labels[:, ::2], mask=mask[:, ::2])
    ref = linear_sequence_logps(h32[:, ::2], w32, labels[:, ::2], mask=mask[:, ::2])
    np.testing.assert_array_equal(out.logps, ref.logps)
    grads = linear_sequence_logps_grad(linear.BFloat16Array(h_bits), linear.BFloat16Array(w_bits),
                                       labels, 1.0)
    ref_grads = linear_sequence_logps_grad(h32, w32, labels, 1.0)
    for got, want in zip(grads[:2], ref_grads[:2]):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(TypeError, match="uint16 bit patterns"):
        linear.BFloat16Array(hidden)


def test_wrt_skips_gradients_and_nothing_counted_gives_zeros(small_tiles):
    hidden, weight, bias, labels, mask = _data(np.float64)
    d_hidden, d_weight, d_bias = linear_sequence_logps_grad(hidden, weight, labels, 1.0,
                                                            bias=bias, wrt=("hidden",))
    assert d_weight is None and d_bias is None and d_hidden.shape == hidden.shape
    nothing = np.zeros_like(mask)
    out = linear_sequence_logps(hidden, weight, labels, bias=bias, mask=nothing)
    assert (out.logps == 0).all() and out.token_accuracy == 0.0
    grads = linear_sequence_logps_grad(hidden, weight, labels, 1.0, bias=bias, mask=nothing)
    assert all((g == 0).all() for g in grads)
    with pytest.raises(ValueError, match="wrt must be"):
        linear_sequence_logps_grad(hidden, weight, labels, 1.0, wrt="weight")


@pytest.mark.parametrize(("change", "error", "pattern"), [
    (lambda d: d.update(weight=d["weight"][:, :-1]), ValueError,
     r"weight has shape \(23, 4\) but hidden has 5 features"),
    (lambda d: d.update(labels=d["labels"][:, :-1]), ValueError,
     r"labels has shape \(3, 5\) but hidden has shape \(3, 6, 5\)"),
    (lambda d: d.update(bias=d["bias"][:-1]), ValueError,
     r"bias has shape \(22,\) but weight has 23 rows"),
    (lambda d: d.update(weight=d["weight"].astype(np.float32)), TypeError,
     "weight has dtype float32 but hidden has dtype float64"),
    (lambda d: d.update(hidden=d["hidden"].astype(np.int64)), TypeError,
     "hidden must be float16, float32 or float64"),
    (lambda d: d.update(labels=d["labels"] * 0.5), TypeError, "labels must be integers"),
    (lambda d: d.update(temperature=0.0), ValueError, "temperature must be finite and > 0"),
])
def test_bad_input_names_the_argument(change, error, pattern):
    hidden, weight, bias, labels, _ = _data(np.float64)
    args = dict(hidden=hidden, weight=weight, labels=labels, bias=bias, temperature=1.0)
    change(args)
    with pytest.raises(error, match=pattern):
        linear_sequence_logps(**args)


def test_label_out_of_range_is_named():
    hidden, weight, bias, labels, _ = _data(np.float64)
    labels[1, 3] = 23
    with pytest.raises(ValueError, match=r"labels\[1, 3\] = 23 is out of range for weight's "
                                         r"vocabulary of 23"):
        linear_sequence_logps(hidden, weight, labels)
    labels[1, 3] = -100
    linear_sequence_logps(hidden, weight, labels)  # ignore_index is fine


def test_non_finite_logits_name_the_position_and_the_cause(small_tiles):
    hidden, weight, bias, labels, mask = _data(np.float64)
    bad = weight.copy()
    bad[12, 2] = np.inf
    with pytest.raises(ValueError, match=r"hidden\[0, 0\] at vocabulary index 12 .* "
                                         r"weight\[12, 2\] is inf"):
        linear_sequence_logps(hidden, bad, labels, bias=bias)
    nan_hidden = hidden.copy()
    nan_hidden[1, 4, 3] = np.nan
    with pytest.raises(ValueError, match=r"hidden\[1, 4\] at vocabulary index 0 .* "
                                         r"hidden\[1, 4, 3\] is nan"):
        linear_sequence_logps(nan_hidden, weight, labels, bias=bias)
    bad_bias = bias.copy()
    bad_bias[20] = -np.inf
    with pytest.raises(ValueError, match=r"vocabulary index 20 .* bias\[20\] is -inf"):
        linear_sequence_logps(hidden, weight, labels, bias=bad_bias)
    huge = (weight * 1e38).astype(np.float32)
    with pytest.raises(ValueError, match="the product overflows float32"):
        linear_sequence_logps((hidden * 1e3).astype(np.float32), huge, labels)
    with pytest.raises(ValueError, match=r"upstream gradient at position \[0, 0\]"):
        linear_sequence_logps_grad(hidden, weight, labels, [np.inf, 1.0, 1.0])


@pytest.mark.skipif(not (CSRC / "logps_linear.h").exists(), reason="needs the source tree")
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 clones only")
def test_tile_loops_vectorised_in_every_clone(tmp_path):
    """The linear head's own loops (bias add, tile gradient) are vectorised at every level,
    float32 and float64 (the fold's statistics are logps_row.h's loops, checked in
    tests/test_logps_vectorisation.py)."""
    lines = (CSRC / "logps_linear.h").read_text().splitlines()
    wanted = {}
    for name, marker in {"bias add": "x[j] = x[j] + bias[j];",
                         "gradient": "x[j] = (LOGPS_T)(-(c * LOGPS_EXP("}.items():
        for index, line in enumerate(lines):
            if marker in line:
                while not lines[index].lstrip().startswith("for ("):
                    index -= 1
                wanted.setdefault(name, []).append(index + 1)
    level_flags = setup_constant("SIMD_LEVEL_FLAGS")
    for level, width in (("baseline", "16"), ("avx2", "32"), ("avx512", "64")):
        report = subprocess.run(
            ["gcc", *setup_constant("GCC_FLAGS"), f"-DDPO_ISA={level}",
             *level_flags[level]["unix"], "-fopt-info-vec-optimized", "-I", str(CSRC), "-c",
             str(CSRC / "logps_simd.c"), "-o", str(tmp_path / "out.o")],
            capture_output=True, text=True, check=True).stderr
        for name, numbers in wanted.items():
            for line in numbers:
                widths = re.findall(rf"logps_linear\.h:{line}:\d+: optimized: loop "
                                    r"vectorized using (\d+) byte", report)
                assert widths.count(width) >= 2, f"{name} (line {line}) at {level}: {widths}"


# ------------------------------------------------------------------------------ torch


def _torch_reference(hidden, weight, bias, labels, mask, temperature=1.0):
    logits = hidden.double() @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    logp = torch.log_softmax(logits / temperature, -1)
    counted = (labels != -100) & mask
    tok = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0] * counted
    return tok.sum(-1), tok


@needs_torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_gradients_match_torch_autograd(small_tiles, dtype):
    dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    head = torch.nn.Linear(5, 23).to(dtype)
    hidden = torch.randn(3, 6, 5, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, 23, (3, 6))
    labels[0, 0] = -100
    mask = torch.rand(3, 6) > 0.2
    g = torch.randn(3, dtype=dtype)
    gt = torch.randn(3, 6, dtype=dtype)
    out = dft.linear_sequence_logps(hidden, head.weight, labels, bias=head.bias, mask=mask,
                                    temperature=0.7, return_token_logps=True)
    ((out.logps * g).sum() + (out.token_logps * gt).sum()).backward()
    got = [hidden.grad, head.weight.grad, head.bias.grad]
    for t in (hidden, head.weight, head.bias):
        t.grad = None
    logps, tok = _torch_reference(hidden, head.weight, head.bias, labels, mask, 0.7)
    ((logps * g.double()).sum() + (tok * gt.double()).sum()).backward()
    want = [hidden.grad, head.weight.grad, head.bias.grad]
    tol = TOL[np.float64 if dtype == torch.float64 else np.float32]
    _close(out.logps.detach().double().numpy(), logps.detach().numpy(), tol, "logps")
    for a, b, name in zip(got, want, ("hidden", "weight", "bias")):
        assert a.dtype == dtype
        _close(a.double().numpy(), b.double().numpy(), tol, name)


@needs_torch
def test_torch_gradcheck_finite_differences(small_tiles):
    torch.manual_seed(1)
    hidden = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(16, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(16, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 16, (2, 4))
    labels[1, 2] = -100

    def fn(h, w, b):
        out = dft.linear_sequence_logps(h, w, labels, bias=b, temperature=1.5,
                                        return_token_logps=True, average=True)
        return out.logps, out.token_logps

    assert torch.autograd.gradcheck(fn, (hidden, weight, bias))


@needs_torch
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_torch_half_precision(small_tiles, dtype):
    dtype = getattr(torch, dtype)
    torch.manual_seed(2)
    hidden = torch.randn(2, 5, 4).to(dtype).requires_grad_()
    weight = torch.randn(20, 4).to(dtype).requires_grad_()
    labels = torch.randint(0, 20, (2, 5))
    out = dft.linear_sequence_logps(hidden, weight, labels)
    assert out.logps.dtype == torch.float32
    out.logps.sum().backward()
    assert hidden.grad.dtype == dtype and weight.grad.dtype == dtype
    ref = dft.linear_sequence_logps(hidden.detach().float().requires_grad_(),
                                    weight.detach().float(), labels)
    torch.testing.assert_close(out.logps, ref.logps, rtol=1e-6, atol=1e-6)


@needs_torch
def test_torch_frozen_head_and_no_grad(small_tiles):
    torch.manual_seed(3)
    hidden = torch.randn(2, 5, 4, requires_grad=True)
    weight = torch.randn(20, 4)
    labels = torch.randint(0, 20, (2, 5))
    dft.linear_sequence_logps(hidden, weight, labels).logps.sum().backward()
    assert hidden.grad is not None and weight.grad is None
    with torch.no_grad():
        out = dft.linear_sequence_logps(hidden, weight, labels, return_entropy=True)
    assert out.logps.grad_fn is None and out.entropy is not None
    with pytest.raises(ValueError, match="temperature requires grad"):
        dft.linear_sequence_logps(hidden, weight, labels,
                                  temperature=torch.tensor(1.0, requires_grad=True))
    out = dft.linear_sequence_logps(hidden, weight, labels)
    (grad,) = torch.autograd.grad(out.logps.sum(), hidden, create_graph=False)
    assert grad.shape == hidden.shape
    out = dft.linear_sequence_logps(hidden, weight, labels)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(out.logps.sum(), hidden, create_graph=True)


@needs_torch
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_torch_frozen_head_gradient_matches_torch_autograd(small_tiles, dtype, with_bias):
    """A frozen lm_head takes the no-product backward (linear_hidden_grad)."""
    dtype = getattr(torch, dtype)
    compute = torch.float32 if dtype == torch.bfloat16 else dtype
    torch.manual_seed(4)
    hidden = torch.randn(3, 6, 5).to(dtype).requires_grad_()
    weight = torch.randn(23, 5).to(dtype)
    bias = torch.randn(23).to(dtype) if with_bias else None
    labels = torch.randint(0, 23, (3, 6))
    labels[0, 1] = -100
    mask = torch.rand(3, 6) > 0.25
    upstream = torch.tensor([1.0, -2.0, 0.5], dtype=compute)
    out = dft.linear_sequence_logps(hidden, weight, labels, bias=bias, mask=mask,
                                    temperature=0.8, average=True, return_token_logps=True)
    ((out.logps * upstream).sum() + out.token_logps.square().sum()).backward()
    got = hidden.grad.clone()
    assert got.dtype == dtype
    hidden.grad = None
    h = hidden.to(compute)
    logits = h @ weight.to(compute).T + (0.0 if bias is None else bias.to(compute))
    counted = (labels != -100) & mask
    tok = torch.log_softmax(logits / 0.8, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    tok = tok * counted
    logps = tok.sum(-1) / counted.sum(-1).clamp(min=1)
    ((logps * upstream).sum() + tok.square().sum()).backward()
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    _close(got.to(torch.float64).numpy(), hidden.grad.to(torch.float64).numpy(), tol,
           "d_hidden")


@needs_torch
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "robust"])
def test_torch_dpo_step_from_hidden_states(small_tiles, loss_type):
    """linear_sequence_logps -> preference_loss: the whole step's gradients reach the hidden
    states and the head, and equal plain PyTorch's."""
    torch.manual_seed(4)
    n = 2
    head = torch.nn.Linear(6, 30, dtype=torch.float64)
    hidden = torch.randn(2 * n, 7, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 30, (2 * n, 7))
    mask = torch.rand(2 * n, 7) > 0.2
    ref_logps = torch.randn(2 * n, dtype=torch.float64) - 20.0
    kw = dict(beta=0.1, loss_type=loss_type, label_smoothing=0.1 if loss_type == "robust" else 0)
    out = dft.linear_sequence_logps(hidden, head.weight, labels, bias=head.bias, mask=mask)
    loss = dft.preference_loss(out.logps[:n], out.logps[n:], ref_logps[:n], ref_logps[n:],
                               **kw).loss
    loss.backward()
    got = [hidden.grad, head.weight.grad, head.bias.grad]
    for t in (hidden, head.weight, head.bias):
        t.grad = None
    logps, _ = _torch_reference(hidden, head.weight, head.bias, labels, mask)
    plain = dft.preference_loss(logps[:n], logps[n:], ref_logps[:n], ref_logps[n:], **kw).loss
    plain.backward()
    torch.testing.assert_close(loss, plain, rtol=1e-12, atol=0)
    for a, b in zip(got, [hidden.grad, head.weight.grad, head.bias.grad]):
        _close(a.numpy(), b.numpy(), 1e-12, "gradient")


def test_memory_stays_within_the_tile_budget():
    """The NumPy allocations of a call (tracemalloc: every NumPy buffer) stay within one
    logits tile plus small buffers, while the logits would take 156 MiB. Not timed."""
    import tracemalloc

    rng = np.random.default_rng(5)
    b, t, h, v = 2, 512, 32, 40000
    hidden = rng.standard_normal((b, t, h), dtype=np.float32)
    weight = rng.standard_normal((v, h), dtype=np.float32)
    labels = rng.integers(0, v, size=(b, t))
    budget = linear.TILE_BYTES + (4 << 20)
    tracemalloc.start()
    try:
        out = linear_sequence_logps(hidden, weight, labels, return_entropy=True)
        forward_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        grads = linear_sequence_logps_grad(hidden, weight, labels, 1.0,
                                           logsumexp=out.logsumexp)
        outputs = sum(g.nbytes for g in grads if g is not None)
        backward_peak = tracemalloc.get_traced_memory()[1] - outputs
    finally:
        tracemalloc.stop()
    assert b * t * v * 4 > 4 * budget
    assert forward_peak <= budget, forward_peak
    assert backward_peak <= budget + linear.WEIGHT_CHUNK_BYTES, backward_peak


def test_empty_shapes():
    labels = np.zeros((1, 3), dtype=np.int64)
    out = linear_sequence_logps(np.ones((1, 3, 0)), np.ones((5, 0)), labels)  # H = 0
    assert out.logps[0] == pytest.approx(3 * np.log(1 / 5), rel=1e-15)
    d_hidden, d_weight, _ = linear_sequence_logps_grad(np.ones((1, 3, 0)), np.ones((5, 0)),
                                                       labels, 1.0)
    assert d_hidden.shape == (1, 3, 0) and d_weight.shape == (5, 0)
    assert linear_sequence_logps(np.ones((2, 0, 2)), np.ones((3, 2)),
                                 np.zeros((2, 0), dtype=np.int64)).logps.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="weight has an empty vocabulary axis"):
        linear_sequence_logps(np.ones((2, 3, 2)), np.ones((0, 2)), np.zeros((2, 3), int))
