"""The loss modifiers' plain float64 reference and the cases the tests run it on (loss lists,
weights, lengths, f-divergences, label smoothing, sorted and reward-aware types), for
tests/test_modifiers_*.py, tests/test_fuzz_*.py and tests/test_registry.py.

``ref_losses`` is written with the math module and loops, straight from
/work/shared/loss-family.md and the API notes; it shares nothing with csrc/.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from reference import log_sigmoid as logsig
from reference import sigmoid as sig
from test_loss_family import reference_pair

from dpo_fast import _registry

# ---- the loss modifiers' plain float64 reference and cases (tests/test_modifiers_*.py,
# tests/test_fuzz_*.py, tests/test_registry.py) ----
# Written with the math module and loops, straight from /work/shared/loss-family.md and the API
# notes; it shares nothing with csrc/ (the per-pair formulas of the older loss types come from
# test_loss_family.py).
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
