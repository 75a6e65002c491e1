"""Fuzzing (hypothesis) memory layouts of ``preference_loss`` and ``sequence_logps`` inputs:
0-d, 2-d, empty, strides up to 32 KiB, negative and zero strides, read-only, Fortran order,
and views that are not aligned (guard bytes around every buffer checked after the call).

The invariant every case is checked for, and how cases are counted: tests/fuzz_support.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from fuzz_support import (
    OUTPUTS,
    call_checked,
    check_preference_result,
    count,
    fuzz,
    logps_arrays,
    loss_kwargs,
)
from helpers import Guarded
from hypothesis import given
from hypothesis import strategies as st
from reference_logps import reference as logps_reference
from test_threads_simd import fingerprint

from dpo_fast import preference_loss, sequence_logps, sequence_logps_grad

pytestmark = pytest.mark.usefixtures("_fuzz_report", "_no_hang")


LAYOUTS = ["contiguous", "reversed", "strided", "huge_stride", "unaligned",
           "unaligned_reversed", "readonly", "zero_stride", "scalar_0d", "column_2d", "row_2d",
           "fortran_2d", "empty", "list", "tuple"]


def make_layout(values, dtype, layout, offset, stride, keep):
    """values (1-D float64) as an array of dtype in the given layout; returns (object, the
    1-D float64 values it stands for or None if it is not a valid 1-D input, guards)."""
    guards = []
    if layout == "contiguous":
        return values.astype(dtype), values, guards
    if layout == "reversed":
        return values[::-1].astype(dtype)[::-1], values, guards
    if layout in ("strided", "huge_stride"):
        step = stride if layout == "strided" else 4096
        big = np.zeros(values.size * step, dtype=dtype)
        big[::step] = values
        return big[::step], values, guards
    if layout in ("unaligned", "unaligned_reversed"):
        g = Guarded(values[::-1] if layout == "unaligned_reversed" else values, dtype, offset)
        keep.append(g)
        guards.append(g)
        view = g.array[::-1] if layout == "unaligned_reversed" else g.array
        return view, values, guards
    if layout == "readonly":
        array = values.astype(dtype)
        array.flags.writeable = False
        return array, values, guards
    if layout == "zero_stride":
        return np.broadcast_to(np.asarray(values[0], dtype=dtype), values.shape), \
            np.full(values.shape, values[0]), guards
    if layout == "scalar_0d":
        return np.asarray(values[0], dtype=dtype), None, guards
    if layout == "column_2d":
        return values.astype(dtype)[:, None], None, guards
    if layout == "row_2d":
        return values.astype(dtype)[None, :], None, guards
    if layout == "fortran_2d":
        return np.asfortranarray(np.stack([values, values]).astype(dtype)), None, guards
    if layout == "empty":
        return np.empty(0, dtype=dtype), None, guards
    if layout == "list":
        return values.astype(dtype).tolist(), values, guards
    return tuple(values.astype(dtype).tolist()), values, guards


@fuzz(1000)
@given(layouts=st.lists(st.sampled_from(LAYOUTS), min_size=4, max_size=4),
       dtype=st.sampled_from([np.float32, np.float64, np.int32]),
       n=st.sampled_from([1, 2, 3, 7, 8, 9, 15, 16, 17, 33]), offset=st.integers(1, 7),
       stride=st.integers(2, 9), seed=st.integers(0, 2**32 - 1),
       loss=st.sampled_from(["sigmoid", "ipo", "nca_pair", "aot_unpaired",
                             ["sigmoid", "hinge"]]),
       with_refs=st.booleans(), use_out=st.booleans())
def test_fuzz_layouts_preference_loss(layouts, dtype, n, offset, stride, seed, loss,
                                      with_refs, use_out):
    """Every layout of every input: any 1-D non-empty one gives the reference's result (and
    the same bits as the contiguous call); 0-d, 2-d and empty ones give ValueError; no input
    and no byte around an unaligned buffer is written."""
    count("layouts_preference_loss")
    rng = np.random.default_rng(seed)
    values = logps_arrays(loss, n, rng)
    if dtype is np.int32:
        values = [np.round(v) for v in values]
    values = [v.astype(dtype).astype(np.float64) for v in values]  # exactly representable
    keep: list = []
    made = [make_layout(v, dtype, layout, offset, stride, keep)
            for v, layout in zip(values, layouts)]
    used = made if with_refs else made[:2]
    args = [m[0] for m in used]
    kw = loss_kwargs(loss, n, rng, beta=0.2)
    kw["compute_grad"] = True
    out_guards = []
    valid = all(m[1] is not None for m in used) and len({m[1].size for m in used}) == 1
    # float32 results only when every input is a float32 array (lists are float64).
    out_dtype = np.float32 if dtype is np.float32 and not any(
        isinstance(a, (list, tuple)) for a in args) else np.float64
    if use_out and valid:
        # Preallocated outputs at an odd byte offset inside guarded buffers.
        out_guards = [Guarded(np.zeros(n), out_dtype, offset) for _ in OUTPUTS]
        kw["out"] = {name: g.array for name, g in zip(OUTPUTS, out_guards)}
    result, error = call_checked(preference_loss, *args, **kw)
    for g in [*(gg for m in used for gg in m[2]), *out_guards]:
        assert g.guards_intact(), "bytes around a buffer were written"
    if not valid:
        assert isinstance(error, ValueError), f"{layouts}: {error!r}"
        return
    assert error is None, f"{layouts}: {error!r}"
    plain = [m[1] for m in used]
    plain_kw = {k: v for k, v in kw.items() if k != "out"}
    if use_out:
        for name in OUTPUTS:
            assert getattr(result, name) is kw["out"][name]
    contiguous = preference_loss(*[a if isinstance(a, (list, tuple)) else
                                   np.ascontiguousarray(a) for a in args], **plain_kw)
    assert fingerprint(result) == fingerprint(contiguous)
    check_preference_result(result, plain, plain_kw, rtol=1e-9)


LOGITS_LAYOUTS = ["contiguous", "sliced_t", "neg_b", "neg_t", "neg_v", "vocab_strided",
                  "transposed", "unaligned", "readonly", "two_d", "one_d", "four_d",
                  "zero_b", "zero_t", "zero_v", "broadcast_b"]


def make_logits(x, layout, offset, keep):
    """(logits object, the (B, T, V) float values it stands for or None when invalid,
    guards). x is a float array of shape (B, T, V)."""
    if layout == "contiguous":
        return x, x, []
    if layout == "sliced_t":
        big = np.concatenate([x, x], axis=1)
        return big[:, ::2][:, : x.shape[1]], big[:, ::2][:, : x.shape[1]].copy(), []
    if layout == "neg_b":
        return x[::-1].copy()[::-1], x, []
    if layout == "neg_t":
        return x[:, ::-1].copy()[:, ::-1], x, []
    if layout == "neg_v":
        return x[..., ::-1].copy()[..., ::-1], x, []
    if layout == "vocab_strided":
        big = np.repeat(x, 2, axis=-1)
        return big[..., ::2], x, []
    if layout == "transposed":
        return np.ascontiguousarray(np.swapaxes(x, 1, 2)).swapaxes(1, 2), x, []
    if layout == "unaligned":
        g = Guarded(x, x.dtype, offset)
        keep.append(g)
        return g.array, x, [g]
    if layout == "readonly":
        y = x.copy()
        y.flags.writeable = False
        return y, x, []
    if layout == "two_d":
        return x.reshape(-1, x.shape[-1]), None, []  # valid, handled by the caller
    if layout == "one_d":
        return x.reshape(-1), None, []
    if layout == "four_d":
        return x[None], None, []
    if layout == "zero_b":
        return x[:0], x[:0], []
    if layout == "zero_t":
        return x[:, :0], x[:, :0], []
    if layout == "zero_v":
        return x[..., :0], None, []
    return np.broadcast_to(x[:1], x.shape), np.broadcast_to(x[:1], x.shape).copy(), []


@fuzz(700)
@given(layout=st.sampled_from(LOGITS_LAYOUTS), dtype=st.sampled_from([np.float32, np.float64]),
       b=st.integers(1, 3), t=st.integers(1, 5),
       v=st.sampled_from([1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 65]), offset=st.integers(1, 7),
       label_layout=st.sampled_from(["contiguous", "reversed", "strided", "unaligned",
                                     "int8", "uint64", "list"]),
       mask_kind=st.sampled_from([None, "bool", "int", "strided"]), seed=st.integers(0, 999),
       average=st.booleans(), temperature=st.sampled_from([1.0, 0.5, 3.0]),
       grad=st.booleans(), with_lse=st.booleans(), use_out=st.booleans())
def test_fuzz_layouts_sequence_logps(layout, dtype, b, t, v, offset, label_layout, mask_kind,
                                     seed, average, temperature, grad, with_lse, use_out):
    """Every layout of logits, labels and mask: results equal the textbook reference (and
    the contiguous call bit for bit); bad shapes give ValueError; nothing is written outside
    the outputs."""
    count("layouts_sequence_logps")
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(b, t, v)) * 4).astype(dtype)
    keep: list = []
    logits, plain, guards = make_logits(x, layout, offset, keep)
    shape = np.shape(logits)
    token_shape = shape[:-1] if len(shape) in (2, 3) else (b, t)
    if layout == "two_d":
        plain = x.reshape(1, -1, v)
    labels_plain = rng.integers(0, v, token_shape)
    labels_plain[rng.random(token_shape) < 0.2] = -100
    if label_layout == "reversed":
        labels = labels_plain.ravel()[::-1].copy()[::-1].reshape(token_shape)
    elif label_layout == "strided":
        labels = np.repeat(labels_plain, 2, axis=-1)[..., ::2] if labels_plain.ndim else \
            labels_plain
    elif label_layout == "unaligned":
        g = Guarded(labels_plain, np.int64, offset)
        keep.append(g)
        guards.append(g)
        labels = g.array
    elif label_layout == "int8":
        labels = labels_plain.astype(np.int8) if v <= 127 else labels_plain
    elif label_layout == "uint64":
        labels = np.where(labels_plain < 0, 0, labels_plain).astype(np.uint64)
        labels_plain = labels.astype(np.int64)
    elif label_layout == "list":
        labels = labels_plain.tolist()
    else:
        labels = labels_plain
    mask = None
    if mask_kind is not None:
        mask_plain = rng.random(token_shape) < 0.8
        mask = {"bool": mask_plain, "int": mask_plain.astype(np.int16),
                "strided": np.repeat(mask_plain, 2, axis=-1)[..., ::2]
                if mask_plain.ndim else mask_plain}[mask_kind]
    kw = {"mask": mask, "average": average, "temperature": temperature}
    if grad:
        lse = None
        if with_lse and plain is not None and not (label_layout == "list"
                                                   and labels_plain.size == 0):
            lse = sequence_logps(np.asarray(logits), labels, **kw).logsumexp
        out = None
        if use_out and plain is not None and len(shape) in (2, 3):
            og = Guarded(np.zeros(shape), dtype, offset)
            guards.append(og)
            out = og.array
        upstream = rng.normal(size=token_shape[:-1]) if len(token_shape) else 1.0
        result, error = call_checked(sequence_logps_grad, logits, labels, upstream,
                                     logsumexp=lse, out=out, **kw)
    else:
        result, error = call_checked(sequence_logps, logits, labels, return_token_logps=True,
                                     return_entropy=True, **kw)
    for g in guards:
        assert g.guards_intact(), "bytes around a buffer were written"
    if label_layout == "list" and labels_plain.size == 0 and isinstance(error, TypeError):
        return  # NumPy makes float64 of an empty list: refused as non-integer labels
    if plain is None and layout != "two_d":
        assert isinstance(error, ValueError), f"{layout} {shape}: {error!r}"
        return
    assert error is None, f"{layout} {shape} {label_layout} {mask_kind}: {error!r}"
    ref_logits = np.asarray(plain, np.float64)
    ref_labels = np.asarray(labels_plain).reshape(ref_logits.shape[:-1])
    ref_mask = None if mask is None else np.asarray(mask).reshape(ref_logits.shape[:-1])
    ref = logps_reference(ref_logits, ref_labels, mask=ref_mask, average=average,
                          temperature=temperature,
                          grad_logps=np.asarray(upstream).reshape(ref_logits.shape[0])
                          if grad else None)
    single = dtype == np.float32
    if grad:
        assert result.dtype == dtype and result.shape == shape
        np.testing.assert_allclose(result.reshape(ref["grad"].shape), ref["grad"],
                                   rtol=2e-6 if single else 1e-11,
                                   atol=1e-7 if single else 1e-12)
        if out is not None:
            assert result is out
        contiguous = sequence_logps_grad(np.ascontiguousarray(logits), np.asarray(labels),
                                         upstream, logsumexp=lse, **kw)
        assert result.tobytes() == contiguous.tobytes()
    else:
        tol = 1e-7 if single else 1e-10  # float32: the float exp's ~4e-8 a token
        np.testing.assert_allclose(result.logps.reshape(ref["logps"].shape), ref["logps"],
                                   rtol=tol, atol=10 * tol)
        np.testing.assert_allclose(result.entropy.reshape(ref["entropy"].shape),
                                   ref["entropy"], rtol=max(tol, 1e-9), atol=max(tol, 1e-9))
        np.testing.assert_array_equal(result.counts.reshape(ref["counts"].shape),
                                      ref["counts"])
        contiguous = sequence_logps(np.ascontiguousarray(logits), np.asarray(labels),
                                    return_token_logps=True, return_entropy=True, **kw)
        assert result.logps.tobytes() == contiguous.logps.tobytes()
        assert result.token_logps.tobytes() == contiguous.token_logps.tobytes()
