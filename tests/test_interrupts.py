"""Interrupts (issue 7): a KeyboardInterrupt during a large call leaves the process working.

A fresh interpreter (so the test runner is not disturbed) runs a large call (N = 2e7 pairs,
float32, gradients on; a (16, 1024, 4096) sequence_logps) and interrupts it a third of the way
in (sooner on a retry if the call won the race), several times in a row, three ways:
``_thread.interrupt_main()`` from another thread, a real SIGINT sent with ``os.kill``, and a
``signal.setitimer`` alarm whose handler raises KeyboardInterrupt; with one OpenMP thread and
with two (sequence_logps: every way with both). Each time:

* the call ends with KeyboardInterrupt (it is not swallowed), raised inside the API call (a
  dpo_fast frame is on its traceback) after the interrupt was sent: the kernels do not poll
  for signals, Python delivers it at the first bytecode after the kernel returns, so the wait
  is at most the rest of one kernel pass;
* afterwards the same call, serial and parallel, gives the uninterrupted result bit for bit,
  the inputs are unchanged and the OpenMP pool still works.

The child prints what it measured as JSON; the test checks it (and the numbers go to
docs/reliability.md: set ``$DPO_FAST_INTERRUPT_STATS`` to a file to keep them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import dpo_fast

CHILD = r"""
import _thread, hashlib, json, os, signal, sys, threading, time
import numpy as np
from dpo_fast import preference_loss, sequence_logps

ENTRY = sys.argv[1]
# A process started from a background job inherits SIGINT ignored, and Python then installs no
# handler: interrupt_main() and SIGINT would do nothing. Install the default one explicitly.
signal.signal(signal.SIGINT, signal.default_int_handler)
rng = np.random.default_rng(0)
if ENTRY == "preference_loss":
    data = [rng.standard_normal(20_000_000, dtype=np.float32) * 5 - 50 for _ in range(2)]
    def api(n_threads):
        return preference_loss(*data, beta=0.1, compute_grad=True, n_threads=n_threads)
    def digest(r):
        return hashlib.sha256(b"".join(
            getattr(r, k).tobytes() for k in ("losses", "chosen_rewards", "rejected_rewards",
                                              "grad_chosen", "grad_rejected"))
            + repr((r.loss, sorted(r.metrics.items()))).encode()).hexdigest()
else:
    data = [rng.standard_normal((16, 1024, 4096), dtype=np.float32),
            rng.integers(0, 4096, (16, 1024))]
    def api(n_threads):
        return sequence_logps(*data, return_token_logps=True, return_entropy=True,
                              n_threads=n_threads)
    def digest(r):
        return hashlib.sha256(r.logps.tobytes() + r.token_logps.tobytes()
                              + r.entropy.tobytes()).hexdigest()
inputs_digest = lambda: hashlib.sha256(b"".join(a.tobytes() for a in data)).hexdigest()
inputs_before = inputs_digest()

api(2)                                   # warm up (page faults, the OpenMP pool)
expected = digest(api(1))
timings = []
for _ in range(2):
    start = time.perf_counter()
    result = api(2)
    timings.append(time.perf_counter() - start)
    assert digest(result) == expected
    del result
duration = min(timings)

def raise_interrupt(signum, frame):
    raise KeyboardInterrupt

def interrupted_call(mode, n_threads):
    sent = []
    for attempt in range(5):
        delay = duration / (3 * 2**attempt)  # shorter each time the call was quicker
        timer = None
        if mode == "setitimer":
            signal.signal(signal.SIGALRM, raise_interrupt)
            call_start = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, delay)
            sent.append(call_start + delay)
        else:
            def send():
                sent.append(time.perf_counter())
                if mode == "interrupt_main":
                    _thread.interrupt_main()
                else:
                    os.kill(os.getpid(), signal.SIGINT)
            timer = threading.Timer(delay, send)
            call_start = time.perf_counter()
            timer.start()
        inside = False
        try:
            api(n_threads)
            interrupted = False
        except KeyboardInterrupt as exc:
            interrupted = True
            # Raised inside the API call (a frame of dpo_fast), not after it returned?
            tb = exc.__traceback__
            while tb is not None:
                inside |= "dpo_fast" in tb.tb_frame.f_code.co_filename
                tb = tb.tb_next
        raised = time.perf_counter()
        try:  # if the call won the race, the interrupt comes here: take it and try again
            if timer is None:
                signal.setitimer(signal.ITIMER_REAL, 0)
            else:
                timer.join()
            if not interrupted:
                time.sleep(0.1)
        except KeyboardInterrupt:
            pass
        if interrupted:
            break
    return {"mode": mode, "entry": ENTRY, "n_threads": n_threads, "call_s": duration,
            "interrupted": interrupted, "raised_inside_call": inside, "attempts": attempt + 1,
            "sent_after_start_s": sent[-1] - call_start,
            "raised_after_sent_s": raised - sent[-1],
            "after_serial_equal": digest(api(1)) == expected,
            "after_two_threads_equal": digest(api(2)) == expected,
            "inputs_unchanged": inputs_digest() == inputs_before}

MODES = [("interrupt_main", 1), ("sigint", 2), ("setitimer", 1)]
if ENTRY == "sequence_logps":  # cheaper: every way with both thread counts
    MODES += [("interrupt_main", 2), ("sigint", 1), ("setitimer", 2)]
reports = [interrupted_call(mode, n_threads) for mode, n_threads in MODES]
print(json.dumps(reports))
"""


def _run_child(entry):
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(dpo_fast.__file__))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), entry],
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT / setitimer are POSIX")
@pytest.mark.parametrize("entry", ["preference_loss", "sequence_logps"])
def test_keyboard_interrupt_during_a_large_call(entry):
    """Several interrupts in a row in one process (each way, with 1 and 2 OpenMP threads):
    each ends its call with KeyboardInterrupt raised inside the call, and every call after it
    gives the uninterrupted bits."""
    proc = _run_child(entry)
    assert proc.returncode == 0, f"child exited {proc.returncode}: {proc.stderr[-2000:]}"
    reports = json.loads(proc.stdout.strip().splitlines()[-1])
    stats = os.environ.get("DPO_FAST_INTERRUPT_STATS")
    if stats:
        with open(stats, "a") as fh:
            for report in reports:
                fh.write(json.dumps(report) + "\n")
    for report in reports:
        print(report)
        assert report["interrupted"], f"the call was never interrupted: {report}"
        assert report["raised_inside_call"], report
        assert report["sent_after_start_s"] > 0, report
        assert report["raised_after_sent_s"] >= 0, report
        assert report["after_serial_equal"], report
        assert report["after_two_threads_equal"], report
        assert report["inputs_unchanged"], report
