"""Per-pair ``weights``, sequence lengths, ``loss_weights`` of loss-type lists,
``label_smoothing`` in lists and the reductions: unit weights and default loss weights
change nothing, weights scale each pair, lengths are ignored where unused, lists are the
weighted sum of their types, and property tests of the length-normalised types.

Checked against the plain float64 reference of tests/reference_modifiers.py (``ref_losses``)
on its cases ``CASES``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import sigmoid as sig
from reference_modifiers import (
    CASES,
    Case,
    assert_close_scaled,
    build,
    loss_types,
    ref_losses,
    smoothed_sigmoid,
)

from dpo_fast import preference_loss


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "nca_pair", "discopop", "aot",
                                       "apo_zero", "exo_pair"])
def test_lengths_ignored_where_unused(loss_type):
    """Loss types without lengths accept them and ignore them."""
    arrays, kw = build(Case("", dict(loss_type=loss_type, beta=0.3)), 30, seed=4)
    lengths = {k: kw.pop(k) for k in ("chosen_lengths", "rejected_lengths")}
    plain = preference_loss(*arrays, compute_grad=True, **kw)
    given_ = preference_loss(*arrays, compute_grad=True, **kw, **lengths)
    assert given_.loss == plain.loss
    for name in ("losses", "grad_chosen", "grad_rejected", "chosen_rewards"):
        assert getattr(given_, name).tobytes() == getattr(plain, name).tobytes()


@pytest.mark.parametrize("case", [c for c in CASES if not c.weights], ids=lambda c: c.name)
def test_unit_weights_and_default_loss_weights_change_nothing(case):
    """weights of 1, loss_weights of 1 and a one-element list are the defaults (the losses
    bit for bit)."""
    arrays, kw = build(case, 40, seed=5)
    base = preference_loss(*arrays, compute_grad=True, **kw)
    variants = [dict(kw, weights=np.ones(40))]
    types = loss_types(case)
    if "loss_weights" not in kw:
        variants.append(dict(kw, loss_weights=[1.0] * len(types)))
        if len(types) == 1:
            variants.append(dict(kw, loss_type=(types[0],)))
    for variant in variants:
        other = preference_loss(*arrays, compute_grad=True, **variant)
        assert other.loss == base.loss
        for name in ("losses", "chosen_rewards"):
            assert getattr(other, name).tobytes() == getattr(base, name).tobytes(), name
        for name in ("grad_chosen", "grad_rejected"):  # the same up to rounding
            np.testing.assert_allclose(getattr(other, name), getattr(base, name), rtol=1e-15)


def test_weights_scale_each_pair_and_mean_divides_by_n():
    """losses[i] = w_i * loss_i; "mean" divides by N (not by sum w); a zero weight zeroes
    that pair's loss and gradient; weights leave rewards and metrics alone."""
    arrays, kw = build(Case("", dict(loss_type="sigmoid", beta=0.3)), 8, seed=6)
    w = np.array([0.0, 1.0, 2.0, 0.5, 3.0, 1.0, 0.25, 4.0])
    plain = preference_loss(*arrays, compute_grad=True, reduction="none", **kw)
    weighted = preference_loss(*arrays, compute_grad=True, reduction="none", weights=w, **kw)
    np.testing.assert_allclose(weighted.losses, w * plain.losses, rtol=1e-15)
    np.testing.assert_allclose(weighted.grad_chosen, w * plain.grad_chosen, rtol=1e-15)
    assert weighted.losses[0] == 0.0 and weighted.grad_rejected[0] == 0.0
    mean = preference_loss(*arrays, weights=w, **kw)
    assert mean.loss == pytest.approx(math.fsum(w * plain.losses) / 8, rel=1e-14)
    assert preference_loss(*arrays, weights=w, reduction="sum", **kw).loss == pytest.approx(
        math.fsum(w * plain.losses), rel=1e-14)
    assert mean.metrics == preference_loss(*arrays, **kw).metrics
    np.testing.assert_array_equal(mean.chosen_rewards, plain.chosen_rewards)


def test_negative_loss_weight_is_allowed():
    """loss_weights are finite reals: a negative one subtracts that loss."""
    arrays, kw = build(Case("", {}), 10, seed=7)
    both = preference_loss(*arrays, loss_type=["sigmoid", "ipo"], loss_weights=[1.0, -0.25],
                           reduction="none", **kw)
    expected = ref_losses(*arrays, loss_type=["sigmoid", "ipo"], loss_weights=[1.0, -0.25],
                          **kw)
    np.testing.assert_allclose(both.losses, expected, rtol=1e-12)


