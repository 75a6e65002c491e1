"""The second half of the loss family: the batch losses (aot, aot_unpaired, sft), the
length-normalised ones (sigmoid_norm, simpo, ipo with lengths), per-pair ``weights``,
``f_divergence_type``, loss_type lists with ``loss_weights``, and their validation.

Everything is checked against a plain float64 reference written below with the math module
and loops, straight from /work/shared/loss-family.md and the API notes (it shares nothing
with csrc/; the per-pair formulas of the older loss types come from test_loss_family.py).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import log_sigmoid as logsig
from reference import sigmoid as sig
from test_loss_family import reference_pair

from dpo_fast import _registry, preference_loss
from dpo_fast._kernels import _pairwise

LN2 = math.log(2.0)
# The loss types f_divergence_type applies to: each is a function of h = s(x_c) - s(x_r).
F_DIVERGENCE_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "robust", "discopop",
                      "sigmoid_norm")
# The loss types label_smoothing applies to.
SMOOTHED = frozenset({"sigmoid", "robust", "exo_pair", "aot", "aot_unpaired", "simpo",
                      "alphapo"})
# (f_divergence_type, f_alpha_divergence_coef) pairs; alpha 1 is reverse_kl again.
DIVERGENCES = [("forward_kl", 1.0), ("js_divergence", 1.0), ("alpha_divergence", 0.5),
               ("alpha_divergence", 1.0), ("alpha_divergence", 2.0),
               ("alpha_divergence", -1.0)]
METRIC_KEYS = {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected"}
PARALLEL_N = 100_003  # above the parallel threshold (4 chunks of 8192 rows), not a multiple


# ----------------------------------------------------------------- the plain reference


def _alpha_limit(alpha):
    """TRL 1.16 treats |alpha - 1| < 1e-6 as reverse KL."""
    return abs(alpha - 1.0) < 1e-6


def score(x, fdiv, alpha):
    """The f-divergence score s(x), with its constant (only differences s(c) - s(r) use it)."""
    if fdiv == "forward_kl":
        return -math.expm1(-x)  # 1 - exp(-x)
    if fdiv == "js_divergence":
        return LN2 + logsig(x)
    if fdiv == "alpha_divergence" and not _alpha_limit(alpha):
        return math.expm1((alpha - 1.0) * x) / (alpha - 1.0)  # (exp((a-1) x) - 1) / (a-1)
    return x


def trl_score(x, fdiv, alpha):
    """TRL 1.16's score, constants dropped: what the length-normalised types divide by n
    (TRL's `chosen_scores / chosen_mask.sum(1)`), so the constants do not cancel there."""
    if fdiv == "forward_kl":
        return -math.exp(-x)
    if fdiv == "js_divergence":
        return logsig(x)
    if fdiv == "alpha_divergence" and not _alpha_limit(alpha):
        return math.exp((alpha - 1.0) * x) / (alpha - 1.0)
    return x


def score_difference(c, r, nc, nr, fdiv, alpha):
    """h of the f-divergence types: s(c) - s(r), or TRL's s(c)/nc - s(r)/nr when normalised
    (nc, nr not None)."""
    if nc is None:
        return score(c, fdiv, alpha) - score(r, fdiv, alpha)
    return trl_score(c, fdiv, alpha) / nc - trl_score(r, fdiv, alpha) / nr


def score_slope(x, fdiv, alpha):
    """s'(x) (only used to size tolerances)."""
    if fdiv == "forward_kl":
        return math.exp(-x)
    if fdiv == "js_divergence":
        return sig(-x)
    if fdiv == "alpha_divergence" and not _alpha_limit(alpha):
        return math.exp((alpha - 1.0) * x)
    return 1.0


def log1mexp(a):
    """log(1 - exp(a)) for a < 0, without cancellation (Maechler 2012)."""
    return math.log(-math.expm1(a)) if a > -LN2 else math.log1p(-math.exp(a))


def smoothed_sigmoid(u, eps):
    """-(1-eps) logsig(u) - eps logsig(-u): sigmoid, simpo, aot."""
    return -(1.0 - eps) * logsig(u) - eps * logsig(-u)


def smoothed_sigmoid_slope(u, beta, eps):
    """d/dD of smoothed_sigmoid(beta * D, eps)."""
    return beta * (-(1.0 - eps) * sig(-u) + eps * sig(u))


def stable_argsort(values):
    return sorted(range(len(values)), key=values.__getitem__)  # Python's sort is stable


def aot_positions(t, pc, pr, rc, rr):
    """(D, order_chosen, order_rejected) of aot / aot_unpaired: D[i] is the difference at
    sorted position i, whose loss belongs to pair order_chosen[i]; the rejected side of its
    gradient goes to pair order_rejected[i]."""
    if t == "aot":
        key = [a - b for a, b in zip(pc, pr)]
        ref = [a - b for a, b in zip(rc, rr)]
        order = stable_argsort(key)
        return [a - b for a, b in zip(sorted(key), sorted(ref))], order, order
    c = [a - b for a, b in zip(pc, rc)]
    r = [a - b for a, b in zip(pr, rr)]
    order_c, order_r = stable_argsort(c), stable_argsort(r)
    return [a - b for a, b in zip(sorted(c), sorted(r))], order_c, order_r


def alphapo_reward(a, shape):
    """AlphaPO's reward of an average log-prob a (TRL's (1 - exp(a)^(-alpha)) / alpha, here
    as -expm1(-alpha a) / alpha); a itself at alpha = 0 (SimPO)."""
    return a if shape == 0.0 else -math.expm1(-shape * a) / shape


def rpo_reference(t, z, g):
    """NeMo-Aligner's reward-aware losses of z = beta (c - r) and g = scale * gt margin, as
    its loss_func writes them (logsigmoid, exp)."""
    if t == "rpo_sq":
        return (z - g) ** 2
    lb_c, lb_r, la_c, la_r = logsig(z), logsig(-z), logsig(g), logsig(-g)
    if t == "rpo_bwd_kl":
        return math.exp(la_c) * (la_c - lb_c) + math.exp(la_r) * (la_r - lb_r)
    return math.exp(lb_c) * (lb_c - la_c) + math.exp(lb_r) * (lb_r - la_r)  # rpo_fwd_kl


def ref_one_type(t, pc, pr, rc, rr, nc, nr, *, beta, eps, tau, gamma, fdiv, alpha,
                 lam=50.0, delta=0.0, shape=0.0, gt=None):
    """Per-pair losses of one loss type, unweighted."""
    n = len(pc)
    c = [a - b for a, b in zip(pc, rc)]
    r = [a - b for a, b in zip(pr, rr)]
    eps = eps if t in SMOOTHED else 0.0
    if t in F_DIVERGENCE_TYPES:
        normalise = t == "sigmoid_norm" or (t == "ipo" and nc is not None and nr is not None)
        out = []
        for i in range(n):
            h = score_difference(c[i], r[i], nc[i] if normalise else None,
                                 nr[i] if normalise else None, fdiv, alpha)
            # reference_pair(t, h, 0, ...) is the loss of t at log-ratio difference h
            out.append(reference_pair("sigmoid" if t == "sigmoid_norm" else t, h, 0.0, beta,
                                      eps, tau))
        return out
    if t == "sft":
        return [-math.fsum(pc) / math.fsum(nc)] * n
    if t == "simpo":
        return [smoothed_sigmoid(beta * (pc[i] / nc[i] - pr[i] / nr[i]) - gamma, eps)
                for i in range(n)]
    if t.startswith("rpo_"):
        return [rpo_reference(t, beta * (c[i] - r[i]), gt[i]) for i in range(n)]
    if t == "alphapo":  # TRL's cpo_loss with alpha: simpo of the shaped rewards
        return [smoothed_sigmoid(beta * (alphapo_reward(pc[i] / nc[i], shape)
                                         - alphapo_reward(pr[i] / nr[i], shape)) - gamma, eps)
                for i in range(n)]
    if t == "orpo":  # TRL's odds_ratio_loss term, of the average log-probs
        out = []
        for i in range(n):
            a_c, a_r = pc[i] / nc[i], pr[i] / nr[i]
            log_odds = (a_c - a_r) - (log1mexp(a_c) - log1mexp(a_r))
            out.append(-beta * logsig(log_odds))
        return out
    if t in ("aot", "aot_unpaired"):
        diffs, order, _ = aot_positions(t, pc, pr, rc, rr)
        out = [0.0] * n
        for i, pair in enumerate(order):
            out[pair] = smoothed_sigmoid(beta * diffs[i], eps)
        return out
    return [reference_pair(t, c[i], r[i], beta, eps, tau, lam=lam, delta=delta)
            for i in range(n)]


def ref_losses(pc, pr, rc=None, rr=None, *, beta=0.1, loss_type="sigmoid", loss_weights=None,
               label_smoothing=0.0, discopop_tau=0.05, simpo_gamma=0.5,
               f_divergence_type="reverse_kl", f_alpha_divergence_coef=1.0,
               chosen_lengths=None, rejected_lengths=None, weights=None, dpop_lambda=50.0,
               bco_delta=0.0, alphapo_alpha=0.0, gt_reward_margins=None, gt_reward_scale=1.0):
    """Per-pair losses w_i * sum_k lw_k * loss_k[i], plain float64 (same keywords as
    preference_loss)."""
    def floats(a):
        return None if a is None else [float(v) for v in a]

    pc, pr, nc, nr = floats(pc), floats(pr), floats(chosen_lengths), floats(rejected_lengths)
    n = len(pc)
    rc = floats(rc) if rc is not None else [0.0] * n
    rr = floats(rr) if rr is not None else [0.0] * n
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    lws = [1.0] * len(types) if loss_weights is None else [float(v) for v in loss_weights]
    gt = None if gt_reward_margins is None else [gt_reward_scale * float(v)
                                                   for v in gt_reward_margins]
    total = [0.0] * n
    for t, lw in zip(types, lws):
        per_pair = ref_one_type(t, pc, pr, rc, rr, nc, nr, beta=beta, eps=label_smoothing,
                                tau=discopop_tau, gamma=simpo_gamma, fdiv=f_divergence_type,
                                alpha=f_alpha_divergence_coef, lam=dpop_lambda,
                                delta=bco_delta, shape=alphapo_alpha, gt=gt)
        total = [acc + lw * v for acc, v in zip(total, per_pair)]
    ws = [1.0] * n if weights is None else floats(weights)
    return [w * v for w, v in zip(ws, total)]


def ref_reduced(reduction, *arrays, **kw):
    losses = ref_losses(*arrays, **kw)
    total = math.fsum(losses)
    return total / len(losses) if reduction == "mean" else total


def ref_rewards(pc, pr, rc=None, rr=None, *, beta, simpo=False, nc=None, nr=None, shape=0.0):
    pc, pr = pc.tolist(), pr.tolist()
    if simpo:  # (alphapo: TRL's beta * r(a), r(a) = a at alpha = 0)
        return ([beta * alphapo_reward(a / b, shape) for a, b in zip(pc, nc)],
                [beta * alphapo_reward(a / b, shape) for a, b in zip(pr, nr)])
    rc = [0.0] * len(pc) if rc is None else rc.tolist()
    rr = [0.0] * len(pc) if rr is None else rr.tolist()
    return ([beta * (a - b) for a, b in zip(pc, rc)], [beta * (a - b) for a, b in zip(pr, rr)])


def ref_aot_grads(t, pc, pr, rc, rr, *, beta, eps, weights):
    """d(sum of losses)/d(pc), d/d(pr) of aot / aot_unpaired: each sorted position's
    derivative scattered to its pairs."""
    pc, pr, rc, rr, weights = (list(map(float, a)) for a in (pc, pr, rc, rr, weights))
    diffs, order_c, order_r = aot_positions(t, pc, pr, rc, rr)
    grad_c, grad_r = [0.0] * len(pc), [0.0] * len(pc)
    for i, diff in enumerate(diffs):
        g = weights[order_c[i]] * smoothed_sigmoid_slope(beta * diff, beta, eps)
        grad_c[order_c[i]] += g
        grad_r[order_r[i]] -= g
    return grad_c, grad_r


def slope_near(f, x, scale):
    """max |f'| around x by one-sided differences (only used to size tolerances)."""
    step = max(1e-7 * scale, 1e-9 * abs(x))
    y = f(x)
    try:
        return max(abs(f(x + step) - y), abs(f(x - step) - y)) / step
    except OverflowError:
        return math.inf


def assert_close_scaled(got, expected, slope, magnitude, what=""):
    """|got - expected| within 1e-12 relative plus the rounding of the argument: the loss
    is f(arg), arg a sum of terms of total size `magnitude`, so a few ulps of `magnitude` in
    arg move the loss by slope * that."""
    tol = 1e-12 * abs(expected) + 1e-14 * slope * magnitude + 1e-300
    assert abs(got - expected) <= tol, f"{what}: got {got!r}, expected {expected!r}"


# ------------------------------------------------------------------- cases and inputs


class Case(NamedTuple):
    name: str
    kw: dict
    refs: bool = True  # pass reference log-probs
    lengths: str = "both"  # "both", "chosen" (sft) or "" (none)
    weights: bool = False  # pass per-pair weights (one of them 0)


def fdiv(fdiv_type, alpha=1.0):
    return {"f_divergence_type": fdiv_type, "f_alpha_divergence_coef": alpha}


CASES = [
    Case("sigmoid_norm", dict(loss_type="sigmoid_norm", beta=0.7)),
    Case("simpo", dict(loss_type="simpo", beta=2.0, simpo_gamma=0.3, label_smoothing=0.1),
         refs=False),
    Case("ipo_lengths", dict(loss_type="ipo", beta=0.3)),
    Case("ipo_lengths_weights", dict(loss_type="ipo", beta=0.3), weights=True),
    Case("sft", dict(loss_type="sft"), lengths="chosen"),
    Case("sft_weights", dict(loss_type="sft"), lengths="chosen", weights=True),
    Case("aot", dict(loss_type="aot", beta=0.5, label_smoothing=0.1), lengths=""),
    Case("aot_unpaired", dict(loss_type="aot_unpaired", beta=0.5, label_smoothing=0.2),
         lengths=""),
    Case("aot_weights", dict(loss_type="aot", beta=0.5), lengths="", weights=True),
    Case("aot_unpaired_weights", dict(loss_type="aot_unpaired", beta=0.5), lengths="",
         weights=True),
    Case("sigmoid_weights", dict(loss_type="sigmoid", beta=0.5, label_smoothing=0.1),
         lengths="", weights=True),
    Case("sigmoid_forward_kl", dict(loss_type="sigmoid", beta=0.5, **fdiv("forward_kl")),
         lengths=""),
    Case("sigmoid_js", dict(loss_type="sigmoid", beta=0.5, **fdiv("js_divergence")),
         lengths=""),
    Case("sigmoid_alpha0.5", dict(loss_type="sigmoid", beta=0.5,
                                  **fdiv("alpha_divergence", 0.5)), lengths=""),
    Case("sigmoid_alpha1", dict(loss_type="sigmoid", beta=0.5, **fdiv("alpha_divergence")),
         lengths=""),
    Case("sigmoid_alpha2", dict(loss_type="sigmoid", beta=0.5,
                                **fdiv("alpha_divergence", 2.0)), lengths=""),
    Case("sigmoid_alpha-1", dict(loss_type="sigmoid", beta=0.5,
                                 **fdiv("alpha_divergence", -1.0)), lengths=""),
    Case("hinge_alpha2", dict(loss_type="hinge", beta=0.2, **fdiv("alpha_divergence", 2.0)),
         lengths=""),
    Case("ipo_lengths_forward_kl", dict(loss_type="ipo", beta=0.3, **fdiv("forward_kl"))),
    Case("ipo_js", dict(loss_type="ipo", beta=0.3, **fdiv("js_divergence")), lengths=""),
    Case("exo_pair_forward_kl", dict(loss_type="exo_pair", beta=0.5, label_smoothing=0.1,
                                     **fdiv("forward_kl")), lengths=""),
    Case("robust_alpha0.5", dict(loss_type="robust", beta=0.5, label_smoothing=0.1,
                                 **fdiv("alpha_divergence", 0.5)), lengths=""),
    Case("discopop_js", dict(loss_type="discopop", beta=0.5, **fdiv("js_divergence")),
         lengths=""),
    Case("sigmoid_norm_alpha2", dict(loss_type="sigmoid_norm", beta=0.7,
                                     **fdiv("alpha_divergence", 2.0))),
    Case("sigmoid_norm_js", dict(loss_type="sigmoid_norm", beta=0.7, **fdiv("js_divergence"))),
    Case("ipo_lengths_alpha0.5", dict(loss_type="ipo", beta=0.3,
                                      **fdiv("alpha_divergence", 0.5))),
    Case("rpo", dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5], beta=0.5,
                     label_smoothing=0.1), lengths="chosen"),
    Case("rpo_forward_kl_weights", dict(loss_type=["sigmoid", "sft"], beta=0.5,
                                        **fdiv("forward_kl")), lengths="chosen",
         weights=True),
    Case("ipo+sigmoid_norm", dict(loss_type=["ipo", "sigmoid_norm"], loss_weights=[0.2, 1.5],
                                  beta=0.4)),
    Case("aot+sigmoid+sft", dict(loss_type=["aot", "sigmoid", "sft"],
                                 loss_weights=[0.5, 1.0, 2.0], beta=0.5, label_smoothing=0.1),
         lengths="chosen", weights=True),
    Case("aot_unpaired+ipo", dict(loss_type=("aot_unpaired", "ipo"), loss_weights=[1.0, 0.05],
                                  beta=0.5), lengths=""),
    Case("simpo+sft", dict(loss_type=["simpo", "sft"], loss_weights=[1.0, 0.1], beta=2.0),
         refs=False),
    Case("dpop", dict(loss_type="dpop", beta=0.2), lengths=""),
    Case("orpo", dict(loss_type="orpo", beta=0.1), refs=False),
    Case("orpo+sft", dict(loss_type=["orpo", "sft"], beta=0.25), refs=False),
    Case("dpop_lambda5_weights", dict(loss_type="dpop", beta=0.3, dpop_lambda=5.0),
         lengths="", weights=True),
    Case("bco_delta", dict(loss_type="bco_pair", beta=0.5, bco_delta=0.37), lengths=""),
    Case("dpop+bco+sft", dict(loss_type=["dpop", "bco_pair", "sft"], beta=0.5, bco_delta=-0.2,
                              dpop_lambda=2.0, loss_weights=[1.0, 0.5, 0.25]),
         lengths="chosen"),
    Case("alphapo", dict(loss_type="alphapo", beta=2.0, alphapo_alpha=0.25), refs=False),
    Case("alphapo_negative_eps_weights", dict(loss_type="alphapo", beta=2.5, simpo_gamma=1.0,
                                              alphapo_alpha=-0.5, label_smoothing=0.1),
         refs=False, weights=True),
    Case("alphapo_alpha0", dict(loss_type="alphapo", beta=2.0), refs=False),
    Case("alphapo+sft", dict(loss_type=["alphapo", "sft"], beta=1.5, alphapo_alpha=0.1,
                             loss_weights=[1.0, 0.25]), refs=False),
    Case("rpo_sq", dict(loss_type="rpo_sq", beta=0.1), lengths=""),
    Case("rpo_fwd_kl", dict(loss_type="rpo_fwd_kl", beta=0.2, gt_reward_scale=0.5),
         lengths=""),
    Case("rpo_bwd_kl_weights", dict(loss_type="rpo_bwd_kl", beta=0.3, gt_reward_scale=2.0),
         lengths="", weights=True),
    Case("rpo_bwd_kl+sigmoid+sft", dict(loss_type=["rpo_bwd_kl", "sigmoid", "sft"], beta=0.2,
                                        loss_weights=[1.0, 0.5, 0.1]), lengths="chosen"),
]
CASE_IDS = [case.name for case in CASES]


