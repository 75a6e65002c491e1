"""Concurrency (issue 7): the API called from many Python threads at once.

* 8 Python threads call every compiled entry point at the same time (preference_loss through
  the plain, general and sorted kernel paths in float32 and float64, dpo_loss's list fast path
  and its array path, sequence_logps and sequence_logps_grad) on shared read-only inputs with
  separate outputs and different n_threads: every result equals the single-threaded one bit
  for bit, and the shared inputs are unchanged.
* The kernels release the GIL: two threads each running one large call (n_threads=1) are
  inside the library at the same time. Each thread measures its call's [start, end] with
  time.perf_counter and the intervals must overlap; meanwhile a third, pure-Python thread
  ticks every millisecond and must never pause for half of the shorter call. (Overlapping
  intervals alone do not prove it: the GIL changes hands at the bytecodes around a call, so
  even two GIL-holding calls can have overlapping [start, end]; a thread that holds the GIL
  in C for the whole kernel stops every other Python thread for that long, which is what
  the probe sees. A control test runs the same measurement on a C call that holds the GIL.)
  None of this is a speed assertion: on a busy machine the calls may be slow.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest
from test_threads_simd import fingerprint

from dpo_fast import _threads, dpo_loss, preference_loss, sequence_logps, sequence_logps_grad

N_PYTHON_THREADS = 8
ROUNDS = 3
PARALLEL_N = _threads.PARALLEL_MIN_ROWS * 3 + 17  # parallel-sized, not a multiple of a chunk
SMALL_N = 1000


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@pytest.fixture(scope="module")
def shared():
    """Read-only inputs shared by every thread."""
    rng = np.random.default_rng(7)
    big = [_readonly(rng.normal(-60.0, 8.0, PARALLEL_N)) for _ in range(4)]
    small = [_readonly(rng.normal(-30.0, 5.0, SMALL_N)) for _ in range(4)]
    return {
        "big": big,
        "big32": [_readonly(a.astype(np.float32)) for a in big],
        "small": small,
        "lengths": _readonly(rng.integers(1, 300, PARALLEL_N).astype(np.float64)),
        "rejected_lengths": _readonly(rng.integers(1, 300, PARALLEL_N).astype(np.float64)),
        "weights": _readonly(rng.uniform(0.0, 2.0, PARALLEL_N)),
        "lists": [a.tolist() for a in small[:4]],
        "logits": _readonly(rng.normal(size=(4, 96, 512)).astype(np.float32)),
        "labels": _readonly(rng.integers(0, 512, (4, 96))),
        "mask": _readonly(rng.random((4, 96)) < 0.8),
        "upstream": _readonly(rng.normal(size=4)),
    }


def _calls(data):
    """name -> f(n_threads) returning a comparable fingerprint of the result (with its own
    freshly allocated outputs, or preallocated ones passed as out=)."""
    big, big32 = data["big"], data["big32"]

    def pref(arrays, **kw):
        def run(n_threads):
            dtype = arrays[0].dtype
            out = {key: np.empty(arrays[0].shape[0], dtype) for key in
                   ("losses", "chosen_rewards", "rejected_rewards", "grad_chosen",
                    "grad_rejected")}
            result = preference_loss(*arrays, compute_grad=True, n_threads=n_threads, out=out,
                                     **kw)
            assert all(getattr(result, key) is out[key] for key in out)
            return fingerprint(result)
        return run

    def seed_loss(args):
        def run(n_threads):  # dpo_loss takes no n_threads (it uses every CPU)
            result = dpo_loss(*args, 0.3)
            return (result["loss"], tuple(result["chosen_rewards"]),
                    tuple(result["rejected_rewards"]))
        return run

    def logps(n_threads):
        result = sequence_logps(data["logits"], data["labels"], mask=data["mask"],
                                return_token_logps=True, return_entropy=True,
                                n_threads=n_threads)
        return (result.logps.tobytes(), result.token_logps.tobytes(),
                result.entropy.tobytes(), result.logsumexp.tobytes(), result.token_accuracy)

    def logps_grad(n_threads):
        grad = sequence_logps_grad(data["logits"], data["labels"], data["upstream"],
                                   mask=data["mask"], average=True, n_threads=n_threads)
        return grad.tobytes()

    return {
        "sigmoid_f64": pref(big, beta=0.1),
        "sigmoid_f32": pref(big32, beta=0.1, label_smoothing=0.1),
        "hinge_small": pref(data["small"], beta=0.5, loss_type="hinge"),
        "ipo_lengths": pref(big, beta=0.2, loss_type="ipo", chosen_lengths=data["lengths"],
                            rejected_lengths=data["rejected_lengths"]),
        "rpo_weights_fkl": pref(big, beta=0.3, loss_type=["sigmoid", "sft"],
                                loss_weights=[1.0, 0.5], chosen_lengths=data["lengths"],
                                weights=data["weights"], f_divergence_type="forward_kl"),
        "aot_f32": pref(big32, beta=0.5, loss_type="aot"),
        "aot_unpaired": pref(big, beta=0.5, loss_type="aot_unpaired", label_smoothing=0.2),
        "simpo": pref(big[:2], beta=2.0, loss_type="simpo", chosen_lengths=data["lengths"],
                      rejected_lengths=data["rejected_lengths"]),
        "dpo_loss_lists": seed_loss(data["lists"]),
        "dpo_loss_arrays": seed_loss(big),
        "sequence_logps": logps,
        "sequence_logps_grad": logps_grad,
    }


def test_eight_threads_give_the_single_threaded_bits(shared):
    """8 Python threads x every call x several n_threads, all at once: bit-identical to the
    serial results; the shared inputs are unchanged."""
    calls = _calls(shared)
    expected = {name: call(1) for name, call in calls.items()}
    before = {key: (value.tobytes() if isinstance(value, np.ndarray) else
                    [v.tobytes() if isinstance(v, np.ndarray) else repr(v) for v in value])
              for key, value in shared.items()}
    thread_counts = [None, 1, 2, 3, 4]
    names = sorted(calls)
    barrier = threading.Barrier(N_PYTHON_THREADS)
    failures: list[str] = []
    done = [0] * N_PYTHON_THREADS

    def worker(index):
        barrier.wait()
        for round_ in range(ROUNDS):
            # Every thread takes the calls in its own order, with its own n_threads.
            order = names[index % len(names):] + names[:index % len(names)]
            if (index + round_) % 2:
                order.reverse()
            for position, name in enumerate(order):
                n_threads = thread_counts[(index + round_ + position) % len(thread_counts)]
                try:
                    got = calls[name](n_threads)
                except Exception as exc:  # pragma: no cover - reported below
                    failures.append(f"thread {index} {name} n_threads={n_threads}: {exc!r}")
                    continue
                if got != expected[name]:
                    failures.append(f"thread {index} {name} n_threads={n_threads}: "
                                    "result differs from the serial one")
                done[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(N_PYTHON_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not any(thread.is_alive() for thread in threads), "a worker hung"
    assert not failures, "\n".join(failures[:20])
    assert done == [ROUNDS * len(calls)] * N_PYTHON_THREADS
    after = {key: (value.tobytes() if isinstance(value, np.ndarray) else
                   [v.tobytes() if isinstance(v, np.ndarray) else repr(v) for v in value])
             for key, value in shared.items()}
    assert after == before, "a shared input was written"


def test_threads_sharing_one_out_buffer_set_per_thread_do_not_interfere(shared):
    """Each thread writes its own preallocated outputs, many times over, while the others do
    the same on theirs: every buffer ends with exactly the serial result."""
    big = shared["big"]
    serial = preference_loss(*big, beta=0.1, compute_grad=True, n_threads=1)
    outs = [{key: np.full(PARALLEL_N, np.nan) for key in
             ("losses", "chosen_rewards", "rejected_rewards", "grad_chosen", "grad_rejected")}
            for _ in range(N_PYTHON_THREADS)]
    barrier = threading.Barrier(N_PYTHON_THREADS)
    errors: list[BaseException] = []

    def worker(index):
        barrier.wait()
        try:
            for _ in range(4):
                preference_loss(*big, beta=0.1, compute_grad=True, out=outs[index],
                                n_threads=1 + index % 3)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(N_PYTHON_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors
    for out in outs:
        for key, array in out.items():
            assert array.tobytes() == getattr(serial, key).tobytes(), key


# ---------------------------------------------------------------------- the GIL is released

GIL_N = 4_000_000
ATTEMPTS = 3


def _concurrent_calls(call):
    """Two threads start call() together while a third, pure-Python thread ticks (appends
    perf_counter, sleeps 1 ms). Returns the two calls' [start, end] intervals (perf_counter,
    taken inside each thread around its call) and the probe's tick times."""
    barrier = threading.Barrier(3)
    intervals: list[tuple[float, float] | None] = [None, None]
    ticks: list[float] = []
    finished = threading.Event()
    errors: list[BaseException] = []

    def worker(index):
        barrier.wait()
        start = time.perf_counter()
        try:
            call()
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)
        intervals[index] = (start, time.perf_counter())

    def probe():
        barrier.wait()
        while not finished.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    prober = threading.Thread(target=probe)
    for thread in [prober, *threads]:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    finished.set()
    prober.join(timeout=60)
    assert not errors, errors
    return intervals, ticks


