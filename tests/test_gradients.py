"""Gradients of preference_loss: finite differences and the analytic reference derivative."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import assert_same_array
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import reference_preference_loss

from dpo_fast import preference_loss

EPS64 = 2.0**-52

small_logp = st.floats(min_value=-60.0, max_value=0.0)
grad_betas = st.floats(min_value=0.01, max_value=10.0)
smoothing = st.sampled_from([0.0, 0.0, 0.1, 0.25, 0.45])
reductions = st.sampled_from(["mean", "sum", "none"])


@st.composite
def grad_problem(draw, max_size=5):
    n = draw(st.integers(min_value=1, max_value=max_size))
    columns = [np.array(draw(st.lists(small_logp, min_size=n, max_size=n))) for _ in range(4)]
    with_ref = draw(st.booleans())
    return columns[:2] + (columns[2:] if with_ref else [None, None]), draw(grad_betas)


def reduced_loss(arrays, *, which, index, value, **kwargs):
    """The float64 reduced loss (or pair `index`'s loss for reduction='none') with the
    `which`-th input's element `index` replaced by `value`."""
    arrays = [None if a is None else a.copy() for a in arrays]
    arrays[which][index] = value
    result = preference_loss(*arrays, **kwargs)
    return result.losses[index] if kwargs["reduction"] == "none" else result.loss


def finite_difference(arrays, which, index, h, **kwargs):
    """4th-order central difference: (-f(x+2h) + 8 f(x+h) - 8 f(x-h) + f(x-2h)) / (12 h),
    with the steps taken as the exactly representable x +- h, x +- 2h."""
    x = float(arrays[which][index])
    points = [x + 2 * h, x + h, x - h, x - 2 * h]
    f = [reduced_loss(arrays, which=which, index=index, value=p, **kwargs) for p in points]
    # Steps actually taken (x + h may round); exact to well below the tolerance.
    step = ((points[0] - points[3]) / 4 + (points[1] - points[2]) / 2) / 2
    return (-f[0] + 8 * f[1] - 8 * f[2] + f[3]) / (12 * step), max(abs(v) for v in f)


def check_fd(arrays, beta, eps, reduction):
    n = arrays[0].shape[0]
    kwargs = {"beta": beta, "label_smoothing": eps, "reduction": reduction}
    result = preference_loss(*arrays, compute_grad=True, **kwargs)
    # The step moves z by about 2^-10: truncation error ~ (beta*h)^4 * beta, far below rtol.
    h = 2.0 ** round(math.log2(2.0**-10 / beta))
    terms = n if reduction != "none" else 1
    for which, grad in ((0, result.grad_chosen), (1, result.grad_rejected)):
        for i in range(n):
            fd, f_size = finite_difference(arrays, which, i, h, **kwargs)
            # Rounding noise of the loss evaluations (a few ulps of each of `terms` terms),
            # amplified by 18/12 / h; plus the relative target.
            noise = 1.5 * 16 * terms * EPS64 * (f_size + 1.0) / h
            tol = 1e-7 * abs(grad[i]) + noise
            assert abs(fd - grad[i]) <= tol, (
                f"input {which} row {i}: finite difference {fd!r} vs gradient {grad[i]!r}")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.4])
@pytest.mark.parametrize("with_ref", [True, False])
def test_finite_differences_fixed(reduction, eps, with_ref):
    """Fixed cases covering |z| from 0 to ~20 for each reduction and smoothing."""
    rng = np.random.default_rng(int(eps * 100) + len(reduction))
    n = 6
    arrays = [-rng.uniform(0, 40, n) for _ in range(4)]
    arrays[0][0] = arrays[1][0]  # z = 0 for the reference-free case
    if not with_ref:
        arrays[2:] = [None, None]
    check_fd(arrays, 0.5, eps, reduction)


@settings(max_examples=60)
@given(grad_problem(), smoothing, reductions)
def test_finite_differences_hypothesis(problem, eps, reduction):
    """Random small problems: analytic gradients match 4th-order central differences."""
    arrays, beta = problem
    check_fd(arrays, beta, eps, reduction)


@settings(max_examples=150)
@given(
    st.integers(min_value=1, max_value=30).flatmap(
        lambda n: st.tuples(*[st.lists(st.floats(min_value=-1e4, max_value=1e4),
                                       min_size=n, max_size=n)] * 4)),
    st.floats(min_value=1e-3, max_value=1e3),
    st.floats(min_value=0.0, max_value=0.49),
    reductions,
    st.booleans(),
)
def test_gradient_matches_reference_derivative(columns, beta, eps, reduction, with_ref):
    """grad_chosen = beta * (eps*sigmoid(z) - (1-eps)*sigmoid(-z)) / divisor to ~1e-15 of
    the terms' size; grad_rejected is exactly its negation."""
    pc, pr, rc, rr = (np.array(c) for c in columns)
    refs = (rc, rr) if with_ref else (None, None)
    result = preference_loss(pc, pr, *refs, beta=beta, label_smoothing=eps,
                             reduction=reduction, compute_grad=True)
    ref = reference_preference_loss(pc, pr, *refs, beta=beta, label_smoothing=eps,
                                    reduction=reduction)
    err = np.abs(result.grad_chosen - np.array(ref.grad_chosen))
    scale = np.array(ref.grad_scale)
    assert np.all(err <= 5 * EPS64 * scale), np.max(err / scale)
    assert_same_array(result.grad_rejected, -result.grad_chosen, "grad_rejected")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradient_reduction_scaling(dtype):
    """'mean' gradients are the per-pair ('none') ones divided by n; 'sum' equals 'none'."""
    rng = np.random.default_rng(3)
    n = 10_001
    arrays = [(-rng.uniform(0, 100, n)).astype(dtype) for _ in range(4)]
    by = {red: preference_loss(*arrays, beta=0.2, reduction=red, compute_grad=True,
                               label_smoothing=0.05)
          for red in ("mean", "sum", "none")}
    assert_same_array(by["sum"].grad_chosen, by["none"].grad_chosen)
    per_pair = preference_loss(*[a.astype(np.float64) for a in arrays], beta=0.2,
                               reduction="none", compute_grad=True, label_smoothing=0.05)
    expected_mean = (per_pair.grad_chosen / n).astype(dtype)
    assert_same_array(by["mean"].grad_chosen, expected_mean)


def test_gradient_limits():
    """d loss/d chosen -> -beta*(1-eps) for z -> -inf and beta*eps for z -> +inf."""
    beta = 0.3
    pc = np.array([-1e6, 1e6, -3000.0, 3000.0])  # |z| = 3e5 and 900
    pr = np.zeros(4)
    for eps in (0.0, 0.2):
        g = preference_loss(pc, pr, beta=beta, label_smoothing=eps, reduction="none",
                            compute_grad=True).grad_chosen
        assert g[0] == beta * -(1.0 - eps) and g[2] == beta * -(1.0 - eps)
        assert g[1] == beta * eps and g[3] == beta * eps
