# cython: language_level=3
"""A parallel stable radix sort of float64 values (csrc/radix_sort.h), for the batch-sorted
loss types: dpo_fast._sorted sorts each batch's per-pair differences with it, formed here in
the same pass as the keys.

numpy.argsort(kind="stable") on 1e6 doubles is a comparison sort on one core (~130 ms of CPU
here); this is a most-significant-digit radix sort of (key, position) records, run in one
OpenMP parallel region: one parallel split into buckets of a few thousand keys (one
contiguous chunk per thread), then every top bucket sorted on its own (in cache) by the next
digit and one insertion pass.
The result is exactly numpy's stable argsort: ties (and -0.0 with +0.0) in index order, NaNs
last, the same for every thread count.
"""

from cython.parallel cimport parallel, prange
cimport numpy as cnp
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport calloc, free

import numpy as np

cdef extern from "radix_sort.h" nogil:
    enum:
        DPO_RADIX_MAX_CHUNKS
    ctypedef struct dpo_radix_job:
        const void *first
        const void *second
        int single
        double scale
        Py_ssize_t n
        int chunks
        uint64_t *keys
        uint32_t *index
        uint64_t *scratch_keys
        uint32_t *scratch_index
        int all_finite
        int status
        Py_ssize_t *counts
    void dpo_radix_sort_team(dpo_radix_job *job)

cnp.import_array()

# Fewer values than this per thread: one thread (waking a pool costs more than it saves).
cdef Py_ssize_t MIN_PER_THREAD = 32768
# The sort's passes over the whole array go in chunks of this many values to twice as many,
# handed to whichever thread is free.
cdef Py_ssize_t CHUNK_LENGTH = 65536
# Positions are kept as uint32: inputs this long or longer are refused.
MAX_LENGTH = 2**32 - 1


cdef const void *_input(array, Py_ssize_t n, str name) except NULL:
    if (not isinstance(array, cnp.ndarray) or cnp.PyArray_NDIM(<cnp.ndarray>array) != 1
            or cnp.PyArray_DIM(<cnp.ndarray>array, 0) != n
            or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>array)):
        raise ValueError(f"{name} must be a contiguous 1-D array of length {n}")
    return cnp.PyArray_DATA(<cnp.ndarray>array)


def scratch_length(Py_ssize_t n):
    """The length of a uint64 ``scratch`` array for sorted_differences of n values: n keys
    and n uint32 positions."""
    return n + (n + 1) // 2


cdef _check_out(array, dtype, Py_ssize_t n, str name):
    if (not isinstance(array, np.ndarray) or array.dtype != dtype or array.ndim != 1
            or array.shape[0] != n or not array.flags.c_contiguous
            or not array.flags.writeable):
        raise ValueError(f"{name} must be a writeable contiguous {np.dtype(dtype).name} array "
                         f"of length {n}")


