"""The core section of ``dpo-fast bench``: the list call, arrays, accuracy and SIMD paths.

What is compared
----------------
List call (Python lists in, a dict of rounded floats out), for small N:
    ``dpo_fast.dpo_loss`` against a plain NumPy implementation (rewards, ``np.logaddexp``, mean)
    and a pure-Python loop (:mod:`.baselines`).
Arrays, for every N, dtype and thread count:
    ``dpo_fast.preference_loss(..., out=preallocated)`` and the same call allocating its
    outputs, against the NumPy array solution, PyTorch CPU (when torch is importable) and the
    memory-bandwidth bound (``baselines.bandwidth_bound``, a kernel that streams the same 4
    inputs and 3 outputs with trivial arithmetic). "% of bound" is
    ``t_bound / t_dpo_fast * 100``.
SIMD code paths:
    the kernel at N = 1e6 float64 on one thread with each code path the CPU supports, as a
    speed-up over the ``scalar`` path: a guard that the vectoriser did not silently leave the
    fast path scalar.

Accuracy is checked as it goes (the list-call dicts must be equal; array outputs within a few ulp
of a float64 reference; results bit-identical across thread counts and SIMD paths); a failed
check makes the command exit with status 1.
"""

from __future__ import annotations

import functools
import gc
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import dpo_fast
from dpo_fast import _threads
from dpo_fast._kernels import _pairwise

from . import harness
from .baselines import (
    bandwidth_bound,
    float64_reference,
    numpy_array_solution,
    numpy_seed_solution,
    python_seed_solution,
    torch_array_solution,
)
from .harness import progress

__all__ = [
    "DEFAULT_SECTIONS",
    "SECTIONS",
    "BenchConfig",
    "bench_arrays",
    "bench_seed",
    "bench_simd",
    "core_checks_passed",
    "default_threads",
    "ulp_distance",
]

SCHEMA = "dpo_fast.benchmark/1"
# The sections of `dpo-fast bench --section`, in the order they run and report; the default
# is what the command measured before sections existed, so recorded tables stay comparable.
SECTIONS = ("core", "small", "losses", "logps", "fused", "score")
DEFAULT_SECTIONS = ("core", "small")
BETA = 0.1
DEFAULT_SIZES = (2, 16, 1_000, 100_000, 1_000_000, 10_000_000)
QUICK_SIZES = (2, 16, 1_000, 10_000)
DTYPES = ("float32", "float64")
DEFAULT_REPEATS = 21
QUICK_REPEATS = 3
# The list call (lists in, dict out) and the pure-Python loop are compared up to this N only:
# beyond it nobody passes Python lists, and the loop would dominate the run time.
SEED_MAX_N = 1_000
SIMD_SIZE = 1_000_000
QUICK_SIMD_SIZE = 10_000
# Each timing sample runs the call back to back for at least this long, so that
# perf_counter's resolution and the loop overhead are negligible for tiny N.
MIN_SAMPLE_SECONDS = 0.002
QUICK_MIN_SAMPLE_SECONDS = 0.0005
# Accuracy limits, in units in the last place of the output dtype, against a float64 NumPy
# reference evaluated the kernel's way (z = beta*((pc - rc) - (pr - rr)), softplus via
# np.logaddexp) and rounded to the output dtype. float32: the spec's <= 2 ulp. float64: both
# sides have their own softplus (<= ~1.5-2 ulp each).
ULP_LIMITS = {"float32": 2, "float64": 4}
# The mean loss against the reference's mean: both are double-precision sums.
LOSS_REL_LIMIT = 1e-12
# Below this speed-up over the scalar path, the "vectorised" path is reported as suspicious.
SIMD_MIN_SPEEDUP = 2.0

# --------------------------------------------------------------------------------------------
# Accuracy.
# --------------------------------------------------------------------------------------------

def _ordered_ints(values: np.ndarray) -> np.ndarray:
    """Map floats to integers that are consecutive for consecutive floats (as int64)."""
    if values.dtype == np.float32:
        bits = values.view(np.int32).astype(np.int64)
        lowest = np.int64(-(2**31))
    elif values.dtype == np.float64:
        bits = values.view(np.int64)
        lowest = np.int64(np.iinfo(np.int64).min)
    else:
        raise TypeError(f"ulp distance needs float32 or float64, got {values.dtype}")
    # Negative floats count down from -0.0 (sign-magnitude to two's complement).
    return np.where(bits < 0, lowest - bits, bits)


