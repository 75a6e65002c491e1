# cython: language_level=3
"""Correctly rounded sums (csrc/exact_sum.h): the numbers ``math.fsum`` gives, without its
Python list.

dpo_fast.kto reports correctly rounded sums (so that its metrics equal the scorer's exact
ones bit for bit); ``math.fsum(array.tolist())`` made them cost ~40 ns a value and most of a
call. Here they are one pass of integer adds, ~1-2 ns a value, with the GIL released.
"""

cimport numpy as cnp

import numpy as np

cdef extern from "exact_sum.h" nogil:
    enum:
        DPO_EXACT_OK
        DPO_EXACT_INF_CLASH
        DPO_EXACT_OVERFLOW
    ctypedef struct DpoExactSum:
        pass
    void dpo_exact_init(DpoExactSum *acc)
    double dpo_exact_result(DpoExactSum *acc, int *status)
    void dpo_exact_add_array(DpoExactSum *when_true, DpoExactSum *when_false,
                             const double *x, Py_ssize_t stride, const unsigned char *flags,
                             Py_ssize_t flag_stride, Py_ssize_t n)


cdef double _result(DpoExactSum *acc) except? -1.0:
    cdef int status
    cdef double total = dpo_exact_result(acc, &status)
    if status == DPO_EXACT_INF_CLASH:
        raise ValueError("-inf + inf in the sum")   # math.fsum's error for the same values
    if status == DPO_EXACT_OVERFLOW:
        raise OverflowError("the sum is beyond the float64 range")
    return total


cdef Py_ssize_t _step(const double[:] values) except? -1:
    """The stride of ``values`` in doubles (a float64 view whose stride is not a whole
    number of doubles, from a structured array, is the caller's to copy first)."""
    if values.strides[0] % <Py_ssize_t>sizeof(double):
        raise ValueError("values must have a stride of whole float64 elements")
    return values.strides[0] // <Py_ssize_t>sizeof(double)


def fsum(const double[:] values):
    """The correctly rounded sum of a 1-D float64 array (any strides): ``math.fsum``'s value.

    NaN in, NaN out; +inf with -inf raises ValueError; a total beyond the float64 range
    raises OverflowError (math.fsum also raises when only a partial sum overflows; this
    returns the exact total whenever it is in range). An exact zero is +0.0.
    """
    cdef DpoExactSum acc
    cdef Py_ssize_t n = values.shape[0]
    cdef Py_ssize_t step = _step(values)
    dpo_exact_init(&acc)
    if n:
        with nogil:
            dpo_exact_add_array(&acc, NULL, &values[0], step, NULL, 0, n)
    return _result(&acc)


def fsum_split(const double[:] values, labels):
    """``(fsum(values[labels]), fsum(values[~labels]))`` for a 1-D bool ``labels`` of the same
    length, in one pass and without the two boolean-index copies."""
    cdef const unsigned char[:] flags = np.asarray(labels, dtype=np.bool_).view(np.uint8)
    cdef DpoExactSum true_acc, false_acc
    cdef Py_ssize_t n = values.shape[0]
    cdef Py_ssize_t step = _step(values)
    if flags.shape[0] != n:
        raise ValueError(f"labels has {flags.shape[0]} elements, values {n}")
    dpo_exact_init(&true_acc)
    dpo_exact_init(&false_acc)
    if n:
        with nogil:
            dpo_exact_add_array(&true_acc, &false_acc, &values[0], step, &flags[0],
                                flags.strides[0], n)
    return _result(&true_acc), _result(&false_acc)
