"""dpo_fast.preference_loss against the independent float64 reference; dtypes, layouts, out=."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import assert_same_array, assert_same_float, max_ulp_distance, random_logps
from reference import reference_preference_loss

from dpo_fast import PreferenceLossResult, preference_loss

EPS64 = 2.0**-52
METRIC_NAMES = ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected"]
OUTPUT_NAMES = ["losses", "chosen_rewards", "rejected_rewards", "grad_chosen", "grad_rejected"]


def check_against_reference(result, ref, n, chosen, rejected, *, reduction="mean", ulps=4.0):
    """Compare a float64 PreferenceLossResult with a ReferenceResult.

    Rewards are plain IEEE arithmetic done in the same order, so they must be bit-exact;
    losses within `ulps` relative; gradients within `ulps` of the size of their terms;
    sums within the error of an n-term summation.
    """
    assert_same_array(result.chosen_rewards, np.array(ref.chosen_rewards), "chosen_rewards")
    assert_same_array(result.rejected_rewards, np.array(ref.rejected_rewards),
                      "rejected_rewards")
    np.testing.assert_allclose(result.losses, ref.losses, rtol=ulps * EPS64, atol=0)
    sum_tol = (n + 8) * EPS64
    if reduction == "none":
        assert result.loss is result.losses
    else:
        assert type(result.loss) is float
        assert math.isclose(result.loss, ref.loss, rel_tol=sum_tol + ulps * EPS64, abs_tol=0)
    if result.grad_chosen is not None:
        scale = np.array(ref.grad_scale)
        err = np.abs(result.grad_chosen - np.array(ref.grad_chosen))
        assert np.all(err <= ulps * EPS64 * scale), f"max err/scale {np.max(err / scale)}"
        assert_same_array(result.grad_rejected, -result.grad_chosen, "grad_rejected")
    check_metrics(result.metrics, ref.metrics, result, n, chosen, rejected)


def check_metrics(metrics, ref_metrics, result, n, chosen, rejected):
    """Metrics have TRL's names, are Python floats and match the reference sums."""
    assert list(metrics) == METRIC_NAMES
    for name in METRIC_NAMES:
        assert type(metrics[name]) is float, name
    assert metrics["rewards/accuracies"] == ref_metrics["rewards/accuracies"]
    magnitude = {
        "rewards/chosen": np.abs(result.chosen_rewards).astype(np.float64).mean(),
        "rewards/rejected": np.abs(result.rejected_rewards).astype(np.float64).mean(),
        "rewards/margins": np.abs(result.chosen_rewards.astype(np.float64)
                                  - result.rejected_rewards).mean(),
        "logps/chosen": np.abs(np.asarray(chosen, dtype=np.float64)).mean(),
        "logps/rejected": np.abs(np.asarray(rejected, dtype=np.float64)).mean(),
    }
    for name, size in magnitude.items():
        assert abs(metrics[name] - ref_metrics[name]) <= (n + 8) * EPS64 * size * 2, name


def make_inputs(n, seed, dtype=np.float64, extremes=False):
    rng = np.random.default_rng(seed)
    return [a.astype(dtype) for a in random_logps(rng, n, extremes=extremes)]


# ------------------------------------------------------------------ reference values


def test_reference_value_single_pair():
    """The spec's single-pair value: pc=-10, pr=-12, rc=-11, rr=-11.5, beta=0.1."""
    args = [np.array([v]) for v in (-10.0, -12.0, -11.0, -11.5)]
    plain = preference_loss(*args, beta=0.1)
    smoothed = preference_loss(*args, beta=0.1, label_smoothing=0.1)
    assert math.isclose(plain.loss, 0.6209570477895321, rel_tol=2 * EPS64)
    assert math.isclose(smoothed.loss, 0.6359570477895321, rel_tol=2 * EPS64)
    assert plain.chosen_rewards.tolist() == [0.1 * (-10.0 - -11.0)]
    assert plain.rejected_rewards.tolist() == [0.1 * (-12.0 - -11.5)]


def test_zero_margin_is_ln2():
    """At z = 0 the loss is ln 2 (for any label smoothing) and d loss/dz = -(1 - 2 eps)/2."""
    x = np.array([-3.0, -1.0, 0.0])
    for eps in (0.0, 0.25):
        result = preference_loss(x, x, beta=0.7, label_smoothing=eps, compute_grad=True,
                                 reduction="none")
        assert np.all(np.abs(result.losses - math.log(2.0)) <= EPS64)
        np.testing.assert_allclose(result.grad_chosen, 0.7 * -(1 - 2 * eps) / 2, rtol=2 * EPS64)


