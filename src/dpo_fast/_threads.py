"""How many threads a kernel call uses.

``n_threads=None`` means the CPUs this process may actually run on: the affinity mask
(``os.sched_getaffinity``, which taskset/numactl and container cpusets set), capped by a cgroup
CPU quota (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` in v1, as Docker/Kubernetes set) and by
``OMP_NUM_THREADS`` when it is set. Small inputs always run on one thread: below
``PARALLEL_MIN_ROWS`` the start-up of an OpenMP team (about 1 us warm, ~100 us after the pool
has slept, measured on a 2-core machine) costs more than the second core saves.

A ``fork()``ed child of a process that ran a threaded call runs every call on one thread,
whatever ``n_threads`` says (see ``_after_fork_in_child``), and under an address-space or data
limit (``ulimit -v`` / ``-d``) a call uses only as many threads as have room for their stacks
(see ``_fit_memory_limits``).
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import re

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

# Below this many rows a call stays on one thread. Measured on a 2-core machine (AMD EPYC,
# another process busy; float64 sigmoid, AVX-512, medians of 41): 16,384 rows take 53 us on
# one thread and 32 us on two (warm OpenMP pool), 32,768 rows 101 us and 52 us. Two threads
# already pay from two chunks when the pool is warm; the threshold sits at four chunks
# (~100 us of work) so that waking a pool that has gone to sleep (~100 us) cannot make a call
# slower than one thread.
PARALLEL_MIN_ROWS = 4 * 8192


@functools.lru_cache(maxsize=1)
def _cgroup_cpu_limit() -> int | None:
    """CPUs allowed by a cgroup quota, or None when there is no quota."""
    try:  # cgroup v2
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as fh:
            quota_us = int(fh.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as fh:
            period_us = int(fh.read())
        if quota_us > 0 and period_us > 0:
            return max(1, math.ceil(quota_us / period_us))
    except (OSError, ValueError):
        pass
    return None


def available_cpus() -> int:
    """Number of CPUs this process may use (affinity, cgroup quota, OMP_NUM_THREADS)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        count = min(count, limit)
    omp = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if omp.isdigit() and int(omp) > 0:
        count = min(count, int(omp))
    return max(1, count)


def validate_n_threads(n_threads: object) -> int | None:
    """Check the user's ``n_threads``: None or a positive int (never 0/negative: OpenMP
    aborts the process on those)."""
    if n_threads is None:
        return None
    if isinstance(n_threads, bool) or not isinstance(n_threads, numbers.Integral):
        raise ValueError(
            f"n_threads must be None or a positive integer, got {n_threads!r}")
    if n_threads < 1:
        raise ValueError(f"n_threads must be None or a positive integer, got {n_threads}")
    return int(n_threads)


# Explicit n_threads above this many per CPU are capped: they only add fork-join cost, and
# libgomp aborts the whole process when it cannot create thousands of threads (results do not
# depend on the thread count, so the cap changes nothing else).
MAX_THREADS_PER_CPU = 8


def cap_n_threads(n_threads: int) -> int:
    """``n_threads`` capped at MAX_THREADS_PER_CPU times the machine's CPU count."""
    return min(n_threads, MAX_THREADS_PER_CPU * (os.cpu_count() or 1))


# Fork safety: GNU libgomp keeps a team's threads in a pool owned by the thread that started
# it; fork() copies the pool's bookkeeping but not its threads, so a child's next multi-threaded
# region waits forever for them. n_threads=1 never uses the pool and results do not depend on
# the thread count, so such a child runs serially. Only children of a process that handed out
# more than one thread: every kernel call resolves its threads here, so the flag sees each team
# dpo_fast starts, and children of a process that never started one (a forkserver imports
# dpo_fast with the main module but runs no call) keep their threads. Not seen: a team started
# by another extension sharing the system libgomp.so.1 (source builds; wheels vendor a private
# copy); n_threads=1 in the child is the remedy there.
_team_started = False  # this process (or its forking ancestor) handed out > 1 thread
_serial_after_fork = False  # this process was forked after a team started


