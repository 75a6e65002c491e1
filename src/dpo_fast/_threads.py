"""How many threads a kernel call uses.

``n_threads=None`` means the CPUs this process may actually run on: the affinity mask
(``os.sched_getaffinity``, which taskset/numactl and container cpusets set), capped by a cgroup
CPU quota (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` in v1, as Docker/Kubernetes set) and by
``OMP_NUM_THREADS`` when it is set. Small inputs always run on one thread: below
``PARALLEL_MIN_ROWS`` the start-up of an OpenMP team (about 1 us warm, ~100 us after the pool
has slept, measured on a 2-core machine) costs more than the second core saves.
"""

from __future__ import annotations

import functools
import math
import numbers
import os

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


def resolve_n_threads(n_threads: int | None, n_rows: int) -> int:
    """Threads for a call over ``n_rows`` rows, given an already validated ``n_threads``."""
    if n_rows < PARALLEL_MIN_ROWS:
        return 1
    if n_threads is None:
        return available_cpus()
    return cap_n_threads(n_threads)
