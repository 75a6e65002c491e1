"""``f_divergence_type`` and ``f_alpha_divergence_coef``: the reverse-KL limits (alpha 1,
alpha 0 as forward KL), TRL 1.16's order for the length-normalised types (checked in
60-digit arithmetic), rewards left alone, and a property test of every divergence with every
loss type that takes one.

Checked against the plain float64 reference of tests/reference_modifiers.py (``ref_losses``)
on its cases ``CASES``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_modifiers import (
    DIVERGENCES,
    F_DIVERGENCE_TYPES,
    SMOOTHED,
    Case,
    assert_close_scaled,
    build,
    fdiv,
    ref_losses,
    score,
    score_difference,
    score_slope,
    slope_near,
    trl_score,
)
from test_loss_family import reference_pair

from dpo_fast import preference_loss


@pytest.mark.parametrize("loss_type", F_DIVERGENCE_TYPES)
def test_alpha_one_and_explicit_reverse_kl_are_the_default(loss_type):
    """alpha_divergence with coefficient 1 (or within TRL's 1e-6 of it) and an explicit
    reverse_kl give the default's bits."""
    arrays, kw = build(Case("", dict(loss_type=loss_type, beta=0.3)), 50, seed=1)
    kw["label_smoothing"] = 0.1 if loss_type in SMOOTHED else 0.0
    default = preference_loss(*arrays, compute_grad=True, **kw)
    # (within 1e-6 of 1 is the limit too: TRL 1.16's rule)
    for extra in (fdiv("reverse_kl"), fdiv("reverse_kl", 3.0), fdiv("alpha_divergence", 1.0),
                  fdiv("alpha_divergence", 1.0 + 9e-7), fdiv("alpha_divergence", 1.0 - 9e-7)):
        other = preference_loss(*arrays, compute_grad=True, **kw, **extra)
        assert other.loss == default.loss
        for name in ("losses", "grad_chosen", "grad_rejected", "chosen_rewards"):
            assert getattr(other, name).tobytes() == getattr(default, name).tobytes()


def test_alpha_zero_is_forward_kl():
    """(exp(-x) - 1) / (-1) = 1 - exp(-x): alpha 0 is forward_kl."""
    arrays, kw = build(Case("", dict(loss_type="sigmoid", beta=0.3)), 50, seed=2, spread=1.0)
    a = preference_loss(*arrays, **kw, **fdiv("alpha_divergence", 0.0), reduction="none")
    b = preference_loss(*arrays, **kw, **fdiv("forward_kl"), reduction="none")
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-13)


# The length-normalised types under an f-divergence, TRL 1.16's order (the score of the summed
# log-ratio, then the division), against the plain formula evaluated in 60-digit arithmetic.
# pc, pr, rc, rr, nc, nr chosen so that the order matters: c = -35, r = -25 give e^35 / 10
# against e^25 / 20 for forward KL (TRL ~1.6e13; dividing first, then scoring, gave 3.0).
TRL_ORDER_CASES = [
    ("sigmoid_norm", "forward_kl", 1.0),
    ("sigmoid_norm", "js_divergence", 1.0),
    ("sigmoid_norm", "alpha_divergence", 0.5),
    ("ipo", "forward_kl", 1.0),
    ("ipo", "js_divergence", 1.0),
    ("ipo", "alpha_divergence", 2.0),
]


@pytest.mark.parametrize(("loss_type", "fdiv_type", "alpha"), TRL_ORDER_CASES)
def test_length_normalised_f_divergence_follows_trl_order(loss_type, fdiv_type, alpha):
    mpmath = pytest.importorskip("mpmath")
    mp = mpmath.mp.clone() if hasattr(mpmath.mp, "clone") else mpmath.mp
    mp.dps = 60
    pc, rc, pr, rr, nc, nr, beta = -40.0, -5.0, -30.0, -5.0, 10.0, 20.0, 0.1

    def trl(x):  # TRL 1.16's scores, constants dropped
        x = mp.mpf(x)
        if fdiv_type == "forward_kl":
            return -mp.exp(-x)
        if fdiv_type == "js_divergence":
            return -mp.log1p(mp.exp(-x))
        return mp.exp((alpha - 1) * x) / (alpha - 1)

    h = trl(pc - rc) / nc - trl(pr - rr) / nr
    if loss_type == "ipo":
        expected = (h - 1 / (2 * mp.mpf(beta))) ** 2
    else:
        expected = mp.log1p(mp.exp(-beta * h))
    for dtype in (np.float64, np.float32):
        result = preference_loss(np.array([pc], dtype), np.array([pr], dtype),
                                 np.array([rc], dtype), np.array([rr], dtype), beta=beta,
                                 loss_type=loss_type, chosen_lengths=[nc], rejected_lengths=[nr],
                                 **fdiv(fdiv_type, alpha))
        rel = 1e-13 if dtype is np.float64 else 2.5e-7
        assert float(result.loss) == pytest.approx(float(expected), rel=rel), dtype
    if fdiv_type == "forward_kl" and loss_type == "sigmoid_norm":
        assert float(expected) > 1e13  # the order matters here


