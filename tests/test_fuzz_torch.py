"""Fuzzing (hypothesis) the ``dpo_fast.torch`` adapters with tensors of every dtype and
layout, with and without ``requires_grad``.

The invariant every case is checked for, and how cases are counted: tests/fuzz_support.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from fuzz_support import call_checked, count, fuzz
from helpers import NEEDS_TORCH
from hypothesis import given
from hypothesis import strategies as st

from dpo_fast import preference_loss, sequence_logps

pytestmark = pytest.mark.usefixtures("_fuzz_report", "_no_hang")


TORCH_DTYPES = ["float16", "bfloat16", "float32", "float64", "int64", "int32", "bool",
                "complex64", "uint8"]


@fuzz(120)
@given(dtype=st.sampled_from(TORCH_DTYPES), layout=st.sampled_from(
    ["contiguous", "strided", "flipped", "negated_view", "expanded", "2d", "0d", "empty",
     "list"]), requires_grad=st.booleans(), n=st.sampled_from([1, 7, 17]),
       seed=st.integers(0, 999), logps=st.booleans())
def test_fuzz_torch_adapters(dtype, layout, requires_grad, n, seed, logps):
    """dpo_fast.torch on tensors of every dtype and layout: the NumPy API's values (and the
    adapters never write an input), or ValueError / TypeError."""
    torch = pytest.importorskip("torch", reason=NEEDS_TORCH)
    import dpo_fast.torch as dtorch

    count("torch_adapters")
    rng = np.random.default_rng(seed)
    tdtype = getattr(torch, dtype)
    # logits (2, n, 6): 2-D logits are pinned by test_regression_torch_two_dim_logits.
    base = torch.from_numpy(rng.uniform(-30.0, -1.0, (2, n, 6) if logps else (4, n)))

    def shaped(x):
        if layout == "strided":
            return torch.repeat_interleave(x, 2, dim=-1)[..., ::2]
        if layout == "flipped":
            return torch.flip(x, dims=[-1]).flip(-1)  # torch has no negative strides
        if layout == "negated_view":  # a view with the negative bit set (private API)
            negated = torch.neg(x)
            return negated._neg_view() if x.is_floating_point() and hasattr(
                negated, "_neg_view") else x
        if layout == "expanded":
            return x[..., :1].expand(x.shape)
        if layout == "2d":
            return x[..., None]
        if layout == "0d":
            return x.reshape(-1)[0]
        if layout == "2d" and logps:
            return x[None]  # 4-D logits
        if layout == "empty":
            return x[..., :0]
        return x

    try:
        tensor = shaped(base.to(tdtype))
    except (RuntimeError, TypeError):
        return
    if requires_grad and tensor.is_floating_point() and layout not in ("negated_view",):
        tensor = tensor.detach().requires_grad_(True)
    before = tensor.detach().clone()
    if logps:
        labels = torch.from_numpy(np.asarray(rng.integers(0, 6, tensor.shape[:-1]
                                                        if tensor.ndim else ())))
        result, error = call_checked(dtorch.sequence_logps, tensor, labels)
        if error is None:
            want = sequence_logps(tensor.detach().resolve_neg().to(torch.float64).numpy(),
                                  labels.numpy())
            np.testing.assert_allclose(result.logps.detach().double().numpy(), want.logps,
                                       rtol=1e-6, atol=1e-5)
            if tensor.requires_grad:
                result.logps.sum().backward()
                assert tensor.grad is not None and not torch.isnan(tensor.grad).any()
    else:
        rows = [tensor[i] for i in range(tensor.shape[0])] if tensor.ndim >= 2 else \
            [tensor] * 4
        rows[2:] = [r.detach() for r in rows[2:]]  # the reference log-probs are constants
        result, error = call_checked(dtorch.preference_loss, *rows, beta=0.3)
        if error is None:
            want = preference_loss(*[r.detach().resolve_neg().to(torch.float64).numpy()
                                     for r in rows], beta=0.3)
            assert float(result.loss.detach()) == pytest.approx(want.loss, rel=1e-5)
            if rows[0].requires_grad:
                result.loss.backward()
    if error is not None:
        assert isinstance(error, (ValueError, TypeError)), repr(error)
    assert torch.equal(tensor.detach(), before), "the input tensor was changed"
