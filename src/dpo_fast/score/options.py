"""The loss parameters the scorer passes to :func:`dpo_fast.preference_loss`.

:data:`LOSS_OPTIONS` is an explicit table: one row per keyword of ``preference_loss`` that
``dpo-fast score``, :func:`dpo_fast.score.score_dataset` and :mod:`dpo_fast.dask` accept,
with its command-line flag, its kind, its default and a help text written for the command
line. ``tests/test_score.py`` checks that the table covers every keyword of
``preference_loss`` (together with :data:`PER_PAIR_PARAMETERS`, read from columns, and
:data:`NOT_OPTIONS`), so a new keyword cannot be forgotten here.

:func:`check_loss_params` validates a run's parameters once, before any data is read.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dpo_fast.losses import (
    BATCH_COUPLED_LOSS_TYPES,
    F_DIVERGENCE_TYPES,
    LOSS_TYPES,
    preference_loss,
)
from dpo_fast.score.errors import ScoreUsageError

__all__ = ["LOSS_OPTIONS", "NOT_OPTIONS", "PER_PAIR_PARAMETERS", "SUMMARY_PARAMETERS",
           "LossOption", "batch_parameters", "check_loss_params", "effective_parameters",
           "loss_options", "loss_type_of"]

# Per-pair arrays: read from columns (see dpo_fast.score.columns), never options.
PER_PAIR_PARAMETERS = ("chosen_logps", "rejected_logps", "ref_chosen_logps",
                       "ref_rejected_logps", "chosen_lengths", "rejected_lengths", "weights",
                       "gt_reward_margins")
# Not options: the output buffers and which of them to keep (the scorer writes its own and
# needs every per-pair column), and the finiteness switch (the scorer validates rows itself,
# see on_invalid).
NOT_OPTIONS = frozenset({"out", "per_pair_outputs", "check_finite"})
# Passed to the summary, not to the per-batch calls (which always reduce with "none").
SUMMARY_PARAMETERS = frozenset({"reduction"})

_SCALARS = {"float": float, "int": int, "str": str}


@dataclass(frozen=True)
class LossOption:
    """A keyword parameter of :func:`dpo_fast.preference_loss` as a command-line option.

    Attributes
    ----------
    parameter : str
        The keyword of ``preference_loss``.
    flag : str
        The option, e.g. ``"--label-smoothing"``.
    kind : str
        ``"float"``, ``"int"``, ``"str"``, ``"bool"`` (``--flag/--no-flag``),
        ``"list[float]"`` (comma-separated) or ``"str|list[str]"`` (one value or a
        comma-separated list).
    default : object
        ``preference_loss``'s default, for the help text and the summary's parameters: an
        option not given is not passed, so the core's default applies.
    help : str
        What the option does, for ``dpo-fast score --help``.
    choices : tuple of str, optional
        The values it takes (shown in the help; checked by ``preference_loss`` or the
        scorer, so that a wrong one is a one-line error).
    """

    parameter: str
    flag: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        """The attribute name argparse stores the value under."""
        return "loss_" + self.parameter

    @property
    def item(self) -> str:
        """The scalar type of one value: ``"float"``, ``"int"``, ``"str"`` or ``"bool"``."""
        return self.kind.split("|")[-1].removeprefix("list[").removesuffix("]")

    def parse(self, text: str) -> Any:
        """Convert one command-line value (raises argparse.ArgumentTypeError)."""
        convert = _SCALARS[self.item]
        try:
            if "list[" not in self.kind:
                value = convert(text)
                if self.item == "int" and value < 1:  # n_threads: a count of threads
                    raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
                return value
            items = [convert(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {self.item}: {text!r}") from None
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        # "str|list[str]": one item is passed as a scalar, several as a list.
        return items[0] if "|" in self.kind and len(items) == 1 else items


LOSS_OPTIONS: tuple[LossOption, ...] = (
    LossOption("beta", "--beta", "float", 0.1,
               "inverse temperature of the implicit rewards; finite, in [1e-300, 1e300]"),
    LossOption("loss_type", "--loss-type", "str|list[str]", "sigmoid",
               "the per-pair loss: one of {choices}, or several comma-separated (summed, "
               "weighted by --loss-weights); the README's loss table gives each formula. "
               "aot, aot_unpaired and sft are refused (they couple the pairs of a batch, and "
               "batches are scored one at a time). kto and apo_zero_unpaired score unpaired "
               "data (see below)", choices=tuple(LOSS_TYPES)),
    LossOption("loss_weights", "--loss-weights", "list[float]", None,
               "one finite weight per --loss-type listed (default: all 1)"),
    LossOption("label_smoothing", "--label-smoothing", "float", 0.0,
               "label smoothing (conservative DPO): in [0, 0.5) for sigmoid, robust and "
               "simpo; in (0, 1) for exo_pair (the EXO paper uses 1e-3)"),
    LossOption("discopop_tau", "--discopop-tau", "float", 0.05,
               "temperature of discopop; in [1e-300, 1e300]"),
    LossOption("simpo_gamma", "--simpo-gamma", "float", 0.5,
               "target reward margin of simpo"),
    LossOption("dpop_lambda", "--dpop-lambda", "float", 50.0,
               "penalty weight of dpop (DPO-Positive); finite, >= 0"),
    LossOption("bco_delta", "--bco-delta", "float", 0.0,
               "reward shift of bco_pair (TRL BCO's running mean of the rewards); finite"),
    LossOption("gt_reward_scale", "--gt-reward-scale", "float", 1.0,
               "scale of the ground-truth reward margins of rpo_sq, rpo_fwd_kl and rpo_bwd_kl "
               "(NeMo-Aligner's gt_reward_scale), whose column --columns "
               "gt_reward_margin=COLUMN names; finite"),
    LossOption("alphapo_alpha", "--alphapo-alpha", "float", 0.0,
               "reward shape alpha of alphapo (AlphaPO; TRL CPOConfig's alpha): 0 (simpo) or "
               "of magnitude in [1e-300, 1e300]"),
    LossOption("f_divergence_type", "--f-divergence-type", "str", "reverse_kl",
               "f-divergence that turns the log-ratios into scores (TRL's), for sigmoid, "
               "hinge, ipo, exo_pair, robust, discopop and sigmoid_norm",
               choices=tuple(F_DIVERGENCE_TYPES)),
    LossOption("f_alpha_divergence_coef", "--f-alpha-divergence-coef", "float", 1.0,
               "alpha of alpha_divergence (within 1e-6 of 1 is reverse KL); finite"),
    LossOption("reduction", "--reduction", "str", "mean",
               "how the summary's loss reduces the per-pair losses (the per-pair losses are "
               "the loss column of --out)", choices=("mean", "sum")),
    LossOption("compute_grad", "--grad", "bool", False,
               "also write each pair's derivatives of its loss as the columns grad_chosen "
               "and grad_rejected of --out (unpaired data: grad, of each row's loss)"),
    LossOption("n_threads", "--threads", "int", None,
               "threads of the loss kernel (default: the CPUs this process may use; one "
               "fewer with --out, whose writer thread keeps one busy)"),
)

_BY_PARAMETER = {option.parameter: option for option in LOSS_OPTIONS}


def loss_options() -> tuple[LossOption, ...]:
    """The keyword parameters of :func:`dpo_fast.preference_loss` that ``dpo-fast score``
    offers as options: :data:`LOSS_OPTIONS`.

    Returns
    -------
    tuple of LossOption
    """
    return LOSS_OPTIONS


def effective_parameters(given: Mapping[str, Any]) -> dict[str, Any]:
    """The loss parameters in force: preference_loss's defaults updated with ``given``."""
    effective = {option.parameter: option.default for option in LOSS_OPTIONS}
    effective.update(given)
    return effective


