"""The OpenMP runtime at process level: forked children and thread-creation limits.

libgomp is not fork-safe, so a forked child of a process that started an OpenMP team runs
serially (it used to hang); under a memory limit too tight for thread stacks a call runs on
fewer threads (libgomp used to end the process with status 1).

Each scenario runs in its own interpreter (the pytest process has its own threads and OpenMP
state) and in a new session, killed as a group if it hangs, so that a hung forked grandchild
does not outlive the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")

TIMEOUT = 120  # seconds for a whole scenario; the work itself takes well under one

# Shared by every scenario: inputs large enough for the threaded paths (preference_loss
# >= 32,768 rows, sequence_logps / _grad >= 65,536 logits) and a fingerprint of every output.
PRELUDE = r"""
import multiprocessing, os, signal, sys, time, warnings
import numpy as np
import dpo_fast
from dpo_fast import _threads

# Python 3.12+ warns about fork() in a process with threads: that is the situation tested.
warnings.filterwarnings("ignore", message=".*multi-threaded.*", category=DeprecationWarning)
CHILD_TIMEOUT = 45

rng = np.random.default_rng(2024)
PAIRS = [rng.normal(-60.0, 15.0, 100_000) for _ in range(4)]
LOGITS = rng.normal(size=(4, 64, 512)).astype(np.float32)  # 131,072 logits
LABELS = rng.integers(0, 512, (4, 64))


def fingerprint(n_threads):
    loss = dpo_fast.preference_loss(*PAIRS, beta=0.1, reduction="none", compute_grad=True,
                                    n_threads=n_threads)
    # A list of loss types runs the general kernel; aot its sorted-term path.
    mixed = dpo_fast.preference_loss(*PAIRS, beta=0.1, loss_type=["sigmoid", "ipo"],
                                     n_threads=n_threads)
    aot = dpo_fast.preference_loss(*PAIRS, beta=0.1, loss_type="aot", n_threads=n_threads)
    logps = dpo_fast.sequence_logps(LOGITS, LABELS, return_entropy=True, n_threads=n_threads)
    grad = dpo_fast.sequence_logps_grad(LOGITS, LABELS, np.ones(4), n_threads=n_threads)
    arrays = (loss.loss, loss.chosen_rewards, loss.rejected_rewards, loss.grad_chosen,
              loss.grad_rejected, logps.logps, logps.logsumexp, logps.entropy, grad)
    return (b"".join(a.tobytes() for a in arrays), mixed.loss.hex(), aot.loss.hex(),
            sorted((k, v.hex()) for k, v in mixed.metrics.items()))


def in_child():
    return [fingerprint(None), fingerprint(2)], _threads.resolve_n_threads(2, 10**6)


def run_forked(label, expected, expected_threads):
    pid = os.fork()
    if pid == 0:
        try:
            prints, threads = in_child()
            code = 0 if prints == [expected] * 2 and threads == expected_threads else 3
        except BaseException:
            code = 4
        os._exit(code)
    deadline = time.monotonic() + CHILD_TIMEOUT
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            if code:
                sys.exit(f"{label}: child exited with {code} (3: other results or threads)")
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    sys.exit(f"{label}: child hung for {CHILD_TIMEOUT} s")


def run_pool(label, expected, expected_threads):
    with multiprocessing.get_context("fork").Pool(1) as pool:
        try:
            prints, threads = pool.apply_async(in_child).get(CHILD_TIMEOUT)
        except multiprocessing.TimeoutError:
            pool.terminate()
            sys.exit(f"{label}: pool worker hung for {CHILD_TIMEOUT} s")
    if prints != [expected] * 2 or threads != expected_threads:
        sys.exit(f"{label}: other results or threads ({threads}) in the pool worker")
"""


def run_isolated(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``args`` in a new session; a hang fails the test (the whole session is killed)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and any child it forked
        proc.communicate()
        pytest.fail(f"hung for {TIMEOUT} s")
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {out}\nstderr: {err}"
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def run_scenario(body: str) -> subprocess.CompletedProcess:
    """PRELUDE + body in a fresh interpreter."""
    return run_isolated([sys.executable, "-c", PRELUDE + textwrap.dedent(body)])


def test_forked_children_after_parallel_calls_return_the_same_bits():
    """The parent starts the OpenMP team (n_threads=2 on parallel-sized inputs), then forks:
    children (os.fork, a multiprocessing 'fork' pool) return, run on one thread whatever
    n_threads says, and give the parent's bits."""
    result = run_scenario("""
        expected = fingerprint(2)
        assert fingerprint(1) == expected and fingerprint(None) == expected
        run_forked("os.fork", expected, 1)
        run_pool("fork pool", expected, 1)
        # The parent keeps its threads, and a grandchild is serial too.
        assert fingerprint(2) == expected
        assert _threads.resolve_n_threads(2, 10**6) == 2
        pid = os.fork()
        if pid == 0:
            run_forked("grandchild", expected, 1)
            os._exit(0)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, "grandchild failed"
        print("ok")
    """)
    assert result.stdout.strip() == "ok"