def loss_types(case):
    t = case.kw["loss_type"]
    return [t] if isinstance(t, str) else list(t)


def build(case, n, seed, *, mean=-40.0, spread=3.0):
    """(arrays, kwargs) for one case: arrays the 2 or 4 log-prob arrays, kwargs the case's
    keywords plus lengths and weights as the case asks."""
    rng = np.random.default_rng(seed)
    arrays = [rng.normal(mean, spread, n) for _ in range(4 if case.refs else 2)]
    kw = dict(case.kw)
    if "exo_pair" in loss_types(case) if "loss_type" in case.kw else False:
        kw.setdefault("label_smoothing", 1e-3)  # it must be set for exo_pair
    if case.lengths:
        kw["chosen_lengths"] = rng.integers(1, 60, n).astype(np.float64)
    if case.lengths == "both":
        kw["rejected_lengths"] = rng.integers(1, 60, n).astype(np.float64)
    if case.weights:
        kw["weights"] = rng.uniform(0.0, 2.0, n)
        kw["weights"][0] = 0.0
    if "loss_type" in case.kw and any(_registry.LOSS_REGISTRY[t].gt_rewards
                                      for t in loss_types(case)):
        kw["gt_reward_margins"] = rng.normal(0.0, 2.0, n)
    return arrays, kw


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


