"""Fuzzing (hypothesis) sizes around the SIMD widths, the 8192-row chunk and the parallel
threshold (``_threads.PARALLEL_MIN_ROWS``) for ``preference_loss`` and ``dpo_loss``, bit
for bit against the serial call.

The invariant every case is checked for, and how cases are counted: tests/fuzz_support.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from fuzz_support import (
    CHUNK,
    COUPLED,
    TH,
    assert_close,
    call_checked,
    check_preference_result,
    count,
    fuzz,
    logps_arrays,
    loss_kwargs,
)
from helpers import result_no_nan
from hypothesis import given
from hypothesis import strategies as st
from reference import reference_preference_loss
from test_threads_simd import fingerprint

from dpo_fast import dpo_loss, preference_loss

pytestmark = pytest.mark.usefixtures("_fuzz_report", "_no_hang")


SIZES = [0, 1, 7, 8, 15, 16, 17, 31, 32, 33, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 1,
         TH - 1, TH, TH + 1]
SIZE_CASES = ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair",
              "sppo_hard", "apo_zero", "apo_down", "discopop", "sigmoid_norm", "simpo",
              "aot", "aot_unpaired", "sft", ["sigmoid", "sft"], ["ipo", "sigmoid_norm"],
              "alphapo", "rpo_sq", "rpo_fwd_kl", ["rpo_bwd_kl", "sft"]]


def windows(n):
    """Row ranges around the SIMD tails, chunk boundaries and the parallel threshold."""
    spans = [(0, min(n, 20)), (max(0, n - 20), n)]
    for edge in (CHUNK, 2 * CHUNK, TH):
        if edge - 3 < n:
            spans.append((max(0, edge - 3), min(n, edge + 3)))
    return spans


@fuzz(120)
@given(n=st.sampled_from(SIZES), loss=st.sampled_from(SIZE_CASES),
       dtype=st.sampled_from([np.float32, np.float64]),
       threads=st.sampled_from([None, 1, 2, 3]),
       reduction=st.sampled_from(["mean", "sum", "none"]),
       fdiv=st.sampled_from(["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"]),
       weights=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_fuzz_sizes_around_simd_chunk_and_thread_thresholds(n, loss, dtype, threads,
                                                            reduction, fdiv, weights, seed):
    """Sizes around every boundary of the kernels: the same bits for every n_threads; rows
    at the boundaries equal the same rows computed on their own (bit for bit) and the
    reference; n = 0 is ValueError."""
    count("sizes")
    rng = np.random.default_rng(seed)
    spread = 5.0 if fdiv == "reverse_kl" else 2.0
    arrays = [a.astype(dtype) for a in logps_arrays(loss, max(n, 1), rng, spread=spread)]
    kw = loss_kwargs(loss, max(n, 1), rng, fdiv=fdiv, weights=weights)
    if n == 0:
        arrays = [a[:0] for a in arrays]
        kw = {k: (v[:0] if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        _, error = call_checked(preference_loss, *arrays, **kw)
        assert isinstance(error, ValueError)
        return
    full = dict(kw, compute_grad=True, reduction=reduction)
    result, error = call_checked(preference_loss, *arrays, n_threads=threads, **full)
    assert error is None, repr(error)
    serial = preference_loss(*arrays, n_threads=1, **full)
    assert fingerprint(result) == fingerprint(serial), "n_threads changed the bits"
    types = [loss] if isinstance(loss, str) else loss
    plain = [np.asarray(a, np.float64) for a in arrays]
    if not COUPLED.intersection(types):
        for lo, hi in windows(n):
            part = {k: (v[lo:hi] if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
            alone = preference_loss(*(a[lo:hi] for a in arrays), compute_grad=True,
                                    reduction="none" if reduction == "none" else "sum",
                                    **part)
            for name in ("losses", "chosen_rewards", "rejected_rewards"):
                assert getattr(result, name)[lo:hi].tobytes() == \
                    getattr(alone, name).tobytes(), f"{name}[{lo}:{hi}] of n={n}"
            if reduction != "mean":
                assert result.grad_chosen[lo:hi].tobytes() == alone.grad_chosen.tobytes()
        rows = sorted({i for lo, hi in windows(n) for i in range(lo, hi)})
        check_preference_result(result, plain, kw, reduction=reduction, rows=rows)
    elif n <= 2 * CHUNK + 1:
        check_preference_result(result, plain, kw, reduction=reduction)
    result_no_nan(result)


@fuzz(60)
@given(n=st.sampled_from([1, 7, 8, 9, 31, 32, 33, 34, 100, CHUNK - 1, CHUNK, CHUNK + 1]),
       kind=st.sampled_from(["list", "tuple", "array", "float32"]),
       beta=st.sampled_from([0.1, 0.5, 1.0, 3.0]), seed=st.integers(0, 2**32 - 1))
def test_fuzz_dpo_loss_sizes(n, kind, beta, seed):
    """dpo_loss on the stack buffer (<= 32 pairs), the malloc'd one, the list fast path's
    limit (8192) and beyond (the array path): the exact rounding of the preference_loss
    values, and those match the reference."""
    count("dpo_loss_sizes")
    rng = np.random.default_rng(seed)
    cols = [rng.uniform(-50.0, 0.0, n) for _ in range(4)]
    if kind == "float32":
        cols = [c.astype(np.float32) for c in cols]
    args = {"list": lambda c: c.tolist(), "tuple": lambda c: tuple(c.tolist()),
            "array": lambda c: c, "float32": lambda c: c}[kind]
    result, error = call_checked(dpo_loss, *[args(c) for c in cols], beta)
    assert error is None, repr(error)
    plain = [np.asarray(c, np.float64) for c in cols]
    full = preference_loss(*plain, beta=beta)
    assert result["loss"] == round(full.loss, 4)
    assert result["chosen_rewards"] == [round(x, 4) for x in full.chosen_rewards.tolist()]
    assert result["rejected_rewards"] == [round(x, 4) for x in full.rejected_rewards.tolist()]
    rows = rng.choice(n, size=min(n, 24), replace=False)
    ref = reference_preference_loss(*[c[rows] for c in plain], beta=beta, reduction="none")
    assert_close(full.losses[rows], ref.losses, "losses", rtol=1e-12, atol=1e-15)