def test_result_type_is_frozen_with_the_documented_fields():
    """The result is a read-only PreferenceLossResult with the documented fields, from both
    the compiled fast path (arrays) and the general path (lists)."""
    names = ("loss", "losses", "chosen_rewards", "rejected_rewards", "grad_chosen",
             "grad_rejected", "metrics")
    assert PreferenceLossResult.__match_args__ == names
    for result in (preference_loss([-1.0], [-2.0]),
                   preference_loss(np.array([-1.0]), np.array([-2.0]))):
        assert isinstance(result, PreferenceLossResult)
        for name in names:
            with pytest.raises(AttributeError):
                setattr(result, name, 0.0)
        assert result.grad_chosen is None and result.grad_rejected is None
        assert result.metrics is result.metrics  # built once


# ------------------------------------------------------------ against the reference


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("with_ref", [True, False])
@pytest.mark.parametrize("n", [1, 5, 33, 1000, 8193])
def test_matches_reference(n, with_ref, eps, reduction):
    """Every output against the plain float64 reference, for each reduction and smoothing."""
    pc, pr, rc, rr = make_inputs(n, seed=n * 7 + int(eps * 10), extremes=n > 30)
    refs = (rc, rr) if with_ref else (None, None)
    beta = 0.25
    result = preference_loss(pc, pr, *refs, beta=beta, label_smoothing=eps,
                             reduction=reduction, compute_grad=True)
    ref = reference_preference_loss(pc.tolist(), pr.tolist(),
                                    *(None if r is None else r.tolist() for r in refs),
                                    beta=beta, label_smoothing=eps, reduction=reduction)
    check_against_reference(result, ref, n, pc, pr, reduction=reduction)


def test_reference_free_equals_explicit_zeros():
    """ref_* = None gives exactly the results of all-zero reference log-probs."""
    pc, pr, _, _ = make_inputs(300, seed=1, extremes=True)
    zeros = np.zeros_like(pc)
    for eps in (0.0, 0.2):
        free = preference_loss(pc, pr, beta=0.5, label_smoothing=eps, compute_grad=True)
        explicit = preference_loss(pc, pr, zeros, zeros, beta=0.5, label_smoothing=eps,
                                   compute_grad=True)
        assert_same_results(free, explicit)


def test_label_smoothing_identity():
    """loss(eps) = (1 - eps) * loss(0) + eps * loss(0 with chosen/rejected swapped)."""
    pc, pr, rc, rr = make_inputs(200, seed=3)
    plain = preference_loss(pc, pr, rc, rr, beta=0.2, reduction="none").losses
    swapped = preference_loss(pr, pc, rr, rc, beta=0.2, reduction="none").losses
    for eps in (0.05, 0.25, 0.49):
        smoothed = preference_loss(pc, pr, rc, rr, beta=0.2, label_smoothing=eps,
                                   reduction="none").losses
        np.testing.assert_allclose(smoothed, (1 - eps) * plain + eps * swapped, rtol=8 * EPS64)


def test_reductions_are_consistent():
    """mean = sum / n; 'none' returns the per-pair array itself; gradients scale by 1/n."""
    n = 1234
    pc, pr, rc, rr = make_inputs(n, seed=4)
    results = {red: preference_loss(pc, pr, rc, rr, reduction=red, compute_grad=True)
               for red in ("mean", "sum", "none")}
    assert_same_float(results["mean"].loss, results["sum"].loss / n)
    assert results["none"].loss is results["none"].losses
    for red in ("sum", "mean"):
        assert_same_array(results[red].losses, results["none"].losses, f"{red}.losses")
    assert_same_array(results["sum"].grad_chosen, results["none"].grad_chosen, "sum grads")
    np.testing.assert_allclose(results["mean"].grad_chosen, results["none"].grad_chosen / n,
                               rtol=EPS64)
    for red in ("sum", "none"):
        assert results[red].metrics == results["mean"].metrics


def test_metrics_accuracy_is_strict():
    """rewards/accuracies counts chosen_reward > rejected_reward strictly (ties count 0)."""
    pc = np.array([-1.0, -2.0, -3.0, -4.0])
    pr = np.array([-2.0, -2.0, -2.0, -4.0])
    result = preference_loss(pc, pr, beta=1.0)
    assert result.metrics["rewards/accuracies"] == 0.25
    assert result.metrics["rewards/margins"] == (1.0 + 0.0 - 1.0 + 0.0) / 4
    assert result.metrics["logps/chosen"] == -2.5
    assert result.metrics["logps/rejected"] == -2.5


