"""Extreme inputs and accuracy in ulps against the mpmath reference.

Finite inputs must never give NaN, or inf where the true value is representable; the limits
must be exact; and the per-pair loss and gradient are measured in ulps on a dense sweep of z.
"""

from __future__ import annotations

import fractions
import math

import mpmath
import numpy as np
import pytest
from helpers import assert_same_array, max_ulp_distance
from reference import mp_pair_grad, mp_pair_loss, mp_sigmoid, mp_softplus, ulp_error, ulp_of

from dpo_fast import preference_loss

DBL_MAX = float(np.finfo(np.float64).max)

EPS64 = 2.0**-52
F32_MAX = float(np.finfo(np.float32).max)

# Measured on x86-64 over ~116k z in [-800, 800] (all SIMD paths give the same bits): plain
# DPO loss (= softplus) <= 1.68 ulp; smoothed loss <= 2.36 ulp; gradient <= 2.40 ulp of the
# size of its terms (beta = 1); float32 outputs correctly rounded.
LOSS_MAX_ULP = 2.0
SOFTPLUS_MAX_ULP = 1.75  # the bound documented in csrc/simd_math.h (1.68 measured)
SMOOTHED_LOSS_MAX_ULP = 3.0
GRAD_MAX_ULP = 3.0


def sweep_z() -> np.ndarray:
    """z over [-800, 800]: coarse everywhere, dense where log1p(exp(-|z|)) is not tiny."""
    return np.unique(np.concatenate([
        np.linspace(-800.0, 800.0, 1601),
        np.linspace(-40.0, 40.0, 4001),
        np.linspace(-4.0, 4.0, 4001),
        np.linspace(-40.0, 40.0, 80001)[39600:40401],  # step 0.001 over [-0.4, 0.4] ...
        np.linspace(-40.0, 40.0, 80001)[40400:40801],  # ... and over [0.4, 0.8]
        [0.0, -0.0, 5e-324, -5e-324, 1e-300, -1e-300, 1e-17, -1e-17, 1e-8, -1e-8,
         math.log(2), math.log(3), 0.8813735870195429, 0.881373587019543, 36.7, 37.5,
         -36.7, -37.5, 708.0, 709.8, 744.4, 745.1, 745.2, 746.0, 760.0, 761.0, -745.2],
    ]))


def kernel_pair_values(z: np.ndarray, *, eps: float, dtype=np.float64):
    """Per-pair losses and gradients of the kernel at exactly these z (beta = 1, no refs)."""
    result = preference_loss(z.astype(dtype), np.zeros(z.shape, dtype=dtype), beta=1.0,
                             label_smoothing=eps, reduction="none", compute_grad=True)
    return result.losses, result.grad_chosen


@pytest.fixture(scope="module")
def sweep():
    return sweep_z()


def plain_loss_errors(sweep):
    """ulp errors of the plain DPO loss, softplus(-z), over the sweep."""
    losses, _ = kernel_pair_values(sweep, eps=0.0)
    return [ulp_error(loss, mp_softplus(-z)) for z, loss in zip(sweep.tolist(),
                                                                 losses.tolist())]


@pytest.fixture(scope="module")
def plain_errors(sweep):
    return plain_loss_errors(sweep)


def test_loss_accuracy_sweep(sweep, plain_errors):
    """The plain DPO loss is within 2 ulps of mpmath over z in [-800, 800]."""
    worst = int(np.argmax(plain_errors))
    assert plain_errors[worst] <= LOSS_MAX_ULP, (
        f"max loss error {plain_errors[worst]:.3f} ulp at z = {sweep[worst]!r}")


def test_softplus_accuracy_sweep(sweep, plain_errors):
    """The plain DPO loss is softplus(-z) itself (no further rounding): within the
    1.75 ulp that csrc/simd_math.h documents for its softplus."""
    worst = int(np.argmax(plain_errors))
    assert plain_errors[worst] <= SOFTPLUS_MAX_ULP, (
        f"max softplus error {plain_errors[worst]:.3f} ulp at z = {sweep[worst]!r}")


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_smoothed_loss_accuracy_sweep(sweep, eps):
    """Conservative DPO loss within a few ulps of mpmath (exact for the double eps)."""
    z = sweep[::3]
    losses, _ = kernel_pair_values(z, eps=eps)
    errors = [ulp_error(loss, mp_pair_loss(v, eps)) for v, loss in zip(z.tolist(),
                                                                        losses.tolist())]
    worst = int(np.argmax(errors))
    assert errors[worst] <= SMOOTHED_LOSS_MAX_ULP, (
        f"max loss error {errors[worst]:.3f} ulp at z = {z[worst]!r}")