def _overlap(intervals):
    """Length of the time the intervals have in common (<= 0: they do not overlap)."""
    return min(end for _, end in intervals) - max(start for start, _ in intervals)


def _longest_pause(intervals, ticks):
    """The longest time the pure-Python probe did not run while a call was in flight."""
    first = min(start for start, _ in intervals)
    last = max(end for _, end in intervals)
    inside = [first, *(t for t in ticks if first < t < last), last]
    return max(b - a for a, b in zip(inside, inside[1:]))


def _measure(call):
    """[(overlap, shortest call, longest probe pause)] of up to ATTEMPTS runs, stopping at the
    first that shows the kernels running without the GIL."""
    call()  # warm up: first-touch page faults, the OpenMP pool
    history = []
    for _ in range(ATTEMPTS):
        intervals, ticks = _concurrent_calls(call)
        shortest = min(end - start for start, end in intervals)
        history.append((_overlap(intervals), shortest, _longest_pause(intervals, ticks)))
        if _released(history[-1]):
            break
    return history


def _released(entry):
    """The calls overlapped and the probe never stopped for half of the shorter call (a
    kernel holding the GIL stops it for the whole kernel)."""
    overlap, shortest, pause = entry
    return overlap > 0 and pause < 0.5 * shortest


@pytest.fixture(scope="module")
def gil_inputs():
    rng = np.random.default_rng(11)
    return {
        "pairs": [_readonly(rng.normal(-50.0, 5.0, GIL_N)) for _ in range(4)],
        # 256 MB of float32 logits: a single-threaded pass takes ~0.1 s or more.
        "logits": _readonly(rng.normal(size=(16, 1024, 4096)).astype(np.float32)),
        "labels": _readonly(rng.integers(0, 4096, (16, 1024))),
    }


