# cython: language_level=3
"""The kernels of dpo_fast.kto: KTO's per-completion rows and correctly rounded sums (the
numbers ``math.fsum`` gives, csrc/exact_sum.h).

kto_loss reports correctly rounded sums, so that its metrics equal the scorer's exact ones
bit for bit; ``math.fsum(array.tolist())`` cost ~40 ns a value and most of a call, and the
rows took ~15 NumPy passes. Here a call is one pass over blocks of 512 rows: the rows at the
chosen SIMD level (csrc/kto_rows.h, compiled per level in csrc/pairwise_simd.c and reached
through dpo_fast._kernels._pairwise), then their five sums while the block is in cache, with
the GIL released.
"""

cimport numpy as cnp
from libc.stdint cimport uint32_t

import numpy as np

cnp.import_array()

cdef extern from "exact_sum.h" nogil:
    enum:
        DPO_EXACT_DIGITS
        DPO_EXACT_OK
        DPO_EXACT_INF_CLASH
        DPO_EXACT_OVERFLOW
    ctypedef struct DpoExactSum:
        int has_nan
        int has_pos_inf
        int has_neg_inf
    void dpo_exact_digits(DpoExactSum *acc, uint32_t *out)
    void dpo_exact_init(DpoExactSum *acc)
    double dpo_exact_result(DpoExactSum *acc, int *status)
    int dpo_exact_add_differences(DpoExactSum *acc, const double *a, const double *b,
                                  Py_ssize_t n)
    void dpo_exact_add_array(DpoExactSum *acc, const double *x, Py_ssize_t stride,
                             Py_ssize_t n)

from dpo_fast._kernels._pairwise cimport DpoKtoParams, kto_rows_block

cdef extern from "kto_rows.h" nogil:
    ctypedef struct DpoKtoSums:
        DpoExactSum losses
        DpoExactSum rewards_chosen
        DpoExactSum rewards_rejected
        DpoExactSum logps_chosen
        DpoExactSum logps_rejected
        Py_ssize_t count_chosen
    void dpo_kto_block_sums(DpoKtoSums *sums, const double *policy,
                            const unsigned char *desirable, Py_ssize_t n,
                            const double *losses, const double *rewards)
    enum:
        DPO_EXACT_CARRY_EVERY


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
    """The correctly rounded sum of a 1-D float64 array (any strides): ``math.fsum``'s value
    (kto_loss's sums round the same accumulator; this is its entry point for the tests).

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
            dpo_exact_add_array(&acc, &values[0], step, n)
    return _result(&acc)


def exact_units(const double[:] values):
    """The exact sum of finite float64 ``values`` (any strides) as a Python int number of
    ``2**-1074`` (every finite double is one), so that totals from several calls can be added
    exactly: the scorer's mergeable sums (dpo_fast.score.unpaired_summary)."""
    cdef DpoExactSum acc
    cdef Py_ssize_t n = values.shape[0]
    cdef Py_ssize_t step = _step(values)
    cdef uint32_t digits[DPO_EXACT_DIGITS]
    dpo_exact_init(&acc)
    if n:
        with nogil:
            dpo_exact_add_array(&acc, &values[0], step, n)
    if acc.has_nan or acc.has_pos_inf or acc.has_neg_inf:
        raise ValueError("exact_units takes finite values only")
    dpo_exact_digits(&acc, digits)
    cdef bytearray little = bytearray(4 * DPO_EXACT_DIGITS)
    cdef int i
    for i in range(DPO_EXACT_DIGITS):
        little[4 * i] = digits[i] & 0xff
        little[4 * i + 1] = (digits[i] >> 8) & 0xff
        little[4 * i + 2] = (digits[i] >> 16) & 0xff
        little[4 * i + 3] = digits[i] >> 24
    return int.from_bytes(little, "little", signed=True)