def test_gradient_accuracy_sweep(sweep):
    """d loss / d chosen = -sigmoid(-z) within a few ulps of mpmath (eps = 0)."""
    _, grads = kernel_pair_values(sweep, eps=0.0)
    errors = [ulp_error(g, mp_pair_grad(z, 1.0)) for z, g in zip(sweep.tolist(),
                                                                  grads.tolist())]
    worst = int(np.argmax(errors))
    assert errors[worst] <= GRAD_MAX_ULP, (
        f"max gradient error {errors[worst]:.3f} ulp at z = {sweep[worst]!r}")


@pytest.mark.parametrize("eps", [0.1, 0.45])
def test_smoothed_gradient_accuracy_sweep(sweep, eps):
    """With smoothing the two gradient terms cancel near the minimum; the error stays within
    a few ulps of the larger term."""
    z = sweep[::3]
    _, grads = kernel_pair_values(z, eps=eps)
    worst = 0.0
    for v, g in zip(z.tolist(), grads.tolist()):
        with mpmath.workprec(160):
            exact = mp_pair_grad(v, 1.0, eps)
            scale = eps * mp_sigmoid(v) + (1 - eps) * mp_sigmoid(-v)
            worst = max(worst, float(abs(mpmath.mpf(g) - exact) / ulp_of(scale)))
    assert worst <= GRAD_MAX_ULP, f"max gradient error {worst:.3f} ulp of the terms"


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_float32_outputs_within_one_ulp_of_exact(sweep, eps):
    """float32 outputs are the correctly rounded float32 of the exact value, to 1 ulp."""
    z = sweep[np.abs(sweep) < 3e38][::2].astype(np.float32)
    losses, grads = kernel_pair_values(z, eps=eps, dtype=np.float32)
    zs = z.astype(np.float64).tolist()
    exact_loss = np.array([float(mp_pair_loss(v, eps)) for v in zs]).astype(np.float32)
    exact_grad = np.array([float(mp_pair_grad(v, 1.0, eps)) for v in zs]).astype(np.float32)
    assert max_ulp_distance(losses, exact_loss) <= 1
    if eps == 0.0:
        assert max_ulp_distance(grads, exact_grad) <= 1


# ---------------------------------------------------------------------- |z| to 1e6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.45])
def test_huge_margins_give_exact_limits(dtype, eps):
    """|z| up to 1e6: no NaN/inf, loss = (1-eps)|z| (z<0) or eps*z (z>0), exact limits of
    the gradient."""
    z = np.array([-1e6, -1e5, -3e4, -1000.0, -800.0, 800.0, 1000.0, 3e4, 1e5, 1e6])
    beta = 0.5
    pc = (z / beta / 2).astype(dtype)
    pr = (-z / beta / 2).astype(dtype)
    result = preference_loss(pc, pr, beta=beta, label_smoothing=eps, reduction="none",
                             compute_grad=True)
    assert result.losses.dtype == dtype
    for name in ("losses", "chosen_rewards", "rejected_rewards", "grad_chosen"):
        assert np.all(np.isfinite(getattr(result, name))), name
    zz = beta * (pc.astype(np.float64) - pr.astype(np.float64))
    expected = np.where(zz < 0, (1.0 - eps) * -zz, eps * zz)
    exact = np.array([float(mp_pair_loss(v, eps)) for v in zz.tolist()]).astype(dtype)
    assert max_ulp_distance(result.losses, exact) <= 1
    np.testing.assert_allclose(result.losses, expected.astype(dtype), rtol=4 * EPS64)
    grad = result.grad_chosen.astype(np.float64)
    limits = np.where(zz < 0, -beta * (1.0 - eps), beta * eps)
    np.testing.assert_allclose(grad, limits, rtol=np.finfo(dtype).eps, atol=0)
    if eps == 0.0:
        assert np.all(grad[zz > 0] == 0.0) and np.all(result.losses[zz > 0] == 0.0)


