"""Leaks (issue 7): repeated calls keep memory flat, with results and with raised errors.

Every compiled entry point is called 10**5 times on small inputs (results in one test, raised
errors in another: ValueError and TypeError from validation, from the kernels' NaN/inf check,
from out= and from dpo_loss's list fast path after its buffer was allocated) and 10**2 times
on large ones (again with results and with errors). After a warm-up, the growth over the
repetitions must stay under these bounds:

* Python allocations traced by ``tracemalloc`` (NumPy reports its array buffers there too):
  < 256 KiB for 10**5 small calls, < 1 MiB for 10**2 large ones;
* bytes held by C ``malloc`` (glibc ``mallinfo2``, where available; the kernels' own
  buffers come from malloc): < 256 KiB for 10**5 small calls, < 16 MiB for the large ones;
* resident set size (``/proc/self/statm``; skipped where there is no /proc): < 8 MiB for
  10**5 small calls, < 32 MiB for 10**2 large ones (a large call's outputs are 8-40 MB, so
  one leaked output per call would be gigabytes).

Under the sanitizer build (``$DPO_FAST_SANITIZED``, set by scripts/sanitize.sh) only
tracemalloc is read: ASan's allocator and quarantine are what RSS and malloc would show.

A leak of one small object per call (>= 24 bytes, 12,500 calls of each case) exceeds the
small-call bounds. The measured growths are printed (and appended to
``$DPO_FAST_LEAK_STATS`` when set) for docs/reliability.md.
"""

from __future__ import annotations

import ctypes
import gc
import mmap
import os
import sys
import tracemalloc

import numpy as np
import pytest

from dpo_fast import dpo_loss, preference_loss, sequence_logps, sequence_logps_grad

KIB, MIB = 1024, 1024 * 1024
SMALL_CALLS = 100_000
LARGE_CALLS = 100
SMALL_BOUNDS = {"tracemalloc": 256 * KIB, "malloc": 256 * KIB, "rss": 8 * MIB}
LARGE_BOUNDS = {"tracemalloc": 1 * MIB, "malloc": 16 * MIB, "rss": 32 * MIB}


# ------------------------------------------------------------------ memory readings


def _rss_bytes() -> int | None:
    """Resident set size from /proc/self/statm, or None without /proc."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * mmap.PAGESIZE
    except (OSError, IndexError, ValueError):
        return None


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _malloc_reader():
    """A function giving the bytes in use by malloc (glibc >= 2.33), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2

    def read() -> int:
        info = mallinfo2()
        return int(info.uordblks + info.hblkhd)  # heap chunks in use + mmapped chunks

    return read


# Under AddressSanitizer (scripts/sanitize.sh sets DPO_FAST_SANITIZED) freed memory waits in
# ASan's quarantine and malloc is ASan's: RSS and mallinfo measure the sanitizer, not
# dpo_fast, so only tracemalloc is read there.
SANITIZED = bool(os.environ.get("DPO_FAST_SANITIZED"))
_MALLOC = None if SANITIZED else _malloc_reader()


def _readings() -> dict[str, int]:
    gc.collect()
    values = {"tracemalloc": tracemalloc.get_traced_memory()[0]}
    rss = None if SANITIZED else _rss_bytes()
    if rss is not None:
        values["rss"] = rss
    if _MALLOC is not None:
        values["malloc"] = _MALLOC()
    return values