def assert_metrics_consistent(result, arrays):
    """The metrics keys are unchanged and follow from the rewards and policy log-probs."""
    assert set(result.metrics) == METRIC_KEYS
    cr, rr = result.chosen_rewards.astype(np.float64), result.rejected_rewards.astype(np.float64)
    m = result.metrics

    def assert_mean(key, values):
        values = np.asarray(values, np.float64)
        scale = float(np.mean(np.abs(values))) + 1e-300
        assert abs(m[key] - math.fsum(values) / values.size) <= 1e-13 * scale, key

    assert_mean("rewards/chosen", cr)
    assert_mean("rewards/rejected", rr)
    assert_mean("rewards/margins", np.concatenate([cr, -rr]) * 2)  # mean(cr - rr), unrounded
    assert m["rewards/accuracies"] == np.count_nonzero(cr > rr) / cr.size
    assert_mean("logps/chosen", arrays[0])
    assert_mean("logps/rejected", arrays[1])


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


# --------------------------------------------------------------------------- modifiers


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


# --------------------------------------------------------------------------- gradients


def finite_difference(f, arrays, which, i, h=1e-3):
    """4th-order central difference of f(arrays) in arrays[which][i]."""
    def at(delta):
        moved = list(arrays)
        moved[which] = arrays[which].copy()
        moved[which][i] += delta
        return f(moved)
    return (-at(2 * h) + 8 * at(h) - 8 * at(-h) + at(-2 * h)) / (12 * h)