def assert_same_results(a, b):
    """Two PreferenceLossResults are identical bit for bit."""
    if isinstance(a.loss, float):
        assert_same_float(a.loss, b.loss, "loss")
    else:
        assert_same_array(a.loss, b.loss, "loss")
    for name in OUTPUT_NAMES:
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            assert x is None and y is None, name
        else:
            assert_same_array(x, y, name)
    assert list(a.metrics) == list(b.metrics)
    for key in a.metrics:
        assert_same_float(a.metrics[key], b.metrics[key], key)


# -------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("with_ref", [True, False])
@pytest.mark.parametrize("eps", [0.0, 0.15])
def test_float32_is_float64_rounded_once(with_ref, eps):
    """float32 inputs: every output is the float64 computation on the same values rounded
    once to float32, and all sums/metrics are the float64 ones."""
    arrays32 = make_inputs(3000, seed=5, dtype=np.float32, extremes=True)
    arrays64 = [a.astype(np.float64) for a in arrays32]
    if not with_ref:
        arrays32[2:] = arrays64[2:] = [None, None]
    r32 = preference_loss(*arrays32, beta=0.3, label_smoothing=eps, compute_grad=True)
    r64 = preference_loss(*arrays64, beta=0.3, label_smoothing=eps, compute_grad=True)
    for name in OUTPUT_NAMES:
        out = getattr(r32, name)
        assert out.dtype == np.float32, name
        with np.errstate(over="ignore"):
            assert_same_array(out, getattr(r64, name).astype(np.float32), name)
    assert type(r32.loss) is float
    assert_same_float(r32.loss, r64.loss)
    assert r32.metrics == r64.metrics


def test_float32_within_two_ulp_of_reference():
    """float32 outputs are within 2 float32 ulps of the float64 reference cast to float32."""
    arrays32 = make_inputs(2000, seed=6, dtype=np.float32)
    result = preference_loss(*arrays32, beta=0.1, label_smoothing=0.1, compute_grad=True)
    ref = reference_preference_loss(*(a.astype(np.float64).tolist() for a in arrays32),
                                    beta=0.1, label_smoothing=0.1)
    for name, values in [("losses", ref.losses), ("chosen_rewards", ref.chosen_rewards),
                         ("rejected_rewards", ref.rejected_rewards)]:
        expected = np.array(values).astype(np.float32)
        assert max_ulp_distance(getattr(result, name), expected) <= 2, name
    # Gradients: 2 ulp of float32 on top of the float64 error relative to the terms' size.
    err = np.abs(result.grad_chosen.astype(np.float64) - np.array(ref.grad_chosen))
    bound = 2 * np.spacing(np.abs(np.array(ref.grad_chosen)).astype(np.float32)) + (
        8 * EPS64 * np.array(ref.grad_scale))
    assert np.all(err <= bound)


@pytest.mark.parametrize(
    ("dtypes", "expected"),
    [
        (("float32", "float32", "float32", "float32"), np.float32),
        (("float16", "float16", "float16", "float16"), np.float32),
        (("float16", "float32", "float16", "float32"), np.float32),
        (("float64", "float64", "float64", "float64"), np.float64),
        (("float32", "float32", "float32", "float64"), np.float64),
        (("float16", "float64", "float32", "float32"), np.float64),
        (("int64", "int64", "int64", "int64"), np.float64),
        (("int32", "float32", "float32", "float32"), np.float64),
        (("int8", "uint16", "int16", "uint64"), np.float64),
        (("float32", "float32", None, None), np.float32),
        (("int64", "float64", None, None), np.float64),
    ],
)
def test_dtype_rules(dtypes, expected):
    """float32/float16-only inputs give float32; float64, integer or mixed give float64;
    values are those of the float64 computation on the inputs' exact values."""
    base = [np.array([-3, -1, -7, -2]), np.array([-5, -4, -2, -2]),
            np.array([-4, -2, -6, -1]), np.array([-4, -5, -5, -3])]
    arrays = [None if d is None else b.astype(d) for b, d in zip(base, dtypes)]
    result = preference_loss(*arrays, beta=0.5, compute_grad=True)
    for name in OUTPUT_NAMES:
        assert getattr(result, name).dtype == expected, name
    exact = preference_loss(*[None if a is None else a.astype(np.float64) for a in arrays],
                            beta=0.5, compute_grad=True)
    for name in OUTPUT_NAMES:
        assert_same_array(getattr(result, name), getattr(exact, name).astype(expected), name)
    assert_same_float(result.loss, exact.loss)


