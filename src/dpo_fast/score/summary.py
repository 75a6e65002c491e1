"""The summary arithmetic: exact sums, the exact margin-quantile sketch, mergeable partial
summaries and the final :class:`ScoreSummary`.

Pure NumPy (no pyarrow, no pandas): the single-machine scorer and :mod:`dpo_fast.dask` both
reduce their batches or partitions to :class:`PartialSummary` objects and merge them here.
See the package docstring for why the numbers are exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from dpo_fast.score.errors import ScoreDataError, ScoreUsageError

__all__ = ["DEFAULT_QUANTILES", "QUANTILE_BUDGET", "ExactSum", "MarginSketch",
           "PartialSummary", "ScoreSummary", "SkippedRows", "combine_scans", "order_keys",
           "quantile_levels", "scan_margins"]

DEFAULT_QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)
# Largest number of margins the quantile search holds in memory (8 bytes each: 32 MiB).
QUANTILE_BUDGET = 1 << 22
# Runs shorter than this (seconds) print no pairs/s rate in the table summary.
MIN_RATE_SECONDS = 1.0
_UNITS = 1074  # every finite double is an integer multiple of 2**-1074


class ExactSum:
    """An exact sum of floats, kept as an integer number of ``2**-1074``.

    Adding partial sums in any order gives the same total; :meth:`value` rounds it (divided
    by a count, for means) once, correctly.
    """

    __slots__ = ("_special", "_total")

    def __init__(self) -> None:
        self._total = 0
        self._special = 0.0  # inf/nan partials: float arithmetic's own rules

    def add(self, value: float) -> None:
        value = float(value)
        if math.isfinite(value):
            numerator, denominator = value.as_integer_ratio()
            self._total += numerator << (_UNITS - denominator.bit_length() + 1)
        else:
            self._special += value

    def add_units(self, units: int) -> None:
        """Add an exact integer number of ``2**-1074`` (from
        :func:`dpo_fast.score.unpaired_summary.exact_units`)."""
        self._total += units

    def merge(self, other: ExactSum) -> None:
        self._total += other._total
        self._special += other._special

    def value(self, divisor: int = 1) -> float:
        """The total divided by ``divisor``, rounded once to the nearest double."""
        if self._special != 0.0 or math.isnan(self._special):
            return self._special
        try:
            return self._total / (divisor << _UNITS)
        except OverflowError:
            return math.copysign(math.inf, self._total)

    def __getstate__(self):
        return (self._total, self._special)

    def __setstate__(self, state):
        self._total, self._special = state


# Margins are ranked through uint64 keys whose order is the order of the doubles.
_HIST_BITS = 20
_HIST_SHIFT = np.uint64(64 - _HIST_BITS)
_SIGN = np.uint64(1 << 63)
_LOW63 = np.uint64((1 << 63) - 1)


def order_keys(values: np.ndarray) -> np.ndarray:
    """uint64 keys in the order of the float64 ``values`` (negative: all bits flipped;
    positive: the sign bit flipped)."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    return bits ^ ((bits >> np.uint64(63)) * _LOW63 | _SIGN)


def _key_to_float(key: int) -> float:
    bits = key ^ (1 << 63) if key >> 63 else ~key & ((1 << 64) - 1)
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


def _needed_ranks(levels: Sequence[float], count: int) -> list[int]:
    ranks = set()
    for q in levels:
        virtual = (count - 1) * q
        low = math.floor(virtual)
        ranks.add(min(low, count - 1))
        if low < count - 1:
            ranks.add(low + 1)
    return sorted(ranks)


def _interpolate(levels: Sequence[float], count: int, order_stat: Callable[[int], float]
                 ) -> dict[float, float]:
    """numpy.quantile's "linear" method, operation for operation (same bits)."""
    out = {}
    for q in levels:
        virtual = (count - 1) * q
        if virtual >= count - 1:
            out[q] = order_stat(count - 1)
            continue
        low = math.floor(virtual)
        gamma = virtual - low
        a, b = order_stat(low), order_stat(low + 1)
        diff = b - a
        out[q] = b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma
    return out


