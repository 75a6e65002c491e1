"""Comparative benchmark of dpo_fast against NumPy, pure Python, PyTorch and memory bandwidth.

Run it as ``dpo-fast bench`` (or ``python -m dpo_fast bench``, or ``python bench/run.py``).
Every ratio it prints is computed from timings taken in the same run, with the implementations
interleaved sample by sample so that a noisy machine slows all of them alike.

What is compared
----------------
List call (Python lists in, a dict of rounded floats out), for small N:
    ``dpo_fast.dpo_loss`` against a plain NumPy implementation (rewards, ``np.logaddexp``, mean)
    (:func:`numpy_seed_solution`) and a pure-Python loop (:func:`python_seed_solution`).
Arrays, for every N, dtype and thread count:
    ``dpo_fast.preference_loss(..., out=preallocated)`` and the same call allocating its
    outputs, against the NumPy array solution (:func:`numpy_array_solution`), PyTorch CPU
    (:func:`torch_array_solution`, when torch is importable) and the memory-bandwidth bound:
    ``dpo_fast._kernels._pairwise.memory_traffic``, a kernel that streams the same 4 inputs
    and 3 outputs with trivial arithmetic. "% of bound" is ``t_bound / t_dpo_fast * 100``.
SIMD code paths:
    the kernel at N = 1e6 float64 on one thread with each code path the CPU supports, as a
    speed-up over the ``scalar`` path: a guard that the vectoriser did not silently leave the
    fast path scalar.

Accuracy is checked as it goes (the list-call dicts must be equal; array outputs within a few ulp
of a float64 reference; results bit-identical across thread counts and SIMD paths); a failed
check makes :func:`main` return 1. Speed targets are printed next to the measured ratios and
never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

import dpo_fast
from dpo_fast import _bench_small, _optional, _threads, _timing
from dpo_fast._kernels import _pairwise
from dpo_fast._timing import GROUP_BUDGET_SECONDS, MIN_REPEATS, Timing

__all__ = [
    "BenchConfig",
    "Timing",
    "add_arguments",
    "config_from_args",
    "format_report",
    "main",
    "numpy_array_solution",
    "numpy_seed_solution",
    "python_seed_solution",
    "run",
    "run_from_args",
    "torch_array_solution",
    "ulp_distance",
    "write_plot",
]

SCHEMA = "dpo_fast.benchmark/1"
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
# Above this share of the CPUs used by other processes during the run, the report warns.
BUSY_WARNING_PCT = 10.0
# Below this speed-up over the scalar path, the "vectorised" path is reported as suspicious.
SIMD_MIN_SPEEDUP = 2.0

TARGETS = (
    # (key, description, kind, size, dtype, minimum)
    ("seed_x_numpy", "2-pair list call vs NumPy", "seed_numpy", 2, "float64", 20.0),
    ("seed_x_python", "2-pair list call vs pure Python", "seed_python", 2, "float64", 5.0),
    ("f64_pct_bound", "N=1e7 float64 vs bandwidth bound", "pct_bound", 10_000_000, "float64",
     80.0),
    ("f64_x_numpy", "N=1e7 float64 vs NumPy", "x_numpy", 10_000_000, "float64", 12.0),
    ("f32_x_numpy", "N=1e7 float32 vs NumPy", "x_numpy", 10_000_000, "float32", 15.0),
    ("small2_x_numpy", "N=2 float64 vs the NumPy formula", "small_x_numpy", 2, "float64", 3.0),
    ("small64_x_numpy", "N=64 float64 vs the NumPy formula", "small_x_numpy", 64, "float64",
     2.0),
    ("torch8_x_torch", "dpo_fast.torch f+b B=8 vs plain torch", "small_torch", 8, "float64",
     1.5),
    ("torch4096_x_torch", "dpo_fast.torch f+b B=4096 vs plain torch", "small_torch", 4096,
     "float64", 1.5),
    ("logps_x_torch", "sequence_logps 2x16x64 vs torch", "logps", 0, "float32", 1.5),
)


# --------------------------------------------------------------------------------------------
# Baselines, written the way a user of each tool would write them.
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


def _reference_float64(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    """Accuracy reference: float64 NumPy evaluated with the kernel's association of z.

    The timed NumPy implementation forms ``z = beta*c - beta*r``; the kernel forms
    ``z = beta*(c - r)``. The two differ by a rounding of z, which moves a loss by several
    float64 ulp, so the reference uses the kernel's z and the comparison measures the
    softplus and the rounding of the outputs only.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in
              (policy_chosen, policy_rejected, ref_chosen, ref_rejected)]
    chosen = arrays[0] - arrays[2]
    rejected = arrays[1] - arrays[3]
    losses = np.logaddexp(0.0, -(beta * (chosen - rejected)))
    return float(losses.mean()), losses, beta * chosen, beta * rejected