def ulp_distance(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest distance in units in the last place between two arrays of one float dtype.

    Parameters
    ----------
    actual, expected : numpy.ndarray
        Same shape and dtype (float32 or float64).

    Returns
    -------
    float
        The maximum number of representable values between corresponding elements
        (0 for bit-equal arrays; +0.0 and -0.0 are 0 apart); ``inf`` if either holds NaN.
    """
    actual = np.ascontiguousarray(actual)
    expected = np.ascontiguousarray(expected)
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        raise ValueError("ulp_distance needs arrays of the same dtype and shape")
    if actual.size == 0:
        return 0.0
    if np.isnan(actual).any() or np.isnan(expected).any():
        return math.inf
    a = _ordered_ints(actual)
    b = _ordered_ints(expected)
    if actual.dtype == np.float64:
        # int64 differences overflow only across signs: those are far apart anyway, so a
        # float estimate of them is enough.
        same_sign = (a >= 0) == (b >= 0)
        exact = np.abs(np.where(same_sign, a - b, 0))
        rough = np.abs(a.astype(np.float64) - b.astype(np.float64))
        return float(np.max(np.where(same_sign, exact.astype(np.float64), rough)))
    return float(np.max(np.abs(a - b)))


# --------------------------------------------------------------------------------------------
# Configuration.
# --------------------------------------------------------------------------------------------

@dataclass
class BenchConfig:
    """What one benchmark run measures.

    Attributes
    ----------
    sizes : tuple of int
        Numbers of pairs N. The list call is measured for those <= ``SEED_MAX_N``.
    dtypes : tuple of str
        ``"float32"`` and/or ``"float64"`` (array benchmarks).
    threads : tuple of int
        ``n_threads`` values for dpo_fast, torch and the bandwidth bound.
    repeats : int
        Samples per implementation (fewer for slow rounds, see ``GROUP_BUDGET_SECONDS``).
    simd_size : int
        N of the SIMD section (float64, one thread); 0 skips it.
    min_sample_seconds : float
        Minimum duration of one timing sample.
    use_torch : bool
        Measure PyTorch when it is importable.
    seed : int
        Seed of the random data.
    quick : bool
        Whether this is the ``--quick`` smoke configuration (every section's quick one).
    sections : tuple of str
        The sections to run, among :data:`SECTIONS`.
    """

    sizes: tuple[int, ...] = DEFAULT_SIZES
    dtypes: tuple[str, ...] = DTYPES
    threads: tuple[int, ...] = field(default_factory=lambda: default_threads())
    repeats: int = DEFAULT_REPEATS
    simd_size: int = SIMD_SIZE
    min_sample_seconds: float = MIN_SAMPLE_SECONDS
    use_torch: bool = True
    seed: int = 0
    quick: bool = False
    sections: tuple[str, ...] = DEFAULT_SECTIONS


def default_threads() -> tuple[int, ...]:
    """The default thread counts: 1 and every CPU available (just 1 on one CPU).

    Returns
    -------
    tuple of int
        ``(1,)`` or ``(1, available)``.
    """
    available = _threads.available_cpus()
    return (1,) if available == 1 else (1, available)


def _make_data(n: int, seed: int) -> list[np.ndarray]:
    """Four float64 arrays of realistic summed log-probs: around -50, spread 5."""
    rng = np.random.default_rng([seed, n])  # per-N stream: data do not depend on --sizes
    return [rng.standard_normal(n) * 5.0 - 50.0 for _ in range(4)]


# --------------------------------------------------------------------------------------------
# The list call, arrays and SIMD paths.
# --------------------------------------------------------------------------------------------

def bench_seed(config: BenchConfig) -> list[dict[str, Any]]:
    """The list call against the NumPy and pure-Python seed solutions, for N <= SEED_MAX_N.

    Parameters
    ----------
    config : BenchConfig
        Sizes, repeats, sample time, seed.

    Returns
    -------
    list of dict
        One row per N: ``times``, ``ratios`` and ``checks`` (the dicts are equal).
    """
    rows = []
    for n in [n for n in config.sizes if n <= SEED_MAX_N]:
        progress(f"list call N={n}")
        lists = [a.tolist() for a in _make_data(n, config.seed)]
        expected = dpo_fast.dpo_loss(*lists, BETA)
        via_numpy = numpy_seed_solution(*lists, BETA)
        via_python = python_seed_solution(*lists, BETA)
        times = harness.measure_group({
            "dpo_fast": harness.Entry(functools.partial(dpo_fast.dpo_loss, *lists, BETA)),
            "numpy": harness.Entry(functools.partial(numpy_seed_solution, *lists, BETA)),
            "python": harness.Entry(functools.partial(python_seed_solution, *lists, BETA)),
        }, config.repeats, config.min_sample_seconds)
        rows.append({
            "n": n,
            "times": {name: t.to_json() for name, t in times.items()},
            "ratios": {
                "x_numpy": times["numpy"].median / times["dpo_fast"].median,
                "x_python": times["python"].median / times["dpo_fast"].median,
            },
            "checks": {
                "equals_numpy_dict": expected == via_numpy,
                "equals_python_dict": expected == via_python,
            },
        })
    return rows


def _accuracy(arrays: list[np.ndarray], dtype: str, results: list[Any]) -> dict[str, Any]:
    """Check dpo_fast's outputs (one result per thread count) against the float64 reference."""
    ref_loss, ref_losses, ref_chosen, ref_rejected = float64_reference(*arrays, BETA)
    first = results[0]
    ulps = {
        "losses": ulp_distance(first.losses, ref_losses.astype(dtype)),
        "chosen_rewards": ulp_distance(first.chosen_rewards, ref_chosen.astype(dtype)),
        "rejected_rewards": ulp_distance(first.rejected_rewards, ref_rejected.astype(dtype)),
    }
    loss_rel = abs(first.loss - ref_loss) / abs(ref_loss)
    identical = all(
        other.loss == first.loss and other.metrics == first.metrics
        and all(np.array_equal(getattr(other, key), getattr(first, key))
                for key in ("losses", "chosen_rewards", "rejected_rewards"))
        for other in results[1:]
    )
    limit = ULP_LIMITS[dtype]
    return {
        "max_ulp": ulps,
        "ulp_limit": limit,
        "loss_rel_error": loss_rel,
        "loss_rel_limit": LOSS_REL_LIMIT,
        "threads_bit_identical": identical,
        "ok": bool(max(ulps.values()) <= limit and loss_rel <= LOSS_REL_LIMIT and identical),
    }


def _bound_allocating(arrays: list[np.ndarray], dtype: str, n_threads: int) -> None:
    """The same-traffic kernel into 3 outputs allocated by the call, as dpo_fast's are."""
    n = arrays[0].shape[0]
    bandwidth_bound(*arrays, *(np.empty(n, dtype=dtype) for _ in range(3)), n_threads)


def _bench_arrays_one(arrays64: list[np.ndarray], n: int, dtype: str, config: BenchConfig,
                      torch: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All implementations for one (N, dtype): rows per thread count, and the accuracy."""
    arrays = [a.astype(dtype) for a in arrays64]
    outputs = {key: np.empty(n, dtype=dtype)
               for key in ("losses", "chosen_rewards", "rejected_rewards")}
    bound_outputs = [np.empty(n, dtype=dtype) for _ in range(3)]

    # Accuracy first (also a warm-up): each thread count into fresh outputs.
    results = [dpo_fast.preference_loss(*arrays, beta=BETA, n_threads=k)
               for k in config.threads]
    accuracy = {"dtype": dtype, "n": n, **_accuracy(arrays, dtype, results)}
    del results

    entries: dict[str, harness.Entry] = {
        "numpy": harness.Entry(functools.partial(numpy_array_solution, *arrays, BETA)),
    }
    if torch is not None:
        tensors = [torch.from_numpy(a) for a in arrays]
    for k in config.threads:
        entries[f"dpo_fast/{k}"] = harness.Entry(functools.partial(
            dpo_fast.preference_loss, *arrays, beta=BETA, n_threads=k, out=outputs))
        entries[f"dpo_fast_alloc/{k}"] = harness.Entry(functools.partial(
            dpo_fast.preference_loss, *arrays, beta=BETA, n_threads=k))
        # The bound runs on the threads the kernel really uses (one below the size threshold).
        entries[f"bound/{k}"] = harness.Entry(functools.partial(
            bandwidth_bound, *arrays, *bound_outputs,
            _threads.resolve_n_threads(k, n)))
        # The allocating call's bound: the same kernel into 3 fresh outputs (their page
        # faults are every library's cost).
        entries[f"bound_alloc/{k}"] = harness.Entry(functools.partial(
            _bound_allocating, arrays, dtype, _threads.resolve_n_threads(k, n)))
        if torch is not None:
            entries[f"torch/{k}"] = harness.Entry(
                functools.partial(torch_array_solution, *tensors, BETA),
                before=functools.partial(torch.set_num_threads, k))
    times = harness.measure_group(entries, config.repeats, config.min_sample_seconds)

    rows = []
    t_numpy = times["numpy"].median
    for k in config.threads:
        row_times = {"numpy": times["numpy"]}
        for name in ("dpo_fast", "dpo_fast_alloc", "bound", "bound_alloc", "torch"):
            if f"{name}/{k}" in times:
                row_times[name] = times[f"{name}/{k}"]
        t_fast = row_times["dpo_fast"].median
        ratios = {
            "x_numpy": t_numpy / t_fast,
            "x_numpy_alloc": t_numpy / row_times["dpo_fast_alloc"].median,
            "pct_bound": 100.0 * row_times["bound"].median / t_fast,
            "pct_bound_alloc": (100.0 * row_times["bound_alloc"].median
                                / row_times["dpo_fast_alloc"].median),
            "x_torch": (row_times["torch"].median / t_fast) if "torch" in row_times else None,
        }
        rows.append({"dtype": dtype, "n": n, "threads": k,
                     "threads_used": _threads.resolve_n_threads(k, n),
                     "times": {name: t.to_json() for name, t in row_times.items()},
                     "ratios": ratios})
    return rows, accuracy


def bench_arrays(config: BenchConfig, torch: Any) -> tuple[list[dict], list[dict]]:
    """Every array implementation for every N, dtype and thread count, and the accuracy.

    Parameters
    ----------
    config : BenchConfig
        Sizes, dtypes, threads, repeats, sample time, seed.
    torch : module or None
        torch, or None to leave it out.

    Returns
    -------
    tuple of list of dict
        ``(rows, accuracy)``, sorted by dtype, N (and threads).
    """
    rows: list[dict[str, Any]] = []
    accuracy: list[dict[str, Any]] = []
    previous_torch_threads = torch.get_num_threads() if torch is not None else None
    try:
        for n in config.sizes:
            arrays64 = _make_data(n, config.seed)
            for dtype in config.dtypes:
                progress(f"arrays {dtype} N={n}")
                new_rows, checks = _bench_arrays_one(arrays64, n, dtype, config, torch)
                rows.extend(new_rows)
                accuracy.append(checks)
                gc.collect()  # N = 1e7: free the previous dtype's ~1 GB before the next
            del arrays64
    finally:
        if torch is not None:
            torch.set_num_threads(previous_torch_threads)
    rows.sort(key=lambda r: (r["dtype"], r["n"], r["threads"]))
    accuracy.sort(key=lambda r: (r["dtype"], r["n"]))
    return rows, accuracy


def bench_simd(config: BenchConfig) -> dict[str, Any] | None:
    """Time the kernel on every SIMD path this CPU supports; check they give the same bits.

    Parameters
    ----------
    config : BenchConfig
        ``simd_size`` (0: skipped), repeats, sample time, seed.

    Returns
    -------
    dict or None
        ``levels`` (one row per path), ``vectorised_ok``, ``all_bit_identical``; None when
        skipped.
    """
    if config.simd_size <= 0:
        return None
    n = config.simd_size
    progress(f"SIMD paths N={n}")
    arrays = _make_data(n, config.seed)
    levels = list(_pairwise.supported_simd_levels())
    previous = _pairwise.simd_level()
    outputs = {level: {key: np.empty(n) for key in ("losses", "chosen_rewards",
                                                     "rejected_rewards")}
               for level in levels}
    try:
        sums = {}
        for level in levels:
            _pairwise.set_simd_level(level)
            sums[level] = dpo_fast.preference_loss(*arrays, beta=BETA, n_threads=1,
                                                   out=outputs[level]).loss
        entries = {
            level: harness.Entry(functools.partial(dpo_fast.preference_loss, *arrays, beta=BETA,
                                            n_threads=1, out=outputs[level]),
                          before=functools.partial(_pairwise.set_simd_level, level))
            for level in levels
        }
        times = harness.measure_group(entries, config.repeats, config.min_sample_seconds)
    finally:
        # Put back the path in use before (the best one, or what DPO_FAST_SIMD asked for).
        _pairwise.set_simd_level(previous)
    reference = levels[0]
    rows = []
    for level in levels:
        same = sums[level] == sums[reference] and all(
            np.array_equal(outputs[level][key], outputs[reference][key])
            for key in outputs[level])
        rows.append({
            "level": level,
            "times": times[level].to_json(),
            "x_scalar": (times[reference].median / times[level].median
                         if reference == "scalar" else None),
            "bit_identical_to_scalar": same,
        })
    best = rows[-1]
    return {
        "n": n, "dtype": "float64", "threads": 1, "levels": rows,
        "restored_level": _pairwise.simd_level(),
        "vectorised_ok": best["x_scalar"] is None or best["level"] == "scalar"
        or best["x_scalar"] >= SIMD_MIN_SPEEDUP,
        "all_bit_identical": all(r["bit_identical_to_scalar"] for r in rows),
    }


def core_checks_passed(section: dict[str, Any]) -> bool:
    """Whether every accuracy check of a core section passed.

    Parameters
    ----------
    section : dict
        What :func:`run_core` returned (or the same keys of a saved run).

    Returns
    -------
    bool
        The list-call dicts equal, the array outputs within their limits, the SIMD paths
        bit-identical.
    """
    simd = section["simd"]
    return bool(
        all(all(row["checks"].values()) for row in section["seed"])
        and all(row["ok"] for row in section["accuracy"])
        and (simd is None or simd["all_bit_identical"])
    )
