"""Benchmark of dpo_fast.sequence_logps against NumPy and PyTorch CPU (issue 5).

Run from a checkout after building (``pip install .`` or ``python setup.py build_ext
--inplace`` with ``PYTHONPATH=src``)::

    python bench/bench_logps.py                  # both shapes, ~1-2 minutes, ~3 GB of RAM
    python bench/bench_logps.py --shapes small --repeats 5
    python bench/bench_logps.py --json results.json
    python bench/bench_logps.py --threshold      # when does a second thread pay?

What is compared, per shape (logits float32, labels uniform in [0, V), a random mask keeping
~64% of the positions):

forward (per-sequence sums of the label log-probs over unmasked positions)
    ``dpo_fast``       dpo_fast.sequence_logps(logits, labels, mask=mask), all CPUs
    ``dpo_fast 1thr``  the same with n_threads=1
    ``numpy``          log_softmax written in NumPy (max, subtract, exp, sum, log), then
                       take_along_axis (a gather) and a masked sum
    ``torch``          torch.log_softmax(logits, -1).gather(-1, labels) and a masked sum
    ``torch lse``      the gathered logit minus torch.logsumexp, one sequence at a time (the
                       form TRL's selective_log_softmax uses for float32 to save memory)
forward + backward of sum(logps), logits a leaf tensor that requires grad
    ``dpo_fast.torch`` dpo_fast.torch.sequence_logps(...).logps.sum().backward()
    ``torch``          the log_softmax + gather form above, .sum().backward()

Columns: median wall time of ``--repeats`` calls after one warm-up call; extra peak memory
(see below); the largest absolute error of the per-sequence sums (``seq err``) and of the
per-token log-probs (``tok err``) against a float64 NumPy reference computed from the same
float32 logits; the speed-up over ``torch``.

Extra peak memory is measured two ways, one call each, after the timing:

* ``peak RSS``: the process's resident-set high-water mark (VmHWM in /proc/self/status) after
  the call minus the resident set (VmRSS) just before it, with the high-water mark reset
  first by writing 5 to /proc/self/clear_refs (Linux). It sees every allocator (NumPy's,
  PyTorch's, OpenMP stacks) but rounds to pages; it is what the machine has to provide.
  For this measurement glibc's mmap threshold is set to 128 KiB (mallopt), so that arrays
  freed by one call are returned to the system and cannot hide the next call's peak; the
  timings run with the thresholds glibc settles on by itself in a loop (32 MiB / 64 MiB).
* ``traced``: the peak of tracemalloc, which NumPy reports its array buffers to (PyTorch's
  allocator does not, so this column is only given for the NumPy-based rows).

For forward + backward, the gradient (one logits-sized array) is part of the extra memory of
every row; the target "< 1% of the logits" is about the forward.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

import dpo_fast
from dpo_fast import logps as logps_module

SHAPES = {"big": (8, 512, 32000), "small": (4, 128, 8192)}
KEEP = 0.64  # fraction of positions the mask keeps
TARGET_SPEEDUP = 5.0
TARGET_MEMORY_SHARE = 0.01
TARGET_ERROR = 1e-5
TARGET_TRAIN_SPEEDUP = 2.0


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


# ------------------------------------------------------------------ memory


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


_LIBC = None


def malloc_mode(mode: str) -> bool:
    """glibc only (elsewhere a no-op returning False). "timing": the steady state glibc
    reaches by itself once large blocks have been freed (mmap threshold 32 MiB, trim
    threshold 64 MiB: freed arrays up to 32 MiB are reused, as in a training loop).
    "memory": every block above 128 KiB gets its own mmap and goes back to the system when
    freed, so that memory freed by one call cannot hide the next call's peak RSS."""
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
    """(extra peak RSS in MB, tracemalloc peak in MB or None) of one call of fn."""
    gc.collect()
    malloc_mode("memory")
    rss_mb = None
    if _reset_peak_rss():
        before = _status_kb("VmRSS")
        fn()
        after = _status_kb("VmHWM")
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


