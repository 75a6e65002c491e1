"""The benchmark harness shared by every section of ``dpo-fast bench``.

Timing
    :func:`measure_group`: each implementation is warmed up and calibrated to a number of
    back-to-back calls that fill a minimum sample time; then the implementations of a group
    are sampled interleaved, one sample of each per round, so that a burst of noise from the
    machine hits them alike and the ratios between them stay meaningful. The headline is the
    median per-call time. :func:`time_interleaved` is the variant for calls that take
    milliseconds (one call per sample, a collection before each): the loss-type, log-probs
    and scoring sections.
Machine
    :func:`machine_info` (CPU, cores, memory, build, versions, load), :func:`cpu_snapshot` /
    :func:`cpu_usage` (how much CPU other processes took during a run, from ``/proc/stat``),
    :func:`status_kb` / :func:`reset_peak_rss` (``/proc/self/status`` and ``clear_refs``).
JSON and report
    :func:`json_safe`, :func:`write_json`, :func:`unwritable_reason`, and the text formatters
    :func:`fmt_time`, :func:`fmt_ratio`, :func:`fmt_n`, :func:`table`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

import dpo_fast
from dpo_fast import _threads
from dpo_fast._kernels import _pairwise

__all__ = [
    "GROUP_BUDGET_SECONDS",
    "MIN_REPEATS",
    "Entry",
    "Timing",
    "cpu_snapshot",
    "cpu_usage",
    "fmt_n",
    "fmt_ratio",
    "fmt_time",
    "frozen_heap",
    "json_safe",
    "load_torch",
    "machine_info",
    "measure_group",
    "parse_count",
    "progress",
    "reset_peak_rss",
    "status_kb",
    "table",
    "time_interleaved",
    "unwritable_reason",
    "write_json",
]

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
    """One implementation of a group timed by :func:`measure_group`.

    Attributes
    ----------
    fn : callable
        The call to time (no arguments).
    before : callable, optional
        Called untimed before each sample (e.g. to set a thread count or SIMD path).
    """

    fn: Callable[[], Any]
    before: Callable[[], Any] | None = None  # untimed, before each sample (e.g. set threads)


def measure_group(entries: dict[str, Entry], repeats: int, min_seconds: float,
                   budget: float = GROUP_BUDGET_SECONDS) -> dict[str, Timing]:
    """Time several implementations, interleaved: each round takes one sample of each.

    Interleaving makes a burst of noise from the machine hit every implementation alike, so
    the ratios between them stay meaningful. The number of rounds is ``repeats``, reduced
    (never below ``MIN_REPEATS``) when one round takes longer than ``budget / repeats``.

    Parameters
    ----------
    entries : dict of str to Entry
        The implementations, by name.
    repeats : int
        Samples per implementation (rounds).
    min_seconds : float
        Minimum duration of one sample (back-to-back calls).
    budget : float, optional
        Seconds one group may take before its rounds are cut (to ``MIN_REPEATS``).

    Returns
    -------
    dict of str to Timing
        Per-call times by implementation name.
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


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int
                     ) -> dict[str, list[float]]:
    """Milliseconds per call, the functions alternating call by call after one warm-up each.

    For calls of a millisecond or more: one call per sample, a garbage collection (untimed)
    before each.

    Parameters
    ----------
    fns : dict of str to callable
        The implementations, by name.
    repeats : int
        Timed calls per implementation.

    Returns
    -------
    dict of str to list of float
        Every sample, in milliseconds, by name.
    """
    for fn in fns.values():
        fn()  # warm-up: page-ins, OpenMP pool, THP compaction
    samples: dict[str, list[float]] = {name: [] for name in fns}
    with frozen_heap():
        for _ in range(repeats):
            for name, fn in fns.items():
                gc.collect()
                start = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - start) * 1e3)
    return samples


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Collect, then freeze every object that exists (``gc.freeze``) until the block ends.

    What exists before a measurement is not the garbage of the calls measured: frozen, the
    collections the harness runs between samples walk only the objects created since (with
    torch imported, a full collection takes ~0.1 s, which made runs slow, not timings
    wrong). Nested use keeps the outer freeze.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# --------------------------------------------------------------------------------------------
# Machine.
# --------------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_snapshot() -> dict[str, float] | None:
    """System-wide busy and steal CPU seconds (/proc/stat) and this process's CPU seconds.

    Returns
    -------
    dict or None
        ``busy``, ``steal``, ``own`` and ``wall`` seconds; None where /proc/stat is missing.
    """
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(x) for x in fields[1:9]] + [0] * 8
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    own = os.times()
    return {"busy": (user + nice + system + irq + softirq) / ticks, "steal": steal / ticks,
            "own": own.user + own.system, "wall": time.monotonic()}


def cpu_usage(start: dict[str, float] | None, end: dict[str, float] | None
              ) -> dict[str, float] | None:
    """Share of the machine's CPU time that other processes (and the hypervisor, as steal)
    took between two :func:`cpu_snapshot` calls.

    Parameters
    ----------
    start, end : dict or None
        Snapshots taken before and after the run.

    Returns
    -------
    dict or None
        ``others_pct`` and ``steal_pct`` (percent of all CPUs), or None when unknown.
    """
    if start is None or end is None:
        return None
    capacity = (end["wall"] - start["wall"]) * (os.cpu_count() or 1)
    if capacity <= 0:
        return None
    others = (end["busy"] - start["busy"]) - (end["own"] - start["own"])
    return {"others_pct": round(max(0.0, 100.0 * others / capacity), 1),
            "steal_pct": round(100.0 * (end["steal"] - start["steal"]) / capacity, 1)}


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # Windows
        return None


