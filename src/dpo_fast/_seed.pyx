# cython: language_level=3
"""The list drop-in, dpo_loss, with a fast path that reads Python lists directly.

For lists and tuples of at most CHUNK_ROWS pairs, the values are read straight from the
Python objects into C buffers and run through the same compiled chunk function as
preference_loss (so the numbers are the same bits); anything else (NumPy arrays, longer
sequences) goes through dpo_fast.losses. Rounding reproduces Python's round(x, 4) exactly
(csrc/round4.h), falling back to Python's own round() in the rare near-tie cases.
"""

import numbers
import sysconfig

cimport cython
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF
from libc.math cimport isfinite
from libc.stdlib cimport free, malloc

from dpo_fast._kernels._pairwise cimport (
    DPO_CHUNK, DPO_NSUMS, DPO_SUM_LOSS, DpoChunkArgs, init_args, run_loss,
)

cdef extern from "round4.h" nogil:
    int dpo_round4(double x, double *out)

cdef extern from "Python.h":
    ctypedef struct PyObject
    PyObject **PySequence_Fast_ITEMS(object o)
    # On borrowed item pointers, so that reading a float takes no reference (see dpo_loss).
    bint _is_exact_float "PyFloat_CheckExact"(PyObject *o)
    double _borrowed_float_value "PyFloat_AS_DOUBLE"(PyObject *o)

# The four arguments in dpo_loss's order: (name, slot in the C buffer).
_ARG_NAMES = ("log_probs_chosen_policy", "log_probs_rejected_policy",
              "log_probs_chosen_ref", "log_probs_rejected_ref")
# Free-threaded CPython (3.13t+): list item arrays can change under us (see dpo_loss).
cdef bint _FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
# Up to this many pairs the C buffers live on the stack (no malloc).
DEF STACK_ROWS = 32


cpdef double round4(double x):
    """round(x, 4) for a float, bit-for-bit as Python's built-in round."""
    cdef double rounded
    if dpo_round4(x, &rounded):
        return rounded
    return round(x, 4)


cdef inline object _rounded(double x):
    cdef double rounded
    if dpo_round4(x, &rounded):
        return rounded
    return round(x, 4)


@cython.boundscheck(False)
def round4_list(const double[::1] values):
    """[round(float(v), 4) for v in values], bit-for-bit, as a list of Python floats."""
    cdef Py_ssize_t i, n = values.shape[0]
    cdef list out = PyList_New(n)
    cdef object item
    for i in range(n):
        item = _rounded(values[i])
        Py_INCREF(item)
        PyList_SET_ITEM(out, i, item)
    return out


cdef inline double _read_number(object item, Py_ssize_t index, int arg) except? -1.0:
    """float(item) for a real number, with errors that name the argument and index."""
    if type(item) is float:
        return PyFloat_AS_DOUBLE(item)
    if isinstance(item, bool) or not isinstance(item, numbers.Real):
        if isinstance(item, (list, tuple)) or getattr(item, "ndim", 0):
            raise ValueError(
                f"{_ARG_NAMES[arg]} must be 1-D: element {index} is a {type(item).__name__}")
        raise TypeError(
            f"{_ARG_NAMES[arg]}[{index}] must be a real number, got {type(item).__name__}")
    try:
        return float(item)
    except OverflowError:
        raise ValueError(
            f"{_ARG_NAMES[arg]}[{index}] = {item!r} is not representable as a finite float")


# What dpo_loss hands anything but short lists and tuples to: dpo_fast._entry.dpo_loss_arrays,
# passed in by the package's public layer (dpo_fast/__init__.py). _entry sits above this module
# (it imports round4 from here), so this module never imports it.
cdef object _array_path = None


def set_array_path(path):
    """Install the callable that dpo_loss runs for NumPy arrays and sequences longer than
    CHUNK_ROWS, with dpo_loss's five arguments (dpo_fast/__init__.py installs
    dpo_fast._entry.dpo_loss_arrays)."""
    global _array_path
    _array_path = path


BETA_MIN = 1e-300
BETA_MAX = 1e300


cpdef double validate_beta(object beta) except? -1.0:
    """beta as a float, or TypeError/ValueError unless it is a real number in
    [BETA_MIN, BETA_MAX]."""
    cdef double value
    if type(beta) is float:  # the common case, without the slow ABC check below
        value = PyFloat_AS_DOUBLE(beta)
    elif isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        raise TypeError(f"beta must be a real number, got {type(beta).__name__}")
    else:
        try:
            value = float(beta)
        except OverflowError:
            raise ValueError(f"beta must be finite and in [1e-300, 1e300], got {beta!r}") \
                from None
    # [1e-300, 1e300]: beyond, the kernels' 1/(2 beta) (ipo, sppo_hard) or 4*beta (rows near
    # DBL_MAX, computed in quarters) overflow; no model is trained at such temperatures.
    if not (BETA_MIN <= value <= BETA_MAX):
        raise ValueError(f"beta must be finite and in [1e-300, 1e300], got {beta!r}")
    return value


