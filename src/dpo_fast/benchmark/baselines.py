"""Every baseline ``dpo-fast bench`` measures dpo_fast against, in one place.

Each is written the way a user of the tool would write it; none calls dpo_fast.

Pairwise DPO loss
    :func:`numpy_seed_solution` and :func:`python_seed_solution` (the list call: lists in, a
    dict of rounded floats out), :func:`numpy_array_solution` (the three-line NumPy formula),
    :func:`torch_array_solution` and :func:`torch_formula_step` (PyTorch forward, and forward +
    backward), :data:`bandwidth_bound` (the same-traffic kernel), and
    :func:`float64_reference` (the accuracy reference of the core section).
Loss types
    :func:`numpy_losses` / :func:`numpy_loss_type_solution`: every registered loss type in
    vectorised NumPy, with the parameters in :data:`LOSS_PARAMS`.
Log-probs
    :func:`numpy_logps`, :func:`torch_logps`, :func:`torch_lse_logps`,
    :func:`torch_logps_sum` and the float64 reference :func:`float64_logps_reference`.
Scoring a file
    :data:`PANDAS_SCRIPT` and :data:`IO_SCRIPT`, programs run in their own processes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dpo_fast._kernels import _pairwise

__all__ = [
    "IO_SCRIPT",
    "LOSS_PARAMS",
    "PANDAS_SCRIPT",
    "bandwidth_bound",
    "float64_logps_reference",
    "float64_reference",
    "numpy_array_solution",
    "numpy_kto_formula",
    "numpy_logps",
    "numpy_loss_type_solution",
    "numpy_losses",
    "numpy_seed_solution",
    "python_seed_solution",
    "sigmoid",
    "softplus",
    "torch_array_solution",
    "torch_formula_step",
    "torch_logps",
    "torch_logps_sum",
    "torch_lse_logps",
]

# The bandwidth bound: a kernel shipped for this purpose that reads the same 4 input streams
# and writes the same 3 output streams as the loss kernel (x = a + c; y = b + d; z = a - b),
# in the same chunks under the same OpenMP schedule, with trivial arithmetic. Called as
# bandwidth_bound(a, b, c, d, x, y, z, n_threads); bound directly (no wrapper) so that its
# call overhead at tiny N is the kernel's own.
bandwidth_bound = _pairwise.memory_traffic


# --------------------------------------------------------------------------------------------
# The pairwise DPO loss.
# --------------------------------------------------------------------------------------------

def numpy_seed_solution(log_probs_chosen_policy, log_probs_rejected_policy,
                        log_probs_chosen_ref, log_probs_rejected_ref, beta):
    """A plain NumPy implementation of ``dpo_loss`` (the list-call baseline).

    Parameters
    ----------
    log_probs_chosen_policy, log_probs_rejected_policy, log_probs_chosen_ref, \