def _load_torch() -> tuple[Any, str | None]:
    """torch, or None and the reason it is unavailable (imported lazily: it is optional)."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken install is "unavailable" too
        return None, f"{type(exc).__name__}: {exc}"
    return torch, None


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
# Configuration and machine.
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
        Whether this is the ``--quick`` smoke configuration.
    """

    sizes: tuple[int, ...] = DEFAULT_SIZES
    dtypes: tuple[str, ...] = DTYPES
    threads: tuple[int, ...] = field(default_factory=lambda: _default_threads())
    repeats: int = DEFAULT_REPEATS
    simd_size: int = SIMD_SIZE
    min_sample_seconds: float = MIN_SAMPLE_SECONDS
    use_torch: bool = True
    seed: int = 0
    quick: bool = False


def _default_threads() -> tuple[int, ...]:
    available = _threads.available_cpus()
    return (1,) if available == 1 else (1, available)


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


def _cpu_snapshot() -> dict[str, float] | None:
    """System-wide busy and steal CPU seconds (/proc/stat) and this process's CPU seconds."""
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


def _cpu_usage(start: dict[str, float] | None, end: dict[str, float] | None
               ) -> dict[str, float] | None:
    """Share of the machine's CPU time that other processes (and the hypervisor, as steal)
    took during the run: the first thing to look at when numbers look odd."""
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


def _make_data(n: int, seed: int) -> list[np.ndarray]:
    """Four float64 arrays of realistic summed log-probs: around -50, spread 5."""
    rng = np.random.default_rng([seed, n])  # per-N stream: data do not depend on --sizes
    return [rng.standard_normal(n) * 5.0 - 50.0 for _ in range(4)]