class MarginSketch:
    """Mergeable state for exact margin quantiles in bounded memory.

    ``hist`` counts margins per 20-bit key prefix ("bin"). A bin is *kept* (all its values
    held in ``keys``) when it lay in the rank window around a needed order statistic (``±6``
    standard deviations of a sample quantile, from the counts so far) at the moment it
    received its first value: so a kept bin is complete. Kept bins are dropped, farthest from
    the needed ranks first, to stay within ``budget`` values.

    Per batch this costs a few passes over the batch (``np.add.at`` into the histogram, one
    table lookup); the windows are recomputed only when the count has doubled, so nothing
    per batch scales with the 2**20 bins.
    """

    _SEEN, _KEPT, _WINDOW = np.uint8(1), np.uint8(2), np.uint8(4)

    def __init__(self, levels: Sequence[float], budget: int | None = None) -> None:
        self.levels = tuple(levels)
        self.budget = QUANTILE_BUDGET if budget is None else budget
        self.count = 0
        self.hist = np.zeros(1 << _HIST_BITS, dtype=np.int64)
        # Per bin: seen (has values), kept (values held), window (may join when first seen).
        self.state = np.zeros(1 << _HIST_BITS, dtype=np.uint8)
        self.keys: list[np.ndarray] = []
        self.kept_size = 0
        self._next_window = 0

    @property
    def kept(self) -> np.ndarray:
        """Bool mask of the kept bins."""
        return (self.state & self._KEPT) != 0

    def __getstate__(self):
        # Sparse on the wire (Dask): the histogram is mostly zeros.
        nonzero = np.flatnonzero(self.hist)
        return {"levels": self.levels, "budget": self.budget, "count": self.count,
                "bins": nonzero, "counts": self.hist[nonzero],
                "kept": np.flatnonzero(self.kept), "keys": self._kept_keys()}

    def __setstate__(self, state):
        self.__init__(state["levels"], state["budget"])
        self.count = state["count"]
        self.hist[state["bins"]] = state["counts"]
        self.state[state["bins"]] |= self._SEEN
        self.state[state["kept"]] |= self._KEPT
        self.keys = [state["keys"]] if state["keys"].size else []
        self.kept_size = int(state["keys"].size)

    def _kept_keys(self) -> np.ndarray:
        if not self.keys:
            return np.empty(0, dtype=np.uint64)
        if len(self.keys) > 1:
            self.keys = [np.concatenate(self.keys)]
        return self.keys[0]

    def _update_window(self) -> None:
        """Mark the bins within the rank windows of the needed order statistics."""
        window = np.zeros(self.hist.size, dtype=bool)
        count = self.count
        cumulative = np.cumsum(self.hist)
        for q in self.levels:
            center = q * (count - 1)
            spread = 6.0 * math.sqrt(q * (1.0 - q) * count) + 2.0
            low = max(0, int(center - spread))
            high = min(count - 1, int(math.ceil(center + spread)))
            first = int(np.searchsorted(cumulative, low, side="right"))
            last = int(np.searchsorted(cumulative, high, side="right"))
            window[first:last + 1] = True
            # The extremes move into empty bins beyond them: let those join too.
            if q == 0.0:
                window[:first] = True
            if q == 1.0:
                window[last:] = True
        self.state &= ~self._WINDOW
        self.state[window] |= self._WINDOW
        self._next_window = 2 * count

    def add(self, margins: np.ndarray) -> None:
        """Count a batch of margins and keep the values of the bins near the needed ranks."""
        if margins.size == 0:
            return
        keys = order_keys(margins)
        bins = (keys >> _HIST_SHIFT).astype(np.intp)
        np.add.at(self.hist, bins, 1)
        self.count += bins.size
        if self._next_window == 0:
            self._update_window()  # the first batch (or after a merge): from the counts so far
        before = np.take(self.state, bins)
        # A bin joins when it receives its first value inside a window: it is then complete.
        joins = (before & (self._SEEN | self._WINDOW)) == self._WINDOW
        take = joins | ((before & self._KEPT) != 0)
        unseen = (before & self._SEEN) == 0
        if unseen.any():  # rare after the first batches: scatter only the new bins
            new_bins = bins[unseen]
            self.state[new_bins] = before[unseen] | self._SEEN | (
                joins[unseen].astype(np.uint8) * self._KEPT)
        if take.any():
            chosen = keys[take]
            self.keys.append(chosen)
            self.kept_size += chosen.size
        if self.count >= self._next_window:
            self._update_window()
        if self.kept_size > self.budget:
            self._enforce_budget()

    def merge(self, other: MarginSketch) -> MarginSketch:
        """Combine two sketches of disjoint data (returns ``self``, updated)."""
        complete = (self.kept | (self.hist == 0)) & (other.kept | (other.hist == 0))
        self.hist += other.hist
        self.count += other.count
        kept = complete & (self.hist > 0)
        self.state = np.where(self.hist > 0, self._SEEN, 0).astype(np.uint8)
        self.state[kept] |= self._KEPT
        keys = [k for k in (self._kept_keys(), other._kept_keys()) if k.size]
        self.keys = [k[kept[(k >> _HIST_SHIFT).astype(np.intp)]] for k in keys]
        self.kept_size = sum(k.size for k in self.keys)
        self._next_window = 0  # recomputed at the next add, if any
        self._enforce_budget()
        return self

    def _enforce_budget(self) -> None:
        if self.kept_size <= self.budget:
            return
        # Drop the kept bins farthest (in rank) from the needed order statistics.
        cumulative = np.cumsum(self.hist)
        ranks = np.array(_needed_ranks(self.levels, self.count), dtype=np.int64)
        kept_bins = np.flatnonzero(self.kept)
        starts = cumulative[kept_bins] - self.hist[kept_bins]
        ends = cumulative[kept_bins] - 1
        distance = np.min(np.maximum(0, np.maximum(starts[:, None] - ranks[None, :],
                                                   ranks[None, :] - ends[:, None])), axis=1)
        held = self.kept_size
        for index in np.argsort(-distance, kind="stable"):
            if held <= self.budget:
                break
            self.state[kept_bins[index]] &= ~self._KEPT
            held -= int(self.hist[kept_bins[index]])
        keys = self._kept_keys()
        self.keys = [keys[self.kept[(keys >> _HIST_SHIFT).astype(np.intp)]]]
        self.kept_size = int(self.keys[0].size)

    def quantiles(self, scan: Callable[[Callable[[np.ndarray], Any],
                                        Callable[[Any, Any], Any]], Any] | None = None
                  ) -> tuple[dict[float, float], int]:
        """The exact quantiles, and how many extra passes over the data were needed.

        ``scan(fn, combine)`` must apply ``fn`` to the order keys (:func:`order_keys`) of the
        margins of every batch again and combine the results with ``combine``; it is called
        only when a needed bin was not kept.
        """
        count = self.count
        if count == 0:
            return {}, 0
        cumulative = np.cumsum(self.hist)
        ranks = _needed_ranks(self.levels, count)
        found: dict[int, int] = {}
        missing: dict[int, tuple[int, int, int, int]] = {}  # rank -> prefix, bits, rank, size
        keys = self._kept_keys()
        key_bins = (keys >> _HIST_SHIFT).astype(np.intp) if keys.size else keys
        kept = self.kept
        sorted_bins: dict[int, np.ndarray] = {}
        for rank in ranks:
            b = int(np.searchsorted(cumulative, rank, side="right"))
            within = rank - int(cumulative[b] - self.hist[b])
            if kept[b]:
                if b not in sorted_bins:
                    sorted_bins[b] = np.sort(keys[key_bins == b])
                found[rank] = int(sorted_bins[b][within])
            else:
                missing[rank] = (b, _HIST_BITS, within, int(self.hist[b]))
        passes = 0
        if missing:
            if scan is None:
                raise RuntimeError("quantile bins were not kept and no scan was given")
            passes = _resolve_missing(missing, found, scan, self.budget)
        values = {rank: _key_to_float(key) for rank, key in found.items()}
        return _interpolate(self.levels, count, values.__getitem__), passes


