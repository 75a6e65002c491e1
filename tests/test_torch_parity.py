"""Parity of dpo_fast.preference_loss with the same losses written in PyTorch, TRL's way.

The reference here is written with torch.nn.functional in float64 the way TRL's DPOTrainer
(and CPOTrainer for SimPO) computes each loss: F.logsigmoid, F.relu, torch.sigmoid, torch.exp,
torch.sort for the AOT losses, a mean over the batch. The formulas are those of the
loss-family notes (loss-family.md), written independently of csrc/pair_losses.h. Gradients are
torch autograd of the reduced loss with respect to the policy log-probs.

Checked for every loss type (sigmoid with and without label smoothing, hinge, ipo with and
without lengths, exo_pair, nca_pair, robust, bco_pair, sppo_hard, aot, aot_unpaired, apo_zero,
apo_down, discopop, sft, sigmoid_norm, simpo): per-pair losses, the reduced loss (mean, sum),
both rewards, TRL's metrics and both gradients; the per-pair gradient diagonal of
``reduction="none"`` (a torch Jacobian); the f-divergences on every loss type that allows them;
combinations with loss weights (RPO, MPO); per-pair weights; float32 outputs; a batch large
enough for two threads. Inputs are moderate (log-ratios within a few units), so the plain
TRL forms are exact to rounding and the tolerance is 1e-12 relative.

Skips when PyTorch is not installed.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from helpers import NEEDS_TORCH

from dpo_fast import _registry, preference_loss

torch = pytest.importorskip("torch", reason=NEEDS_TORCH)
F = torch.nn.functional

RTOL = 1e-12
# Absolute floor, relative to the largest magnitude of the array compared: an element that is
# a small difference of O(1) terms (a gradient near a stationary point, hinge near its kink)
# only has absolute accuracy.
ATOL_SHARE = 1e-13

ALL_TYPES = list(_registry.LOSS_TYPES)
# Types that use label_smoothing (exo_pair's must be > 0, as in TRL).
SMOOTHED = set(_registry.SMOOTHING_LIMITS)
NEEDS_LENGTHS = set(_registry.NEEDS_LENGTHS)
F_DIVERGENCE_TYPES = [name for name in ALL_TYPES if name in _registry.F_DIVERGENCE_LOSS_TYPES]
DIVERGENCES = [("forward_kl", 1.0), ("js_divergence", 1.0), ("alpha_divergence", 0.5)]

# One case per behaviour: the keyword arguments of preference_loss besides the arrays
# ("refs" False = reference-free; "gt" True = pass gt_reward_margins;
# "lengths" True = pass chosen_lengths and rejected_lengths,
# "chosen" = chosen_lengths only).
CASES = {
    "sigmoid": dict(loss_type="sigmoid", beta=0.1),
    "sigmoid-eps0.1": dict(loss_type="sigmoid", beta=0.1, label_smoothing=0.1),
    "sigmoid-noref": dict(loss_type="sigmoid", beta=0.5, refs=False),
    "sigmoid-lengths-ignored": dict(loss_type="sigmoid", beta=0.1, lengths=True),
    "hinge": dict(loss_type="hinge", beta=0.3),
    "ipo": dict(loss_type="ipo", beta=0.1),
    "ipo-lengths": dict(loss_type="ipo", beta=0.1, lengths=True),
    "exo_pair": dict(loss_type="exo_pair", beta=0.1, label_smoothing=1e-3),
    "exo_pair-eps0.1": dict(loss_type="exo_pair", beta=0.2, label_smoothing=0.1),
    "nca_pair": dict(loss_type="nca_pair", beta=0.1),
    "robust": dict(loss_type="robust", beta=0.1, label_smoothing=0.1),
    "robust-eps0": dict(loss_type="robust", beta=0.5),
    "bco_pair": dict(loss_type="bco_pair", beta=0.1),
    "bco_pair-delta": dict(loss_type="bco_pair", beta=0.1, bco_delta=0.37),
    "sppo_hard": dict(loss_type="sppo_hard", beta=0.1),
    "aot": dict(loss_type="aot", beta=0.1),
    "aot-eps0.1": dict(loss_type="aot", beta=0.5, label_smoothing=0.1),
    "aot_unpaired": dict(loss_type="aot_unpaired", beta=0.1),
    "aot_unpaired-eps0.1": dict(loss_type="aot_unpaired", beta=0.5, label_smoothing=0.1),
    "apo_zero": dict(loss_type="apo_zero", beta=0.1),
    "apo_down": dict(loss_type="apo_down", beta=0.1),
    "discopop": dict(loss_type="discopop", beta=0.1),
    "discopop-tau0.5": dict(loss_type="discopop", beta=0.5, discopop_tau=0.5),
    "sft": dict(loss_type="sft", beta=0.1, lengths=True),
    "sft-chosen-lengths-only": dict(loss_type="sft", beta=0.1, lengths="chosen"),
    "sigmoid_norm": dict(loss_type="sigmoid_norm", beta=0.1, lengths=True),
    "sigmoid_norm-beta2": dict(loss_type="sigmoid_norm", beta=2.0, lengths=True),
    "simpo": dict(loss_type="simpo", beta=2.0, simpo_gamma=0.5, lengths=True, refs=False),
    "simpo-eps0.1": dict(loss_type="simpo", beta=2.5, simpo_gamma=1.0, label_smoothing=0.1,
                         lengths=True, refs=False),
    "dpop": dict(loss_type="dpop", beta=0.1),
    "orpo": dict(loss_type="orpo", beta=0.1, lengths=True, refs=False),
    "dpop-lambda5": dict(loss_type="dpop", beta=0.5, dpop_lambda=5.0),
    "alphapo": dict(loss_type="alphapo", beta=2.0, alphapo_alpha=0.25, lengths=True,
                    refs=False),
    "alphapo-negative-eps0.1": dict(loss_type="alphapo", beta=2.5, simpo_gamma=1.0,
                                    alphapo_alpha=-0.5, label_smoothing=0.1, lengths=True,
                                    refs=False),
    "alphapo-alpha0": dict(loss_type="alphapo", beta=2.0, lengths=True, refs=False),
    "rpo_sq": dict(loss_type="rpo_sq", beta=0.1, gt=True),
    "rpo_fwd_kl": dict(loss_type="rpo_fwd_kl", beta=0.2, gt=True, gt_reward_scale=0.5),
    "rpo_bwd_kl": dict(loss_type="rpo_bwd_kl", beta=0.2, gt=True),
    "rpo_bwd_kl-scale3-weights": dict(loss_type="rpo_bwd_kl", beta=0.5, gt=True,
                                      gt_reward_scale=3.0, weights="w"),
}
assert {case["loss_type"] for case in CASES.values()} == set(ALL_TYPES)


# ------------------------------------------------------------------ data


def make_inputs(n: int, seed: int | str) -> dict[str, np.ndarray]:
    """Realistic summed log-probs with log-ratios of a few units, and token counts."""
    if isinstance(seed, str):
        seed = zlib.crc32(seed.encode())
    rng = np.random.default_rng([seed, n])
    rc = rng.normal(-60.0, 8.0, n)
    rr = rng.normal(-65.0, 8.0, n)
    return {
        "pc": rc + rng.normal(0.5, 2.0, n),
        "pr": rr + rng.normal(-0.5, 2.0, n),
        "rc": rc,
        "rr": rr,
        "nc": rng.integers(8, 257, n).astype(np.float64),
        "nr": rng.integers(8, 257, n).astype(np.float64),
        "w": rng.uniform(0.0, 2.0, n),
        "gt": rng.normal(0.0, 2.0, n),  # ground-truth reward margins (rpo_*)
    }


def call_kwargs(case: dict, data: dict[str, np.ndarray]) -> tuple[list, dict]:
    """(positional arrays, keyword arguments) of preference_loss for a case."""
    kwargs = {k: v for k, v in case.items() if k not in ("refs", "lengths", "gt")}
    if kwargs.get("weights") == "w":
        kwargs["weights"] = data["w"]
    if case.get("gt"):
        kwargs["gt_reward_margins"] = data["gt"]
    args = [data["pc"], data["pr"]]
    if case.get("refs", True):
        args += [data["rc"], data["rr"]]
    lengths = case.get("lengths", False)
    if lengths:
        kwargs["chosen_lengths"] = data["nc"]
        if lengths is True:
            kwargs["rejected_lengths"] = data["nr"]
    return args, kwargs


# ------------------------------------------------------------------ the torch reference


def score(x, f_divergence_type: str, alpha: float):
    """TRL 1.16's f-divergence score of a summed log-ratio (reverse KL: x itself), with the
    constants TRL drops dropped: they cancel in s(c) - s(r), not in s(c)/nc - s(r)/nr."""
    if f_divergence_type == "reverse_kl" or (f_divergence_type == "alpha_divergence"
                                             and abs(alpha - 1.0) < 1e-6):
        return x
    if f_divergence_type == "forward_kl":
        return -torch.exp(-x)
    if f_divergence_type == "js_divergence":
        return F.logsigmoid(x)
    if f_divergence_type == "alpha_divergence":
        return torch.exp((alpha - 1.0) * x) / (alpha - 1.0)
    raise AssertionError(f_divergence_type)


def smoothed_sigmoid(u, eps: float):
    """-(1 - eps) logsig(u) - eps logsig(-u): DPO's conservative form (and AOT, SimPO)."""
    return -F.logsigmoid(u) * (1.0 - eps) - F.logsigmoid(-u) * eps


