"""The gradients of every loss-modifier case: grad_chosen / grad_rejected against 4th-order
central differences of the plain reference (for each reduction), and a property test of
aot / aot_unpaired on small batches with ties, their losses and scattered gradients.

Checked against the plain float64 reference of tests/reference_modifiers.py (``ref_losses``)
on its cases ``CASES``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_modifiers import (
    CASE_IDS,
    CASES,
    assert_close_scaled,
    assert_metrics_consistent,
    build,
    loss_types,
    ref_aot_grads,
    ref_losses,
    ref_reduced,
    score,
)

from dpo_fast import preference_loss

# --------------------------------------------------------------------------- gradients


def finite_difference(f, arrays, which, i, h=1e-3):
    """4th-order central difference of f(arrays) in arrays[which][i]."""
    def at(delta):
        moved = list(arrays)
        moved[which] = arrays[which].copy()
        moved[which][i] += delta
        return f(moved)
    return (-at(2 * h) + 8 * at(h) - 8 * at(-h) + at(-2 * h)) / (12 * h)


def min_gap(values):
    ordered = sorted(values)
    return min(b - a for a, b in zip(ordered, ordered[1:]))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradients_match_finite_differences(case, reduction):
    """grad_chosen / grad_rejected against 4th-order central differences of the reference:
    of the reduced loss, or for "none" of each pair's own loss (the diagonal). aot inputs are
    far from ties, so the sort permutation is locally constant."""
    n = 6
    arrays, kw = build(case, n, seed=12, mean=-5.0, spread=1.0)
    types = loss_types(case)
    pc, pr = arrays[0], arrays[1]
    rc, rr = (arrays[2], arrays[3]) if case.refs else (0.0 * pc, 0.0 * pr)
    if "aot" in types:
        assert min_gap(pc - pr) > 0.02
    if "aot_unpaired" in types:
        assert min_gap(pc - rc) > 0.02 and min_gap(pr - rr) > 0.02
    if "hinge" in types:  # keep away from the kink
        div = (kw.get("f_divergence_type", "reverse_kl"), kw.get("f_alpha_divergence_coef", 1.0))
        s = [score(x, *div) for x in (pc - rc).tolist() + (pr - rr).tolist()]
        assert min(abs(1 - kw["beta"] * (a - b)) for a, b in zip(s[:n], s[n:])) > 0.02

    result = preference_loss(*arrays, reduction=reduction, compute_grad=True, **kw)
    for which, grad in ((0, result.grad_chosen), (1, result.grad_rejected)):
        for i in range(n):
            if reduction == "none" and not (which == 1 and "aot_unpaired" in types):
                def f(moved, i=i):
                    return ref_losses(*moved, **kw)[i]
                want = finite_difference(f, arrays, which, i)
            else:
                # aot_unpaired's rejected side under "none" is the scatter of its positions'
                # derivatives, i.e. N times the gradient of the mean
                def f(moved):
                    return ref_reduced("sum" if reduction == "sum" else "mean", *moved, **kw)
                want = finite_difference(f, arrays, which, i)
                want *= n if reduction == "none" else 1
            assert grad[i] == pytest.approx(want, rel=1e-7, abs=1e-9), (which, i)


values_st = st.one_of(st.integers(-3, 3).map(float), st.floats(-1e3, 1e3).map(lambda v: v + 0.0))


@settings(max_examples=80, deadline=None)
@given(data=st.data(), n=st.integers(1, 10), unpaired=st.booleans(),
       beta=st.floats(1e-2, 10.0), eps=st.floats(0.0, 0.49),
       reduction=st.sampled_from(["mean", "sum", "none"]))
def test_property_aot(data, n, unpaired, beta, eps, reduction):
    """aot / aot_unpaired on small batches with ties (stable ranks decide who gets which
    sorted position) and weights: losses and scattered gradients against the reference."""
    arrays = [np.array(data.draw(st.lists(values_st, min_size=n, max_size=n)))
              for _ in range(4)]
    weights = np.array(data.draw(st.lists(st.floats(0.0, 4.0), min_size=n, max_size=n)))
    t = "aot_unpaired" if unpaired else "aot"
    result = preference_loss(*arrays, beta=beta, loss_type=t, label_smoothing=eps,
                             weights=weights, reduction=reduction, compute_grad=True)
    expected = ref_losses(*arrays, beta=beta, loss_type=t, label_smoothing=eps,
                          weights=weights)
    magnitude = 4 * max(float(np.max(np.abs(a))) for a in arrays)
    for i in range(n):
        assert_close_scaled(result.losses[i], expected[i], beta * weights[i], magnitude,
                            f"losses[{i}]")
    grad_c, grad_r = ref_aot_grads(t, *arrays, beta=beta, eps=eps, weights=weights)
    scale = 1.0 / n if reduction == "mean" else 1.0
    for got, want, name in ((result.grad_chosen, grad_c, "grad_chosen"),
                            (result.grad_rejected, grad_r, "grad_rejected")):
        for i in range(n):
            assert_close_scaled(got[i], scale * want[i], scale * beta * beta * max(weights),
                                magnitude, f"{name}[{i}]")
    assert_metrics_consistent(result, arrays)
    np.testing.assert_array_equal(result.chosen_rewards, beta * (arrays[0] - arrays[2]))