def fsum_differences(const double[::1] first, const double[::1] second):
    """``fsum(first - second)`` for contiguous float64 arrays of one length (the differences
    rounded as NumPy's subtraction rounds them), without the temporary and without
    NumPy's overflow warning: ``(total, True)``, or ``(None, False)`` when a value of either
    array is not finite (the caller names it). A difference that overflows is +-inf."""
    cdef DpoExactSum acc
    cdef Py_ssize_t n = first.shape[0]
    cdef int finite = 1
    if second.shape[0] != n:
        raise ValueError(f"lengths differ: {n} and {second.shape[0]}")
    dpo_exact_init(&acc)
    if n:
        with nogil:
            finite = dpo_exact_add_differences(&acc, &first[0], &second[0], n)
    if not finite:
        return None, False
    return _result(&acc), True


def kto_rows(const double[::1] policy, const double[::1] reference, desirable, double beta,
             double kl, double desirable_weight, double undesirable_weight, bint compute_grad,
             int with_sums):
    """KTO's rows for contiguous float64 ``policy`` / ``reference`` and bool ``desirable`` of
    one length (checked by the caller): ``(finite, losses, rewards, grad, sums)``.

    ``finite`` is False when a policy or reference value is not finite (the outputs are then
    meaningless and the caller names the value). ``grad`` is None unless ``compute_grad``;
    ``sums`` (``with_sums`` 1 or 2) is ``(loss, rewards chosen, rewards rejected, logps
    chosen, logps rejected, count chosen)``, the sums correctly rounded (:func:`fsum`'s
    values, and its errors); ``loss`` is None unless ``with_sums`` is 2 (a sum of the losses
    that no reduction asks for must not raise OverflowError).
    """
    cdef const unsigned char[::1] flags = np.ascontiguousarray(desirable,
                                                               dtype=np.bool_).view(np.uint8)
    cdef Py_ssize_t n = policy.shape[0]
    if reference.shape[0] != n or flags.shape[0] != n:
        raise ValueError(f"lengths differ: {n}, {reference.shape[0]}, {flags.shape[0]}")
    cdef cnp.ndarray losses = np.empty(n), rewards = np.empty(n)
    cdef cnp.ndarray grad = np.empty(n) if compute_grad else None
    cdef double *grad_data = <double *>cnp.PyArray_DATA(grad) if compute_grad else NULL
    cdef DpoKtoParams params
    params.beta, params.kl = beta, kl
    params.desirable_weight, params.undesirable_weight = desirable_weight, undesirable_weight
    cdef DpoKtoSums sums
    cdef int finite = 1
    dpo_exact_init(&sums.losses)
    dpo_exact_init(&sums.rewards_chosen)
    dpo_exact_init(&sums.rewards_rejected)
    dpo_exact_init(&sums.logps_chosen)
    dpo_exact_init(&sums.logps_rejected)
    sums.count_chosen = 0
    cdef const double *policy_data = &policy[0] if n else NULL
    cdef const double *reference_data = &reference[0] if n else NULL
    cdef const unsigned char *flags_data = &flags[0] if n else NULL
    cdef double *losses_data = <double *>cnp.PyArray_DATA(losses)
    cdef double *rewards_data = <double *>cnp.PyArray_DATA(rewards)
    cdef Py_ssize_t block = DPO_EXACT_CARRY_EVERY, start = 0, count
    with nogil:
        # Block by block: the rows at the chosen SIMD level, then their exact sums while the
        # block is in cache (a block is the accumulators' carry interval).
        while start < n:
            count = min(block, n - start)
            finite = kto_rows_block(&params, policy_data + start, reference_data + start,
                                    flags_data + start, count, losses_data + start,
                                    rewards_data + start,
                                    grad_data + start if grad_data != NULL else NULL)
            if not finite:
                break
            if with_sums:
                dpo_kto_block_sums(&sums, policy_data + start, flags_data + start, count,
                                   losses_data + start, rewards_data + start)
            start += count
    if not finite:
        return False, losses, rewards, grad, None
    totals = None
    if with_sums:
        totals = (_result(&sums.losses) if with_sums == 2 else None,
                  _result(&sums.rewards_chosen),
                  _result(&sums.rewards_rejected), _result(&sums.logps_chosen),
                  _result(&sums.logps_rejected), sums.count_chosen)
    return True, losses, rewards, grad, totals