def _resolve_missing(missing, found, scan, budget) -> int:
    """Find the missing order statistics with extra passes: collect a group's values when
    they fit the budget, otherwise refine its prefix by 20 more bits."""
    passes = 0
    while missing:
        groups: dict[tuple[int, int], int] = {}
        for prefix, bits, _, size in missing.values():
            groups[(prefix, bits)] = size
        for rank, (prefix, bits, _, _) in list(missing.items()):
            if bits == 64:  # a full key: every value in the group is this one
                found[rank] = prefix
                del missing[rank]
        groups = {g: s for g, s in groups.items() if g[1] < 64}
        if not groups:
            break
        passes += 1
        order = sorted(groups)
        if sum(groups.values()) <= budget:
            def collect(keys, order=order):
                return [keys[(keys >> np.uint64(64 - bits)) == np.uint64(prefix)]
                        for prefix, bits in order]

            parts = scan(collect, lambda a, b: [np.concatenate([x, y]) for x, y in zip(a, b)])
            values = {group: np.sort(part) for group, part in zip(order, parts)}
            for rank, (prefix, bits, within, _) in list(missing.items()):
                found[rank] = int(values[(prefix, bits)][within])
                del missing[rank]
            break
        steps = {g: min(_HIST_BITS, 64 - g[1]) for g in order}

        def refine(keys, order=order, steps=steps):
            out = []
            for prefix, bits in order:
                step = steps[(prefix, bits)]
                inside = keys[(keys >> np.uint64(64 - bits)) == np.uint64(prefix)]
                sub = (inside >> np.uint64(64 - bits - step)) & np.uint64((1 << step) - 1)
                out.append(np.bincount(sub.astype(np.intp), minlength=1 << step))
            return out

        hists = dict(zip(order, scan(refine, lambda a, b: [x + y for x, y in zip(a, b)])))
        for rank, (prefix, bits, within, _) in list(missing.items()):
            step = steps[(prefix, bits)]
            cumulative = np.cumsum(hists[(prefix, bits)])
            sub = int(np.searchsorted(cumulative, within, side="right"))
            before = int(cumulative[sub] - hists[(prefix, bits)][sub])
            missing[rank] = ((prefix << step) | sub, bits + step, within - before,
                             int(hists[(prefix, bits)][sub]))
    return passes


