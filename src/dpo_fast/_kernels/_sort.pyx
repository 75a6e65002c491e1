# cython: language_level=3
"""A parallel stable radix sort of float64 values (csrc/radix_sort.h), for the batch-sorted
loss types: dpo_fast._general sorts each batch's per-pair differences with it.

numpy.argsort(kind="stable") on 1e6 doubles is a comparison sort on one core (~130 ms of CPU
here); this is eight counting passes of 8-bit digits over 12-byte (key, position) records
(~38 ms), one contiguous chunk per OpenMP thread, and passes whose digit is the same for every
value are skipped. The result is exactly numpy's stable argsort: ties (and -0.0 with +0.0) in index
order, NaNs last.
"""

from cython.parallel cimport prange
cimport numpy as cnp
from libc.stdint cimport int64_t, uint32_t, uint64_t

import numpy as np

cdef extern from "radix_sort.h" nogil:
    enum:
        DPO_RADIX_BITS
        DPO_RADIX_BUCKETS
        DPO_RADIX_PASSES
    void dpo_radix_count_all(const double *values, Py_ssize_t lo, Py_ssize_t hi,
                             int64_t *counts)
    void dpo_radix_count(const uint64_t *keys, Py_ssize_t lo, Py_ssize_t hi, int shift,
                         int64_t *counts)
    void dpo_radix_move(const uint64_t *keys, const uint32_t *index, const double *values,
                        Py_ssize_t lo, Py_ssize_t hi, int shift, int64_t *offsets,
                        uint64_t *out_keys, uint32_t *out_index, double *out_sorted,
                        int64_t *out_order)
    uint64_t dpo_radix_key(double value)
    double dpo_radix_value(uint64_t key)

cnp.import_array()

# Fewer values than this per thread: one thread (waking a pool costs more than it saves).
cdef Py_ssize_t MIN_PER_THREAD = 32768
# Positions are kept as uint32 between passes: inputs this long or longer are refused.
MAX_LENGTH = 2**32 - 1


def radix_sort(const double[::1] values, bint want_order, int n_threads):
    """(sorted values, their original positions or None) of a float64 array: a stable sort,
    the same order as numpy.argsort(values, kind="stable"). The sorted values are the inputs
    with -0.0 as +0.0 and every NaN as the one quiet NaN."""
    cdef Py_ssize_t n = values.shape[0]
    cdef Py_ssize_t t, b, p, j, lo, hi, n_active, total
    cdef int threads, shift
    cdef int64_t running
    if n > MAX_LENGTH:
        raise ValueError(f"radix_sort takes at most {MAX_LENGTH} values, got {n}")
    if n_threads < 1:
        raise ValueError("n_threads must be >= 1")
    sorted_values = np.empty(n, dtype=np.float64)
    order = np.empty(n, dtype=np.int64) if want_order else None
    cdef double[::1] out_sorted = sorted_values
    cdef int64_t[::1] out_order = order
    cdef int64_t *order_ptr = NULL
    if n == 0:
        return sorted_values, order
    if want_order:
        order_ptr = &out_order[0]
    threads = <int>max(1, min(<Py_ssize_t>n_threads, n // MIN_PER_THREAD))

    cdef Py_ssize_t[::1] bounds = np.array([n * t // threads for t in range(threads + 1)],
                                           dtype=np.intp)
    counts_all_array = np.empty((threads, DPO_RADIX_PASSES, DPO_RADIX_BUCKETS), dtype=np.int64)
    cdef int64_t[:, :, ::1] counts_all = counts_all_array
    with nogil:
        for t in prange(threads, num_threads=threads, schedule="static",
                        use_threads_if=threads > 1):
            dpo_radix_count_all(&values[0], bounds[t], bounds[t + 1], &counts_all[t, 0, 0])
    totals = counts_all_array.sum(axis=0)                     # (passes, buckets)
    active = [p for p in range(DPO_RADIX_PASSES) if totals[p].max() < n]
    n_active = len(active)
    if n_active == 0:
        # Every value has the same key: already sorted, in index order.
        for j in range(n):
            out_sorted[j] = dpo_radix_value(dpo_radix_key(values[j]))
        if want_order:
            order[:] = np.arange(n)
        return sorted_values, order

    keys_a = np.empty(n, dtype=np.uint64)
    keys_b = np.empty(n, dtype=np.uint64) if n_active > 1 else keys_a
    index_a = np.empty(n, dtype=np.uint32) if want_order else None
    index_b = (np.empty(n, dtype=np.uint32) if want_order and n_active > 1 else index_a)
    counts_array = np.empty((threads, DPO_RADIX_BUCKETS), dtype=np.int64)
    offsets_array = np.empty((threads, DPO_RADIX_BUCKETS), dtype=np.int64)
    cdef int64_t[:, ::1] counts = counts_array
    cdef int64_t[:, ::1] offsets = offsets_array
    cdef uint64_t[::1] src_keys, dst_keys
    cdef uint32_t[::1] src_index, dst_index
    cdef uint64_t *src_keys_ptr
    cdef uint32_t *src_index_ptr
    cdef uint64_t *dst_keys_ptr
    cdef uint32_t *dst_index_ptr
    cdef double *sorted_ptr
    cdef int64_t *final_order_ptr

    buffers = [(keys_a, index_a), (keys_b, index_b)]
    for j in range(n_active):
        p = active[j]
        shift = <int>(p * DPO_RADIX_BITS)
        src_keys_ptr = NULL
        src_index_ptr = NULL
        if j > 0:
            src_keys = buffers[(j - 1) % 2][0]
            src_keys_ptr = &src_keys[0]
            if want_order:
                src_index = buffers[(j - 1) % 2][1]
                src_index_ptr = &src_index[0]
        dst_keys_ptr = NULL
        dst_index_ptr = NULL
        sorted_ptr = NULL
        final_order_ptr = NULL
        if j == n_active - 1:
            sorted_ptr = &out_sorted[0]
            final_order_ptr = order_ptr
        else:
            dst_keys = buffers[j % 2][0]
            dst_keys_ptr = &dst_keys[0]
            if want_order:
                dst_index = buffers[j % 2][1]
                dst_index_ptr = &dst_index[0]
        # This pass's digit counts per chunk: from the first count on the first pass (the
        # input order), else counted again in the current order.
        if j == 0:
            counts_array[:] = counts_all_array[:, p, :]
        else:
            with nogil:
                for t in prange(threads, num_threads=threads, schedule="static",
                                use_threads_if=threads > 1):
                    dpo_radix_count(src_keys_ptr, bounds[t], bounds[t + 1], shift,
                                    &counts[t, 0])
        # Bucket-major, then chunk: chunk t's elements of digit b go after those of every
        # smaller digit and after chunk t-1's of digit b (stability).
        running = 0
        for b in range(DPO_RADIX_BUCKETS):
            for t in range(threads):
                offsets[t, b] = running
                running += counts[t, b]
        with nogil:
            for t in prange(threads, num_threads=threads, schedule="static",
                            use_threads_if=threads > 1):
                dpo_radix_move(src_keys_ptr, src_index_ptr, &values[0], bounds[t],
                               bounds[t + 1], shift, &offsets[t, 0], dst_keys_ptr,
                               dst_index_ptr, sorted_ptr, final_order_ptr)
    return sorted_values, order