def time_calls(fn: Callable[[], Any], repeats: int) -> list[float]:
    fn()  # warm-up: page-ins, OpenMP pool, THP compaction
    samples = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


# ------------------------------------------------------------------ implementations


def make_data(shape: tuple[int, int, int], seed: int = 0):
    """float32 logits ~ N(0, 2^2), labels uniform, mask keeping ~64% (at least one per row)."""
    rng = np.random.default_rng(seed)
    b, t, v = shape
    logits = rng.standard_normal((b, t, v), dtype=np.float32)
    logits *= 2.0
    labels = rng.integers(0, v, size=(b, t))
    mask = rng.random((b, t)) < KEEP
    mask[:, 0] = True
    return logits, labels, mask


def reference(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray):
    """float64 per-token log-probs and per-sequence sums, one sequence at a time."""
    tokens = np.zeros(labels.shape)
    for b in range(logits.shape[0]):
        x = logits[b].astype(np.float64)
        top = x.max(axis=-1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(x - top).sum(axis=-1))
        tokens[b] = np.take_along_axis(x, labels[b][:, None], axis=-1)[:, 0] - lse
    tokens *= mask
    return tokens, tokens.sum(axis=-1)


def numpy_logps(logits, labels, mask):
    """The plain NumPy implementation: log_softmax of the whole array, then a gather."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    tokens = np.take_along_axis(log_softmax, labels[..., None], axis=-1)[..., 0] * mask
    return tokens, tokens.sum(axis=-1)


def torch_logps(torch, logits, labels, mask):
    tokens = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    tokens = tokens * mask
    return tokens, tokens.sum(dim=-1)


def torch_lse_logps(torch, logits, labels, mask):
    """The gathered logit minus the log-sum-exp, the latter one sequence at a time."""
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    lse = torch.stack([torch.logsumexp(sequence, dim=-1) for sequence in logits])
    tokens = (picked - lse) * mask
    return tokens, tokens.sum(dim=-1)


def _errors(tokens, sums, ref_tokens, ref_sums):
    tokens = np.asarray(tokens, dtype=np.float64)
    sums = np.asarray(sums, dtype=np.float64)
    return float(np.abs(sums - ref_sums).max()), float(np.abs(tokens - ref_tokens).max())


def _import_torch(enabled: bool):
    if not enabled:
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch


def bench_shape(label: str, shape: tuple[int, int, int], repeats: int, with_numpy: bool,
                torch) -> list[Row]:
    logits, labels, mask = make_data(shape)
    ref_tokens, ref_sums = reference(logits, labels, mask)
    rows: list[Row] = []

    def add(pass_, name, fn, outputs, traced):
        samples = time_calls(fn, repeats)
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
        rows.extend(bench_training(label, torch, logits, labels, mask, repeats, ref_tokens,
                                   ref_sums))
    for pass_ in ("forward", "forward+backward"):
        base = next((r for r in rows if r.pass_ == pass_ and r.name == "torch"), None)
        for row in rows:
            if base is not None and row.pass_ == pass_:
                row.speedup = base.median_ms / row.median_ms
    return rows


def bench_training(label, torch, logits, labels, mask, repeats, ref_tokens, ref_sums):
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
        samples = time_calls(fn, repeats)
        rss, _ = measure_memory(fn, traced=False)
        rows.append(Row(shape=label, pass_="forward+backward", name=name,
                        median_ms=statistics.median(samples), samples_ms=samples,
                        peak_rss_mb=rss, notes={"max |grad diff|": grad_diff}))
    return rows


# ------------------------------------------------------------------ threshold


def bench_threshold(repeats: int) -> list[dict[str, Any]]:
    """Time 1 and 2 threads on growing inputs (V = 1024, all positions counted), with the
    library's one-thread cut-off disabled: where does the second thread start to pay?"""
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
                samples = time_calls(call, max(repeats, 51))
                med[threads] = statistics.median(samples) * 1e3
            out.append({"elements": n, "1 thread us": med[1], "2 threads us": med[2],
                        "ratio": med[1] / med[2]})
    finally:
        logps_module.PARALLEL_MIN_ELEMENTS = saved
    return out