_SUM_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
             "logps/rejected")
# TRL's metric names, in TRL's order, and where each comes from.
_METRIC_SOURCES = {"rewards/chosen": "rewards/chosen", "rewards/rejected": "rewards/rejected",
                   "rewards/accuracies": None, "rewards/margins": "rewards/margins",
                   "logps/chosen": "logps/chosen", "logps/rejected": "logps/rejected"}


class SkippedRows:
    """The rows a scoring run skipped as invalid, by reason, and the first one: the part of
    the paired and unpaired partial summaries that is the same in both."""

    def __init__(self) -> None:
        self.skipped: dict[str, int] = {}
        self.first_skipped: tuple[tuple[Any, ...], str] | None = None

    def add_skipped(self, counts: Mapping[str, int], where: tuple[Any, ...],
                    message: str) -> None:
        """Count skipped rows; keep the first one (by ``where``, a sortable location)."""
        for reason, count in counts.items():
            if count:
                self.skipped[reason] = self.skipped.get(reason, 0) + count
        if self.first_skipped is None or where < self.first_skipped[0]:
            self.first_skipped = (where, message)

    def merge_skipped(self, other: SkippedRows) -> None:
        if other.skipped:
            self.add_skipped(other.skipped, *(other.first_skipped or ((), "")))


