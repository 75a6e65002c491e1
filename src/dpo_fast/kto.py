"""kto_loss: the KTO loss on unpaired data (TRL's KTOTrainer), with its exact gradient.

KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization") scores
single completions labelled desirable or undesirable. With the log-ratio ``x = logp - ref_logp``
of each completion and a reference point ``z`` (TRL: the mean log-ratio of mismatched
completions, clamped at 0, a constant for the gradient), TRL 1.16's ``KTOTrainer.kto_loss``
takes, per completion,

- ``loss_type="kto"``: desirable ``wd * (1 - sigmoid(beta * (x - z)))``, undesirable
  ``wu * (1 - sigmoid(beta * (z - x)))``;
- ``loss_type="apo_zero_unpaired"`` (APO-zero, D'Oosterlinck et al. 2024): desirable
  ``wd * (1 - sigmoid(beta * x))``, undesirable ``wu * sigmoid(beta * x)``,

and the mean over all completions. Rewards are ``beta * x``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dpo_fast._arrays import check_finite_real, check_flag, kernel_array, tensor_as_array
from dpo_fast._kernels import _kto
from dpo_fast._seed import validate_beta

__all__ = ["KTO_LOSS_TYPES", "KTOLossResult", "KTORows", "kl_estimate", "kto_loss", "kto_metrics",
           "kto_rows"]

KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")
_REDUCTIONS = ("mean", "sum", "none")
_ADAPTER = "dpo_fast.torch.kto_loss"


@dataclass(frozen=True)
class KTOLossResult:
    """What :func:`kto_loss` returns.

    Attributes
    ----------
    loss : float or numpy.ndarray
        The reduced loss (``"none"``: the per-completion losses).
    losses : numpy.ndarray
        Per completion, weighted by ``desirable_weight`` / ``undesirable_weight``.
    rewards : numpy.ndarray
        ``beta * (logps - ref_logps)``.
    grad : numpy.ndarray or None
        With ``compute_grad=True``: the derivative of ``loss`` with respect to each ``logps``
        (for ``"none"``, of each completion's own loss).
    kl : float
        The reference point ``z`` used (0 for ``"apo_zero_unpaired"``).
    metrics : dict of str to float
        TRL's KTO names: ``"kl"``, ``"rewards/chosen_sum"``, ``"rewards/rejected_sum"``,
        ``"logps/chosen_sum"``, ``"logps/rejected_sum"``, ``"count/chosen"``,
        ``"count/rejected"``; and the means TRL logs from them, ``"rewards/chosen"``,
        ``"rewards/rejected"``, ``"rewards/margins"`` (where both sides have completions).
    """

    loss: float | np.ndarray
    losses: np.ndarray
    rewards: np.ndarray
    grad: np.ndarray | None
    kl: float
    metrics: Mapping[str, float] = field(default_factory=dict)


def _float_array(value: Any, name: str) -> np.ndarray:
    array = tensor_as_array(value, name, _ADAPTER)
    array = np.asarray(value) if array is None else array
    if array.dtype == np.bool_ or array.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be real numbers, got dtype {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array


def _finite(array: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(array, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] is {float(values[bad[0]])!r}; {name} must be "
                         "finite")
    return values


def kto_loss(logps: Any, ref_logps: Any, desirable: Any, *, beta: float = 0.1,
             kl: float | None = None, kl_logps: Any = None, ref_kl_logps: Any = None,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
             loss_type: str = "kto", reduction: str = "mean",
             compute_grad: bool = False) -> KTOLossResult:
    """KTO loss of unpaired completions (TRL 1.16's ``KTOTrainer``), in float64.

    Parameters
    ----------
    logps, ref_logps : array_like, shape (n,)
        Summed log-probs of each completion under the policy and the reference model.
    desirable : array_like of bool, shape (n,)
        True for a desirable completion, False for an undesirable one (TRL's ``label``).
    beta : float, default 0.1
        Finite, in [1e-300, 1e300].
    kl : float, optional
        The reference point ``z``; finite. Default: from ``kl_logps`` / ``ref_kl_logps``.
    kl_logps, ref_kl_logps : array_like, shape (m,), optional
        Log-probs of mismatched completions (TRL's KL dataset) under both models: ``z =
        max(0, mean(kl_logps - ref_kl_logps))``. Without them and without ``kl``, ``z = 0``
        (TRL's ``calculate_KL=False``).
    desirable_weight, undesirable_weight : float, default 1.0
        TRL's ``desirable_weight`` / ``undesirable_weight``; finite, >= 0.
    loss_type : {"kto", "apo_zero_unpaired"}
        ``"apo_zero_unpaired"`` takes no reference point: ``kl`` / ``kl_logps`` are refused.
    reduction : {"mean", "sum", "none"}
        ``"mean"`` is TRL's: over all completions.
    compute_grad : bool, default False
        Also return ``grad``, the derivative with respect to ``logps`` (``z`` is a constant,
        as in TRL).

    Returns
    -------
    KTOLossResult

    Raises
    ------
    TypeError, ValueError
        Naming the argument (and the index of a non-finite value), for wrong types, lengths,
        shapes, values, or an option the loss type does not use.

    Examples
    --------
    >>> from dpo_fast import kto_loss
    >>> result = kto_loss([-10.0, -10.0], [-11.0, -11.0], [True, False], beta=0.1, kl=0.8)
    >>> [round(float(v), 12) for v in result.losses]
    [0.49500016666, 0.50499983334]
    """
    beta_value = validate_beta(beta)
    if not isinstance(loss_type, str) or loss_type not in KTO_LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {KTO_LOSS_TYPES}")
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {_REDUCTIONS}")
    want_grad = check_flag(compute_grad, "compute_grad")
    weights = []
    for value, name in ((desirable_weight, "desirable_weight"),
                        (undesirable_weight, "undesirable_weight")):
        number = check_finite_real(value, name)
        if number < 0.0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
        weights.append(number)

    policy = kernel_array(_float_array(logps, "logps"), np.float64)
    reference = kernel_array(_float_array(ref_logps, "ref_logps"), np.float64)
    labels = tensor_as_array(desirable, "desirable", _ADAPTER)
    labels = np.asarray(desirable) if labels is None else labels
    if labels.dtype != np.bool_:
        raise TypeError(f"desirable must be booleans (True: desirable), got dtype "
                        f"{labels.dtype}")
    for array, name in ((reference, "ref_logps"), (labels, "desirable")):
        if array.shape != policy.shape:
            raise ValueError(f"length mismatch: logps has {policy.shape[0]} elements but "
                             f"{name} has shape {array.shape}")
    if policy.shape[0] == 0:
        raise ValueError("logps is empty: the loss of no completions is undefined")

    point = _reference_point(loss_type, kl, kl_logps, ref_kl_logps)
    finite, losses, rewards, grad, sums = _kto.kto_rows(
        policy, reference, labels, beta_value, point, weights[0], weights[1], want_grad,
        1 if reduction == "none" else 2)
    if not finite:
        _finite(policy, "logps")        # raises, naming the first value that is not finite
        _finite(reference, "ref_logps")
    n = losses.shape[0]
    loss_sum = sums[0]
    if reduction == "mean":
        loss: float | np.ndarray = loss_sum / n
    elif reduction == "sum":
        loss = loss_sum
    else:
        loss = losses
    if grad is not None and reduction == "mean":
        grad = grad / n
    count_chosen = sums[5]
    metrics = kto_metrics(point, *sums[1:5], count_chosen, n - count_chosen)
    return KTOLossResult(loss=loss, losses=losses, rewards=rewards, grad=grad, kl=point,
                         metrics=metrics)


@dataclass(frozen=True)
class KTORows:
    """What :func:`kto_rows` returns: per completion, ``losses``, ``rewards`` and (when
    asked) ``grad``, the derivative of each completion's own loss with respect to its
    ``logps``."""

    losses: np.ndarray
    rewards: np.ndarray
    grad: np.ndarray | None = None


def kto_rows(policy: np.ndarray, reference: np.ndarray, desirable: np.ndarray, *,
             beta: float, kl: float, desirable_weight: float, undesirable_weight: float,
             compute_grad: bool = False) -> KTORows:
    """The per-completion KTO formula, in one place: :func:`kto_loss` and ``dpo-fast score
    --loss-type kto`` both call it, on values they have already validated.

    ``policy``, ``reference``: finite float64 log-probs; ``desirable``: bool; ``beta`` a
    valid beta; ``kl`` the reference point ``z`` (0 for ``apo_zero_unpaired``, whose rows
    are the ``kto`` rows at ``z = 0``). Returns :class:`KTORows`.
    """
    _, losses, rewards, grad, _ = _kto.kto_rows(
        kernel_array(policy, np.float64), kernel_array(reference, np.float64), desirable, beta,
        kl, desirable_weight, undesirable_weight, compute_grad, 0)
    return KTORows(losses=losses, rewards=rewards, grad=grad)


def kl_estimate(total: float, count: int) -> float:
    """TRL's reference point from the mismatched completions: ``max(0, total / count)``,
    ``total`` the (correctly rounded) sum of ``kl_logps - ref_kl_logps`` over ``count``
    rows (TRL: ``(policy_KL_logps - reference_KL_logps).mean().clamp(min=0)``)."""
    return max(0.0, total / count)


def _reference_point(loss_type: str, kl: Any, kl_logps: Any, ref_kl_logps: Any) -> float:
    """z: ``kl`` as given, else TRL's estimate from the mismatched completions, else 0."""
    given = [name for name, value in (("kl", kl), ("kl_logps", kl_logps),
                                      ("ref_kl_logps", ref_kl_logps)) if value is not None]
    if loss_type == "apo_zero_unpaired":
        if given:
            raise ValueError(f"{given[0]} is not used by loss_type='apo_zero_unpaired' (it "
                             "has no reference point); drop it")
        return 0.0
    if kl is not None:
        if kl_logps is not None or ref_kl_logps is not None:
            raise ValueError("pass either kl or kl_logps / ref_kl_logps, not both")
        return check_finite_real(kl, "kl")
    if (kl_logps is None) != (ref_kl_logps is None):
        missing = "ref_kl_logps" if ref_kl_logps is None else "kl_logps"
        raise ValueError(f"kl_logps and ref_kl_logps come together: {missing} is missing")
    if kl_logps is None:
        return 0.0
    policy = kernel_array(_float_array(kl_logps, "kl_logps"), np.float64)
    reference = kernel_array(_float_array(ref_kl_logps, "ref_kl_logps"), np.float64)
    if policy.shape != reference.shape or policy.shape[0] == 0:
        raise ValueError(f"kl_logps and ref_kl_logps must have the same non-zero length, got "
                         f"{policy.shape[0]} and {reference.shape[0]}")
    overflow = ("the differences kl_logps - ref_kl_logps overflow float64, so their mean (the "
                "reference point) is {}; pass kl instead")
    try:
        total, finite = _kto.fsum_differences(policy, reference)
    except ValueError:   # differences overflowing to +inf and to -inf
        raise ValueError(overflow.format("undefined")) from None
    if not finite:
        _finite(policy, "kl_logps")        # raises, naming the first value that is not finite
        _finite(reference, "ref_kl_logps")
    z = kl_estimate(total, policy.shape[0])
    if not math.isfinite(z):
        raise ValueError(overflow.format(repr(z)))
    return z


def kto_metrics(kl: float, rewards_chosen_sum: float, rewards_rejected_sum: float,
                logps_chosen_sum: float, logps_rejected_sum: float, count_chosen: int,
                count_rejected: int) -> dict[str, float]:
    """TRL's KTO metrics from the per-side sums and counts (the sums correctly rounded):
    the sums and counts themselves, and the means TRL logs from them, ``rewards/chosen``,
    ``rewards/rejected``, ``rewards/margins`` (where both sides have completions)."""
    metrics = {
        "kl": kl,
        "rewards/chosen_sum": rewards_chosen_sum,
        "rewards/rejected_sum": rewards_rejected_sum,
        "logps/chosen_sum": logps_chosen_sum,
        "logps/rejected_sum": logps_rejected_sum,
        "count/chosen": float(count_chosen),
        "count/rejected": float(count_rejected),
    }
    if count_chosen:
        metrics["rewards/chosen"] = rewards_chosen_sum / count_chosen
    if count_rejected:
        metrics["rewards/rejected"] = rewards_rejected_sum / count_rejected
    if count_chosen and count_rejected:
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return metrics
