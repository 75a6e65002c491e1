"""The log-probs section of ``dpo-fast bench``: ``sequence_logps`` against NumPy and PyTorch
CPU, time and extra peak memory (``python bench/bench_logps.py`` runs it alone; see
bench/README-logps.md).

What is compared, per shape (logits float32, labels uniform in [0, V), a random mask keeping
~64% of the positions):

forward (per-sequence sums of the label log-probs over unmasked positions)
    ``dpo_fast``       dpo_fast.sequence_logps(logits, labels, mask=mask), all CPUs
    ``dpo_fast 1thr``  the same with n_threads=1
    ``numpy``          :func:`.baselines.numpy_logps` (log_softmax in NumPy, then a gather)
    ``torch``          :func:`.baselines.torch_logps` (log_softmax + gather, masked sum)
    ``torch lse``      :func:`.baselines.torch_lse_logps` (logsumexp one sequence at a time)
forward + backward of sum(logps), logits a leaf tensor that requires grad
    ``dpo_fast.torch`` dpo_fast.torch.sequence_logps(...).logps.sum().backward()
    ``torch``          the log_softmax + gather form above, .sum().backward()

Columns: median wall time of ``repeats`` calls after one warm-up call; extra peak memory (below);
the largest absolute error of the per-sequence sums (``seq err``) and of the per-token
log-probs (``tok err``) against a float64 NumPy reference computed from the same float32
logits; the speed-up over ``torch``.

Extra peak memory is measured two ways, one call each, after the timing: ``peak RSS`` (VmHWM
after the call minus VmRSS just before it, the high-water mark reset first, with glibc's mmap
threshold at 128 KiB so that memory freed by one call cannot hide the next call's peak; the
timings run with the thresholds glibc settles on by itself in a loop) and ``traced`` (the
peak of tracemalloc, which sees NumPy's buffers but not PyTorch's).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import sys
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

import dpo_fast
from dpo_fast import logps as logps_module

from . import harness
from .baselines import float64_logps_reference, numpy_logps, torch_logps, torch_lse_logps
from .targets import (
    LOGPS_TARGET_ERROR,
    LOGPS_TARGET_MEMORY_SHARE,
    LOGPS_TARGET_SPEEDUP,
    LOGPS_TARGET_TRAIN_SPEEDUP,
)

__all__ = [
    "QUICK_SHAPES",
    "SHAPES",
    "LogpsConfig",
    "Row",
    "add_arguments",
    "bench_shape",
    "bench_threshold",
    "format_logps",
    "format_table",
    "main",
    "make_data",
    "malloc_mode",
    "measure_memory",
    "run_from_args",
    "run_logps",
]

SHAPES = {"big": (8, 512, 32000), "small": (4, 128, 8192)}
QUICK_SHAPES = {"tiny": (2, 64, 1024)}
KEEP = 0.64  # fraction of positions the mask keeps


@dataclass
class Row:
    """One measured implementation on one shape."""

    shape: str
    pass_: str            # "forward" or "forward+backward"
    name: str
    median_ms: float
    samples_ms: list[float]
    peak_rss_mb: float | None = None
    traced_mb: float | None = None
    seq_err: float | None = None
    tok_err: float | None = None
    speedup: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class LogpsConfig:
    """What the log-probs section measures.

    Attributes
    ----------
    shapes : dict of str to tuple of int
        ``{label: (B, T, V)}``.
    repeats : int
        Timed calls per row.
    with_numpy, with_torch : bool
        Measure the NumPy rows / the PyTorch rows (when torch is importable).
    """

    shapes: dict[str, tuple[int, int, int]] = field(default_factory=lambda: dict(SHAPES))
    repeats: int = 7
    with_numpy: bool = True
    with_torch: bool = True

    @classmethod
    def quick(cls) -> LogpsConfig:
        """The smoke configuration: one (2, 64, 1024) batch, 3 calls per row."""
        return cls(shapes=dict(QUICK_SHAPES), repeats=3)


# ------------------------------------------------------------------ memory


_LIBC = None


def malloc_mode(mode: str) -> bool:
    """Set glibc's malloc thresholds for timing or for measuring memory.

    glibc only (elsewhere a no-op returning False). "timing": the steady state glibc
    reaches by itself once large blocks have been freed (mmap threshold 32 MiB, trim
    threshold 64 MiB: freed arrays up to 32 MiB are reused, as in a training loop).
    "memory": every block above 128 KiB gets its own mmap and goes back to the system when
    freed, so that memory freed by one call cannot hide the next call's peak RSS.

    Parameters
    ----------
    mode : {"timing", "memory"}
        Which thresholds.

    Returns
    -------
    bool
        Whether they were set.
    """
    global _LIBC
    if not sys.platform.startswith("linux"):
        return False
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL(None)
        mmap_threshold, trim_threshold = ((32 << 20, 64 << 20) if mode == "timing"
                                          else (128 << 10, 128 << 10))
        ok = bool(_LIBC.mallopt(-3, mmap_threshold)  # M_MMAP_THRESHOLD
                  and _LIBC.mallopt(-1, trim_threshold))  # M_TRIM_THRESHOLD
        if mode == "memory":
            _LIBC.malloc_trim(0)  # hand back what the timing runs left in the heap
        return ok
    except (OSError, AttributeError):
        return False


def measure_memory(fn: Callable[[], Any], traced: bool) -> tuple[float | None, float | None]:
    """Extra peak memory of one call of ``fn``.

    Parameters
    ----------
    fn : callable
        The call.
    traced : bool
        Also measure the tracemalloc peak (a second call).

    Returns
    -------
    tuple
        ``(extra peak RSS in MB or None, tracemalloc peak in MB or None)``.
    """
    gc.collect()
    malloc_mode("memory")
    rss_mb = None
    if harness.reset_peak_rss():
        before = harness.status_kb("VmRSS")
        fn()
        after = harness.status_kb("VmHWM")
        if before is not None and after is not None:
            rss_mb = max(0, after - before) / 1024
    traced_mb = None
    if traced:
        gc.collect()
        tracemalloc.start()
        try:
            fn()
            traced_mb = tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()
    gc.collect()
    malloc_mode("timing")
    return rss_mb, traced_mb


def _time_calls(fn: Callable[[], Any], repeats: int) -> list[float]:
    return harness.time_interleaved({"fn": fn}, repeats)["fn"]


# ------------------------------------------------------------------ implementations


def make_data(shape: tuple[int, int, int], seed: int = 0):
    """float32 logits ~ N(0, 2^2), labels uniform, mask keeping ~64% (at least one per row).

    Parameters
    ----------
    shape : tuple of int
        ``(B, T, V)``.
    seed : int, default 0
        Seed.

    Returns
    -------
    tuple of numpy.ndarray
        ``(logits, labels, mask)``.
    """
    rng = np.random.default_rng(seed)
    b, t, v = shape
    logits = rng.standard_normal((b, t, v), dtype=np.float32)
    logits *= 2.0
    labels = rng.integers(0, v, size=(b, t))
    mask = rng.random((b, t)) < KEEP
    mask[:, 0] = True
    return logits, labels, mask


def _errors(tokens, sums, ref_tokens, ref_sums):
    tokens = np.asarray(tokens, dtype=np.float64)
    sums = np.asarray(sums, dtype=np.float64)
    return float(np.abs(sums - ref_sums).max()), float(np.abs(tokens - ref_tokens).max())


def bench_shape(label: str, shape: tuple[int, int, int], repeats: int, with_numpy: bool,
                torch: Any) -> list[Row]:
    """Every implementation on one shape.

    Parameters
    ----------
    label : str
        The shape's name in the report.
    shape : tuple of int
        ``(B, T, V)``.
    repeats : int
        Timed calls per row.
    with_numpy : bool
        Measure the NumPy row.
    torch : module or None
        torch, or None to leave its rows out.

    Returns
    -------
    list of Row
        Forward rows, then forward + backward rows (with torch).
    """
    logits, labels, mask = make_data(shape)
    ref_tokens, ref_sums = float64_logps_reference(logits, labels, mask)
    rows: list[Row] = []

    def add(pass_, name, fn, outputs, traced):
        harness.progress(f"logps {label} {pass_} {name}")
        samples = _time_calls(fn, repeats)
        rss, tr = measure_memory(fn, traced)
        seq_err, tok_err = (None, None) if outputs is None else _errors(*outputs, ref_tokens,
                                                                        ref_sums)
        rows.append(Row(shape=label, pass_=pass_, name=name,
                        median_ms=statistics.median(samples), samples_ms=samples,
                        peak_rss_mb=rss, traced_mb=tr, seq_err=seq_err, tok_err=tok_err))

    def ours(n_threads=None):
        return dpo_fast.sequence_logps(logits, labels, mask=mask, return_token_logps=True,
                                       n_threads=n_threads)

    result = ours()
    add("forward", "dpo_fast", ours, (result.token_logps, result.logps), traced=True)
    add("forward", "dpo_fast 1thr", lambda: ours(1),
        (result.token_logps, result.logps), traced=True)
    if with_numpy:
        add("forward", "numpy", lambda: numpy_logps(logits, labels, mask),
            numpy_logps(logits, labels, mask), traced=True)
    if torch is not None:
        t_logits = torch.from_numpy(logits)
        t_labels = torch.from_numpy(labels)
        t_mask = torch.from_numpy(mask)
        with torch.no_grad():
            add("forward", "torch", lambda: torch_logps(torch, t_logits, t_labels, t_mask),
                [a.numpy() for a in torch_logps(torch, t_logits, t_labels, t_mask)],
                traced=False)
            add("forward", "torch lse",
                lambda: torch_lse_logps(torch, t_logits, t_labels, t_mask),
                [a.numpy() for a in torch_lse_logps(torch, t_logits, t_labels, t_mask)],
                traced=False)
        rows.extend(_bench_training(label, torch, logits, labels, mask, repeats))
    for pass_ in ("forward", "forward+backward"):
        base = next((r for r in rows if r.pass_ == pass_ and r.name == "torch"), None)
        for row in rows:
            if base is not None and row.pass_ == pass_:
                row.speedup = base.median_ms / row.median_ms
    return rows


def _bench_training(label, torch, logits, labels, mask, repeats):
    import dpo_fast.torch as dt

    leaf = torch.from_numpy(logits.copy()).requires_grad_(True)
    t_labels = torch.from_numpy(labels)
    t_mask = torch.from_numpy(mask)
    rows = []

    def ours():
        out = dt.sequence_logps(leaf, t_labels, mask=t_mask)
        out.logps.sum().backward()
        leaf.grad = None
        return out

    def theirs():
        tokens, sums = torch_logps(torch, leaf, t_labels, t_mask)
        sums.sum().backward()
        leaf.grad = None
        return sums

    # Both gradients agree (float32 rounding only): checked once, not timed.
    out = dt.sequence_logps(leaf, t_labels, mask=t_mask)
    out.logps.sum().backward()
    ours_grad = leaf.grad
    leaf.grad = None
    torch_logps(torch, leaf, t_labels, t_mask)[1].sum().backward()
    grad_diff = float((ours_grad - leaf.grad).abs().max())
    leaf.grad = None
    del ours_grad

    for name, fn in (("dpo_fast.torch", ours), ("torch", theirs)):
        harness.progress(f"logps {label} forward+backward {name}")
        samples = _time_calls(fn, repeats)
        rss, _ = measure_memory(fn, traced=False)
        rows.append(Row(shape=label, pass_="forward+backward", name=name,
                        median_ms=statistics.median(samples), samples_ms=samples,
                        peak_rss_mb=rss, notes={"max |grad diff|": grad_diff}))
    return rows


def run_logps(config: LogpsConfig, torch: Any) -> dict[str, Any]:
    """Run the section.

    Parameters
    ----------
    config : LogpsConfig
        Shapes, repeats, which baselines.
    torch : module or None
        torch (None: no torch rows, whatever ``config.with_torch``).

    Returns
    -------
    dict
        ``config``, ``glibc_malloc_thresholds_set`` and ``rows`` (dicts of :class:`Row`).

    Notes
    -----
    On glibc this fixes the process's malloc thresholds (:func:`malloc_mode`) for good:
    glibc has no call that gives it back its dynamic ones. Run it in a process of its own
    when what follows measures memory.
    """
    fixed = malloc_mode("timing")
    torch = torch if config.with_torch else None
    rows: list[Row] = []
    for name, shape in config.shapes.items():
        rows += bench_shape(name, shape, config.repeats, config.with_numpy, torch)
    return {"config": {**asdict(config), "keep": KEEP}, "glibc_malloc_thresholds_set": fixed,
            "rows": [asdict(r) for r in rows]}


# ------------------------------------------------------------------ threshold


def bench_threshold(repeats: int) -> list[dict[str, Any]]:
    """Time 1 and 2 threads on growing inputs (V = 1024, all positions counted), with the
    library's one-thread cut-off disabled: where does the second thread start to pay?

    Parameters
    ----------
    repeats : int
        Timed calls per size (at least 51).

    Returns
    -------
    list of dict
        ``elements``, ``1 thread us``, ``2 threads us``, ``ratio`` per size.
    """
    saved = logps_module.PARALLEL_MIN_ELEMENTS
    logps_module.PARALLEL_MIN_ELEMENTS = 0
    out = []
    try:
        rng = np.random.default_rng(0)
        for log2 in range(12, 21):
            n = 2**log2
            v = 1024 if n >= 1024 else n
            logits = rng.standard_normal((1, n // v, v), dtype=np.float32)
            labels = rng.integers(0, v, size=(1, n // v))
            med = {}
            for threads in (1, 2):
                def call(logits=logits, labels=labels, threads=threads):
                    dpo_fast.sequence_logps(logits, labels, n_threads=threads)
                samples = _time_calls(call, max(repeats, 51))
                med[threads] = statistics.median(samples) * 1e3
            out.append({"elements": n, "1 thread us": med[1], "2 threads us": med[2],
                        "ratio": med[1] / med[2]})
    finally:
        logps_module.PARALLEL_MIN_ELEMENTS = saved
    return out


# ------------------------------------------------------------------ report


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def format_table(rows: Sequence[dict[str, Any]], shapes: dict[str, Sequence[int]]) -> str:
    """The section's tables, one per shape, each with its targets line.

    Parameters
    ----------
    rows : sequence of dict
        ``run_logps(...)["rows"]``.
    shapes : dict
        ``{label: (B, T, V)}``.

    Returns
    -------
    str
        The text.
    """
    lines = []
    for label, shape in shapes.items():
        selected = [r for r in rows if r["shape"] == label]
        if not selected:
            continue
        b, t, v = shape
        logits_mb = b * t * v * 4 / 2**20
        lines.append(f"\nshape {label}: B={b} T={t} V={v} float32 (logits {logits_mb:.0f} MB), "
                     f"{KEEP:.0%} of positions unmasked")
        lines.append(f"{'pass':<17} {'implementation':<15} {'median ms':>10} {'x torch':>8} "
                     f"{'peak RSS MB':>12} {'traced MB':>10} {'seq err':>9} {'tok err':>9}")
        for r in selected:
            lines.append(
                f"{r['pass_']:<17} {r['name']:<15} {r['median_ms']:>10.2f} "
                f"{_fmt(r['speedup'], '8.2f'):>8} "
                f"{_fmt(r['peak_rss_mb'], '12.1f'):>12} {_fmt(r['traced_mb'], '10.2f'):>10} "
                f"{_fmt(r['seq_err'], '9.1e'):>9} {_fmt(r['tok_err'], '9.1e'):>9}")
        ours = next((r for r in selected if r["name"] == "dpo_fast"), None)
        train = next((r for r in selected if r["name"] == "dpo_fast.torch"), None)
        if ours is not None:
            checks = []
            if ours["speedup"] is not None:
                checks.append(f"forward x torch {ours['speedup']:.1f} (target >= "
                              f"{LOGPS_TARGET_SPEEDUP:g})")
            if ours["peak_rss_mb"] is not None:
                checks.append(f"extra memory {ours['peak_rss_mb'] / logits_mb:.2%} of the "
                              f"logits (target < {LOGPS_TARGET_MEMORY_SHARE:.0%})")
            checks.append(f"error {ours['seq_err']:.1e} (target <= {LOGPS_TARGET_ERROR:g})")
            if train is not None and train["speedup"] is not None:
                checks.append(f"forward+backward x torch {train['speedup']:.1f} (target >= "
                              f"{LOGPS_TARGET_TRAIN_SPEEDUP:g}); max |grad diff| "
                              f"{train['notes']['max |grad diff|']:.1e}")
            lines.append("targets: " + "; ".join(checks))
    return "\n".join(lines)


def format_logps(section: dict[str, Any]) -> list[str]:
    """The report lines of the section in ``dpo-fast bench``.

    Parameters
    ----------
    section : dict
        What :func:`run_logps` returned.

    Returns
    -------
    list of str
        Title and one table per shape.
    """
    c = section["config"]
    return (["", f"Log-probs: sequence_logps vs NumPy and torch, median of {c['repeats']} "
             "calls per row (errors against float64)"]
            + format_table(section["rows"], c["shapes"]).splitlines())


def _machine(torch: Any) -> dict[str, Any]:
    """The script's machine line and JSON (its fields since the script was written)."""
    info = harness.machine_info(torch)
    out = {"python": info["python"], "numpy": info["numpy"], "dpo_fast": info["dpo_fast"],
           "simd": info["simd_level"], "openmp": info["openmp"], "cpus": info["cpu_count"],
           "platform": info["platform"], "processor": info["cpu_model"]}
    if torch is not None:
        out["torch"] = torch.__version__
        out["torch threads"] = torch.get_num_threads()
    return out