class PartialSummary(SkippedRows):
    """Mergeable partial sums of a scoring run (one batch, one partition, or many).

    Everything needed for the summary: the pair count, exact sums of the per-pair values,
    counts of positive and negative margins, the skipped rows by reason and the margin
    quantile sketch. :meth:`merge` is exact and order-independent, so Dask partitions combine
    to the same numbers as a single-machine run.
    """

    def __init__(self, levels: Sequence[float] | None = DEFAULT_QUANTILES) -> None:
        super().__init__()
        self.count = 0
        self.accurate = 0
        self.negative = 0
        self.sums = {key: ExactSum() for key in _SUM_KEYS}
        # Metrics the core reports that this module does not know how to compute from the
        # per-pair values: combined as count-weighted means of the per-batch values.
        self.other_metrics: dict[str, ExactSum] = {}
        self.sketch = MarginSketch(levels) if levels else None

    def add(self, outputs: Mapping[str, np.ndarray], chosen: np.ndarray, rejected: np.ndarray,
            metrics: Mapping[str, float]) -> None:
        """Add one scored batch: ``outputs`` holds the added columns (ADDED_COLUMNS)."""
        n = outputs["loss"].size
        if n == 0:
            return
        chosen_rewards, rejected_rewards = outputs["chosen_reward"], outputs["rejected_reward"]
        margin = outputs["margin"]
        for key, values in (("loss", outputs["loss"]), ("rewards/chosen", chosen_rewards),
                            ("rewards/rejected", rejected_rewards),
                            ("rewards/margins", margin), ("logps/chosen", chosen),
                            ("logps/rejected", rejected)):
            self.sums[key].add(np.sum(values, dtype=np.float64))
        # margin > 0 exactly when chosen > rejected: a difference of doubles is 0 only
        # between equal ones (gradual underflow), and an overflow keeps its sign.
        self.accurate += int(np.count_nonzero(margin > 0))
        self.negative += int(np.count_nonzero(margin < 0))
        for name, value in metrics.items():
            if name not in _METRIC_SOURCES:
                self.other_metrics.setdefault(name, ExactSum()).add(float(value) * n)
        self.count += n
        if self.sketch is not None:
            self.sketch.add(margin)

    def merge(self, other: PartialSummary) -> PartialSummary:
        """Add ``other`` (disjoint data) into this summary; returns ``self``."""
        self.count += other.count
        self.accurate += other.accurate
        self.negative += other.negative
        for key in _SUM_KEYS:
            self.sums[key].merge(other.sums[key])
        for name, total in other.other_metrics.items():
            self.other_metrics.setdefault(name, ExactSum()).merge(total)
        self.merge_skipped(other)
        if self.sketch is not None and other.sketch is not None:
            self.sketch.merge(other.sketch)
        return self

    def finish(self, reduction: str = "mean", scan=None, **info: Any) -> ScoreSummary:
        """The :class:`ScoreSummary` (``scan``: see :meth:`MarginSketch.quantiles`)."""
        n = self.count
        if n == 0:
            raise ScoreDataError("no valid pairs to score" + (
                f" ({sum(self.skipped.values())} rows skipped as invalid)"
                if self.skipped else ""), file=info.get("input"))
        metrics = {}
        for name, source in _METRIC_SOURCES.items():
            metrics[name] = self.accurate / n if source is None else self.sums[source].value(n)
        for name, total in self.other_metrics.items():
            metrics[name] = total.value(n)
        quantiles, passes = ({}, 0) if self.sketch is None else self.sketch.quantiles(scan)
        loss = self.sums["loss"].value(n if reduction == "mean" else 1)
        return ScoreSummary(
            pairs=n, loss=loss, reduction=reduction, metrics=metrics,
            margin_quantiles=quantiles, negative_margin_share=self.negative / n,
            skipped=sum(self.skipped.values()), skipped_by_reason=dict(self.skipped),
            first_skipped=self.first_skipped[1] if self.first_skipped else None,
            quantile_passes=passes, **info)


