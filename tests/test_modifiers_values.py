"""The values of the batch losses (aot, aot_unpaired, sft), the length-normalised ones
(sigmoid_norm, simpo, ipo with lengths) and every loss-modifier case: loss-family.md's
reference table, per-pair losses, reductions, rewards and metrics against the plain
reference, and hand-worked aot, aot_unpaired, simpo and sft batches.

Checked against the plain float64 reference of tests/reference_modifiers.py (``ref_losses``)
on its cases ``CASES``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from reference import log_sigmoid as logsig
from reference import sigmoid as sig
from reference_modifiers import (
    CASE_IDS,
    CASES,
    assert_metrics_consistent,
    build,
    loss_types,
    ref_losses,
    ref_rewards,
)

from dpo_fast import _registry, preference_loss

# ---------------------------------------------------------------------- reference table

ONE_PAIR = [np.array([v]) for v in (-10.0, -12.0, -11.0, -11.5)]
TEN, TWELVE = np.array([10.0]), np.array([12.0])


@pytest.mark.parametrize(("loss_type", "beta", "refs", "expected"), [
    ("sigmoid_norm", 0.1, True, 0.6860889338223877),
    ("ipo", 0.1, True, 23.603402777777777),
    ("simpo", 2.0, False, 0.9740769841801067),
])
def test_reference_table(loss_type, beta, refs, expected):
    """loss-family.md's values (lengths nc = 10, nr = 12; simpo gamma 0.5), to 1e-14."""
    arrays = ONE_PAIR if refs else ONE_PAIR[:2]
    got = preference_loss(*arrays, beta=beta, loss_type=loss_type, simpo_gamma=0.5,
                          chosen_lengths=TEN, rejected_lengths=TWELVE).loss
    assert abs(got - expected) <= 1e-14 * expected
    assert abs(ref_losses(*arrays, beta=beta, loss_type=loss_type, chosen_lengths=TEN,
                          rejected_lengths=TWELVE)[0] - expected) <= 1e-14 * expected


def test_ipo_without_lengths_is_unchanged():
    """ipo without lengths keeps the summed form (the table's 12.25)."""
    assert preference_loss(*ONE_PAIR, beta=0.1, loss_type="ipo").loss == 12.25


# ---------------------------------------------------------------- values vs reference


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_plain_reference(case, reduction):
    """Per-pair losses, the reduced loss, rewards and metrics against the reference."""
    fdiv_case = case.kw.get("f_divergence_type", "reverse_kl") != "reverse_kl"
    arrays, kw = build(case, 257, seed=CASE_IDS.index(case.name),
                       spread=1.0 if fdiv_case else 3.0)
    result = preference_loss(*arrays, reduction=reduction, **kw)
    expected = ref_losses(*arrays, **kw)
    np.testing.assert_allclose(result.losses, expected, rtol=1e-12, atol=1e-15)
    if reduction == "none":
        assert result.loss is result.losses
    else:
        assert isinstance(result.loss, float)
        total = math.fsum(expected)
        want = total / len(expected) if reduction == "mean" else total
        assert result.loss == pytest.approx(want, rel=1e-12, abs=1e-15)

    types = loss_types(case)
    # simpo / orpo report beta * p / n; sft has no rewards of its own; a list mixing the two
    # reward forms is not specified
    forms = {_registry.LOSS_REGISTRY[t].normalized_rewards for t in types if t != "sft"}
    chosen, rejected = ref_rewards(*arrays, beta=kw.get("beta", 0.1), simpo=True in forms,
                                   nc=kw.get("chosen_lengths"), nr=kw.get("rejected_lengths"),
                                   shape=kw.get("alphapo_alpha", 0.0))
    if len(forms) == 1:
        np.testing.assert_allclose(result.chosen_rewards, chosen, rtol=1e-15, atol=0)
        np.testing.assert_allclose(result.rejected_rewards, rejected, rtol=1e-15, atol=0)
    assert_metrics_consistent(result, arrays)