def to_pair_order(sorted_losses, index):
    """The loss of sorted position i, reported at pair index[i]."""
    return sorted_losses[torch.argsort(index)]


def torch_pair_losses(loss_type: str, pc, pr, rc, rr, nc, nr, *, beta: float, eps: float,
                      tau: float, gamma: float, f_divergence_type: str, alpha: float,
                      lam: float = 50.0, delta: float = 0.0, shape: float = 0.0,
                      gt=None):
    """Per-pair losses of one loss type, in the original pair order (torch float64 tensors;
    rc = rr = 0 for reference-free; nc, nr may be None)."""
    c = pc - rc
    r = pr - rr
    chosen_scores = score(c, f_divergence_type, alpha)
    rejected_scores = score(r, f_divergence_type, alpha)
    if loss_type == "sigmoid_norm" or (loss_type == "ipo" and nc is not None
                                       and nr is not None):
        # TRL: the score of the summed log-ratio, then the division by the length
        h = chosen_scores / nc - rejected_scores / nr
    else:
        h = chosen_scores - rejected_scores
    z = beta * h
    if loss_type == "sigmoid":
        return smoothed_sigmoid(z, eps)
    if loss_type == "hinge":
        return F.relu(1.0 - z)
    if loss_type == "ipo":
        return (h - 1.0 / (2.0 * beta)) ** 2
    if loss_type == "exo_pair":
        e = eps
        return (torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-e))
                + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(e)))
    if loss_type == "nca_pair":
        chosen, rejected = beta * c, beta * r
        return (-F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen)
                - 0.5 * F.logsigmoid(-rejected))
    if loss_type == "robust":
        return (-F.logsigmoid(z) * (1.0 - eps) + F.logsigmoid(-z) * eps) / (1.0 - 2.0 * eps)
    if loss_type == "bco_pair":
        # TRL's BCO: -logsigmoid(beta c - delta) - logsigmoid(-(beta r - delta))
        return -F.logsigmoid(beta * c - delta) - F.logsigmoid(-(beta * r - delta))
    if loss_type == "sppo_hard":
        return (c - 0.5 / beta) ** 2 + (r + 0.5 / beta) ** 2
    if loss_type == "aot":
        pi_sorted, index = torch.sort(pc - pr, stable=True)
        ref_sorted, _ = torch.sort(rc - rr, stable=True)
        return to_pair_order(smoothed_sigmoid(beta * (pi_sorted - ref_sorted), eps), index)
    if loss_type == "aot_unpaired":
        chosen_sorted, index = torch.sort(c, stable=True)
        rejected_sorted, _ = torch.sort(r, stable=True)
        return to_pair_order(smoothed_sigmoid(beta * (chosen_sorted - rejected_sorted), eps),
                             index)
    if loss_type == "apo_zero":
        return (1.0 - torch.sigmoid(beta * c)) + torch.sigmoid(beta * r)
    if loss_type == "apo_down":
        return torch.sigmoid(beta * c) + (1.0 - torch.sigmoid(beta * (c - r)))
    if loss_type == "discopop":
        modulation = torch.sigmoid(z / tau)
        return -F.logsigmoid(z) * (1.0 - modulation) + torch.exp(-z) * modulation
    if loss_type == "sft":
        # TRL's nll_loss: cross-entropy averaged over every chosen token of the batch.
        return (-pc.sum() / nc.sum()).expand(pc.shape[0])
    if loss_type == "sigmoid_norm":
        return -F.logsigmoid(z)                   # z = beta * (s(c/nc) - s(r/nr))
    if loss_type == "simpo":
        u = beta * (pc / nc - pr / nr) - gamma
        return smoothed_sigmoid(u, eps)
    if loss_type == "orpo":  # TRL's ORPOTrainer.odds_ratio_loss, of average log-probs
        a_c, a_r = pc / nc, pr / nr
        log_odds = (a_c - a_r) - (torch.log1p(-torch.exp(a_c)) - torch.log1p(-torch.exp(a_r)))
        return -beta * F.logsigmoid(log_odds)
    if loss_type == "dpop":  # DPO-Positive (Pal et al. 2024, Eq. 3)
        return -F.logsigmoid(beta * (c - r - lam * torch.clamp(rc - pc, min=0.0)))
    if loss_type.startswith("rpo_"):  # NeMo-Aligner's loss_func, as written there
        return nemo_rpo(loss_type, beta * (c - r), gt)
    if loss_type == "alphapo":  # TRL's CPOTrainer.cpo_loss, loss_type "alphapo" (simpo)
        logits = alphapo_rewards(pc / nc, shape) - alphapo_rewards(pr / nr, shape)
        return smoothed_sigmoid(beta * (logits - gamma / beta), eps)
    raise AssertionError(loss_type)