def _progress(message: str) -> None:
    # Progress goes to stderr, and only to a terminal: stdout stays the clean table.
    if sys.stderr.isatty():
        print(f"  ... {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The three sections.
# --------------------------------------------------------------------------------------------

def _bench_seed(config: BenchConfig) -> list[dict[str, Any]]:
    rows = []
    for n in [n for n in config.sizes if n <= SEED_MAX_N]:
        _progress(f"list call N={n}")
        lists = [a.tolist() for a in _make_data(n, config.seed)]
        expected = dpo_fast.dpo_loss(*lists, BETA)
        via_numpy = numpy_seed_solution(*lists, BETA)
        via_python = python_seed_solution(*lists, BETA)
        times = _timing.measure_group({
            "dpo_fast": _timing.Entry(functools.partial(dpo_fast.dpo_loss, *lists, BETA)),
            "numpy": _timing.Entry(functools.partial(numpy_seed_solution, *lists, BETA)),
            "python": _timing.Entry(functools.partial(python_seed_solution, *lists, BETA)),
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
    ref_loss, ref_losses, ref_chosen, ref_rejected = _reference_float64(*arrays, BETA)
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

    entries: dict[str, _timing.Entry] = {
        "numpy": _timing.Entry(functools.partial(numpy_array_solution, *arrays, BETA)),
    }
    if torch is not None:
        tensors = [torch.from_numpy(a) for a in arrays]
    for k in config.threads:
        entries[f"dpo_fast/{k}"] = _timing.Entry(functools.partial(
            dpo_fast.preference_loss, *arrays, beta=BETA, n_threads=k, out=outputs))
        entries[f"dpo_fast_alloc/{k}"] = _timing.Entry(functools.partial(
            dpo_fast.preference_loss, *arrays, beta=BETA, n_threads=k))
        # The bound runs on the threads the kernel really uses (one below the size threshold).
        entries[f"bound/{k}"] = _timing.Entry(functools.partial(
            _pairwise.memory_traffic, *arrays, *bound_outputs,
            _threads.resolve_n_threads(k, n)))
        if torch is not None:
            entries[f"torch/{k}"] = _timing.Entry(
                functools.partial(torch_array_solution, *tensors, BETA),
                before=functools.partial(torch.set_num_threads, k))
    times = _timing.measure_group(entries, config.repeats, config.min_sample_seconds)

    rows = []
    t_numpy = times["numpy"].median
    for k in config.threads:
        row_times = {"numpy": times["numpy"]}
        for name in ("dpo_fast", "dpo_fast_alloc", "bound", "torch"):
            if f"{name}/{k}" in times:
                row_times[name] = times[f"{name}/{k}"]
        t_fast = row_times["dpo_fast"].median
        ratios = {
            "x_numpy": t_numpy / t_fast,
            "x_numpy_alloc": t_numpy / row_times["dpo_fast_alloc"].median,
            "pct_bound": 100.0 * row_times["bound"].median / t_fast,
            "x_torch": (row_times["torch"].median / t_fast) if "torch" in row_times else None,
        }
        rows.append({"dtype": dtype, "n": n, "threads": k,
                     "threads_used": _threads.resolve_n_threads(k, n),
                     "times": {name: t.to_json() for name, t in row_times.items()},
                     "ratios": ratios})
    return rows, accuracy


def _bench_arrays(config: BenchConfig, torch: Any) -> tuple[list[dict], list[dict]]:
    rows: list[dict[str, Any]] = []
    accuracy: list[dict[str, Any]] = []
    previous_torch_threads = torch.get_num_threads() if torch is not None else None
    try:
        for n in config.sizes:
            arrays64 = _make_data(n, config.seed)
            for dtype in config.dtypes:
                _progress(f"arrays {dtype} N={n}")
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


def _bench_simd(config: BenchConfig) -> dict[str, Any] | None:
    """Time the kernel on every SIMD path this CPU supports; check they give the same bits."""
    if config.simd_size <= 0:
        return None
    n = config.simd_size
    _progress(f"SIMD paths N={n}")
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
            level: _timing.Entry(functools.partial(dpo_fast.preference_loss, *arrays, beta=BETA,
                                            n_threads=1, out=outputs[level]),
                          before=functools.partial(_pairwise.set_simd_level, level))
            for level in levels
        }
        times = _timing.measure_group(entries, config.repeats, config.min_sample_seconds)
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


def _targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The spec's speed targets, each with the ratio measured in this run (or None)."""
    seed_by_n = {row["n"]: row for row in results["seed"]}
    small_by_n = {row["n"]: row for row in results.get("small", {"rows": []})["rows"]}
    top_threads = max(results["config"]["threads"])
    array_rows = {(r["dtype"], r["n"], r["threads"]): r for r in results["arrays"]}
    targets = []
    for key, description, kind, n, dtype, minimum in TARGETS:
        measured = None
        threads = None
        if kind.startswith("seed_"):
            row = seed_by_n.get(n)
            if row is not None:
                measured = row["ratios"]["x_numpy" if kind == "seed_numpy" else "x_python"]
        elif kind.startswith("small_"):
            row = small_by_n.get(n)
            if row is not None:
                measured = row["ratios"].get(
                    "x_numpy" if kind == "small_x_numpy" else "torch_x_torch")
        elif kind == "logps":
            logps = results.get("small", {}).get("logps")
            measured = None if logps is None else logps["ratios"]["x_torch"]
        else:
            row = array_rows.get((dtype, n, top_threads))
            if row is not None:
                measured = row["ratios"][kind]
                threads = top_threads
        targets.append({
            "key": key, "description": description, "threads": threads,
            "unit": "%" if kind == "pct_bound" else "x", "minimum": minimum,
            "measured": measured, "met": None if measured is None else measured >= minimum,
        })
    return targets


def run(config: BenchConfig) -> dict[str, Any]:
    """Run the benchmark.

    Parameters
    ----------
    config : BenchConfig
        Sizes, dtypes, thread counts and repeats.

    Returns
    -------
    dict
        JSON-serialisable results: ``machine``, ``config``, ``seed``, ``small``, ``arrays``,
        ``accuracy``, ``simd``, ``targets`` and ``checks_passed``. Times are seconds per call.
    """
    cpu_start = _cpu_snapshot()
    torch, torch_reason = _load_torch() if config.use_torch else (None, "disabled by --no-torch")
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "machine": machine_info(torch, torch_reason),
        "config": {**asdict(config), "beta": BETA, "seed_max_n": SEED_MAX_N,
                   "group_budget_seconds": GROUP_BUDGET_SECONDS, "min_repeats": MIN_REPEATS,
                   "data": "standard_normal * 5 - 50 (seeded numpy default_rng)"},
    }
    results["seed"] = _bench_seed(config)
    _progress("small batches")
    results["small"] = _bench_small.bench_small(
        _bench_small.SMALL_SIZES, config.repeats, config.min_sample_seconds, config.seed,
        torch, numpy_array_solution)
    results["arrays"], results["accuracy"] = _bench_arrays(config, torch)
    results["simd"] = _bench_simd(config)
    results["targets"] = _targets(results)
    results["machine"]["cpu_usage_during_run"] = _cpu_usage(cpu_start, _cpu_snapshot())
    simd = results["simd"]
    results["checks_passed"] = bool(
        all(all(row["checks"].values()) for row in results["seed"])
        and all(row["ok"] for row in results["accuracy"])
        and (simd is None or simd["all_bit_identical"])
    )
    return results


# --------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------

def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.3g}x" if ratio < 100 else f"{ratio:.0f}x"


