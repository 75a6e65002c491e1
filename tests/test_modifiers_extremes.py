"""The loss modifiers at extreme inputs: |log-ratios| up to 2e6 and beta up to 1e3 never give
NaN for the new loss types nor for any f-divergence (the losses may be inf), a forward-KL
score that overflows gives +inf, and ipo's gradient of an overflowed score is exact.

Checked against the plain float64 reference of tests/reference_modifiers.py (``ref_losses``)
on its cases ``CASES``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from reference_modifiers import DIVERGENCES, F_DIVERGENCE_TYPES, fdiv

from dpo_fast import preference_loss

# ------------------------------------------------------------------------------ extremes


EXTREME_GRID = np.array([-1e6, -1e3, -50.0, 0.0, 50.0, 1e3, 1e6])


def extreme_inputs(dtype, refs):
    pc, pr = (a.ravel().astype(dtype) for a in np.meshgrid(EXTREME_GRID, EXTREME_GRID))
    lengths = np.resize(np.array([1.0, 2.5, 7.0, 1000.0], dtype), pc.size)
    arrays = [pc, pr, np.roll(pc, 5), np.roll(pr, 11)] if refs else [pc, pr]
    return arrays, lengths


def assert_no_nan(result, what):
    for name in ("losses", "grad_chosen", "grad_rejected", "chosen_rewards"):
        values = getattr(result, name)
        bad = np.flatnonzero(np.isnan(values))
        assert bad.size == 0, f"{what}: {name} NaN at {bad[:5].tolist()}"
    assert not math.isnan(result.metrics["rewards/margins"])


EXTREME_CASES = [
    ("sigmoid_norm", {}, True), ("simpo", dict(label_smoothing=0.1), False),
    ("ipo", {}, True), ("sft", {}, True), ("aot", dict(label_smoothing=0.1), True),
    ("aot_unpaired", dict(label_smoothing=0.1), True),
    (["sigmoid", "sft"], dict(loss_weights=[1.0, 0.5]), True),
    (["ipo", "sigmoid_norm"], dict(loss_weights=[0.5, 2.0]), True),
    (["aot", "sigmoid", "sft"], {}, True), (["simpo", "sft"], {}, False),
    ("alphapo", dict(alphapo_alpha=0.25, label_smoothing=0.1), False),
    ("alphapo", dict(alphapo_alpha=-1.0), False),
    (["alphapo", "sft"], dict(alphapo_alpha=3.0, label_smoothing=0.2), False),
    ("rpo_sq", dict(gt_reward_margins=np.resize([-1e6, -3.0, 0.0, 2.5, 1e6], 49)), True),
    ("rpo_fwd_kl", dict(gt_reward_margins=np.resize([-1e6, -3.0, 0.0, 2.5, 1e300], 49),
                        gt_reward_scale=0.5), True),
    (["rpo_bwd_kl", "sft"], dict(gt_reward_margins=np.resize([-1e300, 40.0, 0.0, 1e6], 49)),
     True),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("loss_type", "extra", "refs"), EXTREME_CASES,
                         ids=[f"{c[0]}-{c[1].get('alphapo_alpha', '')}" for c in EXTREME_CASES])
def test_extreme_inputs_new_types_never_nan(loss_type, extra, refs, dtype):
    """|log-ratios| up to 2e6, beta up to 1e3, positive weights: no NaN anywhere."""
    arrays, lengths = extreme_inputs(dtype, refs)
    weights = np.resize(np.array([0.5, 1.0, 3.0], dtype), lengths.size)
    for beta in (1.0, 1e3):
        for reduction in ("mean", "none"):
            result = preference_loss(*arrays, beta=beta, loss_type=loss_type, weights=weights,
                                     chosen_lengths=lengths, rejected_lengths=lengths[::-1].copy(),
                                     reduction=reduction, compute_grad=True, **extra)
            assert_no_nan(result, f"beta={beta} {reduction}")
            if reduction == "mean":
                assert not math.isnan(result.loss)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss_type", F_DIVERGENCE_TYPES)
def test_extreme_inputs_f_divergences_never_nan(loss_type, dtype):
    """Large log-ratios overflow exp in the scores: the losses may be inf, never NaN (nor
    their gradients), for every divergence, with and without lengths."""
    arrays, lengths = extreme_inputs(dtype, refs=True)
    eps = {"sigmoid": 0.1, "robust": 0.1, "exo_pair": 0.1}.get(loss_type, 0.0)
    for fdiv_type, alpha in DIVERGENCES:
        for beta in (1.0, 1e3):
            for with_lengths in (False, True):
                more = (dict(chosen_lengths=lengths, rejected_lengths=lengths[::-1].copy())
                        if with_lengths or loss_type == "sigmoid_norm" else {})
                result = preference_loss(*arrays, beta=beta, loss_type=loss_type,
                                         label_smoothing=eps, reduction="none",
                                         compute_grad=True, **fdiv(fdiv_type, alpha), **more)
                assert_no_nan(result, f"{fdiv_type} {alpha} beta={beta} {with_lengths}")


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "discopop"])
def test_forward_kl_overflow_gives_inf(loss_type):
    """c = -1e6: s(c) = 1 - exp(1e6) = -inf, so h = -inf: the loss is +inf, not NaN."""
    result = preference_loss(np.array([-1e6]), np.array([0.0]), beta=1.0, loss_type=loss_type,
                             compute_grad=True, **fdiv("forward_kl"))
    assert result.loss == math.inf
    assert not math.isnan(result.grad_chosen[0]) and not math.isnan(result.grad_rejected[0])


@pytest.mark.parametrize("divergence, coef, lengths, expected_chosen, expected_rejected", [
    # forward KL, a = -1: h = e^{-r} - e^{-c} overflows; d/dpc = 2 (h - q) e^{-c} = 2.
    ("forward_kl", 1.0, None, 2.0, -math.inf),
    # alpha 2, a = 1: h = e^{c} - e^{r}; d/dpr = -2 (h - q) e^{r} = -2.
    ("alpha_divergence", 2.0, None, math.inf, -2.0),
    # normalised (TRL's order): h = s(800)/2 - s(-1000) = e^{1000} - e^{-800}/2 with
    # s(x) = -e^{-x}; d/dpc = 2 (h - q) e^{-800} / 2 = e^{200}.
    ("forward_kl", 1.0, (2.0, 1.0), math.exp(200.0), -math.inf),
])
def test_ipo_gradient_of_an_overflowed_score_is_exact(divergence, coef, lengths,
                                                      expected_chosen, expected_rejected):
    """ipo's derivative 2 (h - q) s'(x) is an overflowed factor times an underflowed one here;
    the kernel takes it from logarithms (regression: it was NaN, then 0)."""
    chosen = 800.0 if lengths else 1000.0
    extra = {} if lengths is None else {"chosen_lengths": [lengths[0]],
                                        "rejected_lengths": [lengths[1]]}
    for dtype in (np.float64, np.float32):
        if dtype is np.float32 and math.isfinite(expected_chosen) and expected_chosen > 3e38:
            expected_c = math.inf  # rounds to inf in float32
        else:
            expected_c = expected_chosen
        result = preference_loss(np.array([chosen], dtype), np.array([-1000.0], dtype),
                                 beta=1.0, loss_type="ipo", f_divergence_type=divergence,
                                 f_alpha_divergence_coef=coef, compute_grad=True, **extra)
        assert result.loss == math.inf
        for got, want in ((result.grad_chosen[0], expected_c),
                          (result.grad_rejected[0], expected_rejected)):
            if math.isinf(want):
                assert got == want
            else:
                assert float(got) == pytest.approx(want, rel=1e-6 if dtype is np.float32
                                                   else 1e-12)