def nemo_rpo(loss_type: str, z, g):
    """NeMo-Aligner's rpo_sq / rpo_fwd_kl / rpo_bwd_kl of z = beta * rewards_delta and
    g = gt_reward_scale * gt_rewards_delta (its loss_func, per pair)."""
    if loss_type == "rpo_sq":
        return (z - g) ** 2
    log_beta_c, log_beta_r = F.logsigmoid(z), F.logsigmoid(-z)
    log_alpha_c, log_alpha_r = F.logsigmoid(g), F.logsigmoid(-g)
    if loss_type == "rpo_bwd_kl":
        return (torch.exp(log_alpha_c) * (log_alpha_c - log_beta_c)
                + torch.exp(log_alpha_r) * (log_alpha_r - log_beta_r))
    return (torch.exp(log_beta_c) * (log_beta_c - log_alpha_c)
            + torch.exp(log_beta_r) * (log_beta_r - log_alpha_r))


def alphapo_rewards(logps, shape: float):
    """TRL's AlphaPO reward of average log-probs: (1 - p^(-alpha)) / alpha, p = exp(logps);
    the log-probs themselves at alpha = 0."""
    if shape == 0.0:
        return logps
    return (1.0 - torch.exp(logps).pow(-shape)) / shape


def torch_reference(args: list, kwargs: dict) -> dict:
    """Everything preference_loss returns, computed with torch float64 and autograd."""
    loss_type = kwargs.get("loss_type", "sigmoid")
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    loss_weights = kwargs.get("loss_weights") or [1.0] * len(types)
    beta = kwargs.get("beta", 0.1)
    reduction = kwargs.get("reduction", "mean")

    def tensor(x):
        return None if x is None else torch.tensor(np.asarray(x, np.float64))

    pc = tensor(args[0]).requires_grad_()
    pr = tensor(args[1]).requires_grad_()
    if len(args) > 2:
        rc, rr = tensor(args[2]), tensor(args[3])
    else:
        rc = rr = torch.zeros_like(pc.detach())
    nc, nr = tensor(kwargs.get("chosen_lengths")), tensor(kwargs.get("rejected_lengths"))
    weights = tensor(kwargs.get("weights"))

    def per_pair(pc, pr):
        total = 0.0
        for name, lw in zip(types, loss_weights):
            total = total + lw * torch_pair_losses(
                name, pc, pr, rc, rr, nc, nr, beta=beta,
                eps=kwargs.get("label_smoothing", 0.0) if name in SMOOTHED else 0.0,
                tau=kwargs.get("discopop_tau", 0.05), gamma=kwargs.get("simpo_gamma", 0.5),
                f_divergence_type=kwargs.get("f_divergence_type", "reverse_kl"),
                alpha=kwargs.get("f_alpha_divergence_coef", 1.0),
                lam=kwargs.get("dpop_lambda", 50.0), delta=kwargs.get("bco_delta", 0.0),
                shape=kwargs.get("alphapo_alpha", 0.0),
                gt=None if kwargs.get("gt_reward_margins") is None
                else kwargs.get("gt_reward_scale", 1.0) * tensor(kwargs["gt_reward_margins"]))
        return total if weights is None else weights * total

    losses = per_pair(pc, pr)
    if "alphapo" in types:  # TRL: beta times the shaped reward
        shape = kwargs.get("alphapo_alpha", 0.0)
        chosen_rewards = beta * alphapo_rewards(pc / nc, shape)
        rejected_rewards = beta * alphapo_rewards(pr / nr, shape)
    elif any(_registry.LOSS_REGISTRY[name].normalized_rewards for name in types):
        chosen_rewards = beta * (pc / nc)  # simpo, orpo: beta times the average log-prob
        rejected_rewards = beta * (pr / nr)
    else:
        chosen_rewards = beta * (pc - rc)
        rejected_rewards = beta * (pr - rr)
    out = {
        "losses": losses.detach().numpy(),
        "chosen_rewards": chosen_rewards.detach().numpy(),
        "rejected_rewards": rejected_rewards.detach().numpy(),
        "metrics": {
            "rewards/chosen": chosen_rewards.mean().item(),
            "rewards/rejected": rejected_rewards.mean().item(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).double().mean().item(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
            "logps/chosen": pc.mean().item(),
            "logps/rejected": pr.mean().item(),
        },
    }
    if reduction == "none":
        # d losses[i] / d pc[i]: the diagonal of the Jacobian.
        jac_c, jac_r = torch.autograd.functional.jacobian(per_pair, (pc.detach(), pr.detach()))
        out["loss"] = out["losses"]
        out["grad_chosen"] = torch.diagonal(jac_c).numpy()
        out["grad_rejected"] = torch.diagonal(jac_r).numpy()
        return out
    reduced = losses.mean() if reduction == "mean" else losses.sum()
    # allow_unused: sft alone does not depend on the rejected log-probs (a zero gradient).
    grads = torch.autograd.grad(reduced, (pc, pr), allow_unused=True)
    out["loss"] = reduced.item()
    out["grad_chosen"], out["grad_rejected"] = (
        np.zeros(len(pc)) if g is None else g.numpy() for g in grads)
    return out


# ------------------------------------------------------------------ comparison


def assert_close(actual, expected, what: str, rtol: float = RTOL,
                 atol_share: float = ATOL_SHARE) -> None:
    expected = np.asarray(expected, dtype=np.float64)
    actual_64 = np.asarray(actual, dtype=np.float64)
    assert actual_64.shape == expected.shape, f"{what}: shape {actual_64.shape}"
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual_64, expected, rtol=rtol, atol=atol_share * scale,
                               err_msg=what)