log_probs_rejected_ref : list of float
        Log-probabilities, as in :func:`dpo_fast.dpo_loss`.
    beta : float
        Inverse temperature.

    Returns
    -------
    dict
        ``{'loss': float, 'chosen_rewards': [...], 'rejected_rewards': [...]}``, each value
        rounded with Python's ``round(x, 4)``.
    """
    policy_chosen = np.array(log_probs_chosen_policy)
    policy_rejected = np.array(log_probs_rejected_policy)
    ref_chosen = np.array(log_probs_chosen_ref)
    ref_rejected = np.array(log_probs_rejected_ref)
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    logits = chosen_rewards - rejected_rewards
    # -log(sigmoid(z)) = log(1 + exp(-z)), in the stable form.
    loss = np.logaddexp(0.0, -logits).mean()
    return {
        "loss": round(float(loss), 4),
        "chosen_rewards": [round(x, 4) for x in chosen_rewards.tolist()],
        "rejected_rewards": [round(x, 4) for x in rejected_rewards.tolist()],
    }


def python_seed_solution(log_probs_chosen_policy, log_probs_rejected_policy,
                         log_probs_chosen_ref, log_probs_rejected_ref, beta):
    """A pure-Python loop implementation of ``dpo_loss``, with :mod:`math` only.

    Parameters and return value are those of :func:`numpy_seed_solution`.
    """
    chosen_rewards = [beta * (p - r) for p, r in zip(log_probs_chosen_policy,
                                                     log_probs_chosen_ref)]
    rejected_rewards = [beta * (p - r) for p, r in zip(log_probs_rejected_policy,
                                                       log_probs_rejected_ref)]
    total = 0.0
    for chosen, rejected in zip(chosen_rewards, rejected_rewards):
        z = chosen - rejected
        # -log(sigmoid(z)) = softplus(-z) = max(-z, 0) + log1p(exp(-|z|)): never overflows.
        total += max(-z, 0.0) + math.log1p(math.exp(-abs(z)))
    return {
        "loss": round(total / len(chosen_rewards), 4),
        "chosen_rewards": [round(x, 4) for x in chosen_rewards],
        "rejected_rewards": [round(x, 4) for x in rejected_rewards],
    }


def numpy_array_solution(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    """The NumPy array solution: rewards, ``np.logaddexp(0, -z)``, mean.

    Parameters
    ----------
    policy_chosen, policy_rejected, ref_chosen, ref_rejected : numpy.ndarray
        1-D arrays of one float dtype; the results have that dtype.
    beta : float
        Inverse temperature.

    Returns
    -------
    tuple
        ``(loss, losses, chosen_rewards, rejected_rewards)`` with ``loss`` a Python float.
    """
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    z = chosen_rewards - rejected_rewards
    losses = np.logaddexp(0, -z)
    return float(losses.mean()), losses, chosen_rewards, rejected_rewards


def numpy_kto_formula(logps, ref_logps, desirable, kl_logps, ref_kl_logps, beta):
    """KTO (TRL 1.16's ``KTOTrainer.kto_loss``) as a user writes it in NumPy: the reference
    point from the KL batch, the two sides' ``1 - sigmoid``, the mean, and the per-side sums
    TRL logs.

    Parameters
    ----------
    logps, ref_logps : numpy.ndarray
        Float64 summed log-probs of the completions.
    desirable : numpy.ndarray
        Bool labels.
    kl_logps, ref_kl_logps : numpy.ndarray
        The KL batch's log-probs.
    beta : float

    Returns
    -------
    tuple
        ``(loss, losses, rewards, sums)``, ``sums`` the per-side reward and log-prob sums.
    """
    kl = max(float(np.mean(kl_logps - ref_kl_logps)), 0.0)
    log_ratios = logps - ref_logps
    losses = np.where(desirable, 1.0 - 1.0 / (1.0 + np.exp(-beta * (log_ratios - kl))),
                      1.0 - 1.0 / (1.0 + np.exp(-beta * (kl - log_ratios))))
    rewards = beta * log_ratios
    sums = (rewards[desirable].sum(), rewards[~desirable].sum(), logps[desirable].sum(),
            logps[~desirable].sum())
    return float(losses.mean()), losses, rewards, sums


def torch_array_solution(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    """The PyTorch CPU solution: rewards, ``-F.logsigmoid(z)``, mean.

    Parameters
    ----------
    policy_chosen, policy_rejected, ref_chosen, ref_rejected : torch.Tensor
        1-D CPU tensors of one float dtype (the caller sets ``torch.set_num_threads``).
    beta : float
        Inverse temperature.

    Returns
    -------
    tuple
        ``(loss, losses, chosen_rewards, rejected_rewards)`` with ``loss`` a Python float.
    """
    import torch.nn.functional as F  # noqa: N812 - the name everyone writes

    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses.mean().item(), losses, chosen_rewards, rejected_rewards


def torch_formula_step(torch: Any, tensors: list[Any], beta: float) -> None:
    """Plain torch autograd: rewards, ``-logsigmoid``, mean, backward (grads reset first).

    Parameters
    ----------
    torch : module
        torch.
    tensors : list of torch.Tensor
        ``[chosen, rejected, ref_chosen, ref_rejected]``; the first two require grad.
    beta : float
        Inverse temperature.
    """
    import torch.nn.functional as F  # noqa: N812 - the name everyone writes

    chosen, rejected, ref_chosen, ref_rejected = tensors
    chosen.grad = rejected.grad = None
    margin = beta * (chosen - ref_chosen) - beta * (rejected - ref_rejected)
    (-F.logsigmoid(margin)).mean().backward()


def float64_reference(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    """Accuracy reference: float64 NumPy evaluated with the kernel's association of z.

    The timed NumPy implementation forms ``z = beta*c - beta*r``; the kernel forms
    ``z = beta*(c - r)``. The two differ by a rounding of z, which moves a loss by several
    float64 ulp, so the reference uses the kernel's z and the comparison measures the
    softplus and the rounding of the outputs only.

    Parameters
    ----------
    policy_chosen, policy_rejected, ref_chosen, ref_rejected : array_like
        Log-probabilities (converted to float64).
    beta : float
        Inverse temperature.

    Returns
    -------
    tuple
        ``(loss, losses, chosen_rewards, rejected_rewards)``, float64.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in
              (policy_chosen, policy_rejected, ref_chosen, ref_rejected)]
    chosen = arrays[0] - arrays[2]
    rejected = arrays[1] - arrays[3]
    losses = np.logaddexp(0.0, -(beta * (chosen - rejected)))
    return float(losses.mean()), losses, beta * chosen, beta * rejected


