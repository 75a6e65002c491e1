"""The benchmark harness: how dpo-fast bench times a call (one harness for every section).

Each implementation is warmed up and calibrated to a number of back-to-back calls that fill a
minimum sample time; then the implementations of a group are sampled interleaved, one sample
of each per round, so that a burst of noise from the machine hits them alike and the ratios
between them stay meaningful. The headline is the median per-call time.
"""

from __future__ import annotations

import gc
import itertools
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Entry", "Timing", "measure_group"]

# A group of interleaved implementations gets fewer repeats when one round of samples is slow
# (N = 1e7), but never fewer than MIN_REPEATS, so the whole default run takes ~1-2 minutes.
# (On a small shared VM, NumPy at N = 1e7 alone varies 2-3x between calls with page-fault
# costs, so fewer than ~7 samples give unstable medians.)
GROUP_BUDGET_SECONDS = 12.0
MIN_REPEATS = 7


@dataclass
class Timing:
    """Per-call times of one implementation, in seconds.

    Attributes
    ----------
    median, min : float
        Median and minimum over the samples (the median is the headline).
    samples : list of float
        Every sample, each the mean per-call time of ``loops`` back-to-back calls.
    loops : int
        Calls per sample (more for tiny N, so that each sample lasts >= ~2 ms).
    """

    median: float
    min: float
    samples: list[float]
    loops: int

    def to_json(self) -> dict[str, Any]:
        """The timing as a JSON-serialisable dict (``n_samples`` added)."""
        return {"median": self.median, "min": self.min, "n_samples": len(self.samples),
                "loops": self.loops, "samples": self.samples}


def _time_loops(fn: Callable[[], Any], loops: int) -> float:
    iterator = itertools.repeat(None, loops)
    start = time.perf_counter()
    for _ in iterator:
        fn()
    return time.perf_counter() - start


def _calibrate(fn: Callable[[], Any], min_seconds: float) -> tuple[int, float]:
    """Warm up ``fn`` and find how many back-to-back calls fill ``min_seconds``.

    Returns (loops, estimated seconds per call).
    """
    fn()  # warm-up: first-call costs (page faults, thread pool start, caches) are not timed
    loops = 1
    while True:
        elapsed = _time_loops(fn, loops)
        if elapsed >= min_seconds:
            return loops, elapsed / loops
        # Aim 20% above the target; grow at most 10x a step so one noisy sample can't run away.
        wanted = math.ceil(loops * 1.2 * min_seconds / max(elapsed, 1e-9))
        loops = min(max(wanted, 2 * loops), 10 * loops)


@dataclass
class Entry:
    fn: Callable[[], Any]
    before: Callable[[], Any] | None = None  # untimed, before each sample (e.g. set threads)


def measure_group(entries: dict[str, Entry], repeats: int, min_seconds: float,
                   budget: float = GROUP_BUDGET_SECONDS) -> dict[str, Timing]:
    """Time several implementations, interleaved: each round takes one sample of each.

    Interleaving makes a burst of noise from the machine hit every implementation alike, so
    the ratios between them stay meaningful. The number of rounds is ``repeats``, reduced
    (never below ``MIN_REPEATS``) when one round takes longer than ``budget / repeats``.
    """
    calibration = {}
    for name, entry in entries.items():
        if entry.before is not None:
            entry.before()
        calibration[name] = _calibrate(entry.fn, min_seconds)
    round_seconds = sum(loops * per_call for loops, per_call in calibration.values())
    rounds = min(repeats, max(MIN_REPEATS, int(budget / max(round_seconds, 1e-9))))
    samples: dict[str, list[float]] = {name: [] for name in entries}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as timeit does: a collection landing in one sample is noise
    try:
        for _ in range(rounds):
            for name, entry in entries.items():
                if entry.before is not None:
                    entry.before()
                loops = calibration[name][0]
                samples[name].append(_time_loops(entry.fn, loops) / loops)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: Timing(median=statistics.median(values), min=min(values), samples=values,
                         loops=calibration[name][0])
            for name, values in samples.items()}