def test_fork_of_a_parent_without_a_team_keeps_threads():
    """A parent that never ran a threaded call (a forkserver, which imports the main module
    and so dpo_fast; a script that forks first) has no OpenMP team to break: its children
    keep their threads, and give the same bits."""
    result = run_scenario("""
        expected = fingerprint(1)  # serial in the parent: no OpenMP team started
        run_forked("os.fork", expected, 2)
        run_pool("fork pool", expected, 2)
        print("ok")
    """)
    assert result.stdout.strip() == "ok"


def test_explicit_threads_are_capped_in_a_forked_child():
    """n_threads=k > 1 resolves to 1 in a child of a parent with a team; None too."""
    result = run_scenario("""
        fingerprint(2)
        pid = os.fork()
        if pid == 0:
            ok = (_threads.resolve_n_threads(None, 10**6) == 1
                  and _threads.resolve_n_threads(64, 10**6) == 1
                  and _threads.resolve_n_threads(2, 10**6, 1 << 16) == 1)
            os._exit(0 if ok else 3)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        print("ok")
    """)
    assert result.stdout.strip() == "ok"


FORKSERVER_SCRIPT = PRELUDE + r"""
def in_worker():
    return fingerprint(None), _threads.resolve_n_threads(2, 10**6)


if __name__ == "__main__":
    expected = fingerprint(2)
    with multiprocessing.get_context("forkserver").Pool(1) as pool:
        prints, threads = pool.apply_async(in_worker).get(CHILD_TIMEOUT)
    assert prints == expected, "other results in the forkserver worker"
    print(threads)
"""


def test_forkserver_workers_keep_their_threads(tmp_path):
    """The remedy the README gives: forkserver workers are forked from a server that ran no
    threaded call (it imports the main module, hence dpo_fast), so they keep their threads."""
    script = tmp_path / "forkserver_main.py"
    script.write_text(FORKSERVER_SCRIPT)
    assert run_isolated([sys.executable, str(script)], cwd=tmp_path).stdout.strip() == "2"


# ------------------------------------------------------------ thread-creation limits

# libgomp ends the process (exit 1, "Thread creation failed") when it cannot create a team
# thread. Under an address-space or data limit too tight for one more thread stack, dpo_fast
# runs the call on fewer threads instead. The limit is set in the script, right before the
# call, rather than in a preexec_fn: the interpreter's and NumPy's footprint varies between
# machines, and this way the headroom is exactly known (the kernel enforces both alike).
# OMP_STACKSIZE=8M (libgomp's usual default) keeps the stack size independent of the caller's
# environment.
LIMIT_ENV = {**os.environ, "OMP_STACKSIZE": "8M"}
LIMIT_SCRIPT = PRELUDE + r"""
import hashlib, resource
which = getattr(resource, sys.argv[1])
field = {"RLIMIT_AS": 0, "RLIMIT_DATA": 5}[sys.argv[1]]  # VmSize / data pages in statm
# Outputs allocated up front: under the limit the calls themselves allocate little.
OUT = {k: np.empty(100_000) for k in ("losses", "chosen_rewards", "rejected_rewards",
                                      "grad_chosen", "grad_rejected")}
GRAD = np.empty_like(LOGITS)


def digest(n_threads):
    loss = dpo_fast.preference_loss(*PAIRS, beta=0.1, reduction="none", compute_grad=True,
                                    n_threads=n_threads, out=OUT)
    logps = dpo_fast.sequence_logps(LOGITS, LABELS, n_threads=n_threads)
    dpo_fast.sequence_logps_grad(LOGITS, LABELS, np.ones(4), n_threads=n_threads, out=GRAD)
    parts = [*OUT.values(), GRAD, logps.logps, logps.logsumexp]
    return [hashlib.sha256(memoryview(a)).hexdigest() for a in parts], loss.metrics


expected = digest(1)  # no OpenMP team yet
used = int(open("/proc/self/statm").read().split()[field]) * resource.getpagesize()
headroom = int(sys.argv[2]) << 20
resource.setrlimit(which, (used + headroom, resource.getrlimit(which)[1]))
threads = _threads.resolve_n_threads(2, 10**6)
assert digest(2) == expected and digest(None) == expected
print(threads)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
@pytest.mark.parametrize("limit", ["RLIMIT_AS", "RLIMIT_DATA"])
def test_thread_stacks_beyond_a_memory_limit_fall_back_to_one_thread(limit):
    """4 MiB of headroom cannot hold a thread stack (8 MiB by default): the calls run on one
    thread and give the serial bits, instead of libgomp ending the process with status 1."""
    result = run_isolated([sys.executable, "-c", LIMIT_SCRIPT, limit, "4"], env=LIMIT_ENV)
    assert result.stdout.strip() == "1"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_a_memory_limit_with_room_for_the_stacks_keeps_the_threads():
    """256 MiB of headroom: the fallback does not take threads away needlessly."""
    result = run_isolated([sys.executable, "-c", LIMIT_SCRIPT, "RLIMIT_AS", "256"], env=LIMIT_ENV)
    assert result.stdout.strip() == "2"