@dataclass(frozen=True)
class ScoreSummary:
    """What :func:`score_dataset` (and :func:`dpo_fast.dask.summarize`) return.

    Attributes
    ----------
    pairs : int
        Pairs scored (valid rows).
    loss : float
        The mean (``reduction="mean"``) or sum (``"sum"``) of the per-pair losses.
    reduction : str
    metrics : dict of str to float
        TRL's names and definitions: ``rewards/chosen``, ``rewards/rejected``,
        ``rewards/accuracies``, ``rewards/margins``, ``logps/chosen``, ``logps/rejected``.
    margin_quantiles : dict of float to float
        Exact quantiles of ``margin = chosen_reward - rejected_reward`` (``numpy.quantile``,
        linear interpolation); keys are the levels (0 = min, 1 = max).
    negative_margin_share : float
        Share of pairs whose chosen reward is below the rejected one.
    skipped : int
        Invalid rows skipped (``on_invalid="skip"``); ``skipped_by_reason`` splits them into
        ``null``, ``non-numeric``, ``non-finite`` and ``malformed``; ``first_skipped``
        describes the first one.
    quantile_passes : int
        Extra passes over the input the exact quantiles needed (usually 0).
    input, output : str or None
    parameters : dict
        The preference_loss parameters given.
    columns : dict of str to str
        Role -> column used.
    seconds : float or None
        Wall time of the run.
    """

    pairs: int
    loss: float
    reduction: str
    metrics: dict[str, float]
    margin_quantiles: dict[float, float]
    negative_margin_share: float
    skipped: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    first_skipped: str | None = None
    quantile_passes: int = 0
    input: str | None = None
    output: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (quantile levels as strings, e.g. ``"0.5"``)."""
        return {
            "input": self.input, "output": self.output, "pairs": self.pairs,
            "skipped": self.skipped, "skipped_by_reason": self.skipped_by_reason,
            "first_skipped": self.first_skipped, "loss": self.loss,
            "reduction": self.reduction, "metrics": self.metrics,
            "margin": {"quantiles": {_level_name(q): v
                                     for q, v in self.margin_quantiles.items()},
                       "negative_share": self.negative_margin_share},
            "parameters": {k: v for k, v in self.parameters.items()},
            "columns": self.columns, "quantile_passes": self.quantile_passes,
            "seconds": self.seconds,
        }

    def format_table(self) -> str:
        """The summary as aligned text for a terminal."""
        lines = []
        where = self.input or "input"
        if self.output:
            where += f" -> {self.output}"
        lines.append(f"dpo-fast score: {where}")
        lines.append(f"  {'pairs':<22}{self.pairs:,}")
        if self.skipped:
            reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(self.skipped_by_reason.items()))
            lines.append(f"  {'skipped (invalid)':<22}{self.skipped:,}  ({reasons})")
        lines.append(f"  {'loss (' + self.reduction + ')':<22}{_num(self.loss)}")
        for name, value in self.metrics.items():
            lines.append(f"  {name:<22}{_num(value)}")
        lines.append(f"  {'negative margins':<22}{self.negative_margin_share:.4%}")
        if self.margin_quantiles:
            lines.append("  margin quantiles")
            for q, value in self.margin_quantiles.items():
                label = {0.0: "min", 1.0: "max"}.get(q, f"{q * 100:g}%")
                lines.append(f"    {label:<20}{_num(value)}")
        params = ", ".join(f"{k}={v!r}" for k, v in self.parameters.items())
        if params:
            lines.append(f"  {'parameters':<22}{params}")
        if self.seconds is not None:
            # A rate is worth printing only for a run long enough that start-up (pyarrow's
            # import, the first file's metadata) does not make most of it.
            rate = (f" ({self.pairs / self.seconds:,.0f} pairs/s)"
                    if self.seconds >= MIN_RATE_SECONDS else "")
            lines.append(f"  {'time':<22}{self.seconds:.3f} s for {self.pairs:,} pairs{rate}")
        return "\n".join(lines)


def _level_name(q: float) -> str:
    return repr(float(q))


def _num(value: float) -> str:
    return f"{value:.6g}" if value == 0 or 1e-4 <= abs(value) < 1e6 else f"{value:.6e}"


def quantile_levels(quantiles: Sequence[float] | None) -> tuple[float, ...]:
    """Sorted distinct margin quantile levels (None or () for none); raises ScoreUsageError
    for a level outside [0, 1]."""
    levels = tuple(float(q) for q in (quantiles or ()))
    for q in levels:
        if not 0.0 <= q <= 1.0:
            raise ScoreUsageError(f"quantile levels must be in [0, 1], got {q!r}")
    return tuple(sorted(set(levels)))


def scan_margins(margin: np.ndarray, fn: Callable[[np.ndarray], Any]) -> Any:
    """One batch's (or partition's) part of a quantile rescan (see
    :meth:`MarginSketch.quantiles`): ``fn`` of the order keys of its margins, or None when it
    has none."""
    return fn(order_keys(margin)) if margin.size else None


def combine_scans(parts: Iterable[Any], combine: Callable[[Any, Any], Any]) -> Any:
    """Combine the parts :func:`scan_margins` returned (None: no margins)."""
    result = None
    for part in parts:
        if part is not None:
            result = part if result is None else combine(result, part)
    return result