def dpo_loss(log_probs_chosen_policy, log_probs_rejected_policy, log_probs_chosen_ref,
             log_probs_rejected_ref, beta):
    """DPO loss and implicit rewards, rounded to 4 decimals exactly like Python's round(x, 4).

    Parameters
    ----------
    log_probs_chosen_policy, log_probs_rejected_policy : sequence of float
        Policy log-probabilities of the chosen / rejected response of each pair (lists,
        tuples or 1-D NumPy arrays of the same non-zero length).
    log_probs_chosen_ref, log_probs_rejected_ref : sequence of float
        The same under the frozen reference model.
    beta : float
        Inverse temperature of the implicit reward; finite, in [1e-300, 1e300].

    Returns
    -------
    dict
        ``{'loss': float, 'chosen_rewards': [float, ...], 'rejected_rewards': [float, ...]}``
        where ``chosen_rewards[i] = beta * (chosen_policy[i] - chosen_ref[i])`` (likewise
        rejected) and ``loss`` is the mean over pairs of
        ``-log(sigmoid(chosen_reward - rejected_reward))``, computed stably in double
        precision. Every number is a Python float rounded as ``round(x, 4)`` would.

    Raises
    ------
    TypeError
        An argument is not a sequence of real numbers, or ``beta`` is not a real number.
    ValueError
        Lengths differ, an input is empty, not 1-D, or holds NaN/inf (the message names the
        argument and the first bad index), or ``beta`` is not in [1e-300, 1e300].

    Examples
    --------
    >>> dpo_loss([-2.0, -1.5], [-3.0, -2.5], [-2.5, -2.0], [-2.5, -2.0], 0.5)
    {'loss': 0.4741, 'chosen_rewards': [0.25, 0.25], 'rejected_rewards': [-0.25, -0.25]}
    """
    cdef tuple seqs = (log_probs_chosen_policy, log_probs_rejected_policy,
                       log_probs_chosen_ref, log_probs_rejected_ref)
    cdef object seq, item
    cdef Py_ssize_t n = -1, i, size
    cdef int arg
    cdef double stack_buf[7 * STACK_ROWS]
    cdef double *buf = stack_buf
    cdef double sums[DPO_NSUMS]
    cdef double value
    cdef PyObject **items
    cdef DpoChunkArgs args
    cdef double beta_value
    cdef list chosen_rewards, rejected_rewards

    for arg in range(4):
        seq = seqs[arg]
        if type(seq) is not list and type(seq) is not tuple:
            n = -1
            break
        size = len(seq)
        if size > DPO_CHUNK:
            n = -1
            break
        if arg == 0:
            n = size
    if n < 0:
        if _array_path is None:
            raise RuntimeError("dpo_fast._seed.dpo_loss needs the array path: import dpo_fast")
        return _array_path(log_probs_chosen_policy, log_probs_rejected_policy,
                           log_probs_chosen_ref, log_probs_rejected_ref, beta)

    for arg in range(4):
        size = len(seqs[arg])
        if size != n:
            raise ValueError(
                f"length mismatch: {_ARG_NAMES[0]} has {n} elements but {_ARG_NAMES[arg]} "
                f"has {size}")
    if n == 0:
        raise ValueError(f"{_ARG_NAMES[0]} is empty: at least one pair is needed")
    beta_value = validate_beta(beta)

    if n > STACK_ROWS:
        buf = <double *>malloc(7 * n * sizeof(double))
        if buf == NULL:
            raise MemoryError()
    try:
        # Layout: 4 input columns, then losses, chosen rewards, rejected rewards.
        for arg in range(4):
            seq = seqs[arg]
            if _FREE_THREADED and type(seq) is list:
                # Without the GIL another thread may resize the list while we read its item
                # array: read a snapshot instead (tuple() copies under the list's lock).
                seq = tuple(seq)
            # Python code run since the lengths were checked (beta's or an earlier argument's
            # __float__, a __del__) may have resized this list too.
            if len(seq) != n:
                raise ValueError(f"{_ARG_NAMES[arg]} changed size during the call")
            items = PySequence_Fast_ITEMS(seq)
            for i in range(n):
                if _is_exact_float(items[i]):
                    value = _borrowed_float_value(items[i])
                else:
                    item = <object>items[i]  # a reference of our own during the call
                    value = _read_number(item, i, arg)
                    # That ran Python code (__float__; and __del__ when `item` lets go of an
                    # object __float__ took out of the list), which may have resized the list.
                    item = None
                    if len(seq) != n:
                        raise ValueError(f"{_ARG_NAMES[arg]} changed size during the call")
                    items = PySequence_Fast_ITEMS(seq)
                if not isfinite(value):
                    raise ValueError(
                        f"{_ARG_NAMES[arg]}[{i}] is {value!r}: inputs must be finite")
                buf[arg * n + i] = value
        init_args(&args, beta_value, 0.0, 0.05)  # sigmoid, as preference_loss's defaults
        args.chosen = &buf[0]
        args.rejected = &buf[n]
        args.ref_chosen = &buf[2 * n]
        args.ref_rejected = &buf[3 * n]
        args.losses = &buf[4 * n]
        args.chosen_rewards = &buf[5 * n]
        args.rejected_rewards = &buf[6 * n]
        run_loss(&args, n, 1, False, sums)  # n <= DPO_CHUNK: one chunk, no threads

        chosen_rewards = PyList_New(n)
        rejected_rewards = PyList_New(n)
        for i in range(n):
            item = _rounded(buf[5 * n + i])
            Py_INCREF(item)
            PyList_SET_ITEM(chosen_rewards, i, item)
            item = _rounded(buf[6 * n + i])
            Py_INCREF(item)
            PyList_SET_ITEM(rejected_rewards, i, item)
        return {"loss": _rounded(sums[DPO_SUM_LOSS] / n), "chosen_rewards": chosen_rewards,
                "rejected_rewards": rejected_rewards}
    finally:
        if buf != stack_buf:
            free(buf)