GIL_CALLS = {
    "preference_loss": lambda d: preference_loss(
        *d["pairs"], beta=0.1, compute_grad=True, loss_type=["sigmoid", "ipo", "discopop"],
        n_threads=1),
    "preference_loss_plain": lambda d: preference_loss(*d["pairs"], beta=0.1, n_threads=1),
    "sequence_logps": lambda d: sequence_logps(d["logits"], d["labels"], return_entropy=True,
                                               n_threads=1),
    "sequence_logps_grad": lambda d: sequence_logps_grad(d["logits"], d["labels"], 1.0,
                                                         n_threads=1),
}


@pytest.mark.parametrize("entry", sorted(GIL_CALLS))
def test_kernels_release_the_gil(gil_inputs, entry):
    """Two threads, one large call each (n_threads=1): their [start, end] intervals overlap,
    and a third, pure-Python thread keeps running meanwhile (it never pauses for half of the
    shorter call). Up to three attempts on a busy machine; the control test below shows that
    a call holding the GIL fails the check."""
    history = _measure(lambda: GIL_CALLS[entry](gil_inputs))
    line = f"GIL {entry}: " + "; ".join(
        f"overlap {o * 1e3:.1f} ms, shorter call {c * 1e3:.1f} ms, longest probe pause "
        f"{p * 1e3:.1f} ms" for o, c, p in history)
    print(line)
    stats = os.environ.get("DPO_FAST_CONCURRENCY_STATS")
    if stats:
        with open(stats, "a") as fh:
            fh.write(line + "\n")
    assert _released(history[-1]), f"{entry}: the kernels did not run without the GIL: {history}"


@pytest.mark.skipif(not getattr(sys, "_is_gil_enabled", lambda: True)(),
                    reason="free-threaded interpreter: there is no GIL to hold")
def test_the_measurement_detects_a_call_that_holds_the_gil():
    """Control: the same measurement on a C call that keeps the GIL (sum over a range) never
    passes, so the test above cannot pass by accident."""
    history = _measure(lambda: sum(range(6 * 10**6)))
    stats = os.environ.get("DPO_FAST_CONCURRENCY_STATS")
    if stats:
        with open(stats, "a") as fh:
            fh.write("control (GIL held): " + "; ".join(
                f"overlap {o * 1e3:.1f} ms, shorter call {c * 1e3:.1f} ms, longest probe "
                f"pause {p * 1e3:.1f} ms" for o, c, p in history) + "\n")
    assert not any(_released(entry) for entry in history), history
