"""Scoring one batch: validate its role columns, call preference_loss on the valid rows.

Shared by the single-machine scorer (Arrow record batches) and :mod:`dpo_fast.dask` (pandas
partitions): both turn their columns into :class:`~dpo_fast.score.columns.ColumnValues` and
call :func:`check_and_score`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from dpo_fast.losses import preference_loss
from dpo_fast.score.columns import ColumnValues, validate_rows
from dpo_fast.score.errors import ScoreDataError, ScoreUsageError

__all__ = ["ADDED_COLUMNS", "GRAD_COLUMNS", "ON_INVALID", "BufferRing", "ScoredBatch",
           "check_and_score", "check_on_invalid", "score_columns"]

ADDED_COLUMNS = ("chosen_reward", "rejected_reward", "margin", "loss")
GRAD_COLUMNS = ("grad_chosen", "grad_rejected")
# What to do with an invalid row: raise ScoreDataError naming it, or skip (and count) it.
ON_INVALID = ("error", "skip")


def check_on_invalid(on_invalid: str) -> str:
    """``on_invalid`` if it is one of :data:`ON_INVALID`; raises ScoreUsageError."""
    if on_invalid not in ON_INVALID:
        raise ScoreUsageError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    return on_invalid

class BufferRing:
    """Reusable output arrays for :func:`score_columns`, ``size`` sets used in turn.

    Fresh output arrays cost more than the kernel itself (page faults: measured 2.3 ms vs
    0.9 ms for 262,144 rows on one thread). A set is reused ``size`` batches later, by which
    time the writer thread is done with it: at most ``WRITE_QUEUE_DEPTH`` batches wait in its
    queue and one is being written, so ``size = WRITE_QUEUE_DEPTH + 3`` is safe.
    """

    def __init__(self, size: int, names: Sequence[str]) -> None:
        # Allocated as batches arrive, at the largest batch seen: never more than the data
        # needs, whatever batch_rows says (--batch-rows 1e12 allocated 8 TB up front).
        self._sets: list[dict[str, np.ndarray] | None] = [None] * size
        self._names = tuple(names)
        self._next = 0

    def take(self, rows: int) -> dict[str, np.ndarray]:
        arrays = self._sets[self._next]
        if arrays is None or len(arrays[self._names[0]]) < rows:
            arrays = self._sets[self._next] = {name: np.empty(rows) for name in self._names}
        self._next = (self._next + 1) % len(self._sets)
        return {name: array[:rows] for name, array in arrays.items()}


# preference_loss's out= names for the added columns.
_OUT_NAMES = {"loss": "losses", "chosen_reward": "chosen_rewards",
              "rejected_reward": "rejected_rewards", "grad_chosen": "grad_chosen",
              "grad_rejected": "grad_rejected"}


def _margin(chosen_rewards, rejected_rewards, out=None) -> np.ndarray:
    """chosen - rejected, with a zero always +0.0: -0.0 (from -0.0 - 0.0) would make the
    margin quantiles differ in sign from numpy.quantile's, which orders equal zeros of
    either sign as its partition happens to leave them."""
    margin = np.subtract(chosen_rewards, rejected_rewards, out=out)
    return np.add(margin, 0.0, out=margin)


def score_columns(columns: Sequence[ColumnValues], params: Mapping[str, Any],
                  compute_grad: bool, buffers: BufferRing | None = None
                  ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """preference_loss over validated column values: the added columns and the metrics."""
    kwargs = {col.role.parameter: col.values for col in columns}
    chosen = kwargs.pop("chosen_logps")
    rejected = kwargs.pop("rejected_logps")
    out = None
    margin = None
    if buffers is not None:
        arrays = buffers.take(chosen.size)
        margin = arrays.pop("margin")
        out = {_OUT_NAMES[name]: array for name, array in arrays.items()
               if compute_grad or name not in GRAD_COLUMNS}
    result = preference_loss(chosen, rejected, **kwargs, **params, reduction="none",
                             compute_grad=compute_grad, out=out)
    outputs = {"chosen_reward": result.chosen_rewards,
               "rejected_reward": result.rejected_rewards,
               "margin": _margin(result.chosen_rewards, result.rejected_rewards, margin),
               "loss": result.losses}
    if compute_grad:
        outputs["grad_chosen"] = result.grad_chosen
        outputs["grad_rejected"] = result.grad_rejected
    return outputs, result.metrics


@dataclass
class ScoredBatch:
    """What :func:`check_and_score` returns for one batch.

    Attributes
    ----------
    keep : numpy.ndarray or None
        Mask of the rows scored (None: all of them).
    columns : list of ColumnValues
        The role columns of the rows scored.
    outputs : dict of str to numpy.ndarray
        The added columns (:data:`ADDED_COLUMNS`, and :data:`GRAD_COLUMNS` when asked).
    metrics : dict of str to float
        preference_loss's metrics for the rows scored.
    skipped : dict of str to int
        Rows skipped, by reason.
    first_skipped : (int, str) or None
        Batch row and description of the first skipped row.
    """

    keep: np.ndarray | None
    columns: list[ColumnValues]
    outputs: dict[str, np.ndarray]
    metrics: dict[str, float]
    skipped: dict[str, int] = field(default_factory=dict)
    first_skipped: tuple[int, str] | None = None


def _score_or_explain(columns, params, compute_grad, locate, buffers=None):
    try:
        return score_columns(columns, params, compute_grad, buffers)
    except ValueError as exc:
        # Not null/NaN/inf (those were checked): a rule of preference_loss's own.
        file, row = locate(0)
        raise ScoreDataError(f"preference_loss refused the batch starting at row {row}: "
                             f"{exc}", file=file) from None


def check_and_score(columns: list[ColumnValues], params: Mapping[str, Any], compute_grad: bool,
                    on_invalid: str, locate: Callable[[int], tuple[str | None, int | None]],
                    buffers: BufferRing | None = None) -> ScoredBatch:
    """Validate a batch's role columns and score its valid rows with preference_loss.

    Parameters
    ----------
    columns : list of ColumnValues
        ``chosen`` and ``rejected`` first (the order of :func:`resolve_columns`).
    params : mapping
        preference_loss keyword arguments (``reduction`` is always ``"none"`` here).
    compute_grad : bool
    on_invalid : {"error", "skip"}
    locate : callable
        ``locate(i) -> (file, row)`` for the messages about batch row ``i``.
    buffers : BufferRing, optional
        Output arrays to reuse.

    Returns
    -------
    ScoredBatch

    Raises
    ------
    ScoreDataError
        The first invalid row (``on_invalid="error"``), or a value preference_loss refuses
        for a reason of its own.
    """
    if all(c.null is None and c.non_numeric is None for c in columns):
        try:
            # The kernel checks finiteness as it goes, for free: the searches below run only
            # when it finds something.
            outputs, metrics = score_columns(columns, params, compute_grad, buffers)
            return ScoredBatch(None, columns, outputs, metrics)
        except ValueError:
            pass
    keep, kept, counts, first_skipped = validate_rows(columns, on_invalid, locate)
    if keep is None:
        outputs, metrics = _score_or_explain(columns, params, compute_grad, locate, buffers)
        return ScoredBatch(None, columns, outputs, metrics)
    if keep.any():
        outputs, metrics = _score_or_explain(kept, params, compute_grad,
                                             lambda i: locate(int(np.flatnonzero(keep)[i])),
                                             buffers)
    else:
        names = ADDED_COLUMNS + (GRAD_COLUMNS if compute_grad else ())
        outputs, metrics = {name: np.empty(0) for name in names}, {}
    return ScoredBatch(keep, kept, outputs, metrics, counts, first_skipped)