def test_python_lists_are_float64():
    """Python lists (floats or ints) are taken as float64."""
    from_lists = preference_loss([-1.0, -2.5], [-3, -1], [-2.0, -2.0], [-2, -2], beta=0.4)
    from_arrays = preference_loss(*(np.array(v, dtype=np.float64) for v in
                                    ([-1.0, -2.5], [-3, -1], [-2.0, -2.0], [-2, -2])),
                                  beta=0.4)
    assert from_lists.losses.dtype == np.float64
    assert_same_results(from_lists, from_arrays)


# ------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_read_only_inputs(dtype):
    """Read-only arrays are accepted and give the same results."""
    arrays = make_inputs(500, seed=8, dtype=dtype)
    expected = preference_loss(*arrays, compute_grad=True)
    for a in arrays:
        a.flags.writeable = False
    assert_same_results(preference_loss(*arrays, compute_grad=True), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_strided_inputs(dtype):
    """Strided views (a[::2], a[::-1], a column of a 2-D array) give the contiguous result."""
    arrays = make_inputs(9000, seed=9, dtype=dtype)
    contiguous = [np.ascontiguousarray(a[::2]) for a in arrays]
    expected = preference_loss(*contiguous, compute_grad=True, label_smoothing=0.1)
    strided = [a[::2] for a in arrays]
    assert not strided[0].flags.c_contiguous
    assert_same_results(preference_loss(*strided, compute_grad=True, label_smoothing=0.1),
                        expected)
    reversed_ = [np.ascontiguousarray(a[::-1])[::-1] for a in contiguous]
    assert_same_results(preference_loss(*reversed_, compute_grad=True, label_smoothing=0.1),
                        expected)
    table = np.stack(contiguous, axis=1)  # shape (n, 4): columns are strided
    assert_same_results(
        preference_loss(*(table[:, j] for j in range(4)), compute_grad=True,
                        label_smoothing=0.1), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
@pytest.mark.parametrize("strided", [False, True])
def test_inputs_unchanged(dtype, strided):
    """The caller's arrays are never written, with or without out=."""
    arrays = make_inputs(1001, seed=10, dtype=dtype)
    if strided:
        arrays = [np.repeat(a, 2)[::2] for a in arrays]
    copies = [a.copy() for a in arrays]
    result = preference_loss(*arrays, compute_grad=True, label_smoothing=0.2)
    result_dtype = result.losses.dtype
    out = {name: np.empty(1001, dtype=result_dtype) for name in OUTPUT_NAMES}
    preference_loss(*arrays, compute_grad=True, label_smoothing=0.2, out=out)
    preference_loss(arrays[0], arrays[1], reduction="none")
    for a, c in zip(arrays, copies):
        assert a.tobytes() == c.tobytes()


# ------------------------------------------------------------------------------ out=


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_is_filled_and_returned(dtype):
    """out= arrays are written in place and are the arrays the result returns."""
    arrays = make_inputs(777, seed=11, dtype=dtype)
    expected = preference_loss(*arrays, compute_grad=True)
    out = {name: np.full(777, np.nan, dtype=dtype) for name in OUTPUT_NAMES}
    result = preference_loss(*arrays, compute_grad=True, out=out)
    for name in OUTPUT_NAMES:
        assert getattr(result, name) is out[name], name
    assert_same_results(result, expected)
    none = preference_loss(*arrays, reduction="none", out={"losses": out["losses"]})
    assert none.loss is out["losses"] and none.losses is out["losses"]


def test_out_partial_dict_allocates_the_rest():
    """Keys missing from out= are allocated; the given ones are used."""
    arrays = make_inputs(64, seed=12)
    losses = np.empty(64)
    result = preference_loss(*arrays, out={"losses": losses})
    assert result.losses is losses
    assert result.chosen_rewards is not None and result.chosen_rewards.shape == (64,)
    assert_same_results(result, preference_loss(*arrays))


def test_out_empty_dict_and_reuse():
    """out={} is allowed; reusing the same out arrays for a second call overwrites them."""
    arrays = make_inputs(50, seed=13)
    assert_same_results(preference_loss(*arrays, out={}), preference_loss(*arrays))
    out = {"losses": np.empty(50)}
    preference_loss(*arrays, out=out)
    other = make_inputs(50, seed=14)
    second = preference_loss(*other, out=out)
    assert_same_array(second.losses, preference_loss(*other).losses)