def test_large_beta_and_large_differences():
    """beta = 1e3 with log-prob differences of 1e3 (z = +-1e6) stays finite and exact."""
    result = preference_loss([0.0, -1000.0], [-1000.0, 0.0], beta=1e3, reduction="none",
                             compute_grad=True)
    assert result.losses.tolist() == [0.0, 1e6]
    assert result.grad_chosen.tolist() == [0.0, -1e3]
    assert result.chosen_rewards.tolist() == [0.0, -1e6]


def test_subnormal_losses_are_returned():
    """For z = 720 the loss is exp(-720) ~ 2.03e-313 (subnormal), not flushed to zero."""
    z = np.array([700.0, 720.0, 740.0, 744.0, 745.0, 745.1, 746.0, 800.0])
    losses, grads = kernel_pair_values(z, eps=0.0)
    assert 2.0e-313 < losses[1] < 2.1e-313
    for v, loss, g in zip(z.tolist(), losses.tolist(), grads.tolist()):
        # Subnormal results are measured in units of the smallest subnormal.
        assert ulp_error(loss, mp_softplus(-v)) <= 1.0, v
        assert ulp_error(g, mp_pair_grad(v, 1.0)) <= 1.0, v
    assert losses[-1] == 0.0 and grads[-1] == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tiny_and_subnormal_inputs(dtype):
    """Tiny, subnormal and signed-zero inputs: z ~ 0, loss ln 2, rewards exact."""
    tiny = np.finfo(dtype).smallest_subnormal
    pc = np.array([tiny, -tiny, 0.0, -0.0, 1e-30], dtype=dtype)
    pr = np.array([-tiny, tiny, -0.0, 0.0, 0.0], dtype=dtype)
    result = preference_loss(pc, pr, pr, pc, beta=0.5, reduction="none", compute_grad=True)
    np.testing.assert_allclose(result.losses, math.log(2.0), rtol=np.finfo(dtype).eps)
    rewards = (0.5 * (pc.astype(np.float64) - pr.astype(np.float64))).astype(dtype)
    assert_same_array(result.chosen_rewards, rewards)


# ---------------------------------------------------------------- huge log-probs


def test_huge_inputs_with_finite_differences_float64():
    """Log-probs of +-1e300 whose differences are finite: rewards exact, loss = |z| or 0."""
    pc = np.array([1e300, -1e300, 1e300, -5e299, 1e300])
    rc = np.array([-1e300, 1e300, 1e300, 5e299, 1e300])
    pr = np.array([-1e300, 1e300, -1e300, 1e299, -1e300])
    rr = np.array([1e300, -1e300, -1e300, -1e299, 1e300])
    beta = 0.1
    result = preference_loss(pc, pr, rc, rr, beta=beta, reduction="none", compute_grad=True,
                             label_smoothing=0.0)
    c, r = pc - rc, pr - rr
    z = beta * (c - r)
    assert np.all(np.isfinite(z))
    assert_same_array(result.chosen_rewards, beta * c)
    assert_same_array(result.rejected_rewards, beta * r)
    assert z[2] == 0.0 and abs(z[4]) == 2e299
    expected = np.where(z < 0, -z, 0.0)
    expected[2] = result.losses[2]
    assert math.isclose(result.losses[2], math.log(2.0), rel_tol=EPS64)
    assert_same_array(result.losses, expected)
    expected_grad = np.where(z < 0, -beta, 0.0)
    expected_grad[2] = -beta / 2
    assert_same_array(result.grad_chosen, expected_grad)
    for value in result.metrics.values():
        assert math.isfinite(value)


