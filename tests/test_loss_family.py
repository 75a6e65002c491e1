"""The loss family beyond plain DPO: reference values, an independent float64 reference,
exact gradients, extremes, float32, SIMD/thread bit-identity and parameter validation.

The reference here is written plainly with the math module from the published formulas
(papers and TRL's DPOTrainer), independently of csrc/pair_losses.h.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import log_sigmoid as logsig
from reference import sigmoid as sig

from dpo_fast import _registry, preference_loss
from dpo_fast._kernels import _pairwise

# The loss types of the plain kernel loop, in the registry's order.
FAMILY = [name for name in _registry.LOSS_TYPES if name in _registry.PLAIN_TYPES]
SMOOTHED = {"sigmoid": 0.1, "robust": 0.1, "exo_pair": 0.1}


def reference_pair(loss_type, c, r, beta, eps=0.0, tau=0.05, *, lam=50.0, delta=0.0):
    """Per-pair loss from the log-ratios c = pc - rc, r = pr - rr (lam: dpop_lambda, delta:
    bco_delta)."""
    z = beta * (c - r)
    if loss_type == "sigmoid":
        return -(1 - eps) * logsig(z) - eps * logsig(-z)
    if loss_type == "hinge":
        return max(0.0, 1.0 - z)
    if loss_type == "ipo":
        return ((c - r) - 1 / (2 * beta)) ** 2
    if loss_type == "exo_pair":  # (eps > 0: the API refuses 0, as TRL does)
        return (sig(z) * (logsig(z) - math.log1p(-eps))
                + sig(-z) * (logsig(-z) - math.log(eps)))
    if loss_type == "nca_pair":
        return -logsig(beta * c) - 0.5 * logsig(-beta * c) - 0.5 * logsig(-beta * r)
    if loss_type == "robust":
        return (-(1 - eps) * logsig(z) + eps * logsig(-z)) / (1 - 2 * eps)
    if loss_type == "bco_pair":
        return -logsig(beta * c - delta) - logsig(-(beta * r - delta))
    if loss_type == "sppo_hard":
        return (c - 1 / (2 * beta)) ** 2 + (r + 1 / (2 * beta)) ** 2
    if loss_type == "apo_zero":
        return 1 - sig(beta * c) + sig(beta * r)
    if loss_type == "apo_down":
        return sig(beta * c) + 1 - sig(z)
    if loss_type == "discopop":
        m = sig(z / tau)
        return (1 - m) * -logsig(z) + m * math.exp(-z)
    if loss_type == "dpop":  # Pal et al. 2024, Eq. 3: max(0, rc - pc) = max(0, -c)
        return -logsig(beta * (c - r - lam * max(0.0, -c)))
    raise AssertionError(loss_type)


# loss-family reference table: pc = -10, pr = -12, rc = -11, rr = -11.5, beta = 0.1,
# eps = 0.1 for sigmoid (conservative), exo_pair and robust, tau = 0.05.
TABLE = {
    ("sigmoid", 0.0): 0.6209570477895321, ("sigmoid", 0.1): 0.6359570477895321,
    ("hinge", 0.0): 0.85, ("ipo", 0.0): 12.25, ("exo_pair", 0.1): 0.43138845722278607,
    ("nca_pair", 0.0): 1.3508248141169994, ("robust", 0.1): 0.602207047789532,
    ("bco_pair", 0.0): 1.3128563080868572, ("sppo_hard", 0.0): 36.25,
    ("apo_zero", 0.0): 0.9625234160368497, ("apo_down", 0.0): 0.9875493421351904,
    ("discopop", 0.0): 0.8493375792893855, ("dpop", 0.0): 0.6209570477895321,
}


def test_orpo_reference_value_and_refusal():
    """loss-family.md's ORPO value (a_c = -1, a_r = -1.5); log-probs >= 0 are refused."""
    got = preference_loss(np.array([-10.0]), np.array([-12.0]), beta=0.1, loss_type="orpo",
                          chosen_lengths=[10.0], rejected_lengths=[8.0])
    assert abs(got.loss - 0.040113548811200474) <= 1e-15
    assert got.chosen_rewards.tolist() == [-0.1]  # beta * a
    with pytest.raises(ValueError, match=r"rejected_logps\[1\] is 0.0: loss_type='orpo' "
                                         r"needs log-probs below 0"):
        preference_loss(np.array([-1.0, -2.0]), np.array([-1.0, 0.0]), loss_type="orpo",
                        chosen_lengths=[1.0, 1.0], rejected_lengths=[1.0, 1.0])
    # (a NaN does not hide a log-prob >= 0 from this check; -0.0 is refused too)
    for dtype in (np.float64, np.float32):
        with pytest.raises(ValueError, match=r"chosen_logps\[2\] is 2.0: loss_type='orpo'"):
            preference_loss(np.array([np.nan, -1.0, 2.0], dtype), np.full(3, -1.0, dtype),
                            loss_type="orpo", chosen_lengths=np.ones(3),
                            rejected_lengths=np.ones(3))
        with pytest.raises(ValueError, match=r"rejected_logps\[1\] is -0.0: loss_type="):
            preference_loss(np.full(3, -1.0, dtype), np.array([-1.0, -0.0, np.nan], dtype),
                            loss_type="orpo", chosen_lengths=np.ones(3),
                            rejected_lengths=np.ones(3))


