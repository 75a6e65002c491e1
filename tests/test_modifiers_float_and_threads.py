"""The loss modifiers in float32 and in parallel: all-float32 inputs give outputs within 2 ulp
of the float64 result rounded to float32, and every SIMD path and thread count gives the
same bits above the parallel threshold.

Checked against the plain float64 reference of tests/reference_modifiers.py (``ref_losses``)
on its cases ``CASES``.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference_modifiers import CASE_IDS, CASES, build

from dpo_fast import preference_loss
from dpo_fast._kernels import _pairwise

PARALLEL_N = 100_003  # above the parallel threshold (4 chunks of 8192 rows), not a multiple


def within_2_ulp(got32, want64):
    want = want64.astype(np.float32)
    same = got32 == want
    diff = np.abs(got32.astype(np.float64) - want.astype(np.float64))
    return same | (diff <= 2 * np.spacing(np.abs(want)).astype(np.float64))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_float32_within_2_ulp_of_float64(case):
    """All-float32 inputs (lengths and weights too): float32 outputs within 2 ulp of the
    float64 result (same values) rounded to float32."""
    arrays, kw = build(case, 300, seed=13, spread=1.0)
    arrays64 = [a.astype(np.float32).astype(np.float64) for a in arrays]
    kw64 = {k: (v.astype(np.float32).astype(np.float64) if isinstance(v, np.ndarray) else v)
            for k, v in kw.items()}
    kw32 = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) else v)
            for k, v in kw.items()}
    for reduction in ("mean", "none"):
        r64 = preference_loss(*arrays64, reduction=reduction, compute_grad=True, **kw64)
        r32 = preference_loss(*[a.astype(np.float32) for a in arrays64], reduction=reduction,
                              compute_grad=True, **kw32)
        for name in ("losses", "chosen_rewards", "rejected_rewards", "grad_chosen",
                     "grad_rejected"):
            got, want = getattr(r32, name), getattr(r64, name)
            assert got.dtype == np.float32, name
            ok = within_2_ulp(got, want)
            bad = np.flatnonzero(~ok)
            assert bad.size == 0, (f"{reduction} {name}[{bad[:3].tolist()}]: "
                                   f"{got[bad[:3]].tolist()} vs {want[bad[:3]].tolist()}")
        if reduction == "mean":
            assert abs(r32.loss - r64.loss) <= 2 * float(np.spacing(np.float32(abs(r64.loss))))


BIT_CASES = [c for c in CASES if c.name in {
    "sigmoid_norm", "simpo", "ipo_lengths_weights", "sft_weights", "aot", "aot_unpaired",
    "aot_unpaired_weights", "sigmoid_forward_kl", "sigmoid_js", "robust_alpha0.5",
    "sigmoid_norm_alpha2", "rpo_forward_kl_weights", "ipo+sigmoid_norm", "aot+sigmoid+sft",
    "alphapo", "alphapo_negative_eps_weights", "alphapo+sft", "rpo_sq", "rpo_fwd_kl",
    "rpo_bwd_kl_weights", "rpo_bwd_kl+sigmoid+sft"}]


@pytest.fixture(scope="module")
def parallel_cases():
    return {case.name: build(case, PARALLEL_N, seed=14) for case in BIT_CASES}


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("case", BIT_CASES, ids=lambda c: c.name)
def test_bit_identical_across_simd_paths_and_threads(case, reduction, simd_levels,
                                                     parallel_cases):
    """Every SIMD path and n_threads 1, 2 give the same bits (N above the parallel
    threshold)."""
    arrays, kw = parallel_cases[case.name]
    results = []
    for level in simd_levels:
        _pairwise.set_simd_level(level)
        for threads in (1, 2):
            results.append(preference_loss(*arrays, n_threads=threads, reduction=reduction,
                                           compute_grad=True, **kw))
    first = results[0]
    for other in results[1:]:
        if reduction != "none":
            assert other.loss.hex() == first.loss.hex()
        assert {k: v.hex() for k, v in other.metrics.items()} == {
            k: v.hex() for k, v in first.metrics.items()}
        for name in ("losses", "chosen_rewards", "grad_chosen", "grad_rejected"):
            assert getattr(other, name).tobytes() == getattr(first, name).tobytes(), name
