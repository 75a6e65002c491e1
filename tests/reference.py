"""Independent reference implementations of the DPO / conservative-DPO loss.

Nothing here imports dpo_fast. Two references:

* a plain float64 one written with the ``math`` module (``softplus``, ``sigmoid``,
  :func:`pair_loss`, :func:`reference_preference_loss`), which follows the spec's formulas
  operation for operation where they are plain IEEE arithmetic (rewards ``beta * (p - r)``,
  ``z = beta * ((pc - rc) - (pr - rr))``), so rewards and ``z`` are bit-exact and only the
  transcendental functions differ from the compiled kernel by a few ulps;
* an mpmath high-precision one (``mp_*``) for measuring errors in ulps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import mpmath

# Working precision of the mpmath reference: far more than needed for double results,
# including those in the subnormal range.
MP_PREC = 160

SEED_EXAMPLE = (
    ([-2.0, -1.5], [-3.0, -2.5], [-2.5, -2.0], [-2.5, -2.0], 0.5),
    {"loss": 0.4741, "chosen_rewards": [0.25, 0.25], "rejected_rewards": [-0.25, -0.25]},
)


# ---------------------------------------------------------------- plain float64 reference


def softplus(x: float) -> float:
    """log(1 + exp(x)), stable for every finite x."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def sigmoid(x: float) -> float:
    """1 / (1 + exp(-x)) without overflow or cancellation."""
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def log_sigmoid(x: float) -> float:
    """log(sigmoid(x)) = -softplus(-x)."""
    return -softplus(-x)


def pair_z(pc: float, pr: float, rc: float, rr: float, beta: float) -> float:
    """z = beta * ((pc - rc) - (pr - rr)), in the spec's order of operations."""
    return beta * ((pc - rc) - (pr - rr))


def pair_loss_from_z(z: float, eps: float = 0.0) -> float:
    """Conservative DPO: -(1-eps)*logsigmoid(z) - eps*logsigmoid(-z)."""
    return (1.0 - eps) * softplus(-z) + eps * softplus(z)


def pair_dloss_dz(z: float, eps: float = 0.0) -> float:
    """d/dz of :func:`pair_loss_from_z`: -(1-eps)*sigmoid(-z) + eps*sigmoid(z)."""
    return eps * sigmoid(z) - (1.0 - eps) * sigmoid(-z)


def pair_dloss_dz_scale(z: float, eps: float = 0.0) -> float:
    """Size of the terms of :func:`pair_dloss_dz` (their sum of magnitudes): the scale
    against which its rounding error is measured (the two terms cancel near the minimum)."""
    return eps * sigmoid(z) + (1.0 - eps) * sigmoid(-z)


@dataclass
class ReferenceResult:
    """Unrounded float64 reference values, as plain Python lists and floats."""

    loss: float | list[float]
    losses: list[float]
    chosen_rewards: list[float]
    rejected_rewards: list[float]
    z: list[float]
    grad_chosen: list[float]
    grad_rejected: list[float]
    grad_scale: list[float]
    metrics: dict[str, float]