def test_new_types_reference_values():
    """loss-family.md's values for dpop (penalty active: pc = -12 below rc = -11) and bco_pair
    with TRL BCO's reward shift delta = 0.37."""
    pair = one_pair()
    pair[0] = np.array([-12.0])
    got = preference_loss(*pair, beta=0.1, loss_type="dpop").loss
    assert abs(got - 5.056388881013103) <= 1e-14 * 5.06
    got = preference_loss(*one_pair(), beta=0.1, loss_type="bco_pair", bco_delta=0.37).loss
    assert abs(got - 1.342269128940073) <= 1e-14 * 1.35


def one_pair():
    return [np.array([v]) for v in (-10.0, -12.0, -11.0, -11.5)]


def test_alphapo_reference_value():
    """AlphaPO at a_c = -10/10, a_r = -12/8, alpha 0.25, beta 2, gamma 0.5 (mpmath, 40 digits);
    TRL's rewards beta * (1 - exp(-alpha a)) / alpha; alpha = 0 is simpo, bit for bit."""
    pc, pr, nc, nr = np.array([-10.0]), np.array([-12.0]), np.array([10.0]), np.array([8.0])
    got = preference_loss(pc, pr, beta=2.0, loss_type="alphapo", alphapo_alpha=0.25,
                          chosen_lengths=nc, rejected_lengths=nr)
    assert abs(got.loss - 0.35058961318910337) <= 1e-14 * 0.36
    assert abs(got.chosen_rewards[0] - -2.272203333501932) <= 1e-14 * 2.3
    simpo = preference_loss(pc, pr, beta=2.0, loss_type="simpo", chosen_lengths=nc,
                            rejected_lengths=nr, compute_grad=True)
    zero = preference_loss(pc, pr, beta=2.0, loss_type="alphapo", chosen_lengths=nc,
                           rejected_lengths=nr, compute_grad=True)
    assert (zero.loss, zero.grad_chosen[0]) == (simpo.loss, simpo.grad_chosen[0])


@pytest.mark.parametrize(("loss_type", "expected"), [
    ("rpo_sq", 0.4225), ("rpo_fwd_kl", 0.05081421868480844),
    ("rpo_bwd_kl", 0.04833979457470244)])
def test_rpo_reference_values(loss_type, expected):
    """NeMo-Aligner's reward-aware losses at z = beta (c - r) = 0.1 * 1.5 and g = scale * gt
    margin = 0.5 * 1.6 (values from mpmath at 40 digits)."""
    got = preference_loss(*one_pair(), beta=0.1, loss_type=loss_type, gt_reward_scale=0.5,
                          gt_reward_margins=[1.6], compute_grad=True)
    assert abs(got.loss - expected) <= 1e-14 * expected
    assert got.chosen_rewards.tolist() == [0.1]  # TRL's beta * c
    assert got.grad_chosen[0] == -got.grad_rejected[0]


def test_rpo_gt_reward_margins_checks():
    """gt_reward_margins: required by the rpo_* types, refused by the others, finite (and
    finite times gt_reward_scale), one per pair, never written; gt_reward_scale likewise."""
    pair = one_pair()
    with pytest.raises(ValueError, match="loss_type='rpo_fwd_kl' needs gt_reward_margins"):
        preference_loss(*pair, loss_type="rpo_fwd_kl")
    with pytest.raises(ValueError, match="gt_reward_margins is only used by loss_type in"):
        preference_loss(*pair, loss_type="sigmoid", gt_reward_margins=[1.0])
    with pytest.raises(ValueError, match="gt_reward_scale is only used by loss_type in"):
        preference_loss(*pair, loss_type="sigmoid", gt_reward_scale=2.0)
    with pytest.raises(ValueError, match=r"gt_reward_margins\[1\] is inf; gt_reward_margins "
                                         "must be finite"):
        preference_loss(np.zeros(2), np.zeros(2), loss_type="rpo_sq",
                        gt_reward_margins=[0.0, np.inf])
    with pytest.raises(ValueError, match=r"gt_reward_margins\[0\] is 1e\+300; gt_reward_scale "
                                         r"\* gt_reward_margins must be finite"):
        preference_loss(*pair, loss_type="rpo_sq", gt_reward_margins=[1e300],
                        gt_reward_scale=1e10)
    with pytest.raises(ValueError, match="gt_reward_scale must be finite"):
        preference_loss(*pair, loss_type="rpo_sq", gt_reward_margins=[1.0],
                        gt_reward_scale=math.nan)
    with pytest.raises(ValueError, match="length mismatch"):
        preference_loss(*pair, loss_type="rpo_sq", gt_reward_margins=[1.0, 2.0])
    margins = np.array([1.5])
    margins.flags.writeable = False  # read-only input accepted, and not written
    got = preference_loss(*pair, loss_type=["rpo_bwd_kl", "sigmoid"], gt_reward_margins=margins)
    assert margins.tolist() == [1.5] and math.isfinite(got.loss)