@pytest.mark.parametrize(("fdiv_type", "alpha"), DIVERGENCES)
def test_f_divergence_keeps_rewards(fdiv_type, alpha):
    """Rewards stay beta * c, beta * r whatever the divergence."""
    arrays, kw = build(Case("", dict(loss_type="sigmoid", beta=0.3)), 20, seed=3)
    result = preference_loss(*arrays, **kw, **fdiv(fdiv_type, alpha))
    np.testing.assert_array_equal(result.chosen_rewards, 0.3 * (arrays[0] - arrays[2]))
    np.testing.assert_array_equal(result.rejected_rewards, 0.3 * (arrays[1] - arrays[3]))


@settings(max_examples=120, deadline=None)
@given(loss_type=st.sampled_from(F_DIVERGENCE_TYPES),
       divergence=st.sampled_from(DIVERGENCES + [("alpha_divergence", 0.0),
                                                 ("alpha_divergence", 3.0),
                                                 ("alpha_divergence", 1.5)]),
       c=st.floats(-300.0, 300.0), r=st.floats(-300.0, 300.0), beta=st.floats(1e-2, 10.0),
       lengths=st.one_of(st.none(), st.tuples(st.floats(1.0, 100.0), st.floats(1.0, 100.0))))
def test_property_f_divergence(loss_type, divergence, c, r, beta, lengths):
    """Every divergence with every type that takes one: never NaN (value or gradient), and
    equal to the reference wherever the reference's own exp does not overflow."""
    fdiv_type, alpha = divergence
    if loss_type == "sigmoid_norm" and lengths is None:
        lengths = (1.0, 1.0)
    eps = {"sigmoid": 0.1, "robust": 0.1, "exo_pair": 0.1}.get(loss_type, 0.0)
    kw = dict(beta=beta, loss_type=loss_type, label_smoothing=eps, **fdiv(fdiv_type, alpha))
    if lengths is not None:
        kw.update(chosen_lengths=[lengths[0]], rejected_lengths=[lengths[1]])
    result = preference_loss(np.array([c]), np.array([r]), compute_grad=True,
                             **{k: np.array(v) if k.endswith("lengths") else v
                                for k, v in kw.items()})
    assert not math.isnan(result.loss)
    assert not math.isnan(result.grad_chosen[0]) and not math.isnan(result.grad_rejected[0])
    normalise = lengths is not None and loss_type in ("ipo", "sigmoid_norm")
    nc, nr = lengths if normalise else (None, None)
    try:
        expected = ref_losses([c], [r], **kw)[0]
        h = score_difference(c, r, nc, nr, fdiv_type, alpha)
        # the size of the terms h is formed from, and of the rounding of their arguments
        s_of = score if nc is None else trl_score
        inv_c, inv_r = (1.0, 1.0) if nc is None else (1.0 / nc, 1.0 / nr)
        magnitude = (abs(s_of(c, fdiv_type, alpha)) * inv_c + abs(s_of(r, fdiv_type, alpha)) * inv_r
                     + score_slope(c, fdiv_type, alpha) * abs(c) * inv_c
                     + score_slope(r, fdiv_type, alpha) * abs(r) * inv_r + 2.0
                     + (2.0 / abs(alpha - 1.0) if alpha != 1.0 else 0.0) + 1 / (2 * beta))
        tau = 0.05 if loss_type == "discopop" else 1.0
        base_type = "sigmoid" if loss_type == "sigmoid_norm" else loss_type
        slope = slope_near(lambda x: reference_pair(base_type, x, 0.0, beta, eps), h,
                           tau / beta)
    except OverflowError:
        return
    if math.isfinite(expected) and math.isfinite(magnitude):
        assert_close_scaled(result.loss, expected, slope, magnitude,
                            f"{loss_type} {fdiv_type} {alpha}")
