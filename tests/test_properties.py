"""Property-based tests of preference_loss over wide input ranges."""

from __future__ import annotations

import math

import numpy as np
from helpers import assert_same_array
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from reference import pair_loss_from_z, reference_preference_loss

from dpo_fast import preference_loss

EPS64 = 2.0**-52
SUBNORMAL_MIN = 5e-324

logp = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)
betas = st.floats(min_value=1e-3, max_value=1e3)
smoothing = st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=0.49))


@st.composite
def problems(draw, max_size=50):
    """(pc, pr, rc, rr) float64 arrays of one length, refs possibly None, beta and eps."""
    n = draw(st.integers(min_value=1, max_value=max_size))
    columns = [np.array(draw(st.lists(logp, min_size=n, max_size=n))) for _ in range(4)]
    if draw(st.booleans()):
        columns[2:] = [None, None]
    return columns, draw(betas), draw(smoothing)


def compute(columns, beta, eps, **kwargs):
    return preference_loss(*columns, beta=beta, label_smoothing=eps, compute_grad=True,
                           **kwargs)


def ref_of(columns, beta, eps, **kwargs):
    return reference_preference_loss(*(None if c is None else c.tolist() for c in columns),
                                     beta=beta, label_smoothing=eps, **kwargs)


@settings(max_examples=200)
@given(problems())
def test_loss_non_negative_finite_and_matches_reference(problem):
    """Per-pair losses are >= 0, finite, and within 4 ulps of the reference; the mean
    within summation error."""
    columns, beta, eps = problem
    result = compute(columns, beta, eps)
    ref = ref_of(columns, beta, eps)
    assert np.all(result.losses >= 0) and np.all(np.isfinite(result.losses))
    # atol: results in the subnormal range (e.g. exp(-711)) have absolute, not relative,
    # precision; a few units of the smallest subnormal is the same 4-ulp bound there.
    np.testing.assert_allclose(result.losses, ref.losses, rtol=4 * EPS64, atol=4 * SUBNORMAL_MIN)
    n = len(ref.losses)
    assert math.isclose(result.loss, ref.loss, rel_tol=(n + 12) * EPS64)
    assert result.loss >= 0


@settings(max_examples=200)
@given(problems())
def test_rewards_are_exact(problem):
    """Rewards are beta * (policy - ref), the same IEEE operations as the reference."""
    columns, beta, eps = problem
    result = compute(columns, beta, eps)
    ref = ref_of(columns, beta, eps)
    assert_same_array(result.chosen_rewards, np.array(ref.chosen_rewards))
    assert_same_array(result.rejected_rewards, np.array(ref.rejected_rewards))


@settings(max_examples=200)
@given(problems())
def test_gradient_signs_and_antisymmetry(problem):
    """grad_rejected == -grad_chosen exactly; with eps = 0, grad_chosen <= 0 <= grad_rejected;
    |grad_chosen| <= beta / n for the mean."""
    columns, beta, eps = problem
    result = compute(columns, beta, eps)
    n = columns[0].shape[0]
    assert_same_array(result.grad_rejected, -result.grad_chosen)
    if eps == 0.0:
        assert np.all(result.grad_chosen <= 0) and np.all(result.grad_rejected >= 0)
    assert np.all(np.abs(result.grad_chosen) <= beta / n * (1 + 4 * EPS64))


@settings(max_examples=150)
@given(problems())
def test_sum_equals_mean_times_n(problem):
    """The 'sum' loss equals the 'mean' loss times n within rounding, and 'none' holds the
    same per-pair losses."""
    columns, beta, eps = problem
    n = columns[0].shape[0]
    mean = compute(columns, beta, eps, reduction="mean")
    total = compute(columns, beta, eps, reduction="sum")
    none = compute(columns, beta, eps, reduction="none")
    assert math.isclose(mean.loss * n, total.loss, rel_tol=2 * EPS64, abs_tol=1e-300)
    assert_same_array(none.loss, mean.losses)
    np.testing.assert_allclose(total.grad_chosen / n, mean.grad_chosen, rtol=EPS64)


