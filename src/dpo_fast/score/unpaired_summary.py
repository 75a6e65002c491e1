"""The summary of an unpaired (KTO) scoring run: exact sums of whole arrays, the mergeable
:class:`UnpairedPartial` and the final :class:`UnpairedSummary`.

:mod:`dpo_fast.dask` merges partitions with it. Every sum here is *exact*, not NumPy's float
sum of a batch: :func:`exact_units` adds the values of an array as integers in units of
``2**-1074`` (kto_loss's compiled accumulator). So the summary does not depend on how
the rows were cut into batches or Dask partitions at all (bit-identical local and Dask runs),
and its sums are the correctly rounded ones :func:`dpo_fast.kto_loss` computes on the whole
arrays (``math.fsum``'s values, from ``dpo_fast._kernels._kto``): the metrics are the same
numbers, bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dpo_fast._kernels import _kto
from dpo_fast.kto import kl_estimate, kto_metrics
from dpo_fast.score.errors import ScoreDataError
from dpo_fast.score.summary import MIN_RATE_SECONDS, ExactSum, SkippedRows

__all__ = ["KLSum", "UnpairedPartial", "UnpairedSummary", "add_exact", "exact_units"]


def exact_units(values: np.ndarray) -> int:
    """The exact sum of finite float64 ``values``, as an integer number of ``2**-1074``.

    One compiled pass of integer adds (``dpo_fast._kernels._kto.exact_units``, the
    accumulator behind :func:`dpo_fast.kto_loss`'s correctly rounded sums), ~2 ns a value.
    """
    return _kto.exact_units(np.asarray(values, dtype=np.float64).ravel())


def add_exact(total: ExactSum, values: np.ndarray) -> None:
    """Add every value of ``values`` to ``total`` exactly (inf/nan by float rules)."""
    finite = np.isfinite(values)
    if not finite.all():
        total.add(float(np.sum(values[~finite])))
        values = values[finite]
    total.add_units(exact_units(values))


class KLSum:
    """The whole dataset's ``kl_logps - ref_kl_logps``: exact sum and row count, mergeable.
    :meth:`estimate` is TRL's reference point (:func:`dpo_fast.kl_estimate`): the same
    number ``dpo_fast.kto_loss`` computes from the whole arrays."""

    def __init__(self) -> None:
        self.total = ExactSum()
        self.count = 0

    def add(self, kl_logps: np.ndarray, ref_kl_logps: np.ndarray) -> None:
        with np.errstate(over="ignore"):  # an overflow is reported by reference_point
            add_exact(self.total, kl_logps - ref_kl_logps)
        self.count += kl_logps.size

    def merge(self, other: KLSum) -> KLSum:
        self.total.merge(other.total)
        self.count += other.count
        return self

    def estimate(self) -> float:
        return kl_estimate(self.total.value(), self.count) if self.count else 0.0


_SUMS = ("loss", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected")


class UnpairedPartial(SkippedRows):
    """Mergeable exact partial sums of an unpaired scoring run (batches or partitions)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.chosen = 0
        self.sums = {key: ExactSum() for key in _SUMS}

    def add(self, outputs: Mapping[str, np.ndarray], logps: np.ndarray,
            desirable: np.ndarray) -> None:
        """Add one scored batch: ``outputs`` holds ``loss`` and ``reward``."""
        if desirable.size == 0:
            return
        rewards = outputs["reward"]
        add_exact(self.sums["loss"], outputs["loss"])
        for side, mask in (("chosen", desirable), ("rejected", ~desirable)):
            add_exact(self.sums["rewards/" + side], rewards[mask])
            add_exact(self.sums["logps/" + side], logps[mask])
        self.count += desirable.size
        self.chosen += int(np.count_nonzero(desirable))

    def merge(self, other: UnpairedPartial) -> UnpairedPartial:
        self.count += other.count
        self.chosen += other.chosen
        for key in _SUMS:
            self.sums[key].merge(other.sums[key])
        self.merge_skipped(other)
        return self

    def finish(self, reduction: str, kl: float, kl_source: str, **info: Any
               ) -> UnpairedSummary:
        n = self.count
        if n == 0:
            raise ScoreDataError("no valid rows to score" + (
                f" ({sum(self.skipped.values())} rows skipped as invalid)"
                if self.skipped else ""), file=info.get("input"))
        sums = {key: total.value() for key, total in self.sums.items()}
        metrics = kto_metrics(kl, sums["rewards/chosen"], sums["rewards/rejected"],
                              sums["logps/chosen"], sums["logps/rejected"], self.chosen,
                              n - self.chosen)
        for side, count in (("chosen", self.chosen), ("rejected", n - self.chosen)):
            if count:
                metrics["logps/" + side] = sums["logps/" + side] / count
        loss = self.sums["loss"].value(n if reduction == "mean" else 1)
        return UnpairedSummary(
            rows=n, loss=loss, reduction=reduction, metrics=metrics, kl_source=kl_source,
            skipped=sum(self.skipped.values()), skipped_by_reason=dict(self.skipped),
            first_skipped=self.first_skipped[1] if self.first_skipped else None, **info)


@dataclass(frozen=True)
class UnpairedSummary:
    """What ``dpo-fast score --loss-type kto`` (and ``apo_zero_unpaired``) returns.

    Attributes
    ----------
    rows : int
        Completions scored (valid rows).
    loss : float
        The mean (``reduction="mean"``, TRL's) or sum of the per-completion losses.
    reduction : str
    metrics : dict of str to float
        TRL's KTO names (:func:`dpo_fast.kto_metrics`): ``kl``, ``rewards/chosen``,
        ``rewards/rejected``, ``rewards/margins`` (means, where the side has rows), the sums
        ``rewards/chosen_sum``, ``rewards/rejected_sum``, ``logps/chosen_sum``,
        ``logps/rejected_sum``, the counts ``count/chosen``, ``count/rejected``, and the
        means ``logps/chosen``, ``logps/rejected``.
    kl_source : str
        Where the reference point came from: ``"--kl"``, ``"kl_logps - ref_kl_logps over
        N rows"``, ``"none (0)"`` or ``"not used"`` (apo_zero_unpaired).
    skipped, skipped_by_reason, first_skipped
        As for :class:`dpo_fast.score.ScoreSummary` (``on_invalid="skip"``).
    input, output, parameters, columns, seconds
        As for :class:`dpo_fast.score.ScoreSummary`.
    """

    rows: int
    loss: float
    reduction: str
    metrics: dict[str, float]
    kl_source: str
    skipped: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    first_skipped: str | None = None
    input: str | None = None
    output: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "input": self.input, "output": self.output, "rows": self.rows,
            "skipped": self.skipped, "skipped_by_reason": self.skipped_by_reason,
            "first_skipped": self.first_skipped, "loss": self.loss,
            "reduction": self.reduction, "metrics": self.metrics, "kl_source": self.kl_source,
            "parameters": dict(self.parameters), "columns": self.columns,
            "seconds": self.seconds,
        }

    def format_table(self) -> str:
        """The summary as aligned text for a terminal."""
        where = (self.input or "input") + (f" -> {self.output}" if self.output else "")
        lines = [f"dpo-fast score: {where}", f"  {'rows (unpaired)':<22}{self.rows:,}"]
        if self.skipped:
            reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(self.skipped_by_reason.items()))
            lines.append(f"  {'skipped (invalid)':<22}{self.skipped:,}  ({reasons})")
        lines.append(f"  {'loss (' + self.reduction + ')':<22}{_num(self.loss)}")
        for name, value in self.metrics.items():
            text = f"{int(value):,}" if name.startswith("count/") else _num(value)
            lines.append(f"  {name:<22}{text}")
        lines.append(f"  {'kl from':<22}{self.kl_source}")
        params = ", ".join(f"{k}={v!r}" for k, v in self.parameters.items())
        if params:
            lines.append(f"  {'parameters':<22}{params}")
        if self.seconds is not None:
            rate = (f" ({self.rows / self.seconds:,.0f} rows/s)"
                    if self.seconds >= MIN_RATE_SECONDS else "")
            lines.append(f"  {'time':<22}{self.seconds:.3f} s for {self.rows:,} rows{rate}")
        return "\n".join(lines)


def _num(value: float) -> str:
    return f"{value:.6g}" if value == 0 or 1e-4 <= abs(value) < 1e6 else f"{value:.6e}"