# --------------------------------------------------------------------------------------------
# Every loss type, in NumPy.
# --------------------------------------------------------------------------------------------

# beta 0.1 (simpo: beta 2.0, simpo_gamma 0.5, TRL's CPOTrainer defaults for SimPO);
# label_smoothing 0 except robust (0.1: with 0 it is the sigmoid loss) and exo_pair (1e-3,
# the EXO paper's; it must be set); discopop_tau 0.05; dpop_lambda 50 (the DPOP paper's);
# alphapo: simpo's beta and gamma, alphapo_alpha 0.25.
LOSS_PARAMS = {"beta": 0.1, "simpo_beta": 2.0, "simpo_gamma": 0.5,
               "robust_label_smoothing": 0.1, "exo_epsilon": 1e-3, "discopop_tau": 0.05,
               "dpop_lambda": 50.0, "alphapo_alpha": 0.25}


def softplus(x):
    """log(1 + exp(x)), stable, elementwise (``np.logaddexp(0, x)``)."""
    return np.logaddexp(0.0, x)


def sigmoid(x):
    """1 / (1 + exp(-x)), elementwise: exact to rounding everywhere; exp overflows to inf for
    x < -709 (float64), and 1 / inf = 0 is the right limit."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def numpy_losses(loss_type: str, pc, pr, rc, rr, nc, nr, gt=None):
    """Per-pair losses and both rewards of one loss type, in the dtype of the inputs.

    Parameters
    ----------
    loss_type : str
        A registered loss type.
    pc, pr, rc, rr : numpy.ndarray
        Policy and reference log-probs of the chosen and rejected responses.
    nc, nr : numpy.ndarray
        Token counts (used by sft, sigmoid_norm, simpo, orpo and alphapo).
    gt : numpy.ndarray, optional
        Ground-truth reward margins (used by rpo_sq, rpo_fwd_kl, rpo_bwd_kl; scale 1).

    Returns
    -------
    tuple of numpy.ndarray
        ``(losses, chosen_rewards, rejected_rewards)``.
    """
    p = LOSS_PARAMS
    if loss_type == "simpo":
        chosen_avg, rejected_avg = pc / nc, pr / nr
        u = p["simpo_beta"] * (chosen_avg - rejected_avg) - p["simpo_gamma"]
        return softplus(-u), p["simpo_beta"] * chosen_avg, p["simpo_beta"] * rejected_avg
    if loss_type == "alphapo":  # simpo of TRL's shaped rewards (1 - exp(a)^(-alpha)) / alpha
        alpha = p["alphapo_alpha"]
        chosen_r = -np.expm1(-alpha * (pc / nc)) / alpha
        rejected_r = -np.expm1(-alpha * (pr / nr)) / alpha
        u = p["simpo_beta"] * (chosen_r - rejected_r) - p["simpo_gamma"]
        return softplus(-u), p["simpo_beta"] * chosen_r, p["simpo_beta"] * rejected_r
    beta = p["beta"]
    if loss_type == "orpo":  # reference-free, of the average log-probs a < 0
        chosen_avg, rejected_avg = pc / nc, pr / nr

        def log1mexp(a):
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(a > -math.log(2.0), np.log(-np.expm1(a)),
                                np.log1p(-np.exp(a)))

        log_odds = (chosen_avg - rejected_avg) - (log1mexp(chosen_avg) - log1mexp(rejected_avg))
        return beta * softplus(-log_odds), beta * chosen_avg, beta * rejected_avg
    c = pc - rc
    r = pr - rr
    chosen_rewards = beta * c
    rejected_rewards = beta * r
    z = chosen_rewards - rejected_rewards
    if loss_type == "sigmoid":
        losses = softplus(-z)
    elif loss_type == "hinge":
        losses = np.maximum(0.0, 1.0 - z)
    elif loss_type == "ipo":
        losses = np.square(c - r - 0.5 / beta)
    elif loss_type == "exo_pair":
        eps = p["exo_epsilon"]
        log_sig_pos, log_sig_neg = -softplus(-z), -softplus(z)
        losses = (np.exp(log_sig_pos) * (log_sig_pos - math.log1p(-eps))
                  + np.exp(log_sig_neg) * (log_sig_neg - math.log(eps)))
    elif loss_type == "nca_pair":
        losses = (softplus(-chosen_rewards) + 0.5 * softplus(chosen_rewards)
                  + 0.5 * softplus(rejected_rewards))
    elif loss_type == "robust":
        eps = p["robust_label_smoothing"]
        losses = ((1.0 - eps) * softplus(-z) - eps * softplus(z)) / (1.0 - 2.0 * eps)
    elif loss_type == "bco_pair":
        losses = softplus(-chosen_rewards) + softplus(rejected_rewards)
    elif loss_type == "sppo_hard":
        losses = np.square(c - 0.5 / beta) + np.square(r + 0.5 / beta)
    elif loss_type in ("aot", "aot_unpaired"):
        if loss_type == "aot":
            policy, reference = pc - pr, rc - rr
        else:
            policy, reference = c, r
        order = np.argsort(policy, kind="stable")
        delta = policy[order] - np.sort(reference)
        losses = np.empty_like(delta)
        losses[order] = softplus(-beta * delta)  # sorted position i belongs to pair order[i]
    elif loss_type == "apo_zero":
        losses = 1.0 - sigmoid(chosen_rewards) + sigmoid(rejected_rewards)
    elif loss_type == "apo_down":
        losses = sigmoid(chosen_rewards) + 1.0 - sigmoid(z)
    elif loss_type == "discopop":
        log_m = -softplus(-z / p["discopop_tau"])        # log sigmoid(z / tau)
        m = np.exp(log_m)
        losses = (1.0 - m) * softplus(-z) + np.exp(log_m - z)
    elif loss_type == "sft":
        losses = np.full_like(pc, -pc.sum() / nc.sum())
    elif loss_type == "sigmoid_norm":
        losses = softplus(-beta * (c / nc - r / nr))
    elif loss_type == "dpop":
        losses = softplus(-beta * (c - r - p["dpop_lambda"] * np.maximum(0.0, -c)))
    elif loss_type == "rpo_sq":  # NeMo-Aligner's, gt_reward_scale 1
        losses = np.square(z - gt)
    elif loss_type in ("rpo_fwd_kl", "rpo_bwd_kl"):  # Bernoulli KLs of sigmoid(z), sigmoid(g)
        log_z, log_not_z = -softplus(-z), -softplus(z)
        log_g, log_not_g = -softplus(-gt), -softplus(gt)
        if loss_type == "rpo_fwd_kl":
            losses = np.exp(log_z) * (log_z - log_g) + np.exp(log_not_z) * (log_not_z - log_not_g)
        else:
            losses = np.exp(log_g) * (log_g - log_z) + np.exp(log_not_g) * (log_not_g - log_not_z)
    else:
        raise ValueError(loss_type)
    return losses, chosen_rewards, rejected_rewards


def numpy_loss_type_solution(loss_type: str, data: dict[str, np.ndarray]) -> dict[str, Any]:
    """Everything ``preference_loss`` returns (gradients aside), in NumPy.

    Parameters
    ----------
    loss_type : str
        A registered loss type.
    data : dict of str to numpy.ndarray
        ``pc``, ``pr``, ``rc``, ``rr``, ``nc``, ``nr`` (see :func:`numpy_losses`).

    Returns
    -------
    dict
        ``loss``, ``losses``, ``chosen_rewards``, ``rejected_rewards`` and TRL's ``metrics``.
    """
    pc, pr = data["pc"], data["pr"]
    losses, chosen_rewards, rejected_rewards = numpy_losses(
        loss_type, pc, pr, data["rc"], data["rr"], data["nc"], data["nr"], data.get("gt"))
    return {
        "loss": float(losses.mean()),
        "losses": losses,
        "chosen_rewards": chosen_rewards,
        "rejected_rewards": rejected_rewards,
        "metrics": {
            "rewards/chosen": float(chosen_rewards.mean()),
            "rewards/rejected": float(rejected_rewards.mean()),
            "rewards/accuracies": float((chosen_rewards > rejected_rewards).mean()),
            "rewards/margins": float((chosen_rewards - rejected_rewards).mean()),
            "logps/chosen": float(pc.mean()),
            "logps/rejected": float(pr.mean()),
        },
    }


# --------------------------------------------------------------------------------------------
# Sequence log-probs.
# --------------------------------------------------------------------------------------------

def float64_logps_reference(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray):
    """float64 per-token log-probs and per-sequence sums, one sequence at a time.

    Parameters
    ----------
    logits : numpy.ndarray
        ``(B, T, V)`` logits.
    labels : numpy.ndarray
        ``(B, T)`` token ids.
    mask : numpy.ndarray
        ``(B, T)`` booleans: the positions counted.

    Returns
    -------
    tuple of numpy.ndarray
        ``(token_logps, sums)``, float64.
    """
    tokens = np.zeros(labels.shape)
    for b in range(logits.shape[0]):
        x = logits[b].astype(np.float64)
        top = x.max(axis=-1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(x - top).sum(axis=-1))
        tokens[b] = np.take_along_axis(x, labels[b][:, None], axis=-1)[:, 0] - lse
    tokens *= mask
    return tokens, tokens.sum(axis=-1)


def numpy_logps(logits, labels, mask):
    """The plain NumPy implementation: log_softmax of the whole array, then a gather.

    Parameters and return value are those of :func:`float64_logps_reference` (in the dtype of
    the logits).
    """
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    tokens = np.take_along_axis(log_softmax, labels[..., None], axis=-1)[..., 0] * mask
    return tokens, tokens.sum(axis=-1)


def torch_logps(torch, logits, labels, mask):
    """``torch.log_softmax(logits, -1).gather(-1, labels)``, masked, and its per-row sums.

    Parameters
    ----------
    torch : module
        torch.
    logits, labels, mask : torch.Tensor
        As in :func:`float64_logps_reference`.

    Returns
    -------
    tuple of torch.Tensor
        ``(token_logps, sums)``.
    """
    tokens = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    tokens = tokens * mask
    return tokens, tokens.sum(dim=-1)


def torch_lse_logps(torch, logits, labels, mask):
    """The gathered logit minus the log-sum-exp, the latter one sequence at a time (the form
    TRL's selective_log_softmax uses for float32 to save memory).

    Parameters and return value are those of :func:`torch_logps`.
    """
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    lse = torch.stack([torch.logsumexp(sequence, dim=-1) for sequence in logits])
    tokens = (picked - lse) * mask
    return tokens, tokens.sum(dim=-1)


def torch_logps_sum(torch: Any, logits: Any, labels: Any) -> Any:
    """``log_softmax`` + ``gather`` + sum, no mask (the small-batch row).

    Parameters
    ----------
    torch : module
        torch.
    logits, labels : torch.Tensor
        ``(B, T, V)`` logits and ``(B, T)`` token ids.

    Returns
    -------
    torch.Tensor
        ``(B,)`` sums.
    """
    return torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(-1)


# --------------------------------------------------------------------------------------------
# Scoring a file: programs run in their own processes (argv: source, out, then one more).
# --------------------------------------------------------------------------------------------

# A straightforward pandas + NumPy script doing the work of `dpo-fast score --out`.
PANDAS_SCRIPT = r"""
import sys, json
import numpy as np
import pandas as pd

source, out, beta = sys.argv[1], sys.argv[2], float(sys.argv[3])
df = pd.read_parquet(source)
chosen_reward = beta * (df["chosen_logps"] - df["ref_chosen_logps"])
rejected_reward = beta * (df["rejected_logps"] - df["ref_rejected_logps"])
margin = chosen_reward - rejected_reward
loss = np.logaddexp(0.0, -margin)  # -log(sigmoid(margin)), stable
df["chosen_reward"] = chosen_reward
df["rejected_reward"] = rejected_reward
df["margin"] = margin
df["loss"] = loss
levels = [0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0]
summary = {
    "pairs": len(df), "loss": float(loss.mean()),
    "rewards/chosen": float(chosen_reward.mean()),
    "rewards/rejected": float(rejected_reward.mean()),
    "rewards/accuracies": float((chosen_reward > rejected_reward).mean()),
    "rewards/margins": float(margin.mean()),
    "logps/chosen": float(df["chosen_logps"].mean()),
    "logps/rejected": float(df["rejected_logps"].mean()),
    "quantiles": dict(zip(map(str, levels), np.quantile(margin.to_numpy(), levels).tolist())),
    "negative_share": float((margin < 0).mean()),
}
df.to_parquet(out, index=False)
print(json.dumps(summary))
"""

# The I/O bound: pyarrow alone, the same reader and writer, four input columns copied as the
# added ones -- no computation at all.
IO_SCRIPT = r"""
import sys, queue, threading
import pyarrow as pa
import pyarrow.parquet as pq

source, out, batch_rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
handle = pq.ParquetFile(source, pre_buffer=False)
copies = [("chosen_reward", "chosen_logps"), ("rejected_reward", "rejected_logps"),
          ("margin", "ref_chosen_logps"), ("loss", "ref_rejected_logps")]
writer, jobs, rows = None, queue.Queue(maxsize=2), 0

def drain():
    while (batch := jobs.get()) is not None:
        writer.write_batch(batch)

thread = None
for batch in handle.iter_batches(batch_size=batch_rows, use_threads=True):
    arrays = list(batch.columns) + [batch.column(src) for _, src in copies]
    names = batch.schema.names + [name for name, _ in copies]
    batch = pa.RecordBatch.from_arrays(arrays, names=names)
    if writer is None:
        dictionary = [f.name for f in batch.schema if not pa.types.is_floating(f.type)]
        writer = pq.ParquetWriter(out, batch.schema, use_dictionary=dictionary,
                                  compression="snappy")
        thread = threading.Thread(target=drain, daemon=True)
        thread.start()
    jobs.put(batch)
    rows += batch.num_rows
jobs.put(None)
thread.join()
writer.close()
print(rows)
"""