def test_simpo_rewards_are_length_normalised():
    """simpo's rewards are beta * pc / nc, beta * pr / nr; its metrics follow from them."""
    pc, pr = np.array([-10.0, -30.0, -4.0]), np.array([-12.0, -8.0, -9.0])
    nc, nr = np.array([10.0, 5.0, 2.0]), np.array([12.0, 4.0, 3.0])
    result = preference_loss(pc, pr, beta=2.0, loss_type="simpo", chosen_lengths=nc,
                             rejected_lengths=nr)
    np.testing.assert_allclose(result.chosen_rewards, [-2.0, -12.0, -4.0], rtol=1e-15)
    np.testing.assert_allclose(result.rejected_rewards, [-2.0, -4.0, -6.0], rtol=1e-15)
    assert result.metrics["rewards/accuracies"] == 1 / 3  # tie, loss, win
    assert result.metrics["rewards/margins"] == pytest.approx(-2.0, rel=1e-15)
    assert_metrics_consistent(result, [pc, pr])


def test_aot_assigns_sorted_positions_to_pairs():
    """A hand-worked aot batch: pc - pr = [3, 1, 2], rc - rr = [0, 10, 5]: sorted
    differences [1, 2, 3] - [0, 5, 10] = [1, -3, -7], reported at the pairs ranked 0, 1, 2
    by pc - pr, i.e. pairs 1, 2, 0; rewards stay in the caller's order."""
    pc, pr = np.array([3.0, 1.0, 2.0]), np.zeros(3)
    rc, rr = np.array([0.0, 10.0, 5.0]), np.zeros(3)
    result = preference_loss(pc, pr, rc, rr, beta=1.0, loss_type="aot", reduction="none",
                             compute_grad=True)
    loss = [-logsig(d) for d in (1.0, -3.0, -7.0)]
    np.testing.assert_allclose(result.losses, [loss[2], loss[0], loss[1]], rtol=1e-15)
    slope = [-sig(-d) for d in (1.0, -3.0, -7.0)]
    np.testing.assert_allclose(result.grad_chosen, [slope[2], slope[0], slope[1]], rtol=1e-15)
    np.testing.assert_allclose(result.grad_rejected, [-slope[2], -slope[0], -slope[1]],
                               rtol=1e-15)
    np.testing.assert_array_equal(result.chosen_rewards, pc - rc)


def test_aot_unpaired_scatters_to_both_rankings():
    """aot_unpaired: c = [3, 1, 2], r = [-1, 4, 0]: D = [1, 2, 3] - [-1, 0, 4] = [2, 2, -1];
    losses go to the pairs ranked by c (1, 2, 0); the rejected gradient of position i goes to
    the pair ranked i by r (0, 2, 1)."""
    pc, pr = np.array([3.0, 1.0, 2.0]), np.array([-1.0, 4.0, 0.0])
    result = preference_loss(pc, pr, beta=1.0, loss_type="aot_unpaired", compute_grad=True)
    loss = [-logsig(d) for d in (2.0, 2.0, -1.0)]
    slope = [-sig(-d) / 3 for d in (2.0, 2.0, -1.0)]
    np.testing.assert_allclose(result.losses, [loss[2], loss[0], loss[1]], rtol=1e-15)
    np.testing.assert_allclose(result.grad_chosen, [slope[2], slope[0], slope[1]], rtol=1e-15)
    np.testing.assert_allclose(result.grad_rejected, [-slope[0], -slope[2], -slope[1]],
                               rtol=1e-15)


def test_sft_is_the_batch_nll_per_token():
    """sft: -(sum pc) / (sum nc) for every pair; references play no part; gradient
    lw * (sum w / N) * (-1 / sum nc) for every pc, nothing for pr."""
    pc, pr = np.array([-1.0, -2.0, -3.0]), np.array([-5.0, -6.0, -7.0])
    rc, rr = np.array([-9.0, 0.0, 4.0]), np.array([1.0, 2.0, 3.0])
    nc, w = np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0, 5.0])
    for refs in ([], [rc, rr]):
        result = preference_loss(pc, pr, *refs, loss_type=["sft"], loss_weights=[0.5],
                                 chosen_lengths=nc, weights=w, compute_grad=True)
        np.testing.assert_array_equal(result.losses, [0.0, 0.5, 2.5])
        assert result.loss == pytest.approx(1.0, rel=1e-15)
        np.testing.assert_allclose(result.grad_chosen, [-1 / 6] * 3, rtol=1e-15)
        np.testing.assert_array_equal(result.grad_rejected, [0.0] * 3)
    none = preference_loss(pc, pr, loss_type="sft", chosen_lengths=nc, weights=w,
                           reduction="none", compute_grad=True)
    np.testing.assert_allclose(none.grad_chosen, -w / 6, rtol=1e-15)