@pytest.mark.parametrize(("loss_type", "eps"), sorted(TABLE))
def test_reference_table(loss_type, eps):
    """The published reference values, to 1e-14 relative."""
    got = preference_loss(*one_pair(), beta=0.1, loss_type=loss_type, label_smoothing=eps).loss
    expected = TABLE[(loss_type, eps)]
    assert abs(got - expected) <= 1e-14 * abs(expected)


def random_problem(n, seed, spread=3.0):
    rng = np.random.default_rng(seed)
    return [rng.normal(-40.0, spread, n) for _ in range(4)]


@pytest.mark.parametrize("loss_type", FAMILY)
@pytest.mark.parametrize("beta", [0.05, 0.5, 2.0])
def test_matches_plain_reference(loss_type, beta):
    """Per-pair losses, the mean and the rewards match the plain float64 reference."""
    pc, pr, rc, rr = random_problem(257, seed=hash((loss_type, beta)) % 2**32)
    eps = SMOOTHED.get(loss_type, 0.0)
    result = preference_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type,
                             label_smoothing=eps, reduction="none")
    expected = [reference_pair(loss_type, a - b, x - y, beta, eps)
                for a, x, b, y in zip(pc, pr, rc, rr)]
    np.testing.assert_allclose(result.losses, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(result.chosen_rewards, beta * (pc - rc))
    mean = preference_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type,
                           label_smoothing=eps).loss
    assert mean == pytest.approx(math.fsum(expected) / len(expected), rel=1e-12, abs=1e-15)


def _mean_loss(loss_type, eps, beta, arrays):
    return preference_loss(*arrays, beta=beta, loss_type=loss_type, label_smoothing=eps).loss


@pytest.mark.parametrize("loss_type", FAMILY)
def test_gradients_match_finite_differences(loss_type):
    """compute_grad gives d(mean loss)/d(chosen_logps), d/d(rejected_logps): checked
    against 4th-order central differences."""
    beta = 0.7
    eps = SMOOTHED.get(loss_type, 0.0)
    pc, pr, rc, rr = random_problem(6, seed=11, spread=1.0)
    if loss_type == "hinge":  # keep away from the kink at z = 1
        pr = pc - rc + rr - np.array([-1.0, 0.2, 3.0, 0.5, -0.4, 2.5])
    result = preference_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type,
                             label_smoothing=eps, compute_grad=True)
    h = 1e-3
    for which, grad in ((0, result.grad_chosen), (1, result.grad_rejected)):
        for i in range(len(pc)):
            def f(delta, which=which, i=i):
                arrays = [pc.copy(), pr.copy(), rc, rr]
                arrays[which][i] += delta
                return _mean_loss(loss_type, eps, beta, arrays)
            fd = (-f(2 * h) + 8 * f(h) - 8 * f(-h) + f(-2 * h)) / (12 * h)
            assert grad[i] == pytest.approx(fd, rel=1e-7, abs=1e-9), (which, i)


@pytest.mark.parametrize("loss_type", FAMILY)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_inputs_never_nan(loss_type, dtype):
    """|z| up to 1e6 and beyond: no NaN; values and gradients finite wherever the
    mathematical value is (the squared losses may overflow float32 to inf, never NaN)."""
    span = np.array([-1e7, -1e6, -1e3, -800.0, -50.0, 0.0, 50.0, 800.0, 1e3, 1e6, 1e7])
    pc = span.astype(dtype)
    pr = np.zeros_like(pc)
    eps = SMOOTHED.get(loss_type, 0.0)
    result = preference_loss(pc, pr, beta=1.0, loss_type=loss_type, label_smoothing=eps,
                             reduction="none", compute_grad=True)
    for values in (result.losses, result.grad_chosen, result.grad_rejected):
        assert not np.isnan(values).any()
    if loss_type not in ("ipo", "sppo_hard") or dtype is np.float64:
        assert np.isfinite(result.losses).all()