@settings(max_examples=200)
@given(problems())
def test_swapping_chosen_and_rejected_negates_z(problem):
    """Swapping chosen and rejected (and their references) maps z to -z: rewards swap
    exactly, losses become the loss at -z, loss(z) - loss(-z) = -(1 - 2 eps) z, and the
    eps = 0 gradients satisfy g(z) + g(-z) = -beta / n."""
    columns, beta, eps = problem
    pc, pr, rc, rr = columns
    swapped_columns = [pr, pc, rr, rc]
    result = compute(columns, beta, eps, reduction="none")
    swapped = compute(swapped_columns, beta, eps, reduction="none")
    assert_same_array(swapped.chosen_rewards, result.rejected_rewards)
    assert_same_array(swapped.rejected_rewards, result.chosen_rewards)
    ref = ref_of(columns, beta, eps)
    z = np.array(ref.z)
    expected_swapped = np.array([pair_loss_from_z(-v, eps) for v in ref.z])
    np.testing.assert_allclose(swapped.losses, expected_swapped, rtol=4 * EPS64,
                               atol=4 * SUBNORMAL_MIN)
    difference = result.losses - swapped.losses
    scale = np.maximum(result.losses, swapped.losses)
    assert np.all(np.abs(difference + (1 - 2 * eps) * z) <= 8 * EPS64 * scale + 1e-300)
    if eps == 0.0:
        total = result.grad_chosen + swapped.grad_chosen
        np.testing.assert_allclose(total, -beta, rtol=4 * EPS64)
    n = pc.shape[0]
    wins = round(result.metrics["rewards/accuracies"] * n)
    losses = round(swapped.metrics["rewards/accuracies"] * n)
    ties = int(np.sum(result.chosen_rewards == result.rejected_rewards))
    assert wins + losses + ties == n


@settings(max_examples=200)
@given(problems())
def test_metrics_consistent(problem):
    """Metrics match the reference means and each other (margins = chosen - rejected,
    accuracies a multiple of 1/n in [0, 1])."""
    columns, beta, eps = problem
    result = compute(columns, beta, eps)
    ref = ref_of(columns, beta, eps)
    n = columns[0].shape[0]
    metrics = result.metrics
    assert set(metrics) == set(ref.metrics)
    assert metrics["rewards/accuracies"] == ref.metrics["rewards/accuracies"]
    assert 0.0 <= metrics["rewards/accuracies"] <= 1.0
    assert math.isclose(metrics["rewards/accuracies"] * n,
                        round(metrics["rewards/accuracies"] * n), abs_tol=1e-9)
    sizes = {
        "rewards/chosen": np.abs(result.chosen_rewards).mean(),
        "rewards/rejected": np.abs(result.rejected_rewards).mean(),
        "rewards/margins": (np.abs(result.chosen_rewards) + np.abs(result.rejected_rewards)
                            ).mean(),
        "logps/chosen": np.abs(columns[0]).mean(),
        "logps/rejected": np.abs(columns[1]).mean(),
    }
    for name, size in sizes.items():
        assert abs(metrics[name] - ref.metrics[name]) <= 2 * (n + 8) * EPS64 * size, name
    margin = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    assert abs(metrics["rewards/margins"] - margin) <= 4 * (n + 8) * EPS64 * sizes[
        "rewards/margins"]


@settings(max_examples=150)
@given(problems(max_size=20), st.floats(min_value=0.0, max_value=0.49))
def test_loss_monotone_in_margin(problem, eps):
    """Raising the chosen policy log-prob never raises a pair's loss when eps = 0, and
    with eps > 0 the loss is minimal at z* = log((1-eps)/eps)."""
    columns, beta, _ = problem
    pc = columns[0]
    step = np.abs(pc) * 1e-3 + 1.0
    base = compute(columns, beta, 0.0, reduction="none").losses
    raised = compute([pc + step] + columns[1:], beta, 0.0, reduction="none").losses
    assert np.all(raised <= base)
    assume(eps > 1e-3)
    z_star = math.log((1 - eps) / eps)
    at_min = compute([np.array([z_star]), np.array([0.0])], 1.0, eps, reduction="none")
    assert abs(at_min.grad_chosen[0]) <= 4 * EPS64
    for dz in (1e-3, -1e-3, 1.0, -1.0):
        off = compute([np.array([z_star + dz]), np.array([0.0])], 1.0, eps, reduction="none")
        assert off.losses[0] >= at_min.losses[0]


@settings(max_examples=100)
@given(problems(max_size=30))
def test_float32_matches_float64_rounded(problem):
    """float32 inputs give the float64 results on the same values, rounded once."""
    columns, beta, eps = problem
    c32 = [None if c is None else c.astype(np.float32) for c in columns]
    c64 = [None if c is None else c.astype(np.float64) for c in c32]
    r32 = compute(c32, beta, eps)
    r64 = compute(c64, beta, eps)
    for name in ("losses", "chosen_rewards", "rejected_rewards", "grad_chosen",
                 "grad_rejected"):
        with np.errstate(over="ignore", under="ignore"):
            assert_same_array(getattr(r32, name), getattr(r64, name).astype(np.float32), name)
    assert r32.loss == r64.loss and r32.metrics == r64.metrics
