"""Unpaired data (``--loss-type kto`` / ``apo_zero_unpaired``): column roles, options, batches.

TRL's unpaired preference format has one completion a row: its summed log-probs under the
policy (``logps``) and the reference model (``ref_logps``) and a boolean ``label`` (true:
desirable). KTO's reference point ``z`` is ``--kl``, or TRL's estimate from the optional
columns ``kl_logps`` / ``ref_kl_logps`` (the log-probs of mismatched completions), or 0.

For a file scored offline the estimate is taken over the *whole* dataset (a first pass over
those two columns), not per batch: TRL estimates it per training batch only because that is
all a training step sees, and a per-batch ``z`` would make every row's loss depend on how the
file happens to be cut into batches (or Dask partitions). The whole-data ``z`` is the one
:func:`dpo_fast.kto_loss` computes from the whole arrays, so the scores are reproducible.

The per-completion formula is :func:`dpo_fast.kto.kto_rows` (the one :func:`dpo_fast.kto_loss`
uses). Pure NumPy: shared by the single-machine scorer and :mod:`dpo_fast.dask`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dpo_fast.kto import KTO_LOSS_TYPES, kto_loss, kto_rows
from dpo_fast.score.columns import (
    ROLES,
    ColumnRole,
    ColumnValues,
    parse_column_map,
)
from dpo_fast.score.errors import ScoreDataError, ScoreUsageError
from dpo_fast.score.options import LossOption, loss_type_of
from dpo_fast.score.unpaired_summary import KLSum

__all__ = ["KTO_OPTIONS", "UNPAIRED_ADDED_COLUMNS", "UNPAIRED_GRAD_COLUMNS", "UNPAIRED_ROLES",
           "UnpairedSettings", "check_paired_params", "check_unpaired_params", "is_unpaired",
           "kl_roles", "reference_point", "resolve_unpaired_columns", "score_unpaired_batch"]

UNPAIRED_ROLES = (
    ColumnRole("logps", "logps", "logps", True),
    ColumnRole("ref_logps", "ref_logps", "ref_logps", True),
    ColumnRole("label", "label", "desirable", False),
    ColumnRole("kl_logps", "kl_logps", "kl_logps", True),
    ColumnRole("ref_kl_logps", "ref_kl_logps", "ref_kl_logps", True),
)
_KL_ROLES = ("kl_logps", "ref_kl_logps")
UNPAIRED_ADDED_COLUMNS = ("reward", "loss")
UNPAIRED_GRAD_COLUMNS = ("grad",)

# The options only the unpaired loss types take (beta, loss_type, reduction, compute_grad are
# the paired table's, dpo_fast.score.options).
KTO_OPTIONS: tuple[LossOption, ...] = (
    LossOption("desirable_weight", "--desirable-weight", "float", 1.0,
               "kto / apo_zero_unpaired: weight of the desirable rows' losses (TRL's "
               "desirable_weight); finite, >= 0"),
    LossOption("undesirable_weight", "--undesirable-weight", "float", 1.0,
               "kto / apo_zero_unpaired: weight of the undesirable rows' losses; finite, >= 0"),
    LossOption("kl", "--kl", "float", None,
               "kto only: the reference point z, fixed (default: TRL's max(0, mean(kl_logps "
               "- ref_kl_logps)) over the whole file when those columns exist, else 0)"),
)
_SHARED = ("beta", "loss_type", "reduction", "compute_grad")
_OWN = {option.parameter for option in KTO_OPTIONS}


def is_unpaired(params: Mapping[str, Any]) -> bool:
    """Whether the run's loss type is an unpaired one (``kto``, ``apo_zero_unpaired``);
    raises ScoreUsageError when one is listed with others."""
    loss_types = loss_type_of(params)
    names = [loss_types] if isinstance(loss_types, str) else list(loss_types)
    unpaired = [name for name in names if name in KTO_LOSS_TYPES]
    if unpaired and len(names) > 1:
        raise ScoreUsageError(f"loss_type {unpaired[0]!r} scores unpaired data (one completion "
                              "a row) and cannot be combined with other loss types; give it "
                              "alone")
    return bool(unpaired)


def check_paired_params(params: Mapping[str, Any]) -> None:
    """Refuse the unpaired-only options in a paired run (ScoreUsageError)."""
    for name in params:
        if name in _OWN:
            raise ScoreUsageError(f"{name} is an option of loss_type 'kto' / "
                                  "'apo_zero_unpaired' (unpaired data); drop it or pass "
                                  "loss_type kto")


@dataclass(frozen=True)
class UnpairedSettings:
    """A validated unpaired run: what the batches are scored with."""

    loss_type: str
    beta: float
    desirable_weight: float
    undesirable_weight: float
    kl: float | None  # given (--kl); None: estimated from the columns, or 0
    reduction: str
    compute_grad: bool

    def effective_parameters(self) -> dict[str, Any]:
        return {"beta": self.beta, "loss_type": self.loss_type,
                "desirable_weight": self.desirable_weight,
                "undesirable_weight": self.undesirable_weight, "kl": self.kl,
                "reduction": self.reduction, "compute_grad": self.compute_grad}


def check_unpaired_params(params: Mapping[str, Any]) -> UnpairedSettings:
    """Validate an unpaired run's parameters before any data is read; ScoreUsageError for an
    option the loss type does not use (never silently ignored) or a bad value."""
    loss_type = loss_type_of(params)
    for name in params:
        if name not in _SHARED and name not in _OWN:
            raise ScoreUsageError(f"{name} is not used by loss_type {loss_type!r} (unpaired "
                                  "data); drop it")
    reduction = params.get("reduction", "mean")
    if reduction not in ("mean", "sum"):
        raise ScoreUsageError(f"reduction must be 'mean' or 'sum' for the summary, got "
                              f"{reduction!r} (the per-row losses are the 'loss' column of "
                              "the output)")
    compute_grad = params.get("compute_grad", False)
    if not isinstance(compute_grad, (bool, np.bool_)):
        raise ScoreUsageError(f"compute_grad must be True or False, got {compute_grad!r}")
    kwargs = {k: v for k, v in params.items() if k not in ("reduction", "compute_grad")}
    try:
        # kto_loss's own checks, once, on one row (beta, weights, kl, kl with apo_zero).
        kto_loss(np.array([-1.0]), np.array([-2.0]), np.array([True]), **kwargs)
    except (TypeError, ValueError) as exc:
        raise ScoreUsageError(str(exc)) from None
    kl = params.get("kl")
    return UnpairedSettings(
        loss_type=loss_type, beta=float(params.get("beta", 0.1)),
        desirable_weight=float(params.get("desirable_weight", 1.0)),
        undesirable_weight=float(params.get("undesirable_weight", 1.0)),
        kl=None if kl is None else float(kl), reduction=reduction,
        compute_grad=bool(compute_grad))


def resolve_unpaired_columns(available: Sequence[str],
                             columns: Mapping[str, str] | str | Sequence[str] | None,
                             reference_free: bool, settings: UnpairedSettings,
                             source: str | None) -> list[tuple[ColumnRole, str]]:
    """Which column feeds which role: ``logps``, ``ref_logps``, ``label`` (required), then
    ``kl_logps`` / ``ref_kl_logps`` when the reference point is estimated from them (loss
    type ``kto`` without ``kl``): read when both are present or mapped, never only one."""
    if reference_free:
        raise ScoreUsageError(f"--reference-free is for paired losses: loss_type "
                              f"{settings.loss_type!r} needs the reference log-probs (the "
                              "ref_logps column); drop --reference-free")
    mapping = parse_column_map(columns)
    known = {role.name: role for role in UNPAIRED_ROLES}
    paired = {role.name for role in ROLES}
    for name in mapping:
        if name not in known:
            kind = "a role of paired data" if name in paired else "an unknown role"
            raise ScoreUsageError(
                f"--columns {name}=...: {kind} for loss_type {settings.loss_type!r}; its roles "
                f"are {', '.join(known)}")
    estimate = settings.loss_type == "kto" and settings.kl is None
    for name in _KL_ROLES:
        if name in mapping and not estimate:
            why = ("kl is given" if settings.loss_type == "kto"
                   else "apo_zero_unpaired has no reference point")
            raise ScoreUsageError(f"--columns {name}=... is not used ({why}); drop it")
    names = list(available)
    resolved = []
    for role in UNPAIRED_ROLES:
        column = mapping.get(role.name, role.default_column)
        if role.name in _KL_ROLES:
            if not estimate:
                continue
            present = [mapping.get(r, r) in names for r in _KL_ROLES]
            if not any(present) and not any(r in mapping for r in _KL_ROLES):
                continue  # no KL columns: z = 0, as TRL without calculate_KL
        if names.count(column) > 1:
            raise ScoreDataError(f"the input has {names.count(column)} columns of this name; "
                                 "rename or drop the copies", file=source, column=column)
        if column not in names:
            raise ScoreDataError(f"column not found (columns: {_shown(names)})"
                                 f"{_hint(role, column, names, mapping)}", file=source,
                                 column=column)
        resolved.append((role, column))
    return resolved


def _shown(names: list[str]) -> str:
    return ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")


def _hint(role: ColumnRole, column: str, names: list[str], mapping: Mapping[str, str]) -> str:
    taken = set(mapping.values()) | {r.default_column for r in UNPAIRED_ROLES}
    close = difflib.get_close_matches(column, [n for n in names if n not in taken], n=1,
                                      cutoff=0.75)
    if close:
        return f"; did you mean {close[0]!r}? Map it with --columns {role.name}={close[0]}"
    if role.name in _KL_ROLES:
        other = _KL_ROLES[1 - _KL_ROLES.index(role.name)]
        return (f"; {other} is there and the two come together (the reference point is "
                f"the mean of kl_logps - ref_kl_logps): add it, map it with --columns "
                f"{role.name}=NAME, or pass --kl")
    return f"; map it with --columns {role.name}=NAME (unpaired data: logps, ref_logps, label)"


def kl_roles(roles: Sequence[tuple[ColumnRole, str]]) -> bool:
    """Whether the resolved roles estimate the reference point from KL columns."""
    return any(role.name == "kl_logps" for role, _ in roles)




def score_unpaired_batch(columns: Sequence[ColumnValues], settings: UnpairedSettings,
                         kl: float) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Valid rows scored with :func:`dpo_fast.kto.kto_rows` at reference point ``kl``:
    (added columns ``reward``, ``loss`` [, ``grad``], logps, labels)."""
    by_role = {col.role.name: col.values for col in columns}
    policy, labels = by_role["logps"], by_role["label"]
    rows = kto_rows(policy, by_role["ref_logps"], labels, beta=settings.beta, kl=kl,
                    desirable_weight=settings.desirable_weight,
                    undesirable_weight=settings.undesirable_weight,
                    compute_grad=settings.compute_grad)
    outputs = {"reward": rows.rewards, "loss": rows.losses}
    if settings.compute_grad:
        outputs["grad"] = rows.grad
    return outputs, policy, labels


def reference_point(settings: UnpairedSettings, estimated: KLSum | None) -> tuple[float, str]:
    """(z, where it came from): ``kl`` given, the whole-data estimate, or 0."""
    if settings.loss_type != "kto":
        return 0.0, f"not used ({settings.loss_type} has no reference point)"
    if settings.kl is not None:
        return settings.kl, "given (kl)"
    if estimated is None:
        return 0.0, "0 (no kl_logps / ref_kl_logps columns)"
    z = estimated.estimate()
    if not np.isfinite(z):
        # Finite log-probs whose differences overflow float64: every row's loss would be NaN.
        raise ScoreDataError(f"the reference point mean(kl_logps - ref_kl_logps) is {z!r} "
                             "(the differences overflow float64); check the KL columns, or "
                             "give the reference point with kl (--kl)", column="kl_logps")
    return z, f"max(0, mean(kl_logps - ref_kl_logps)) over {estimated.count:,} rows"