def test_huge_inputs_float32():
    """float32 log-probs near the float32 maximum: computed in double, so nothing
    overflows where the result is representable in float32."""
    big = np.float32(3e38)
    pc = np.array([big, -big], dtype=np.float32)
    rc = np.array([-big, big], dtype=np.float32)
    pr = np.array([-big, big], dtype=np.float32)
    rr = np.array([big, -big], dtype=np.float32)
    result = preference_loss(pc, pr, rc, rr, beta=0.01, reduction="none", compute_grad=True)
    c = pc.astype(np.float64) - rc.astype(np.float64)  # +-6e38: only representable in double
    assert_same_array(result.chosen_rewards, (0.01 * c).astype(np.float32))
    assert np.all(np.isfinite(result.chosen_rewards))
    z = 0.01 * (c - (pr.astype(np.float64) - rr.astype(np.float64)))
    assert_same_array(result.losses, np.where(z < 0, -z, 0.0).astype(np.float32))
    mean = preference_loss(pc, pr, rc, rr, beta=0.01)
    assert math.isfinite(mean.loss) and all(math.isfinite(v) for v in mean.metrics.values())


def test_near_float64_max_differences_do_not_give_nan():
    """Finite inputs near the float64 maximum whose difference overflows double: the true
    z is 0 here (loss ln 2) and the true rewards (beta * 2e308 = 2e307) are representable,
    so the spec requires no NaN and no inf."""
    pc = np.array([1e308])
    rc = np.array([-1e308])
    result = preference_loss(pc, pc, rc, rc, beta=0.1, reduction="none", compute_grad=True)
    assert math.isclose(result.losses[0], math.log(2.0), rel_tol=1e-15), result.losses
    assert np.all(np.isfinite(result.chosen_rewards)), result.chosen_rewards
    assert math.isclose(result.chosen_rewards[0], 2e307, rel_tol=1e-15)