def assert_parity(args: list, kwargs: dict, grads: bool = True) -> None:
    """preference_loss(*args, **kwargs) equals the torch reference in every output."""
    result = preference_loss(*args, compute_grad=grads, **kwargs)
    expected = torch_reference(args, kwargs)
    for name in ("losses", "chosen_rewards", "rejected_rewards"):
        assert getattr(result, name).dtype == np.float64, name
        assert_close(getattr(result, name), expected[name], name)
    assert_close(result.loss, expected["loss"], "loss")
    assert set(result.metrics) == set(expected["metrics"])
    for key, value in expected["metrics"].items():
        if key == "rewards/accuracies":
            assert result.metrics[key] == value, key
        else:
            assert result.metrics[key] == pytest.approx(value, rel=RTOL, abs=1e-14), key
    if grads:
        assert_close(result.grad_chosen, expected["grad_chosen"], "grad_chosen")
        assert_close(result.grad_rejected, expected["grad_rejected"], "grad_rejected")
    else:
        assert result.grad_chosen is None and result.grad_rejected is None


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("n", [64, 1000])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_loss_type_matches_torch(case, n):
    """Per-pair losses, mean loss, rewards, metrics and the gradients of the mean."""
    args, kwargs = call_kwargs(CASES[case], make_inputs(n, case))
    assert_parity(args, kwargs)