def _after_fork_in_child() -> None:
    global _serial_after_fork
    if _team_started:  # inherited from the parent: grandchildren stay serial too
        _serial_after_fork = True


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


# Thread-creation limits. libgomp ends the process (exit 1, "Thread creation failed") when
# pthread_create fails, so the failures that can be predicted are avoided here: under a finite
# RLIMIT_AS or RLIMIT_DATA each new thread needs its stack mapped, and /proc/self/statm gives
# the exact figures the kernel compares with the limit. RLIMIT_NPROC and cgroup pids limits are
# not checked: they count every thread of the user (root is exempt) or of the whole cgroup
# hierarchy, which a process cannot see reliably (PID namespaces); README documents them.
_STACK_SLACK = 64 << 10  # guard page(s) and rounding per thread stack
_MALLOC_MARGIN = 1 << 20  # libgomp's team bookkeeping, allocated before the threads
_STACKSIZE = re.compile(r"\s*(\d+)\s*([bkmg]?)\s*", re.IGNORECASE)


def _thread_stack_bytes() -> int:
    """An upper bound on the stack libgomp maps for each thread it creates."""
    for name in ("OMP_STACKSIZE", "GOMP_STACKSIZE"):  # libgomp's order; the unit defaults to K
        match = _STACKSIZE.fullmatch(os.environ.get(name, ""))
        if match and int(match[1]) > 0:
            return int(match[1]) << {"b": 0, "": 10, "k": 10, "m": 20, "g": 30}[match[2].lower()]
    # Otherwise glibc's default: RLIMIT_STACK as the process started (2 MiB if unlimited); the
    # current soft limit, and at least 8 MiB in case it was lowered since, bounds it.
    soft = resource.getrlimit(resource.RLIMIT_STACK)[0]
    return max(8 << 20, 0 if soft == resource.RLIM_INFINITY else soft)


def _fit_memory_limits(threads: int) -> int:
    """``threads``, or fewer (at least 1) when the stacks of ``threads - 1`` new threads would
    not fit under RLIMIT_AS / RLIMIT_DATA. Threads libgomp already keeps from an earlier call
    are counted as new: near the limit a call may run on fewer threads than it could."""
    if resource is None:
        return threads
    limits = [(soft, field) for soft, field in (
        (resource.getrlimit(resource.RLIMIT_AS)[0], 0),  # statm field 0: VmSize
        (resource.getrlimit(resource.RLIMIT_DATA)[0], 5),  # field 5: data + stack (>= VmData)
    ) if soft != resource.RLIM_INFINITY]
    if not limits:
        return threads
    try:
        with open("/proc/self/statm") as fh:
            pages = fh.read().split()
    except OSError:  # not Linux: no figure to compare with
        return threads
    per_thread = _thread_stack_bytes() + _STACK_SLACK
    for soft, field in limits:
        headroom = soft - int(pages[field]) * resource.getpagesize() - _MALLOC_MARGIN
        threads = min(threads, 1 + max(0, headroom) // per_thread)
    return threads


def resolve_n_threads(n_threads: int | None, n_rows: int,
                      min_rows: int = PARALLEL_MIN_ROWS) -> int:
    """Threads for a call over ``n_rows`` rows (or elements: ``min_rows`` is the caller's
    parallel threshold), given an already validated ``n_threads``. 1 in a forked child of a
    process that had started an OpenMP team, even for an explicit ``n_threads > 1``; fewer
    where thread stacks would exceed a memory limit."""
    global _team_started
    if n_rows < min_rows or _serial_after_fork:
        return 1
    threads = available_cpus() if n_threads is None else cap_n_threads(n_threads)
    if threads > 1:
        threads = _fit_memory_limits(threads)
    if threads > 1:
        _team_started = True  # before the kernel starts the team, so a fork in between sees it
    return threads