def test_metric_means_of_near_max_inputs_are_finite():
    """The mean of [1.5e308, 1.5e308] is 1.5e308: finite metrics for finite inputs."""
    pc = np.array([1.5e308, 1.5e308])
    pr = np.array([1.5e308, 1.5e308])
    result = preference_loss(pc, pr, pc, pr, beta=0.5)
    assert result.metrics["logps/chosen"] == 1.5e308
    assert result.metrics["logps/rejected"] == 1.5e308
    assert math.isclose(result.loss, math.log(2.0), rel_tol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_nan_for_random_extreme_inputs(dtype):
    """Random inputs spread over many orders of magnitude (differences finite in double):
    every output finite whenever its exact value is representable."""
    rng = np.random.default_rng(42)
    n = 20_000
    limit = 300 if dtype == np.float64 else 37
    arrays = [(rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(-30, limit, n)).astype(dtype)
              for _ in range(4)]
    for beta in (1e-3, 1.0, 1e3):
        for eps in (0.0, 0.3):
            result = preference_loss(*arrays, beta=beta, label_smoothing=eps,
                                     compute_grad=True, reduction="none")
            wide = [a.astype(np.float64) for a in arrays]
            c, r = wide[0] - wide[2], wide[1] - wide[3]
            with np.errstate(over="ignore"):
                fits = (np.abs(beta * c) < F32_MAX) & (np.abs(beta * r) < F32_MAX) & (
                    np.abs(beta * (c - r)) < F32_MAX) if dtype == np.float32 else np.ones(n, bool)
            assert not np.any(np.isnan(result.losses))
            assert not np.any(np.isnan(result.grad_chosen))
            for name in ("losses", "chosen_rewards", "rejected_rewards", "grad_chosen"):
                assert np.all(np.isfinite(getattr(result, name)[fits])), name
            assert np.all(result.losses >= 0)


# ------------------------------------------------------------------ regressions
#
# Failures the fuzzing found (tests/test_fuzz_*.py, scripts/fuzz_atheris.py; docs/reliability.md,
# section 6), pinned beside the code they guard. A crash runs in a subprocess.


@pytest.mark.parametrize("alpha", [1.0 - 2.0**-53, 1.0 - 2.0**-52, 1.0 - 1e-12])
def test_regression_alpha_near_one_is_accurate(alpha):
    """Found by the fuzzing: the alpha-divergence score difference was (exp(a c) - exp(a r))
    / a, a = alpha - 1, which cancels for alpha just below 1 (alpha = 1 - 2**-53: 0.1269
    instead of 0.04859). Now (expm1(a c) - expm1(a r)) / a (csrc/simd_math.h dpo_expm1_exp):
    alpha -> 1 is reverse KL, so alpha = 1 - tiny gives the reverse-KL loss."""
    args = [np.array([v]) for v in (-10.0, -12.0, -11.0, -11.5)]
    near = preference_loss(*args, beta=2.0, f_divergence_type="alpha_divergence",
                           f_alpha_divergence_coef=alpha)
    limit = preference_loss(*args, beta=2.0)
    assert near.loss == pytest.approx(limit.loss, rel=1e-6)
    a, c, r = alpha - 1.0, 1.0, -0.5  # the log-ratios of args
    z = 2.0 * (math.expm1(a * c) - math.expm1(a * r)) / a
    assert near.loss == pytest.approx(math.log1p(math.exp(-z)), rel=1e-14)


@pytest.mark.parametrize(("row", "beta"), [
    ((DBL_MAX, DBL_MAX, -DBL_MAX, -DBL_MAX), 1.0), ((1e10, 1e10, 0.0, 0.0), 1e300)])
def test_regression_margins_of_overflowing_rewards(row, beta):
    """Found by the fuzzing: metrics['rewards/margins'] (mean of chosen - rejected reward) was
    inf - inf = NaN when both rewards overflow to +inf, where the margin beta * (c - r) is 0.
    Now those rows are redone from quarter-scaled log-ratios."""
    result = preference_loss(*[np.array([v]) for v in row], beta=beta)
    assert not math.isnan(result.metrics["rewards/margins"])


@pytest.mark.parametrize(("rows", "beta"), [
    (([0.0, 0.0], [1.7e308, -1.7e308], None, None), 2.0),
    (([0.0, 0.0], [1.7e308, -1.7e308], [0.0, 0.0], [0.0, 0.0]), 2.0),
    (([DBL_MAX, -DBL_MAX], [0.0, 0.0], [-DBL_MAX, DBL_MAX], [0.0, 0.0]), 1.0),
    (([1e300, -1e300, 5.0], [-1e300, 1e300, 1.0], None, None), 1e10)])
def test_regression_reward_means_of_rewards_overflowing_both_ways(rows, beta):
    """Found by the atheris harness (scripts/fuzz_atheris.py): rewards overflowing to +inf in
    one pair and -inf in another gave NaN means (rewards/chosen, rewards/rejected,
    rewards/margins) where the mean has a value. Now those means are taken from quarter-scaled
    log-ratios, 4 beta * sum((x/4) / n): checked against exact rational arithmetic."""
    arrays = [None if r is None else np.array(r) for r in rows]
    result = preference_loss(*arrays, beta=beta)
    exact = fractions.Fraction
    n = len(rows[0])
    zeros = [0.0] * n
    chosen = [exact(beta) * (exact(p) - exact(q)) for p, q in zip(rows[0], rows[2] or zeros)]
    rejected = [exact(beta) * (exact(p) - exact(q)) for p, q in zip(rows[1], rows[3] or zeros)]
    for key, terms in (("rewards/chosen", chosen), ("rewards/rejected", rejected),
                       ("rewards/margins", [c - r for c, r in zip(chosen, rejected)])):
        want = float(sum(terms) / n)
        assert result.metrics[key] == pytest.approx(want, rel=1e-12, abs=1e-300), key


@pytest.mark.parametrize("loss", ["aot", "aot_unpaired", ["aot", "aot_unpaired"],
                                  ["sigmoid", "aot"]])
@pytest.mark.parametrize("zero", ["weights", "loss_weights"])
def test_regression_zero_weight_of_an_infinite_sorted_loss(loss, zero):
    """Found by the atheris harness: aot / aot_unpaired terms are added in Python, as
    weight * loss; a zero weight (per pair, or of the type) times an infinite loss (beta * (c -
    r) overflowing) gave NaN, where the kernels drop the term (dpo_mul0). Now 0 there too."""
    types = [loss] if isinstance(loss, str) else loss
    kw = {"weights": [0.0, 1.0]} if zero == "weights" else \
        {"loss_weights": [0.0 if t.startswith("aot") else 1.0 for t in types]}
    result = preference_loss([671.875, -1.0], [DBL_MAX, -2.0], beta=645.0, loss_type=loss,
                             reduction="none", compute_grad=True, **kw)
    assert not np.isnan(result.losses).any() and not np.isnan(result.grad_chosen).any()
    if zero == "weights":
        assert result.losses[0] == 0.0 and result.grad_chosen[0] == 0.0
    assert not math.isnan(result.metrics["rewards/margins"])
