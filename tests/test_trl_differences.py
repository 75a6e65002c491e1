"""The deliberate differences from TRL 1.16 that README.md's "Differences from TRL" lists: one
test per difference, each showing our value and what TRL's arithmetic gives instead (written
here plainly in float64, from TRL's formulas; TRL itself is not a test dependency).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from dpo_fast import preference_loss

ROOT = Path(__file__).resolve().parent.parent


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def one(value: float, dtype=np.float64) -> np.ndarray:
    return np.array([value], dtype=dtype)


@pytest.mark.skipif(not (ROOT / "README.md").exists(), reason="needs the source tree")
def test_readme_lists_exactly_these_tests():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Differences from TRL", 1)[1].split("\n### ", 1)[0]
    named = set(re.findall(r"`(test_\w+)`", section))
    here = {name for name in globals() if name.startswith("test_")} - {
        "test_readme_lists_exactly_these_tests"}
    assert named == here


def test_sigmoid_label_smoothing_is_conservative_dpo():
    pc, pr, rc, rr, beta, eps = -10.0, -12.0, -11.0, -11.5, 0.1, 0.1
    z = beta * ((pc - rc) - (pr - rr))
    got = preference_loss(one(pc), one(pr), one(rc), one(rr), beta=beta, label_smoothing=eps).loss
    ours = -(1 - eps) * logsig(z) - eps * logsig(-z)
    trl = -logsig(z)  # TRL 1.16's sigmoid ignores label_smoothing
    assert got == pytest.approx(ours, rel=1e-15)
    assert abs(got - trl) > 1e-3


def test_ipo_without_lengths_sums():
    pc, pr, rc, rr, beta, nc, nr = -10.0, -12.0, -11.0, -11.5, 0.1, 10.0, 12.0
    c, r = pc - rc, pr - rr
    summed = preference_loss(one(pc), one(pr), one(rc), one(rr), beta=beta, loss_type="ipo").loss
    assert summed == pytest.approx((c - r - 1 / (2 * beta)) ** 2, rel=1e-15)
    # TRL's numbers come with the lengths: chosen_scores / chosen_mask.sum(1)
    trl = preference_loss(one(pc), one(pr), one(rc), one(rr), beta=beta, loss_type="ipo",
                          chosen_lengths=[nc], rejected_lengths=[nr]).loss
    assert trl == pytest.approx((c / nc - r / nr - 1 / (2 * beta)) ** 2, rel=1e-15)


def test_exo_pair_epsilon_is_float64():
    eps, beta = 1e-3, 0.5
    pc, pr, rc, rr = -10.0, -10.0, -11.0, -11.0  # z = 0: both sides weigh 1/2

    def exo(log_1m_eps: float, log_eps: float) -> float:
        z = beta * ((pc - rc) - (pr - rr))
        return sig(z) * (logsig(z) - log_1m_eps) + sig(-z) * (logsig(-z) - log_eps)

    got = preference_loss(one(pc), one(pr), one(rc), one(rr), beta=beta, loss_type="exo_pair",
                          label_smoothing=eps).loss
    ours = exo(math.log1p(-eps), math.log(eps))
    eps32 = float(np.float32(eps))  # TRL: torch.tensor(label_smoothing), float32
    trl = exo(float(np.log1p(-np.float32(eps))), float(np.log(np.float32(eps))))
    assert got == pytest.approx(ours, rel=1e-15)
    assert eps32 != eps and abs(got - trl) > 1e-9 * abs(got)


def test_alpha_divergence_is_not_clamped():
    # alpha 2: s(x) = e^x (TRL: exp(clamp((alpha - 1) x, max=80)) in float32). c = 0, r = 100:
    # h = 1 - e^100, and -logsigmoid(beta h) = beta (e^100 - 1) + log1p(e^{-beta |h|}).
    beta = 0.1
    for dtype in (np.float64, np.float32):
        result = preference_loss(one(0.0, dtype), one(100.0, dtype), one(0.0, dtype),
                                 one(0.0, dtype), beta=beta, f_divergence_type="alpha_divergence",
                                 f_alpha_divergence_coef=2.0, reduction="none")
        trl_clamped = beta * math.expm1(80.0)
        if dtype is np.float64:
            assert result.losses[0] == pytest.approx(beta * math.expm1(100.0), rel=1e-13)
            assert result.losses[0] > 1e8 * trl_clamped  # e^20 times the clamped value
        else:  # (float64 arithmetic rounded once) beyond float32's range: inf, not the
            # clamp's finite 5.5e33, and not NaN
            assert result.losses[0] == np.inf
    # and where the score itself overflows, an inf loss (never NaN)
    huge = preference_loss(one(0.0), one(1000.0), one(0.0), one(0.0), beta=beta,
                           f_divergence_type="alpha_divergence", f_alpha_divergence_coef=2.0,
                           compute_grad=True)
    assert huge.loss == math.inf and not np.isnan(huge.grad_chosen).any()


@pytest.mark.parametrize("length", [0.0, 0.5, -1.0])
def test_lengths_below_one_are_refused(length):
    arrays = [one(v) for v in (-10.0, -12.0, -11.0, -11.5)]
    with pytest.raises(ValueError, match=r"chosen_lengths\[0\] is .*; chosen_lengths must be"):
        preference_loss(*arrays, loss_type="sigmoid_norm", chosen_lengths=[length],
                        rejected_lengths=[3.0])


def test_aot_losses_are_reported_per_pair():
    rng = np.random.default_rng(5)
    pc, pr, rc, rr = (rng.normal(-20, 3, 7) for _ in range(4))
    beta = 0.2
    got = preference_loss(pc, pr, rc, rr, beta=beta, loss_type="aot", reduction="none").losses
    # TRL: delta = sort(pc - pr) - sort(rc - rr); per-sequence losses in sorted order
    delta = np.sort(pc - pr) - np.sort(rc - rr)
    trl_sorted = np.array([-logsig(beta * d) for d in delta])
    rank_of_pair = np.argsort(pc - pr, kind="stable")  # sorted position i -> its pair
    np.testing.assert_allclose(got[rank_of_pair], trl_sorted, rtol=1e-13)
    assert not np.allclose(got, trl_sorted)  # in input order they differ ...
    assert got.mean() == pytest.approx(trl_sorted.mean(), rel=1e-13)  # ... the mean does not


def test_alphapo_reward_does_not_overflow():
    """TRL's AlphaPO reward (1 - exp(a)**(-alpha)) / alpha: exp(-800) underflows to 0 and the
    chosen reward becomes -inf (loss inf) although it is -expm1(80) / 0.1, finite. Here the
    loss is that finite value; the shape belongs to "alphapo" only."""
    alpha, beta, gamma = 0.1, 0.5, 0.5
    with np.errstate(divide="ignore"):
        trl_reward = (1.0 - np.float64(0.0) ** -alpha) / alpha  # exp(-800) == 0.0
    assert trl_reward == -math.inf
    chosen, rejected = -math.expm1(80.0) / alpha, -math.expm1(0.1) / alpha
    u = beta * (chosen - rejected) - gamma
    result = preference_loss(one(-800.0), one(-1.0), beta=beta, loss_type="alphapo",
                             alphapo_alpha=alpha, chosen_lengths=one(1.0),
                             rejected_lengths=one(1.0), compute_grad=True)
    assert result.loss == pytest.approx(-logsig(u), rel=1e-14)
    assert math.isfinite(result.loss) and math.isfinite(result.grad_chosen[0])
    assert result.chosen_rewards[0] == pytest.approx(beta * chosen, rel=1e-14)
    with pytest.raises(ValueError, match="alphapo_alpha is only used by"):
        preference_loss(one(-8.0), one(-1.0), beta=beta, loss_type="simpo",
                        alphapo_alpha=alpha, chosen_lengths=one(1.0),
                        rejected_lengths=one(1.0))


def test_wpo_weights_are_per_sequence():
    """sequence_logps returns one WPO weight per sequence; TRL 1.16's pair weight is
    clamp(exp(mean_c + mean_r), max=1), ours the clamped product of the two weights."""
    from dpo_fast import sequence_logps

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 9)) * 2.0    # one chosen and one rejected sequence
    labels = rng.integers(0, 9, size=(2, 5))
    weights = sequence_logps(logits, labels, return_wpo_weights=True).wpo_weights
    z = logits - logits.max(axis=-1, keepdims=True)
    log_softmax = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    token = np.take_along_axis(log_softmax, labels[..., None], -1)[..., 0]
    means = (token - np.log((np.exp(log_softmax) ** 2).sum(axis=-1))).mean(axis=-1)
    trl = min(math.exp(means[0] + means[1]), 1.0)
    ours = min(weights[0] * weights[1], 1.0)
    np.testing.assert_allclose(weights, np.exp(means), rtol=1e-14)
    assert ours == pytest.approx(trl, rel=1e-14)


def test_kto_sums_are_exact_and_an_infinite_reference_point_is_refused():
    from dpo_fast import kto_loss

    # logps/chosen_sum: exactly 1.0; a float sum left to right (as a float tensor's sum
    # may go) loses the 1.0 against 1e16.
    logps = np.array([1e16, 1.0, -1e16])
    result = kto_loss(logps, logps - 1.0, np.array([True, True, True]), beta=0.1)
    assert result.metrics["logps/chosen_sum"] == 1.0 == math.fsum(logps.tolist())
    assert (logps[0] + logps[1]) + logps[2] == 0.0
    # TRL: kl = (policy_KL_logps - reference_KL_logps).mean().clamp(min=0) = inf here.
    kl_logps, ref_kl_logps = np.array([1e308, 1e308]), np.array([-1e308, -1e308])
    with np.errstate(over="ignore"):
        assert max(float(np.mean(kl_logps - ref_kl_logps)), 0.0) == math.inf
    with pytest.raises(ValueError, match="pass kl instead"):
        kto_loss([-1.0], [-2.0], [True], kl_logps=kl_logps, ref_kl_logps=ref_kl_logps)