def sorted_differences(first, second, double scale, bint want_order, int n_threads,
                       scratch=None, values=None, order=None):
    """The float64 values ``first * scale - second * scale`` (``second`` None:
    ``first * scale``) sorted, stably, as numpy.argsort(kind="stable") orders them.

    Parameters
    ----------
    first, second : numpy.ndarray
        Contiguous 1-D arrays, both float32 or both float64 (taken as float64); ``second``
        may be None.
    scale : float
        Factor of both inputs (1.0, or 0.25 where the plain difference overflows).
    want_order : bool
        Whether to return the positions of the sorted values.
    n_threads : int
        Threads (fewer for short inputs); the result is the same for any count.
    scratch : numpy.ndarray, optional
        A contiguous uint64 array of at least ``scratch_length(n)`` to work in (its contents
        are left undefined): one buffer for several sorts, whose pages are touched once.
    values, order : numpy.ndarray, optional
        Contiguous float64 and uint32 arrays of length n to write the sorted values and their
        positions into (and return): a caller that keeps its buffers across calls does not
        fault in fresh pages on every call. None: new arrays.

    Returns
    -------
    sorted_values : numpy.ndarray
        float64, with -0.0 as +0.0 and every NaN as the one quiet NaN.
    order : numpy.ndarray or None
        uint32 positions of the sorted values in the inputs.
    all_finite : bool
        Whether every difference is finite.
    """
    if not isinstance(first, cnp.ndarray):
        raise ValueError("first must be a NumPy array")
    cdef Py_ssize_t n = first.shape[0] if first.ndim == 1 else -1
    cdef int threads, single, status
    if n > MAX_LENGTH:
        raise ValueError(f"sorted_differences takes at most {MAX_LENGTH} values, got {n}")
    if n_threads < 1:
        raise ValueError("n_threads must be >= 1")
    if first.dtype != np.float32 and first.dtype != np.float64:
        raise ValueError("the inputs must be float32 or float64")
    single = first.dtype == np.float32
    if second is not None and second.dtype != first.dtype:
        raise ValueError("first and second must have one dtype")
    cdef const void *first_ptr = _input(first, n, "first")
    cdef const void *second_ptr = NULL
    if second is not None:
        second_ptr = _input(second, n, "second")

    if values is None:
        keys_array = np.empty(n, dtype=np.uint64)
    else:
        _check_out(values, np.float64, n, "values")
        keys_array = values.view(np.uint64)
    if not want_order:
        index_array = None
    elif order is None:
        index_array = np.empty(n, dtype=np.uint32)
    else:
        _check_out(order, np.uint32, n, "order")
        index_array = order
    if n == 0:
        return (keys_array.view(np.float64) if values is None else values), index_array, True
    if scratch is None:
        scratch = np.empty(scratch_length(n), dtype=np.uint64)
    elif (not isinstance(scratch, np.ndarray) or scratch.dtype != np.uint64
          or scratch.ndim != 1 or not scratch.flags.c_contiguous or not scratch.flags.writeable
          or scratch.shape[0] < scratch_length(n)):
        raise ValueError(f"scratch must be a writeable contiguous uint64 array of at least "
                         f"{scratch_length(n)} values")
    # (The passes read and write these at once: they must be apart.)
    written = [keys_array, scratch] + ([] if index_array is None else [index_array])
    for i, array in enumerate(written):
        for other in written[i + 1:] + [first] + ([] if second is None else [second]):
            if np.may_share_memory(array, other):
                raise ValueError("values, order and scratch must not overlap each other or "
                                 "the inputs")
    cdef dpo_radix_job *job = <dpo_radix_job *>calloc(1, sizeof(dpo_radix_job))
    if job == NULL:
        raise MemoryError()
    job.first = first_ptr
    job.second = second_ptr
    job.single = single
    job.scale = scale
    job.n = n
    # Chunks of the passes over the whole array: several per thread, by length alone.
    job.chunks = <int>max(1, min(n // CHUNK_LENGTH, <Py_ssize_t>DPO_RADIX_MAX_CHUNKS))
    job.keys = <uint64_t *>cnp.PyArray_DATA(keys_array)
    job.scratch_keys = <uint64_t *>cnp.PyArray_DATA(scratch)
    if want_order:
        job.index = <uint32_t *>cnp.PyArray_DATA(index_array)
        job.scratch_index = <uint32_t *>(job.scratch_keys + n)
    threads = <int>max(1, min(<Py_ssize_t>n_threads, n // MIN_PER_THREAD))
    # One parallel region for the whole sort (dpo_radix_sort_team's passes share it).
    with nogil:
        if threads > 1:
            with parallel(num_threads=threads):
                dpo_radix_sort_team(job)
        else:
            dpo_radix_sort_team(job)
    all_finite = job.all_finite != 0
    status = job.status
    free(job.counts)
    free(job)
    if status != 0:
        raise MemoryError()
    return (keys_array.view(np.float64) if values is None else values), index_array, all_finite


def radix_sort(values, bint want_order, int n_threads):
    """(sorted values, their original positions or None) of a float64 array: a stable sort,
    the same order as numpy.argsort(values, kind="stable"). The sorted values are the inputs
    with -0.0 as +0.0 and every NaN as the one quiet NaN; the positions are int64."""
    if (not isinstance(values, np.ndarray) or values.dtype != np.float64
            or values.ndim != 1 or not values.flags.c_contiguous):
        raise ValueError("values must be a contiguous 1-D float64 array")
    sorted_values, order, _ = sorted_differences(values, None, 1.0, want_order, n_threads)
    return sorted_values, None if order is None else order.astype(np.int64)


def scatter(const double[::1] source, const uint32_t[::1] order, out, double scale,
            double divisor, bint negate, int n_threads):
    """``out[order[i]] = source[i] * scale / divisor`` (``0.0 - ...`` with ``negate``) for
    every i: a sorted term's losses or derivatives put back in pair order, rounded once into
    a float32 ``out``. ``order`` is a permutation (from sorted_differences), so the threads
    write disjoint places and the result is the same for every count.

    Parameters
    ----------
    source : numpy.ndarray
        float64 values, in sorted order.
    order : numpy.ndarray
        uint32 pair of each value, as long as ``source``.
    out : numpy.ndarray
        Contiguous float64 or float32 array of the same length, written in place.
    scale, divisor : float
        Factor and divisor of every value (1.0 and 1.0 leave them unchanged).
    negate : bool
        Write ``0.0 - value`` (the rejected side's derivative).
    n_threads : int
        Threads (fewer for short inputs).
    """
    cdef Py_ssize_t n = source.shape[0], i
    cdef double value
    cdef int threads
    cdef double[::1] out64
    cdef float[::1] out32
    cdef bint single
    if order.shape[0] != n:
        raise ValueError("source and order must have one length")
    if n_threads < 1:
        raise ValueError("n_threads must be >= 1")
    single = out.dtype == np.float32
    if single:
        out32 = out
        if out32.shape[0] != n:
            raise ValueError("out must have the length of source")
    else:
        out64 = out
        if out64.shape[0] != n:
            raise ValueError("out must have the length of source")
    if n == 0:
        return
    cdef Py_ssize_t out_of_range = 0
    threads = <int>max(1, min(<Py_ssize_t>n_threads, n // MIN_PER_THREAD))
    with nogil:
        for i in prange(n, num_threads=threads, schedule="static",
                        use_threads_if=threads > 1):
            if order[i] >= <uint32_t>n:  # (would write outside out)
                out_of_range += 1
                continue
            value = source[i] * scale / divisor
            if negate:
                value = 0.0 - value
            if single:
                out32[order[i]] = <float>value
            else:
                out64[order[i]] = value
    if out_of_range:
        raise ValueError(f"order has {out_of_range} positions out of range")
