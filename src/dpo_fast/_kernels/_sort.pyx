# cython: language_level=3
"""A parallel stable radix sort of float64 values (csrc/radix_sort.h), for the batch-sorted
loss types: dpo_fast._sorted sorts each batch's per-pair differences with it, formed here in
the same pass as the keys.

numpy.argsort(kind="stable") on 1e6 doubles is a comparison sort on one core (~130 ms of CPU
here); this is a most-significant-digit radix sort of (key, position) records: one parallel
split on up to 16 bits from the top differing one (one contiguous chunk per OpenMP thread),
then every top bucket sorted on its own (in cache) by the next digit and one insertion pass.
The result is exactly numpy's stable argsort: ties (and -0.0 with +0.0) in index order, NaNs
last, the same for every thread count.
"""

from cython.parallel cimport prange
cimport numpy as cnp
from libc.stdint cimport uint32_t, uint64_t

import numpy as np

cdef extern from "radix_sort.h" nogil:
    enum:
        DPO_RADIX_TOP_BITS
    uint64_t dpo_radix_keys(const void *first, const void *second, int single, double scale,
                            Py_ssize_t lo, Py_ssize_t hi, uint64_t *keys, uint64_t *key_or,
                            int *all_finite)
    void dpo_radix_count(const uint64_t *keys, Py_ssize_t lo, Py_ssize_t hi, int shift,
                         uint64_t mask, Py_ssize_t *counts)
    void dpo_radix_move(const uint64_t *keys, Py_ssize_t lo, Py_ssize_t hi, int shift,
                        uint64_t mask, Py_ssize_t *offsets, uint64_t *out_keys,
                        uint32_t *out_index)
    void dpo_radix_sort_buckets(uint64_t *scratch_keys, uint32_t *scratch_index,
                                uint64_t *keys, uint32_t *index, const Py_ssize_t *starts,
                                Py_ssize_t first, Py_ssize_t last, int top)
    void dpo_radix_to_values(uint64_t *keys, Py_ssize_t lo, Py_ssize_t hi)

cnp.import_array()

# Fewer values than this per thread: one thread (waking a pool costs more than it saves).
cdef Py_ssize_t MIN_PER_THREAD = 32768
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


def sorted_differences(first, second, double scale, bint want_order, int n_threads,
                       scratch=None):
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
    cdef Py_ssize_t t, g, n_buckets, n_groups
    cdef int threads, shift, top, single
    cdef uint64_t key_and, key_or, mask
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

    keys_array = np.empty(n, dtype=np.uint64)
    index_array = np.empty(n, dtype=np.uint32) if want_order else None
    if n == 0:
        return keys_array.view(np.float64), index_array, True
    cdef uint64_t[::1] keys = keys_array
    cdef uint32_t[::1] index
    cdef uint32_t *index_ptr = NULL
    if want_order:
        index = index_array
        index_ptr = &index[0]
    threads = <int>max(1, min(<Py_ssize_t>n_threads, n // MIN_PER_THREAD))
    cdef Py_ssize_t[::1] bounds = np.array([n * t // threads for t in range(threads + 1)],
                                           dtype=np.intp)
    cdef uint64_t[::1] ands = np.empty(threads, dtype=np.uint64)
    cdef uint64_t[::1] ors = np.empty(threads, dtype=np.uint64)
    cdef int[::1] finite = np.empty(threads, dtype=np.intc)
    with nogil:
        for t in prange(threads, num_threads=threads, schedule="static",
                        use_threads_if=threads > 1):
            ands[t] = dpo_radix_keys(first_ptr, second_ptr, single, scale, bounds[t],
                                     bounds[t + 1], &keys[0], &ors[t], &finite[t])
    key_and = ands[0]
    key_or = ors[0]
    for t in range(1, threads):
        key_and &= ands[t]
        key_or |= ors[t]
    all_finite = all(finite[t] for t in range(threads))
    if key_and == key_or:
        # Every value has the same key: already sorted, in index order.
        dpo_radix_to_values(&keys[0], 0, n)
        if want_order:
            index_array[:] = np.arange(n, dtype=np.uint32)
        return keys_array.view(np.float64), index_array, all_finite

    # The top digit: from the highest bit that differs between keys down, about log2(n / 16)
    # bits wide (at most DPO_RADIX_TOP_BITS): top buckets of a few dozen keys, or a few
    # thousand when the top bits are a double's exponent.
    top = int(key_and ^ key_or).bit_length()
    shift = max(top - max(1, min(DPO_RADIX_TOP_BITS, n.bit_length() - 4)), 0)
    mask = (<uint64_t>1 << (top - shift)) - 1
    n_buckets = <Py_ssize_t>mask + 1
    counts_array = np.empty((threads, n_buckets), dtype=np.intp)
    cdef Py_ssize_t[:, ::1] counts = counts_array
    with nogil:
        for t in prange(threads, num_threads=threads, schedule="static",
                        use_threads_if=threads > 1):
            dpo_radix_count(&keys[0], bounds[t], bounds[t + 1], shift, mask, &counts[t, 0])
    # Bucket-major, then chunk: chunk t's keys of digit b go after those of every smaller
    # digit and after chunk t-1's of digit b (stability).
    offsets_array = np.cumsum(counts_array.T, axis=None).reshape(n_buckets, threads).T
    offsets_array -= counts_array
    cdef Py_ssize_t[:, ::1] offsets = np.ascontiguousarray(offsets_array)
    cdef Py_ssize_t[::1] starts = np.concatenate([offsets_array[0], [n]])
    if scratch is None:
        scratch = np.empty(scratch_length(n), dtype=np.uint64)
    elif (not isinstance(scratch, np.ndarray) or scratch.dtype != np.uint64
          or scratch.ndim != 1 or not scratch.flags.c_contiguous or not scratch.flags.writeable
          or scratch.shape[0] < scratch_length(n)):
        raise ValueError(f"scratch must be a writeable contiguous uint64 array of at least "
                         f"{scratch_length(n)} values")
    cdef uint64_t[::1] scratch_keys = scratch[:n]
    cdef uint32_t[::1] scratch_index
    cdef uint32_t *scratch_index_ptr = NULL
    if want_order:
        scratch_index = scratch[n:].view(np.uint32)[:n]
        scratch_index_ptr = &scratch_index[0]
    # The top buckets in groups of about n / (64 threads) keys (cut at bucket ends: a large
    # bucket is a group of its own), sorted by whichever thread is free: each by one thread,
    # so the result does not depend on which. (Groups of equal bucket counts left most of
    # the work in a few groups: a double's top bits put most keys in a few buckets.)
    cuts = np.searchsorted(starts, np.arange(1, 64 * threads) * n // (64 * threads),
                           side="right")
    cdef Py_ssize_t[::1] group_edges = np.unique(np.concatenate([[0], cuts, [n_buckets]]))
    n_groups = group_edges.shape[0] - 1
    with nogil:
        for t in prange(threads, num_threads=threads, schedule="static",
                        use_threads_if=threads > 1):
            dpo_radix_move(&keys[0], bounds[t], bounds[t + 1], shift, mask, &offsets[t, 0],
                           &scratch_keys[0], scratch_index_ptr)
        for g in prange(n_groups, num_threads=threads, schedule="dynamic",
                        use_threads_if=threads > 1):
            dpo_radix_sort_buckets(&scratch_keys[0], scratch_index_ptr, &keys[0], index_ptr,
                                   &starts[0], group_edges[g], group_edges[g + 1], shift)
    return keys_array.view(np.float64), index_array, all_finite


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