def min_gap(values):
    ordered = sorted(values)
    return min(b - a for a, b in zip(ordered, ordered[1:]))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradients_match_finite_differences(case, reduction):
    """grad_chosen / grad_rejected against 4th-order central differences of the reference:
    of the reduced loss, or for "none" of each pair's own loss (the diagonal). aot inputs are
    far from ties, so the sort permutation is locally constant."""
    n = 6
    arrays, kw = build(case, n, seed=12, mean=-5.0, spread=1.0)
    types = loss_types(case)
    pc, pr = arrays[0], arrays[1]
    rc, rr = (arrays[2], arrays[3]) if case.refs else (0.0 * pc, 0.0 * pr)
    if "aot" in types:
        assert min_gap(pc - pr) > 0.02
    if "aot_unpaired" in types:
        assert min_gap(pc - rc) > 0.02 and min_gap(pr - rr) > 0.02
    if "hinge" in types:  # keep away from the kink
        div = (kw.get("f_divergence_type", "reverse_kl"), kw.get("f_alpha_divergence_coef", 1.0))
        s = [score(x, *div) for x in (pc - rc).tolist() + (pr - rr).tolist()]
        assert min(abs(1 - kw["beta"] * (a - b)) for a, b in zip(s[:n], s[n:])) > 0.02

    result = preference_loss(*arrays, reduction=reduction, compute_grad=True, **kw)
    for which, grad in ((0, result.grad_chosen), (1, result.grad_rejected)):
        for i in range(n):
            if reduction == "none" and not (which == 1 and "aot_unpaired" in types):
                def f(moved, i=i):
                    return ref_losses(*moved, **kw)[i]
                want = finite_difference(f, arrays, which, i)
            else:
                # aot_unpaired's rejected side under "none" is the scatter of its positions'
                # derivatives, i.e. N times the gradient of the mean
                def f(moved):
                    return ref_reduced("sum" if reduction == "sum" else "mean", *moved, **kw)
                want = finite_difference(f, arrays, which, i)
                want *= n if reduction == "none" else 1
            assert grad[i] == pytest.approx(want, rel=1e-7, abs=1e-9), (which, i)