def test_label_smoothing_goes_to_the_types_that_use_it():
    """In a list, label_smoothing applies to sigmoid and exo_pair and not to sft/ipo."""
    arrays, kw = build(Case("", {}), 12, seed=8)
    for types in (["sigmoid", "exo_pair"], ["sft", "sigmoid"], ["ipo", "robust"],
                  ["aot", "nca_pair"]):
        got = preference_loss(*arrays, loss_type=types, label_smoothing=0.2, reduction="none",
                              **kw)
        expected = ref_losses(*arrays, loss_type=types, label_smoothing=0.2, **kw)
        np.testing.assert_allclose(got.losses, expected, rtol=1e-12, err_msg=str(types))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions(reduction):
    """"none": loss is the losses array; "sum": the sum; gradients of "sum" are N times those
    of "mean", and "none"'s are the per-pair ones (the same here, for per-pair types)."""
    case = Case("", dict(loss_type=["ipo", "sigmoid_norm"], beta=0.4), weights=True)
    arrays, kw = build(case, 16, seed=9)
    result = preference_loss(*arrays, reduction=reduction, compute_grad=True, **kw)
    mean = preference_loss(*arrays, compute_grad=True, **kw)
    scale = 1.0 if reduction == "mean" else 16.0
    np.testing.assert_allclose(result.grad_chosen, scale * mean.grad_chosen, rtol=1e-14)
    np.testing.assert_allclose(result.grad_rejected, scale * mean.grad_rejected, rtol=1e-14)
    if reduction == "none":
        assert result.loss is result.losses
    else:
        assert result.loss == pytest.approx(math.fsum(result.losses) / (16 / scale), rel=1e-14)


lengths_st = st.floats(1.0, 1e4)


@settings(max_examples=80, deadline=None)
@given(loss_type=st.sampled_from(["sigmoid_norm", "simpo", "ipo"]),
       logps=st.lists(st.floats(-1e4, 1e4), min_size=4, max_size=4),
       nc=lengths_st, nr=lengths_st, beta=st.floats(1e-3, 1e3),
       gamma=st.floats(-10.0, 10.0), eps=st.floats(0.0, 0.49))
def test_property_length_normalised(loss_type, logps, nc, nr, beta, gamma, eps):
    """sigmoid_norm, simpo and ipo-with-lengths over wide ranges: finite value and
    gradients, equal to the reference within the rounding of their argument."""
    pc, pr, rc, rr = logps
    if loss_type == "simpo":
        rc = rr = 0.0
    eps = eps if loss_type == "simpo" else 0.0
    arrays = [np.array([v]) for v in (pc, pr)]
    if loss_type != "simpo":
        arrays += [np.array([rc]), np.array([rr])]
    result = preference_loss(*arrays, beta=beta, loss_type=loss_type, simpo_gamma=gamma,
                             label_smoothing=eps, chosen_lengths=np.array([nc]),
                             rejected_lengths=np.array([nr]), compute_grad=True)
    assert math.isfinite(result.loss)
    assert math.isfinite(result.grad_chosen[0]) and math.isfinite(result.grad_rejected[0])
    c_mag, r_mag = (abs(pc) + abs(rc)) / nc, (abs(pr) + abs(rr)) / nr
    if loss_type == "simpo":
        u = beta * (pc / nc - pr / nr) - gamma
        expected = smoothed_sigmoid(u, eps)
        slope = sig(-u) + eps * sig(u)
        magnitude = beta * (c_mag + r_mag) + abs(gamma)
        assert result.chosen_rewards[0] == pytest.approx(beta * pc / nc, rel=1e-15)
    else:
        h = (pc - rc) / nc - (pr - rr) / nr
        expected = ref_losses(*arrays, beta=beta, loss_type=loss_type,
                              chosen_lengths=[nc], rejected_lengths=[nr])[0]
        if loss_type == "ipo":
            slope, magnitude = 2 * abs(h - 1 / (2 * beta)), c_mag + r_mag + 1 / (2 * beta)
        else:
            slope, magnitude = beta * sig(-beta * h), c_mag + r_mag
    assert_close_scaled(result.loss, expected, slope, magnitude, loss_type)


COMBINABLE = ["sigmoid", "ipo", "hinge", "sigmoid_norm", "sft", "simpo", "aot", "nca_pair",
              "discopop", "aot_unpaired"]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 8),
       types=st.lists(st.sampled_from(COMBINABLE), min_size=1, max_size=3, unique=True),
       beta=st.floats(1e-2, 5.0), weighted=st.booleans(),
       reduction=st.sampled_from(["mean", "sum", "none"]))
def test_property_combination_is_weighted_sum(data, n, types, beta, weighted, reduction):
    """A list with loss_weights gives sum_k lw_k * (that type alone), per pair and in the
    gradients."""
    def column(lo, hi):
        return np.array(data.draw(st.lists(st.floats(lo, hi), min_size=n, max_size=n)))

    pc, pr = column(-200.0, 0.0), column(-200.0, 0.0)
    lw = data.draw(st.lists(st.floats(-2.0, 2.0), min_size=len(types), max_size=len(types)))
    kw = dict(beta=beta, chosen_lengths=column(1.0, 50.0), rejected_lengths=column(1.0, 50.0),
              weights=column(0.0, 3.0) if weighted else None, reduction=reduction,
              compute_grad=True)
    combined = preference_loss(pc, pr, loss_type=types, loss_weights=lw, **kw)
    singles = [preference_loss(pc, pr, loss_type=t, **kw) for t in types]
    for name in ("losses", "grad_chosen", "grad_rejected"):
        terms = [w * getattr(s, name) for w, s in zip(lw, singles)]
        expected = np.sum(terms, axis=0)
        tol = 1e-13 * np.sum(np.abs(terms), axis=0) + 1e-300
        assert (np.abs(getattr(combined, name) - expected) <= tol).all(), name
    if reduction != "none":
        assert combined.loss == pytest.approx(
            math.fsum(combined.losses) / (n if reduction == "mean" else 1),
            rel=1e-13, abs=1e-13 * float(np.sum(np.abs([s.losses for s in singles]))))