def _fmt_n(n: int) -> str:
    exponent = round(math.log10(n)) if n > 0 else 0
    if n >= 1000 and 10**exponent == n:
        return f"1e{exponent}"
    return f"{n:,}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """Fixed-width text table; the first ``left`` columns are left-aligned."""
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i < left else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _fmt_usage(usage: dict[str, float] | None, cpus: int) -> str:
    if not usage:
        return "CPU use by other processes unknown"
    text = (f"other processes used {usage['others_pct']:.0f}% of the {cpus} CPUs during the "
            f"run (hypervisor steal {usage['steal_pct']:.0f}%)")
    return text


def _fmt_load(load: list[float] | None) -> str:
    return "n/a" if not load else " ".join(f"{x:.2f}" for x in load)


def _repeats_text(config: dict[str, Any]) -> str:
    repeats = config["repeats"]
    floor = min(repeats, config["min_repeats"])
    return str(repeats) if floor == repeats else f"{floor}-{repeats} (fewer for large N)"


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats (an ulp distance with NaN) by None: JSON has no inf/NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def format_report(results: dict[str, Any]) -> str:
    """The human-readable report of :func:`run`'s results.

    Parameters
    ----------
    results : dict
        What :func:`run` returned (or the JSON it was saved as).

    Returns
    -------
    str
        Machine header, then the list-call, arrays, accuracy, SIMD and targets sections.
    """
    m = results["machine"]
    c = results["config"]
    torch_text = m["torch"] or f"not used ({m['torch_unavailable_reason']})"
    out = [
        f"dpo_fast {m['dpo_fast']} benchmark, {m['date']}",
        f"machine : {m['cpu_model']}, {m['cpus_available']} CPUs available "
        f"(os.cpu_count {m['cpu_count']}), {m['memory_gib']} GiB, {m['platform']}",
        f"build   : SIMD {m['simd_level']} (supported: "
        f"{', '.join(m['simd_levels_supported'])}), OpenMP {'on' if m['openmp'] else 'off'}",
        f"software: Python {m['python']}, NumPy {m['numpy']}, torch {torch_text}",
        f"load    : {_fmt_usage(m.get('cpu_usage_during_run'), m['cpu_count'])}; "
        f"load average {_fmt_load(m.get('load_average'))} at start",
        f"timing  : median per call of {_repeats_text(c)} samples per implementation, "
        f"implementations interleaved; each sample >= {c['min_sample_seconds'] * 1e3:g} ms "
        f"of back-to-back calls",
        f"data    : log-probs ~ -50 +- 5 (seeded normal, seed {c['seed']}), beta {c['beta']}",
    ]
    usage = m.get("cpu_usage_during_run")
    if usage and usage["others_pct"] + usage["steal_pct"] > BUSY_WARNING_PCT:
        out.append("WARNING : the machine was busy: timings (multi-threaded ones most) are "
                   "noisy")
    if m["environment"]:
        out.append("env     : " + ", ".join(f"{k}={v}" for k, v in m["environment"].items()))

    if results["seed"]:
        out += ["", "List call: Python lists in, dict rounded like round(x, 4) out (float64)",
                "  dpo_fast = dpo_fast.dpo_loss; NumPy = a plain NumPy implementation; "
                "pure Py = a math-module loop", ""]
        rows = []
        for row in results["seed"]:
            t = row["times"]
            rows.append([
                _fmt_n(row["n"]), _fmt_time(t["dpo_fast"]["median"]),
                _fmt_time(t["numpy"]["median"]), _fmt_time(t["python"]["median"]),
                _fmt_ratio(row["ratios"]["x_numpy"]), _fmt_ratio(row["ratios"]["x_python"]),
                "yes" if all(row["checks"].values()) else "NO",
            ])
        out += _table(["N", "dpo_fast", "NumPy", "pure Py", "x NumPy", "x pure Py",
                       "same dict"], rows, left=0)

    if results["arrays"]:
        out += ["", "Arrays: dpo_fast.preference_loss(..., n_threads=thr, out=preallocated)",
                "  +alloc = the same call allocating its 3 outputs; NumPy = rewards, "
                "np.logaddexp(0, -z), mean (single-threaded);",
                "  torch = -F.logsigmoid(z) with torch.set_num_threads(thr); bound = "
                "memory_traffic, the same 4-in/3-out streams",
                "  with trivial math; x NumPy = NumPy / dpo_fast (x NumPy+a: with +alloc); "
                "% bound = bound / dpo_fast.",
                f"  Below {m['parallel_min_rows']:,} pairs dpo_fast (and the bound) run on 1 "
                "thread whatever thr.", ""]
        rows = []
        for row in results["arrays"]:
            t = row["times"]
            r = row["ratios"]
            rows.append([
                row["dtype"], _fmt_n(row["n"]), str(row["threads"]),
                _fmt_time(t["dpo_fast"]["median"]), _fmt_time(t["dpo_fast_alloc"]["median"]),
                _fmt_time(t["numpy"]["median"]),
                _fmt_time(t["torch"]["median"]) if "torch" in t else "-",
                _fmt_time(t["bound"]["median"]), _fmt_ratio(r["x_numpy"]),
                _fmt_ratio(r["x_numpy_alloc"]), _fmt_ratio(r["x_torch"]),
                f"{r['pct_bound']:.0f}%",
            ])
        out += _table(["dtype", "N", "thr", "dpo_fast", "+alloc", "NumPy", "torch", "bound",
                       "x NumPy", "x NumPy+a", "x torch", "% bound"], rows, left=1)

    if results["accuracy"]:
        out += ["", "Accuracy: max ulp of dpo_fast's outputs from a float64 NumPy reference "
                "rounded to the dtype;",
                "  relative error of the mean loss; outputs bit-identical across thread "
                "counts", ""]
        rows = []
        for row in results["accuracy"]:
            u = row["max_ulp"]
            rows.append([
                row["dtype"], _fmt_n(row["n"]), f"{u['losses']:g}", f"{u['chosen_rewards']:g}",
                f"{u['rejected_rewards']:g}", f"<= {row['ulp_limit']}",
                f"{row['loss_rel_error']:.1e}", "yes" if row["threads_bit_identical"] else "NO",
                "ok" if row["ok"] else "FAILED",
            ])
        out += _table(["dtype", "N", "losses", "chosen", "rejected", "limit", "loss rel err",
                       "threads same", "check"], rows, left=1)

    if "small" in results:  # (JSON of runs before the section existed has none)
        out += _bench_small.format_small(results["small"], _fmt_time, _fmt_ratio, _table)

    simd = results["simd"]
    if simd:
        out += ["", f"SIMD code paths: preference_loss at N={_fmt_n(simd['n'])} "
                f"{simd['dtype']}, {simd['threads']} thread (now using "
                f"{simd['restored_level']})", ""]
        rows = [[r["level"], _fmt_time(r["times"]["median"]), _fmt_ratio(r["x_scalar"]),
                 "yes" if r["bit_identical_to_scalar"] else "NO"] for r in simd["levels"]]
        out += _table(["path", "median", "x scalar", "same bits"], rows)
        if not simd["vectorised_ok"]:
            out.append(f"WARNING: the best SIMD path is < {SIMD_MIN_SPEEDUP:g}x the scalar "
                       "one: the vectoriser may have left it scalar (build with "
                       "DPO_FAST_VEC_REPORT=1 to see)")

    out += ["", "Targets (ratios measured in this run; reported, not asserted)", ""]
    rows = []
    for t in results["targets"]:
        threads = t["threads"]
        what = t["description"] + (
            f", {threads} thread{'' if threads == 1 else 's'}" if threads else "")
        if t["measured"] is None:
            measured, verdict = "not measured", "-"
        else:
            measured = (f"{t['measured']:.0f}%" if t["unit"] == "%"
                        else _fmt_ratio(t["measured"]))
            verdict = "met" if t["met"] else "below"
        target = f">= {t['minimum']:g}{t['unit']}"
        rows.append([what, measured, target, verdict])
    out += _table(["target", "measured", "goal", ""], rows)
    out += ["", "accuracy checks: " + ("all passed" if results["checks_passed"] else "FAILED")]
    return "\n".join(out)


def write_plot(results: dict[str, Any], path: str) -> None:
    """Write a log-log plot of median time per call against N, one line per implementation.

    Parameters
    ----------
    results : dict
        What :func:`run` returned.
    path : str
        Output file (PNG).

    Raises
    ------
    ImportError
        When matplotlib is not installed (``pip install "dpo_fast[bench]"``).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    panels = []
    if results["seed"]:
        panels.append(("list call (lists -> dict)", None))
    panels += [(f"{dtype} arrays", dtype) for dtype in results["config"]["dtypes"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.6), squeeze=False)
    # One colour and marker per implementation; solid lines for the most threads, dotted for
    # fewer, so the thread counts of one implementation read as one family.
    looks = {"dpo_fast": ("tab:orange", "o"), "dpo_fast_alloc": ("tab:red", "x"),
             "numpy": ("tab:blue", "s"), "torch": ("tab:purple", "^"),
             "bound": ("tab:gray", ""), "python": ("tab:green", "d")}
    names = {"dpo_fast": "dpo_fast out=", "dpo_fast_alloc": "dpo_fast +alloc",
             "torch": "torch", "bound": "bandwidth bound"}
    top_threads = max(results["config"]["threads"])
    for ax, (title, dtype) in zip(axes[0], panels):
        if dtype is None:
            for name, label in (("dpo_fast", "dpo_fast.dpo_loss"), ("numpy", "plain NumPy"),
                                ("python", "pure Python")):
                xs = [row["n"] for row in results["seed"]]
                ys = [row["times"][name]["median"] for row in results["seed"]]
                colour, marker = looks[name]
                ax.plot(xs, ys, color=colour, marker=marker, label=label)
        else:
            rows = [r for r in results["arrays"] if r["dtype"] == dtype]
            series: dict[tuple[str, int], tuple[list[int], list[float]]] = {}
            for row in rows:
                for name, timing in row["times"].items():
                    # NumPy is single-threaded: one line, from the first thread count's rows.
                    if name == "numpy" and row["threads"] != rows[0]["threads"]:
                        continue
                    xs, ys = series.setdefault((name, row["threads"]), ([], []))
                    xs.append(row["n"])
                    ys.append(timing["median"])
            for (name, threads), (xs, ys) in series.items():
                colour, marker = looks.get(name, ("black", "."))
                if name == "numpy":
                    label, style = "plain NumPy", "-"
                else:
                    label = f"{names.get(name, name)} ({threads} thr)"
                    style = "-" if threads == top_threads else ":"
                if name == "bound" and style == "-":
                    style = "--"
                ax.plot(xs, ys, linestyle=style, color=colour, marker=marker, markersize=4,
                        label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N (pairs)")
        ax.set_ylabel("median time per call (s)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    m = results["machine"]
    fig.suptitle(f"dpo_fast {m['dpo_fast']} on {m['cpu_model']} ({m['cpus_available']} CPUs, "
                 f"{m['simd_level']}), {m['date'][:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Command line (used by ``dpo-fast bench`` and bench/run.py).
# --------------------------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    """An integer >= 1; accepts 1e7 and 10_000_000 spellings."""
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


def _comma_list(convert: Callable[[str], Any]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        items = [convert(part) for part in text.split(",") if part.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        return tuple(dict.fromkeys(items))  # drop repeats, keep order
    return parse


def _dtype_name(text: str) -> str:
    name = text.strip().lower()
    if name not in DTYPES:
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r}; choose from {DTYPES}")
    return name


def _thread_count(text: str) -> int:
    if text.strip().lower() == "all":
        return _threads.available_cpus()
    return _positive_int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser`` (``dpo-fast bench`` and bench/run.py).

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The parser (or subcommand parser) to extend.
    """
    parser.add_argument("--sizes", type=_comma_list(_positive_int), metavar="N,N,...",
                        help="numbers of pairs (default: 2,16,1e3,1e5,1e6,1e7; "
                             "--quick: 2,16,1e3,1e4)")
    parser.add_argument("--dtypes", type=_comma_list(_dtype_name), metavar="DTYPE,...",
                        help="float32 and/or float64 (default: both)")
    parser.add_argument("--threads", type=_comma_list(_thread_count), metavar="K,K,...",
                        help="n_threads values; 'all' = the CPUs available "
                             f"(default: 1,all = {','.join(map(str, _default_threads()))})")
    parser.add_argument("--repeats", type=_positive_int, metavar="R",
                        help=f"timing samples per implementation (default {DEFAULT_REPEATS}, "
                             f"--quick {QUICK_REPEATS}; at least {MIN_REPEATS} are kept when "
                             "large N cuts them)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke configuration: sizes 2,16,1e3,1e4, 3 repeats")
    parser.add_argument("--no-torch", dest="use_torch", action="store_false",
                        help="skip PyTorch even when it is installed")
    parser.add_argument("--no-simd", dest="simd", action="store_false",
                        help="skip the SIMD code path section")
    parser.add_argument("--seed", type=int, default=0, help="random data seed (default 0)")
    parser.add_argument("--json", metavar="PATH", help="write all raw numbers as JSON")
    parser.add_argument("--plot", metavar="PATH",
                        help="write a log-log PNG of time vs N (needs matplotlib)")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`BenchConfig` for parsed options (``--quick`` first, explicit ones win)."""
    quick = args.quick
    return BenchConfig(
        sizes=tuple(args.sizes or (QUICK_SIZES if quick else DEFAULT_SIZES)),
        dtypes=tuple(args.dtypes or DTYPES),
        threads=tuple(args.threads or _default_threads()),
        repeats=args.repeats or (QUICK_REPEATS if quick else DEFAULT_REPEATS),
        simd_size=0 if not args.simd else (QUICK_SIMD_SIZE if quick else SIMD_SIZE),
        min_sample_seconds=QUICK_MIN_SAMPLE_SECONDS if quick else MIN_SAMPLE_SECONDS,
        use_torch=args.use_torch,
        seed=args.seed,
        quick=quick,
    )


def _unwritable_reason(path: str) -> str | None:
    """Why ``path`` cannot be written as an output file, or None when it can."""
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


def run_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the benchmark for parsed options: print the report, write JSON / PNG.

    Parameters
    ----------
    args : argparse.Namespace
        Options added by :func:`add_arguments`.
    parser : argparse.ArgumentParser
        Used to report unusable options (exit code 2).

    Returns
    -------
    int
        0, or 1 when an accuracy check failed (never because of a speed target).
    """
    # Checked before minutes of measuring, not after.
    if args.plot:
        try:
            _optional.require("matplotlib", needed_by="--plot", extra="bench")
        except ImportError as exc:
            parser.error(str(exc))
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        reason = _unwritable_reason(path) if path else None
        if reason is not None:
            parser.error(f"{option} {path}: {reason}")
    results = run(config_from_args(args))
    print(format_report(results), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(_json_safe(results), fh, indent=1, allow_nan=False)
            fh.write("\n")
        print(f"\nwrote {args.json}")
    if args.plot:
        write_plot(results, args.plot)
        print(f"wrote {args.plot}")
    return 0 if results["checks_passed"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python bench/run.py`` (``dpo-fast bench`` takes the same options).

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status.
    """
    parser = argparse.ArgumentParser(
        prog="dpo-fast bench",
        description="Benchmark dpo_fast against NumPy, pure Python, PyTorch and the memory "
                    "bandwidth bound.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_from_args(args, parser)


if __name__ == "__main__":
    sys.exit(main())