# ------------------------------------------------------------ extremes, float32, threads


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


def within_2_ulp(got32, want64):
    want = want64.astype(np.float32)
    same = got32 == want
    diff = np.abs(got32.astype(np.float64) - want.astype(np.float64))
    return same | (diff <= 2 * np.spacing(np.abs(want)).astype(np.float64))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_float32_within_2_ulp_of_float64(case):
    """All-float32 inputs (lengths and weights too): float32 outputs within 2 ulp of the
    float64 result (same values) rounded to float32."""
    arrays, kw = build(case, 300, seed=13, spread=1.0)
    arrays64 = [a.astype(np.float32).astype(np.float64) for a in arrays]
    kw64 = {k: (v.astype(np.float32).astype(np.float64) if isinstance(v, np.ndarray) else v)
            for k, v in kw.items()}
    kw32 = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) else v)
            for k, v in kw.items()}
    for reduction in ("mean", "none"):
        r64 = preference_loss(*arrays64, reduction=reduction, compute_grad=True, **kw64)
        r32 = preference_loss(*[a.astype(np.float32) for a in arrays64], reduction=reduction,
                              compute_grad=True, **kw32)
        for name in ("losses", "chosen_rewards", "rejected_rewards", "grad_chosen",
                     "grad_rejected"):
            got, want = getattr(r32, name), getattr(r64, name)
            assert got.dtype == np.float32, name
            ok = within_2_ulp(got, want)
            bad = np.flatnonzero(~ok)
            assert bad.size == 0, (f"{reduction} {name}[{bad[:3].tolist()}]: "
                                   f"{got[bad[:3]].tolist()} vs {want[bad[:3]].tolist()}")
        if reduction == "mean":
            assert abs(r32.loss - r64.loss) <= 2 * float(np.spacing(np.float32(abs(r64.loss))))