def reference_preference_loss(
    chosen: Sequence[float],
    rejected: Sequence[float],
    ref_chosen: Sequence[float] | None = None,
    ref_rejected: Sequence[float] | None = None,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> ReferenceResult:
    """Plain-Python float64 preference loss with every output of ``preference_loss``.

    Sums use ``math.fsum`` (correctly rounded), so the reference sums are at least as
    accurate as any evaluation order.
    """
    n = len(chosen)
    if ref_chosen is None:
        ref_chosen = [0.0] * n
    if ref_rejected is None:
        ref_rejected = [0.0] * n
    pc = [float(v) for v in chosen]
    pr = [float(v) for v in rejected]
    rc = [float(v) for v in ref_chosen]
    rr = [float(v) for v in ref_rejected]
    beta = float(beta)
    eps = float(label_smoothing)
    chosen_rewards = [beta * (a - b) for a, b in zip(pc, rc)]
    rejected_rewards = [beta * (a - b) for a, b in zip(pr, rr)]
    zs = [pair_z(*row, beta) for row in zip(pc, pr, rc, rr)]
    losses = [pair_loss_from_z(z, eps) for z in zs]
    divisor = float(n) if reduction == "mean" else 1.0
    grad_chosen = [beta * pair_dloss_dz(z, eps) / divisor for z in zs]
    grad_rejected = [-g for g in grad_chosen]
    grad_scale = [beta * pair_dloss_dz_scale(z, eps) / divisor for z in zs]
    total = math.fsum(losses)
    if reduction == "mean":
        loss: float | list[float] = total / n
    elif reduction == "sum":
        loss = total
    else:
        loss = list(losses)
    metrics = {
        "rewards/chosen": math.fsum(chosen_rewards) / n,
        "rewards/rejected": math.fsum(rejected_rewards) / n,
        "rewards/accuracies": sum(
            1.0 for a, b in zip(chosen_rewards, rejected_rewards) if a > b) / n,
        "rewards/margins": math.fsum(a - b for a, b in zip(chosen_rewards, rejected_rewards))
        / n,
        "logps/chosen": math.fsum(pc) / n,
        "logps/rejected": math.fsum(pr) / n,
    }
    return ReferenceResult(loss=loss, losses=losses, chosen_rewards=chosen_rewards,
                           rejected_rewards=rejected_rewards, z=zs, grad_chosen=grad_chosen,
                           grad_rejected=grad_rejected, grad_scale=grad_scale, metrics=metrics)


def reference_dpo_loss(chosen_policy, rejected_policy, chosen_ref, rejected_ref, beta):
    """dpo_loss, unrounded: (loss, chosen_rewards, rejected_rewards)."""
    ref = reference_preference_loss(chosen_policy, rejected_policy, chosen_ref, rejected_ref,
                                    beta=beta)
    return ref.loss, ref.chosen_rewards, ref.rejected_rewards


# --------------------------------------------------------------------- mpmath reference


def _mp(x: float) -> mpmath.mpf:
    return mpmath.mpf(float(x))


def mp_softplus(x) -> mpmath.mpf:
    """log(1 + exp(x)) in high precision."""
    with mpmath.workprec(MP_PREC):
        x = mpmath.mpf(x)
        if x > 0:
            return x + mpmath.log1p(mpmath.exp(-x))
        return mpmath.log1p(mpmath.exp(x))


def mp_sigmoid(x) -> mpmath.mpf:
    """1 / (1 + exp(-x)) in high precision."""
    with mpmath.workprec(MP_PREC):
        x = mpmath.mpf(x)
        return 1 / (1 + mpmath.exp(-x))


def mp_pair_loss(z: float, eps: float = 0.0) -> mpmath.mpf:
    """Exact (to MP_PREC bits) conservative-DPO loss of the double z."""
    with mpmath.workprec(MP_PREC):
        z, eps = _mp(z), _mp(eps)
        return (1 - eps) * mp_softplus(-z) + eps * mp_softplus(z)


def mp_pair_grad(z: float, beta: float, eps: float = 0.0) -> mpmath.mpf:
    """Exact d(loss)/d(chosen_logp) = beta * dloss/dz of the double z."""
    with mpmath.workprec(MP_PREC):
        z, beta, eps = _mp(z), _mp(beta), _mp(eps)
        return beta * (eps * mp_sigmoid(z) - (1 - eps) * mp_sigmoid(-z))


def ulp_of(exact) -> mpmath.mpf:
    """ulp(x) = 2^(e - 52) with 2^e <= |x| < 2^(e+1), never below 2^-1074 (so subnormal
    results are measured in units of the smallest subnormal)."""
    with mpmath.workprec(MP_PREC):
        exact = mpmath.mpf(exact)
        if exact == 0:
            return mpmath.ldexp(1, -1074)
        _, e = mpmath.frexp(abs(exact))  # |x| = m * 2^e, 0.5 <= m < 1
        return mpmath.ldexp(1, max(int(e) - 1 - 52, -1074))


def ulp_error(computed: float, exact) -> float:
    """|computed - exact| in ulps of the exact value."""
    with mpmath.workprec(MP_PREC):
        return float(abs(mpmath.mpf(float(computed)) - mpmath.mpf(exact)) / ulp_of(exact))