# ------------------------------------------------------------------ report


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def format_table(rows: Sequence[Row], shapes: dict[str, tuple[int, int, int]]) -> str:
    lines = []
    for label, shape in shapes.items():
        selected = [r for r in rows if r.shape == label]
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
                f"{r.pass_:<17} {r.name:<15} {r.median_ms:>10.2f} {_fmt(r.speedup, '8.2f'):>8} "
                f"{_fmt(r.peak_rss_mb, '12.1f'):>12} {_fmt(r.traced_mb, '10.2f'):>10} "
                f"{_fmt(r.seq_err, '9.1e'):>9} {_fmt(r.tok_err, '9.1e'):>9}")
        ours = next((r for r in selected if r.name == "dpo_fast"), None)
        train = next((r for r in selected if r.name == "dpo_fast.torch"), None)
        if ours is not None:
            checks = []
            if ours.speedup is not None:
                checks.append(f"forward x torch {ours.speedup:.1f} (target >= "
                              f"{TARGET_SPEEDUP:g})")
            if ours.peak_rss_mb is not None:
                checks.append(f"extra memory {ours.peak_rss_mb / logits_mb:.2%} of the logits "
                              f"(target < {TARGET_MEMORY_SHARE:.0%})")
            checks.append(f"error {ours.seq_err:.1e} (target <= {TARGET_ERROR:g})")
            if train is not None and train.speedup is not None:
                checks.append(f"forward+backward x torch {train.speedup:.1f} (target >= "
                              f"{TARGET_TRAIN_SPEEDUP:g}); max |grad diff| "
                              f"{train.notes['max |grad diff|']:.1e}")
            lines.append("targets: " + "; ".join(checks))
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    info = {
        "python": platform.python_version(), "numpy": np.__version__,
        "dpo_fast": dpo_fast.__version__, "simd": dpo_fast.simd_level(),
        "openmp": dpo_fast.openmp_enabled(), "cpus": os.cpu_count(),
        "platform": platform.platform(), "processor": platform.processor(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options (the shape of dpo_fast.cli's Command.add_arguments)."""
    parser.add_argument("--shapes", default="big,small",
                        help="comma-separated among: " + ", ".join(SHAPES))
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per row")
    parser.add_argument("--no-numpy", action="store_true", help="skip the NumPy rows")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    parser.add_argument("--threshold", action="store_true",
                        help="only time 1 vs 2 threads on small inputs")
    parser.add_argument("--json", metavar="PATH", help="save every number")


def run_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run with parsed options; returns the exit status (dpo_fast.cli's Command.run)."""
    if args.threshold:
        table = bench_threshold(args.repeats)
        print(f"{'elements':>9} {'1 thread us':>12} {'2 threads us':>13} {'ratio':>6}")
        for row in table:
            print(f"{row['elements']:>9} {row['1 thread us']:>12.1f} "
                  f"{row['2 threads us']:>13.1f} {row['ratio']:>6.2f}")
        return 0

    names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in names if s not in SHAPES]
    if unknown or args.repeats < 1:
        parser.error(f"unknown shapes {unknown}" if unknown else "--repeats must be >= 1")
    fixed = malloc_mode("timing")
    torch = _import_torch(not args.no_torch)
    shapes = {name: SHAPES[name] for name in names}
    rows: list[Row] = []
    for name, shape in shapes.items():
        rows += bench_shape(name, shape, args.repeats, not args.no_numpy, torch)
    info = machine()
    info["glibc malloc thresholds set"] = fixed
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print(format_table(rows, shapes))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "rows": [asdict(r) for r in rows]}, fh, indent=1)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv), parser)


if __name__ == "__main__":
    sys.exit(main())