BIT_CASES = [c for c in CASES if c.name in {
    "sigmoid_norm", "simpo", "ipo_lengths_weights", "sft_weights", "aot", "aot_unpaired",
    "aot_unpaired_weights", "sigmoid_forward_kl", "sigmoid_js", "robust_alpha0.5",
    "sigmoid_norm_alpha2", "rpo_forward_kl_weights", "ipo+sigmoid_norm", "aot+sigmoid+sft",
    "alphapo", "alphapo_negative_eps_weights", "alphapo+sft", "rpo_sq", "rpo_fwd_kl",
    "rpo_bwd_kl_weights", "rpo_bwd_kl+sigmoid+sft"}]


@pytest.fixture(scope="module")
def parallel_cases():
    return {case.name: build(case, PARALLEL_N, seed=14) for case in BIT_CASES}


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("case", BIT_CASES, ids=lambda c: c.name)
def test_bit_identical_across_simd_paths_and_threads(case, reduction, simd_levels,
                                                     parallel_cases):
    """Every SIMD path and n_threads 1, 2 give the same bits (N above the parallel
    threshold)."""
    arrays, kw = parallel_cases[case.name]
    results = []
    for level in simd_levels:
        _pairwise.set_simd_level(level)
        for threads in (1, 2):
            results.append(preference_loss(*arrays, n_threads=threads, reduction=reduction,
                                           compute_grad=True, **kw))
    first = results[0]
    for other in results[1:]:
        if reduction != "none":
            assert other.loss.hex() == first.loss.hex()
        assert {k: v.hex() for k, v in other.metrics.items()} == {
            k: v.hex() for k, v in first.metrics.items()}
        for name in ("losses", "chosen_rewards", "grad_chosen", "grad_rejected"):
            assert getattr(other, name).tobytes() == getattr(first, name).tobytes(), name


# ------------------------------------------------------------------ property tests


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


values_st = st.one_of(st.integers(-3, 3).map(float), st.floats(-1e3, 1e3).map(lambda v: v + 0.0))


@settings(max_examples=80, deadline=None)
@given(data=st.data(), n=st.integers(1, 10), unpaired=st.booleans(),
       beta=st.floats(1e-2, 10.0), eps=st.floats(0.0, 0.49),
       reduction=st.sampled_from(["mean", "sum", "none"]))
def test_property_aot(data, n, unpaired, beta, eps, reduction):
    """aot / aot_unpaired on small batches with ties (stable ranks decide who gets which
    sorted position) and weights: losses and scattered gradients against the reference."""
    arrays = [np.array(data.draw(st.lists(values_st, min_size=n, max_size=n)))
              for _ in range(4)]
    weights = np.array(data.draw(st.lists(st.floats(0.0, 4.0), min_size=n, max_size=n)))
    t = "aot_unpaired" if unpaired else "aot"
    result = preference_loss(*arrays, beta=beta, loss_type=t, label_smoothing=eps,
                             weights=weights, reduction=reduction, compute_grad=True)
    expected = ref_losses(*arrays, beta=beta, loss_type=t, label_smoothing=eps,
                          weights=weights)
    magnitude = 4 * max(float(np.max(np.abs(a))) for a in arrays)
    for i in range(n):
        assert_close_scaled(result.losses[i], expected[i], beta * weights[i], magnitude,
                            f"losses[{i}]")
    grad_c, grad_r = ref_aot_grads(t, *arrays, beta=beta, eps=eps, weights=weights)
    scale = 1.0 / n if reduction == "mean" else 1.0
    for got, want, name in ((result.grad_chosen, grad_c, "grad_chosen"),
                            (result.grad_rejected, grad_r, "grad_rejected")):
        for i in range(n):
            assert_close_scaled(got[i], scale * want[i], scale * beta * beta * max(weights),
                                magnitude, f"{name}[{i}]")
    assert_metrics_consistent(result, arrays)
    np.testing.assert_array_equal(result.chosen_rewards, beta * (arrays[0] - arrays[2]))


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