# ------------------------------------------------------------------ bench/bench_logps.py


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python bench/bench_logps.py``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The parser to extend.
    """
    parser.add_argument("--shapes", default="big,small",
                        help="comma-separated among: " + ", ".join([*SHAPES, *QUICK_SHAPES]))
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per row")
    parser.add_argument("--no-numpy", action="store_true", help="skip the NumPy rows")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    parser.add_argument("--threshold", action="store_true",
                        help="only time 1 vs 2 threads on small inputs")
    parser.add_argument("--json", metavar="PATH", help="save every number")


def run_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the section alone for parsed options (the script's output and JSON).

    Parameters
    ----------
    args : argparse.Namespace
        Options added by :func:`add_arguments`.
    parser : argparse.ArgumentParser
        Used to report unusable options (exit status 2).

    Returns
    -------
    int
        0.
    """
    if args.threshold:
        table = bench_threshold(args.repeats)
        print(f"{'elements':>9} {'1 thread us':>12} {'2 threads us':>13} {'ratio':>6}")
        for row in table:
            print(f"{row['elements']:>9} {row['1 thread us']:>12.1f} "
                  f"{row['2 threads us']:>13.1f} {row['ratio']:>6.2f}")
        return 0

    known = {**SHAPES, **QUICK_SHAPES}
    names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in names if s not in known]
    if unknown or args.repeats < 1:
        parser.error(f"unknown shapes {unknown}" if unknown else "--repeats must be >= 1")
    config = LogpsConfig(shapes={name: known[name] for name in names}, repeats=args.repeats,
                         with_numpy=not args.no_numpy, with_torch=not args.no_torch)
    torch = harness.load_torch(config.with_torch)[0]
    section = run_logps(config, torch)
    info = _machine(torch)
    info["glibc malloc thresholds set"] = section["glibc_malloc_thresholds_set"]
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print(format_table(section["rows"], config.shapes))
    if args.json:
        harness.write_json({"machine": info, "rows": section["rows"]}, args.json)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python bench/bench_logps.py``.

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
        description="Benchmark of dpo_fast.sequence_logps against NumPy and PyTorch CPU.")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv), parser)