@pytest.mark.parametrize("loss_type", FAMILY)
def test_float32_is_float64_rounded_once(loss_type):
    """float32 inputs: outputs are the float64 results rounded once (within 2 ulp by spec)."""
    arrays64 = [a.astype(np.float32).astype(np.float64) for a in random_problem(300, seed=3)]
    arrays32 = [a.astype(np.float32) for a in arrays64]
    eps = SMOOTHED.get(loss_type, 0.0)
    kw = dict(beta=0.3, loss_type=loss_type, label_smoothing=eps, compute_grad=True,
              reduction="none")
    r32 = preference_loss(*arrays32, **kw)
    r64 = preference_loss(*arrays64, **kw)
    for name in ("losses", "chosen_rewards", "rejected_rewards", "grad_chosen"):
        np.testing.assert_array_equal(getattr(r32, name), getattr(r64, name).astype(np.float32))


@pytest.mark.parametrize("loss_type", FAMILY)
def test_bit_identical_across_simd_paths_and_threads(loss_type, simd_levels):
    """Every SIMD code path and thread count gives the same bits for every loss type."""
    arrays = random_problem(40_000 + 13, seed=7)
    eps = SMOOTHED.get(loss_type, 0.0)
    kw = dict(beta=0.2, loss_type=loss_type, label_smoothing=eps, compute_grad=True)
    results = []
    for level in simd_levels:
        _pairwise.set_simd_level(level)
        for threads in (1, 2):
            results.append(preference_loss(*arrays, n_threads=threads, **kw))
    first = results[0]
    for other in results[1:]:
        assert other.loss == first.loss
        assert other.metrics == first.metrics
        for name in ("losses", "grad_chosen", "grad_rejected"):
            assert getattr(other, name).tobytes() == getattr(first, name).tobytes()


@settings(max_examples=60, deadline=None)
@given(loss_type=st.sampled_from(FAMILY),
       c=st.floats(-1e3, 1e3), r=st.floats(-1e3, 1e3), beta=st.floats(1e-3, 1e2))
def test_property_finite_and_close_to_reference(loss_type, c, r, beta):
    """Over wide ranges the value is finite and agrees with the reference where the naive
    reference itself is stable (|z| <= 30)."""
    eps = SMOOTHED.get(loss_type, 0.0)
    result = preference_loss(np.array([c]), np.array([r]), beta=beta, loss_type=loss_type,
                             label_smoothing=eps, compute_grad=True)
    assert math.isfinite(result.loss)
    assert math.isfinite(result.grad_chosen[0]) and math.isfinite(result.grad_rejected[0])
    z = beta * (c - r)
    if abs(z) <= 30 and abs(beta * c) <= 30 and abs(beta * r) <= 30:
        expected = reference_pair(loss_type, c, r, beta, eps)
        assert result.loss == pytest.approx(expected, rel=1e-11, abs=1e-13)


@pytest.mark.parametrize(("loss_type", "eps", "match"), [
    ("robust", 0.5, r"\[0, 0.5\)"), ("robust", -0.1, r"\[0, 0.5\)"),
    ("exo_pair", 1.0, r"\(0, 1\)"), ("exo_pair", -0.2, r"\(0, 1\)"),
    ("hinge", 0.1, "not used"), ("ipo", 0.2, "not used"), ("discopop", 0.1, "not used"),
])
def test_label_smoothing_range_per_loss_type(loss_type, eps, match):
    with pytest.raises(ValueError, match=f"label_smoothing.*{match}"):
        preference_loss(*one_pair(), loss_type=loss_type, label_smoothing=eps)


@pytest.mark.parametrize("loss_type", ["exo_pair", ["sigmoid", "exo_pair"]])
def test_exo_pair_needs_label_smoothing(loss_type):
    """TRL 1.16 (and Liger) refuse exo_pair with label_smoothing 0 (it takes log(eps)); so do
    we, naming the recommended value, rather than replacing the 0 silently."""
    for smoothing in ({}, {"label_smoothing": 0.0}, {"label_smoothing": -0.0}):
        with pytest.raises(ValueError, match=r"label_smoothing must be in \(0, 1\) for "
                                             r"loss_type='exo_pair' \(the EXO paper "
                                             r"recommends 1e-3\), got -?0\.0"):
            preference_loss(*one_pair(), loss_type=loss_type, **smoothing)
    assert math.isfinite(preference_loss(*one_pair(), loss_type=loss_type,
                                         label_smoothing=1e-3).loss)


@pytest.mark.parametrize("tau", [0.0, -1.0, math.inf, math.nan])
def test_discopop_tau_must_be_positive_and_finite(tau):
    with pytest.raises(ValueError, match="discopop_tau"):
        preference_loss(*one_pair(), loss_type="discopop", discopop_tau=tau)


def test_discopop_tau_type():
    with pytest.raises(TypeError, match="discopop_tau"):
        preference_loss(*one_pair(), loss_type="discopop", discopop_tau="0.05")