# ------------------------------------------------------------------------ validation

PC = np.array([-10.0, -11.0, -12.5, -9.0, -14.0])
PR = np.array([-12.0, -10.0, -13.0, -11.0, -15.0])
RC = np.array([-11.0, -11.5, -12.0, -10.0, -13.0])
RR = np.array([-11.5, -10.5, -12.5, -10.0, -14.5])
LENGTHS = np.array([10.0, 12.0, 7.0, 3.0, 20.0])


def call(refs=True, **kw):
    return preference_loss(PC, PR, *((RC, RR) if refs else ()), **kw)


def both(*words):
    """A regex matching text that contains every word, in any order."""
    return "(?s)" + "".join(f"(?=.*{w})" for w in words)


def with_bad(value, index=3, base=LENGTHS):
    array = base.copy()
    array[index] = value
    return array


CL, RL = dict(chosen_lengths=LENGTHS), dict(rejected_lengths=LENGTHS)
BAD_CALLS = [
    # lengths missing
    ("sigmoid_norm-no-chosen", dict(loss_type="sigmoid_norm", **RL), ValueError,
     both("chosen_lengths", "sigmoid_norm")),
    ("sigmoid_norm-no-rejected", dict(loss_type="sigmoid_norm", **CL), ValueError,
     both("rejected_lengths", "sigmoid_norm")),
    ("simpo-no-chosen", dict(refs=False, loss_type="simpo", **RL), ValueError,
     both("chosen_lengths", "simpo")),
    ("simpo-no-rejected", dict(refs=False, loss_type="simpo", **CL), ValueError,
     both("rejected_lengths", "simpo")),
    ("sft-no-lengths", dict(loss_type="sft", **RL), ValueError, both("chosen_lengths", "sft")),
    ("rpo-no-lengths", dict(loss_type=["sigmoid", "sft"]), ValueError,
     both("chosen_lengths", "sft")),
    ("list-no-rejected", dict(loss_type=["ipo", "sigmoid_norm"], **CL), ValueError,
     both("rejected_lengths", "sigmoid_norm")),
    # lengths and weights: shape, values, dtype
    ("chosen_lengths-2d", dict(loss_type="sft", chosen_lengths=LENGTHS[:, None]), ValueError,
     "chosen_lengths"),
    ("rejected_lengths-2d", dict(loss_type="sigmoid_norm", **CL,
                                 rejected_lengths=LENGTHS[None, :]), ValueError,
     "rejected_lengths"),
    ("weights-2d", dict(weights=np.ones((5, 1))), ValueError, "weights"),
    ("chosen_lengths-short", dict(loss_type="sft", chosen_lengths=LENGTHS[:4]), ValueError,
     "chosen_lengths"),
    ("rejected_lengths-long", dict(loss_type="simpo", refs=False, **CL,
                                   rejected_lengths=np.ones(6)), ValueError,
     "rejected_lengths"),
    ("weights-short", dict(weights=np.ones(4)), ValueError, "weights"),
    ("weights-scalar", dict(weights=np.float64(1.0)), ValueError, "weights"),
    *[(f"chosen_lengths-{v}", dict(loss_type="sigmoid_norm", chosen_lengths=with_bad(v), **RL),
       ValueError, r"chosen_lengths\[3\]") for v in (0.0, -2.0, math.nan, math.inf)],
    *[(f"rejected_lengths-{v}", dict(loss_type="simpo", refs=False, rejected_lengths=with_bad(v),
                                     **CL), ValueError, r"rejected_lengths\[3\]")
      for v in (0.0, -1.0, math.nan, -math.inf)],
    *[(f"weights-{v}", dict(weights=with_bad(v, base=np.ones(5))), ValueError,
       r"weights\[3\]") for v in (-0.5, math.nan, math.inf)],
    ("chosen_lengths-str", dict(loss_type="sft", chosen_lengths=np.array(["1"] * 5)), TypeError,
     "chosen_lengths"),
    ("rejected_lengths-object", dict(loss_type="sigmoid_norm", **CL,
                                     rejected_lengths=np.array(["a", 1, 2, 3, 4], object)),
     TypeError, "rejected_lengths"),
    ("weights-str", dict(weights=np.array(["a"] * 5)), TypeError, "weights"),
    # simpo is reference-free
    ("simpo-refs", dict(loss_type="simpo", **CL, **RL), ValueError, "simpo"),
    ("simpo-list-refs", dict(loss_type=["simpo", "sft"], **CL, **RL), ValueError, "simpo"),
    # loss types and loss weights
    ("unknown-type", dict(loss_type="dpo"), ValueError, "loss_type"),
    ("unknown-in-list", dict(loss_type=["sigmoid", "nope"]), ValueError, "loss_type"),
    ("empty-list", dict(loss_type=[]), ValueError, "loss_type"),
    ("duplicate", dict(loss_type=("sigmoid", "hinge", "sigmoid")), ValueError, "loss_type"),
    ("loss_weights-short", dict(loss_type=["sigmoid", "hinge"], loss_weights=[1.0]),
     ValueError, "loss_weights"),
    ("loss_weights-long", dict(loss_type=["sigmoid", "hinge"], loss_weights=[1.0, 2.0, 3.0]),
     ValueError, "loss_weights"),
    ("loss_weights-nan", dict(loss_type=["sigmoid", "hinge"], loss_weights=[1.0, math.nan]),
     ValueError, "loss_weights"),
    ("loss_weights-inf", dict(loss_type=["sigmoid", "hinge"], loss_weights=[math.inf, 1.0]),
     ValueError, "loss_weights"),
    ("loss_weights-str", dict(loss_type=["sigmoid", "hinge"], loss_weights=["a", 1.0]),
     TypeError, "loss_weights"),
    ("loss_weights-none-item", dict(loss_type=["sigmoid", "hinge"], loss_weights=[None, 1.0]),
     TypeError, "loss_weights"),
    ("loss_weights-scalar", dict(loss_type=["sigmoid", "hinge"], loss_weights=1.0), TypeError,
     "loss_weights"),
    # f-divergences
    ("f_divergence-unknown", dict(f_divergence_type="kl"), ValueError, "f_divergence_type"),
    *[(f"f_divergence-{t}", dict(loss_type=t, **CL, **RL, refs=t != "simpo",
                                 f_divergence_type="forward_kl"), ValueError,
       "f_divergence_type")
      for t in ("nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down", "aot",
                "aot_unpaired", "simpo")],
    ("f_divergence-alpha-aot", dict(loss_type="aot", f_divergence_type="alpha_divergence",
                                    f_alpha_divergence_coef=0.5), ValueError,
     "f_divergence_type"),
    ("f_divergence-list", dict(loss_type=["sigmoid", "aot"], f_divergence_type="js_divergence"),
     ValueError, "f_divergence_type"),
    *[(f"alpha-{v}", dict(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=v),
       ValueError, "f_alpha_divergence_coef") for v in (math.nan, math.inf, -math.inf)],
    *[(f"alpha-{v!r}", dict(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=v),
       TypeError, "f_alpha_divergence_coef") for v in ("0.5", None)],
    # label smoothing in lists and for the new types
    ("smoothing-unused-list", dict(loss_type=["ipo", "sigmoid_norm"], **CL, **RL,
                                   label_smoothing=0.1), ValueError, "label_smoothing"),
    ("smoothing-out-of-sigmoid-range", dict(loss_type=["sigmoid", "exo_pair"],
                                            label_smoothing=0.7), ValueError,
     "label_smoothing"),
    ("smoothing-sigmoid_norm", dict(loss_type="sigmoid_norm", **CL, **RL, label_smoothing=0.1),
     ValueError, "label_smoothing"),
    ("smoothing-sft", dict(loss_type="sft", **CL, label_smoothing=0.1), ValueError,
     "label_smoothing"),
    ("smoothing-aot", dict(loss_type="aot", label_smoothing=0.5), ValueError,
     "label_smoothing"),
    ("smoothing-aot_unpaired", dict(loss_type="aot_unpaired", label_smoothing=-0.1),
     ValueError, "label_smoothing"),
    ("smoothing-simpo", dict(loss_type="simpo", refs=False, **CL, **RL, label_smoothing=0.5),
     ValueError, "label_smoothing"),
    ("discopop_tau", dict(loss_type=["discopop", "sft"], **CL, discopop_tau=0.0), ValueError,
     "discopop_tau"),
]