def _growth(cases, total_calls, warmup_rounds=3):
    """Run the cases round-robin `total_calls` times (after `warmup_rounds` rounds of
    warm-up) under tracemalloc; return the growth of each reading in bytes."""
    tracemalloc.start()
    try:
        for _ in range(warmup_rounds):
            for case in cases:
                case()
        before = _readings()
        rounds = -(-total_calls // len(cases))  # at least total_calls calls
        for _ in range(rounds):
            for case in cases:
                case()
        after = _readings()
    finally:
        tracemalloc.stop()
    return {key: after[key] - before[key] for key in before}, rounds * len(cases)


def _check(name, growth, calls, bounds):
    line = f"{name}: {calls} calls: " + ", ".join(
        f"{key} {growth[key] / KIB:+.1f} KiB (bound {bounds[key] / KIB:.0f} KiB)"
        for key in ("tracemalloc", "malloc", "rss") if key in growth)
    print(line)
    stats = os.environ.get("DPO_FAST_LEAK_STATS")
    if stats:
        with open(stats, "a") as fh:
            fh.write(line + "\n")
    for key, value in growth.items():
        assert value < bounds[key], f"{name}: {key} grew by {value} bytes: {line}"


def _raises(error, fn, *args, **kwargs):
    """A case that must raise `error` (checked on every call)."""
    def case():
        try:
            fn(*args, **kwargs)
        except error:
            return
        raise AssertionError(f"{fn.__name__} did not raise {error.__name__}")
    return case


# ------------------------------------------------------------------ small inputs


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(3)
    pairs = [rng.normal(-20.0, 3.0, 16) for _ in range(4)]
    nan_pairs = [a.copy() for a in pairs]
    nan_pairs[2][9] = np.nan
    lengths = rng.integers(1, 50, 16).astype(np.float64)
    logits = rng.normal(size=(2, 5, 11))
    labels = rng.integers(0, 11, (2, 5))
    bad_labels = labels.copy()
    bad_labels[1, 3] = 11
    nan_logits = logits.copy()
    nan_logits[0, 2, 4] = np.inf
    return {
        "pairs": pairs, "pairs32": [a.astype(np.float32) for a in pairs],
        "nan_pairs": nan_pairs, "lengths": lengths, "weights": rng.uniform(0, 2, 16),
        "lists3": [a[:3].tolist() for a in pairs], "lists40": [
            rng.normal(-20.0, 3.0, 40).tolist() for _ in range(4)],
        "logits": logits, "labels": labels, "bad_labels": bad_labels,
        "nan_logits": nan_logits, "mask": rng.random((2, 5)) < 0.7,
    }


def test_small_calls_with_results_keep_memory_flat(small):
    """10**5 small calls that return results, through every kernel path."""
    d = small
    out = {k: np.empty(16) for k in ("losses", "chosen_rewards", "rejected_rewards")}
    lse = sequence_logps(d["logits"], d["labels"]).logsumexp
    cases = [
        lambda: preference_loss(*d["pairs"], beta=0.1),
        lambda: preference_loss(*d["pairs32"], beta=0.1, compute_grad=True, reduction="none"),
        lambda: preference_loss(*d["pairs"], loss_type=["sigmoid", "sft"],
                                chosen_lengths=d["lengths"], weights=d["weights"],
                                f_divergence_type="js_divergence", compute_grad=True),
        lambda: preference_loss(*d["pairs"], loss_type="aot_unpaired", compute_grad=True),
        lambda: preference_loss(*[a.tolist() for a in d["pairs"][:2]], out=out),
        lambda: dpo_loss(*d["lists3"], 0.5),    # list fast path, stack buffer
        lambda: dpo_loss(*d["lists40"], 0.5),   # list fast path, malloc'd buffer
        lambda: dpo_loss(*d["pairs"], 0.5),     # array path
        lambda: sequence_logps(d["logits"], d["labels"], mask=d["mask"],
                               return_token_logps=True, return_entropy=True),
        lambda: sequence_logps_grad(d["logits"], d["labels"], 1.0, logsumexp=lse),
    ]
    growth, calls = _growth(cases, SMALL_CALLS)
    _check("small, results", growth, calls, SMALL_BOUNDS)


def test_small_calls_raising_errors_keep_memory_flat(small):
    """10**5 small calls that raise: every error path frees what it allocated."""
    d = small
    bad_list = list(d["lists40"][1])
    bad_list[37] = "x"                      # found after the fast path malloc'd its buffer
    nan_list = list(d["lists40"][3])
    nan_list[39] = float("nan")
    aliased = {"losses": d["pairs"][0]}
    cases = [
        _raises(ValueError, preference_loss, *d["nan_pairs"]),           # kernel's NaN check
        _raises(ValueError, preference_loss, *d["nan_pairs"], loss_type="aot",
                compute_grad=True),
        _raises(TypeError, preference_loss, d["pairs"][0].astype(complex), d["pairs"][1]),
        _raises(ValueError, preference_loss, *d["pairs"], beta=-1.0),
        _raises(ValueError, preference_loss, *d["pairs"], out=aliased),   # out= overlap
        _raises(TypeError, preference_loss, *d["pairs"],
                out={"losses": np.empty(16, np.float32)}),
        _raises(ValueError, preference_loss, *d["pairs"], loss_type="sigmoid_norm",
                chosen_lengths=d["lengths"], rejected_lengths=-d["lengths"]),
        _raises(TypeError, dpo_loss, d["lists40"][0], bad_list, *d["lists40"][2:], 0.1),
        _raises(ValueError, dpo_loss, *d["lists40"][:3], nan_list, 0.1),
        _raises(ValueError, sequence_logps, d["logits"], d["bad_labels"]),
        _raises(ValueError, sequence_logps, d["nan_logits"], d["labels"]),
        _raises(ValueError, sequence_logps_grad, d["nan_logits"], d["labels"], 1.0),
        _raises(TypeError, sequence_logps, d["logits"].astype(np.float16), d["labels"]),
    ]
    growth, calls = _growth(cases, SMALL_CALLS)
    _check("small, errors", growth, calls, SMALL_BOUNDS)


# ------------------------------------------------------------------ large inputs


@pytest.fixture(scope="module")
def large():
    rng = np.random.default_rng(4)
    n = 1_000_003
    pairs = [rng.normal(-60.0, 8.0, n) for _ in range(4)]
    nan_pairs = [a.copy() for a in pairs]
    nan_pairs[3][-2] = -np.inf  # found by the kernel's pass, after every output was written
    logits = rng.normal(size=(8, 256, 1024)).astype(np.float32)
    labels = rng.integers(0, 1024, (8, 256))
    nan_logits = logits.copy()
    nan_logits[7, 255, 1000] = np.nan
    return {"pairs": pairs, "nan_pairs": nan_pairs, "logits": logits, "labels": labels,
            "seed_pairs": [a[:100_003].copy() for a in pairs],
            "nan_logits": nan_logits, "lengths": rng.integers(1, 300, n).astype(np.float64)}


def test_large_calls_keep_memory_flat(large):
    """10**2 large calls (parallel-sized, 8-40 MB of outputs each; the cases in turn), with
    results and with errors raised after the kernel ran."""
    d = large
    cases = [
        lambda: preference_loss(*d["pairs"], compute_grad=True),
        lambda: preference_loss(*d["pairs"], loss_type=["sigmoid", "sft"],
                                chosen_lengths=d["lengths"], compute_grad=True),
        _raises(ValueError, preference_loss, *d["nan_pairs"], compute_grad=True),
        lambda: sequence_logps(d["logits"], d["labels"], return_token_logps=True,
                               return_entropy=True),
        lambda: sequence_logps_grad(d["logits"], d["labels"], 1.0),
        _raises(ValueError, sequence_logps, d["nan_logits"], d["labels"]),
        # 100,003 pairs: the array path, parallel-sized (a million would spend a second per
        # call making the rounded Python lists under tracemalloc).
        lambda: dpo_loss(*d["seed_pairs"], 0.1),
    ]
    growth, calls = _growth(cases, LARGE_CALLS, warmup_rounds=2)
    _check("large, results and errors", growth, calls, LARGE_BOUNDS)


def test_the_measurement_detects_leaks():
    """Control: a case leaking one small Python object per call, and one leaking 64 bytes of
    C malloc per call, exceed the small-call bounds within 20,000 calls."""
    kept: list[bytes] = []
    growth, _ = _growth([lambda: kept.append(bytes(64))], 20_000)
    assert growth["tracemalloc"] > SMALL_BOUNDS["tracemalloc"], growth
    kept.clear()
    if _MALLOC is None:
        pytest.skip("no mallinfo2 here (or a sanitizer build)")
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    pointers: list[int] = []
    growth, _ = _growth([lambda: pointers.append(libc.malloc(64))], 20_000)
    for pointer in pointers:
        libc.free(pointer)
    assert growth["malloc"] > SMALL_BOUNDS["malloc"], growth