@pytest.mark.parametrize("case", sorted(CASES))
def test_sum_reduction_matches_torch(case):
    args, kwargs = call_kwargs(CASES[case], make_inputs(257, case + "/sum"))
    assert_parity(args, {**kwargs, "reduction": "sum"})


@pytest.mark.parametrize("case", sorted(c for c in CASES if not c.startswith("aot_unpaired")))
def test_none_reduction_gradient_is_the_jacobian_diagonal(case):
    """reduction="none": grad_chosen[i] = d losses[i] / d chosen_logps[i] (and rejected).

    aot_unpaired is left out: the loss reported at a pair depends on the rejected log-prob of
    another pair, so the diagonal is not what its gradient scatter gives."""
    args, kwargs = call_kwargs(CASES[case], make_inputs(64, case + "/none"))
    assert_parity(args, {**kwargs, "reduction": "none"})


@pytest.mark.parametrize("f_divergence", DIVERGENCES, ids=[d for d, _ in DIVERGENCES])
@pytest.mark.parametrize("loss_type", F_DIVERGENCE_TYPES)
def test_f_divergences_match_torch(loss_type, f_divergence):
    name, alpha = f_divergence
    case = {"loss_type": loss_type, "beta": 0.2, "f_divergence_type": name,
            "f_alpha_divergence_coef": alpha,
            "lengths": loss_type in ("sigmoid_norm", "ipo")}
    if loss_type in ("sigmoid", "robust", "exo_pair"):
        case["label_smoothing"] = 0.1
    args, kwargs = call_kwargs(case, make_inputs(300, f"{loss_type}/{name}"))
    assert_parity(args, kwargs)