def batch_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of the per-batch calls: without the summary's (``reduction``) and
    ``compute_grad`` (which the scorer passes itself)."""
    return {k: v for k, v in params.items()
            if k not in SUMMARY_PARAMETERS and k != "compute_grad"}


def loss_type_of(params: Mapping[str, Any]) -> str | Sequence[str]:
    """The loss type(s) a run computes: its ``loss_type`` parameter or preference_loss's."""
    return params.get("loss_type", _BY_PARAMETER["loss_type"].default) or ()


def check_loss_params(params: Mapping[str, Any], roles: Sequence[Any], where: str) -> str:
    """Validate the keyword parameters once, on a one-pair dummy call, before any data is
    read; return the reduction for the summary.

    Parameters
    ----------
    params : mapping
        Keyword arguments of preference_loss.
    roles : sequence of ColumnRole
        The columns read (``chosen`` and ``rejected`` first): the dummy call gets one value
        for each of the others.
    where : str
        The caller, named in messages.

    Raises
    ------
    ScoreUsageError
    """
    for name in params:
        if name not in _BY_PARAMETER:
            raise ScoreUsageError(f"{where} got an unexpected parameter {name!r}; "
                                  "per-pair arrays are columns (see columns=)")
    loss_types = loss_type_of(params)
    names = [loss_types] if isinstance(loss_types, str) else list(loss_types)
    coupled = sorted(set(names) & BATCH_COUPLED_LOSS_TYPES)
    if coupled:
        raise ScoreUsageError(
            f"loss_type {coupled[0]!r} couples the pairs of a batch (each pair's loss depends "
            f"on the others), so {where} cannot compute it exactly from record batches or "
            "partitions scored one at a time; call dpo_fast.preference_loss on the whole "
            "arrays instead")
    reduction = params.get("reduction", _BY_PARAMETER["reduction"].default)
    if reduction not in ("mean", "sum"):
        raise ScoreUsageError(
            f"reduction must be 'mean' or 'sum' for the summary, got {reduction!r} (the "
            "per-pair losses are the 'loss' column of the output)")
    dummy: dict[str, Any] = {}
    for role in roles[2:]:
        dummy[role.parameter] = np.array([-1.5]) if role.logps else np.array([1])
    try:
        preference_loss(np.array([-1.0]), np.array([-2.0]), **dummy, **params)
    except (TypeError, ValueError) as exc:
        raise ScoreUsageError(str(exc)) from None
    return reduction