def machine_info(torch_module: Any = None, torch_reason: str | None = None) -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, build, library versions, date.

    Parameters
    ----------
    torch_module : module, optional
        torch, if it was imported.
    torch_reason : str, optional
        Why torch is not used, if it is not.

    Returns
    -------
    dict
        JSON-serialisable description of the machine and the software.
    """
    env = {name: os.environ[name] for name in ("OMP_NUM_THREADS", "DPO_FAST_SIMD")
           if name in os.environ}
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cpus_available": _threads.available_cpus(),
        "cpu_count": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": getattr(torch_module, "__version__", None),
        "torch_unavailable_reason": torch_reason,
        "dpo_fast": dpo_fast.__version__,
        "simd_level": dpo_fast.simd_level(),
        "simd_levels_supported": list(_pairwise.supported_simd_levels()),
        "openmp": dpo_fast.openmp_enabled(),
        "parallel_min_rows": _threads.PARALLEL_MIN_ROWS,
        "environment": env,
        # A busy machine is the first suspect for odd numbers: say how busy it was.
        "load_average": _load_average(),
    }


def status_kb(key: str) -> int | None:
    """A ``kB`` field of /proc/self/status (``VmRSS``, ``VmHWM``, ...), or None.

    Parameters
    ----------
    key : str
        The field name, without the colon.

    Returns
    -------
    int or None
        The value in kB; None where the file or the field is missing.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's resident-set high-water mark (VmHWM), Linux only.

    Returns
    -------
    bool
        Whether it was reset (writing 5 to /proc/self/clear_refs).
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def load_torch(enabled: bool = True) -> tuple[Any, str | None]:
    """torch, or None and the reason it is unavailable (imported lazily: it is optional).

    Parameters
    ----------
    enabled : bool, default True
        False: do not import it (``--no-torch``).

    Returns
    -------
    tuple
        ``(module or None, reason or None)``.
    """
    if not enabled:
        return None, "disabled by --no-torch"
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken install is "unavailable" too
        return None, f"{type(exc).__name__}: {exc}"
    return torch, None


def progress(message: str) -> None:
    """Print a progress line to stderr when it is a terminal (stdout stays the clean table).

    Parameters
    ----------
    message : str
        What is being measured.
    """
    if sys.stderr.isatty():
        print(f"  ... {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# JSON and text.
# --------------------------------------------------------------------------------------------

def json_safe(value: Any) -> Any:
    """Replace non-finite floats (an ulp distance with NaN) by None: JSON has no inf/NaN.

    Parameters
    ----------
    value : object
        Nested dicts, lists, tuples and scalars.

    Returns
    -------
    object
        The same structure (tuples as lists), non-finite floats replaced by None.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(results: Any, path: str) -> None:
    """Write results as indented JSON (non-finite floats as null), newline-terminated.

    Parameters
    ----------
    results : object
        JSON-serialisable results.
    path : str
        Output file.
    """
    with open(path, "w") as fh:
        json.dump(json_safe(results), fh, indent=1, allow_nan=False)
        fh.write("\n")


def unwritable_reason(path: str) -> str | None:
    """Why ``path`` cannot be written as an output file, or None when it can.

    Parameters
    ----------
    path : str
        The output file named on the command line.

    Returns
    -------
    str or None
        A reason for an error message, or None.
    """
    if os.path.isdir(path):
        return "is a directory; name the output file"
    # Through links: a link to a file in a missing directory cannot be written either.
    directory = os.path.dirname(os.path.realpath(path))
    if not os.path.isdir(directory):
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        return f"directory {directory} {what}"
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            return "exists and is not writable"
    elif not os.access(directory, os.W_OK | os.X_OK):
        return f"directory {directory} is not writable"
    return None


def parse_count(text: str) -> int:
    """A command-line count: an integer >= 1, also spelt ``1e7`` or ``10_000_000``.

    (An ``argparse`` type: sizes, repeats, thread counts, rows.)

    Parameters
    ----------
    text : str
        The option's value.

    Returns
    -------
    int
        The count.

    Raises
    ------
    argparse.ArgumentTypeError
        Not an integer (``1.5``, ``x``) or below 1.
    """
    token = text.strip().replace("_", "")
    try:
        value = float(token) if any(ch in token.lower() for ch in ".e") else int(token)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if isinstance(value, float):
        if not value.is_integer():
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}")
        value = int(value)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return value


def fmt_time(seconds: float | None) -> str:
    """Seconds as a short string with a unit (``"5.3 ms"``); ``"-"`` for None."""
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_ratio(ratio: float | None) -> str:
    """A speed ratio (``"3.45x"``); ``"-"`` for None."""
    if ratio is None:
        return "-"
    return f"{ratio:.3g}x" if ratio < 100 else f"{ratio:.0f}x"


def fmt_n(n: int) -> str:
    """A size: powers of ten from 1000 as ``1e3``, others with thousands separators."""
    exponent = round(math.log10(n)) if n > 0 else 0
    if n >= 1000 and 10**exponent == n:
        return f"1e{exponent}"
    return f"{n:,}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """Fixed-width text table.

    Parameters
    ----------
    headers : sequence of str
        Column titles.
    rows : sequence of sequence of str
        The cells.
    left : int, default 1
        How many leading columns are left-aligned (the others are right-aligned).

    Returns
    -------
    list of str
        The lines: headers, a rule, the rows.
    """
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i < left else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]