@pytest.mark.parametrize("f_divergence", DIVERGENCES, ids=[d for d, _ in DIVERGENCES])
def test_f_divergence_on_sigmoid_reduction_sum(f_divergence):
    name, alpha = f_divergence
    args, kwargs = call_kwargs({"loss_type": "sigmoid", "beta": 0.1, "f_divergence_type": name,
                                "f_alpha_divergence_coef": alpha, "reduction": "sum"},
                               make_inputs(1000, name))
    assert_parity(args, kwargs)


def test_alpha_divergence_coef_one_is_reverse_kl():
    args, kwargs = call_kwargs(CASES["sigmoid"], make_inputs(200, "alpha1"))
    alpha_one = preference_loss(*args, f_divergence_type="alpha_divergence",
                                f_alpha_divergence_coef=1.0, compute_grad=True, **kwargs)
    plain = preference_loss(*args, compute_grad=True, **kwargs)
    assert alpha_one.loss == plain.loss
    np.testing.assert_array_equal(alpha_one.losses, plain.losses)
    np.testing.assert_array_equal(alpha_one.grad_chosen, plain.grad_chosen)


@pytest.mark.parametrize(("types", "loss_weights", "extra"), [
    (["sigmoid", "sft"], [1.0, 0.5], {}),                                  # RPO
    (["sigmoid", "sft"], None, {"label_smoothing": 0.1}),
    (["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0], {}),                 # TRL's MPO recipe
    (["sft", "aot"], [0.3, 1.7], {"label_smoothing": 0.05}),
    (["ipo", "sigmoid_norm", "apo_zero"], [2.0, -0.5, 1.0], {}),
    (["sigmoid", "sft"], [1.0, 0.5], {"f_divergence_type": "js_divergence"}),
    (["aot", "aot_unpaired", "sft"], [1.0, 0.5, 0.2], {"label_smoothing": 0.1}),
    (["orpo", "sft"], [1.0, 1.0], {"refs": False}),                        # TRL's ORPO loss
    (["dpop", "bco_pair"], [1.0, 0.5], {"dpop_lambda": 5.0, "bco_delta": 0.2}),
    (["alphapo", "sft"], [1.0, 0.5], {"refs": False, "alphapo_alpha": 0.3}),
    (["rpo_bwd_kl", "sigmoid", "sft"], [1.0, 0.5, 0.2], {"gt": True}),  # NeMo's RPO + SFT
    (["rpo_sq", "rpo_fwd_kl"], [0.3, 1.0], {"gt": True, "gt_reward_scale": 2.0}),
], ids=["rpo", "rpo-eps", "mpo", "sft-aot", "ipo-norm-apo", "rpo-js", "aot-both-sft", "orpo",
        "dpop-bco", "alphapo-sft", "nemo-rpo-sft", "rpo-sq-fwd"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_combinations_match_torch(types, loss_weights, extra, reduction):
    case = {"loss_type": types, "beta": 0.1, "lengths": True, "reduction": reduction, **extra}
    if loss_weights is not None:
        case["loss_weights"] = loss_weights
    args, kwargs = call_kwargs(case, make_inputs(500, "/".join(types)))
    assert_parity(args, kwargs)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_combination_with_per_pair_weights(reduction):
    data = make_inputs(128, "combo-weights")
    args, kwargs = call_kwargs({"loss_type": ("sigmoid", "sft"), "loss_weights": (1.0, 0.25),
                                "beta": 0.1, "lengths": True, "reduction": reduction}, data)
    assert_parity(args, {**kwargs, "weights": data["w"]})


@pytest.mark.parametrize("case", sorted(c for c in CASES if not c.startswith("aot_unpaired")))
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_per_pair_weights_match_torch(case, reduction):
    """Each pair's loss times its weight, then the plain mean (zero weights included)."""
    data = make_inputs(200, case + "/weights")
    data["w"][::17] = 0.0
    args, kwargs = call_kwargs(CASES[case], data)
    assert_parity(args, {**kwargs, "weights": data["w"], "reduction": reduction})


@pytest.mark.parametrize("case", ["aot_unpaired", "aot_unpaired-eps0.1"])
def test_per_pair_weights_aot_unpaired(case):
    data = make_inputs(200, case + "/weights")
    args, kwargs = call_kwargs(CASES[case], data)
    for reduction in ("mean", "sum"):
        assert_parity(args, {**kwargs, "weights": data["w"], "reduction": reduction})


@pytest.mark.parametrize("case", ["sigmoid", "aot", "aot_unpaired", "sft", "simpo", "ipo-lengths",
                                  "discopop"])
def test_large_batch_two_threads(case):
    """A batch above the one-thread cut-off, on two threads: the chunked sums and the
    batch-wide sorts give the torch result too."""
    data = make_inputs(50_000, case + "/large")
    args, kwargs = call_kwargs(CASES[case], data)
    assert_parity(args, {**kwargs, "n_threads": 2, "weights": data["w"]})


def test_without_gradients_same_values():
    args, kwargs = call_kwargs(CASES["aot"], make_inputs(300, "nograd"))
    assert_parity(args, kwargs, grads=False)


FLOAT32_CASES = {
    **CASES,
    "combination-sorted": dict(loss_type=["sigmoid", "aot", "sft"], loss_weights=[1.0, 0.5, 0.2],
                               beta=0.1, label_smoothing=0.1, lengths=True),
    "combination-weights-js": dict(loss_type=["sigmoid_norm", "sft"], beta=0.5, lengths=True,
                                   f_divergence_type="js_divergence", weights=True),
}


@pytest.mark.parametrize("case", sorted(FLOAT32_CASES))
def test_float32_outputs_match_torch_float64_rounded(case):
    """All-float32 inputs: float32 outputs within a few ulp of torch's float64 result.

    (The kernel rounds its float64 result once, <= 2 ulp by the spec, and torch's float64
    result differs from the kernel's by float64 rounding only.)"""
    data = make_inputs(300, case + "/f32")
    for key in data:
        data[key] = data[key].astype(np.float32)
    spec = dict(FLOAT32_CASES[case])
    args, kwargs = call_kwargs({k: v for k, v in spec.items() if k != "weights"}, data)
    if spec.get("weights"):
        kwargs["weights"] = data["w"]
    result = preference_loss(*args, compute_grad=True, **kwargs)
    expected = torch_reference(args, kwargs)
    rtol = 3 * 2.0**-23
    for name in ("losses", "chosen_rewards", "rejected_rewards", "grad_chosen",
                 "grad_rejected"):
        actual = getattr(result, name)
        assert actual.dtype == np.float32, name
        assert_close(actual, expected[name], name, rtol=rtol, atol_share=1e-12)
    assert float(result.loss) == pytest.approx(expected["loss"], rel=1e-6)