@pytest.mark.parametrize(("kw", "error", "match"), [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_validation_errors(kw, error, match):
    """Every refused argument raises the promised error, naming the argument."""
    with pytest.raises(error, match=match):
        call(**kw)


ACCEPTED = {
    "sft-without-rejected_lengths": dict(loss_type="sft", **CL),
    "rpo-forward_kl": dict(loss_type=["sigmoid", "sft"], **CL, f_divergence_type="forward_kl"),
    "nca_pair-explicit-reverse_kl": dict(loss_type="nca_pair", f_divergence_type="reverse_kl"),
    "zero-weights": dict(loss_type="sigmoid", weights=np.zeros(5)),
    "integer-weights": dict(loss_type="sigmoid", weights=np.array([0, 1, 2, 3, 4])),
    "integer-lengths": dict(loss_type="sigmoid_norm", chosen_lengths=np.array([10, 12, 7, 3, 20]),
                            **RL),
    "smoothing-in-list": dict(loss_type=["sigmoid", "exo_pair"], label_smoothing=0.2),
    "simpo-gamma-0": dict(loss_type="simpo", refs=False, **CL, **RL, simpo_gamma=0.0),
}


@pytest.mark.parametrize("kw", list(ACCEPTED.values()), ids=list(ACCEPTED))
def test_accepted_calls(kw):
    """Calls on the edge of the rules that must work."""
    result = call(**kw)
    assert math.isfinite(result.loss)


def test_integer_lengths_equal_float_lengths():
    as_int = call(loss_type="sigmoid_norm", chosen_lengths=LENGTHS.astype(np.int64),
                  rejected_lengths=LENGTHS.astype(np.int32), compute_grad=True)
    as_float = call(loss_type="sigmoid_norm", **CL, **RL, compute_grad=True)
    assert as_int.loss == as_float.loss
    assert as_int.grad_chosen.tobytes() == as_float.grad_chosen.tobytes()


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
