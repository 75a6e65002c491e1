# cython: language_level=3, annotation_typing=False
"""The compiled entry point of preference_loss (and of dpo_loss for NumPy arrays).

The common call -- 1-D float64 or float32 NumPy arrays (contiguous, strided or read-only), or
lists and tuples of Python floats (read into float64 arrays, as NumPy would), a float beta,
one per-pair loss type with its default options (a length-normalised one with both
``chosen_lengths`` and ``rejected_lengths``), optionally per-pair ``weights``, lengths and
margins (float64, float32, int64 or int32 arrays; weights float64 or float32) and ``out=`` --
is checked, allocated, run through the kernel boundary of dpo_fast._kernels._pairwise and
packed into its result here, in C, with no Python helper on the way. Anything else (other
sequences, other dtypes, loss lists, f-divergences, non-finite sums, ...) goes to the
validated general path, dpo_fast._general, which gives the same bits and names every bad
argument. The fast path never raises for a bad argument: it hands the call over instead, so
every error message is the general path's.

annotation_typing=False: the annotations are documentation (inspect.signature reads them, and
dpo-fast score builds its options from them); Cython must not turn ``beta: float`` into a C
double, which would let True through as 1.0.
"""

cimport cython
cimport numpy as cnp
import sysconfig

import numpy as np
from cpython.dict cimport PyDict_GetItem
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.ref cimport PyObject
from libc.math cimport INFINITY, fabs, isfinite

from dpo_fast._kernels._pairwise cimport (
    DPO_NSUMS, DPO_SUM_ACCURACY, DPO_SUM_CHOSEN_LOGP, DPO_SUM_CHOSEN_REWARD, DPO_SUM_LOSS,
    DPO_SIDE_F32, DPO_SIDE_F64, DPO_SIDE_I32, DPO_SIDE_I64, DPO_SUM_MARGIN,
    DPO_SUM_REJECTED_LOGP, DPO_SUM_REJECTED_REWARD, DpoChunkArgs, exact_count_sum_typed,
    init_args, run_loss, set_alphapo_alpha,
)

from dpo_fast import _general, _registry, _threads
from dpo_fast._arrays import tensor_as_array
from dpo_fast._seed import round4, round4_list

cdef extern from "Python.h":
    PyObject **PySequence_Fast_ITEMS(object o)
    # On borrowed item pointers: reading an exact float or int runs no Python code, so the
    # sequence cannot change while _list_array reads it (with the GIL; see _FREE_THREADED).
    bint _is_exact_float "PyFloat_CheckExact"(PyObject *o)
    bint _is_exact_int "PyLong_CheckExact"(PyObject *o)
    double _borrowed_float_value "PyFloat_AS_DOUBLE"(PyObject *o)
    long long _borrowed_int_value "PyLong_AsLongLongAndOverflow"(PyObject *o, int *overflow)

cnp.import_array()

__all__ = ["PreferenceLossResult", "preference_loss", "dpo_loss_arrays"]

# The loss types the fast path runs: one per-pair type on the plain kernel loop, with its
# kernel id, label_smoothing's exclusive upper bound (0: the type does not use it), whether
# label_smoothing must be > 0 (exo_pair) and what else it reads: nothing (_PLAIN), the chosen
# lengths and the batch constant computed here (_CONST: sft) or the ground-truth margins
# (_GT: rpo_sq). Read from the registry, as the general path does, so that the two cannot
# disagree.
cdef enum:
    _PLAIN, _CONST, _GT
cdef dict _FAST_TYPES = {
    name: (entry.kernel_id, _registry.SMOOTHING_LIMITS.get(name, 0.0), entry.smoothing_positive,
           _PLAIN if entry.plain else (_GT if entry.gt_rewards else _CONST))
    for name, entry in _registry.LOSS_REGISTRY.items()
    if entry.plain or entry.fused_as_general}
# The length-normalised ones (both lengths given: the fused loop over c/nc, r/nr), with the
# same three fields and whether the type is reference-free and reports beta * p / n (orpo:
# the fused loop checks its log-probs are below 0, as it checks the lengths).
cdef dict _FAST_NORMALIZED_TYPES = {
    name: (entry.kernel_id, _registry.SMOOTHING_LIMITS.get(name, 0.0), entry.smoothing_positive,
           entry.reference_free, entry.normalized_rewards)
    for name, entry in _registry.LOSS_REGISTRY.items()
    if entry.normalized}
cdef Py_ssize_t _PARALLEL_MIN_ROWS = _threads.PARALLEL_MIN_ROWS
cdef object _add_reduce = np.add.reduce


cdef inline object _tensor_view(object value, str name):
    """A torch tensor as the general path reads it (a NumPy view; its TypeError, naming
    ``name``, for one on another device, requiring grad or of a dtype NumPy lacks); anything
    else (arrays and None at the cost of two pointer compares) as it is."""
    cdef object array
    if value is None or type(value) is cnp.ndarray or type(value).__module__ != "torch":
        return value
    array = tensor_as_array(value, name, "dpo_fast.torch.preference_loss")
    return value if array is None else array
cdef object _NUMPY_FLOAT64 = np.float64
# Free-threaded CPython (3.13t+): another thread may resize a list while its items are read.
cdef bint _FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


cdef object _list_array(object value, bint ints):
    """A non-empty list or tuple of Python floats -- or, with ``ints``, of Python ints in
    int64's range -- as the float64 (int64) array np.asarray makes of it, which is what the
    general path computes with; anything else (mixed or other items, bools) as it is, for the
    general path to convert or name. Lists are what a user types and what .tolist() gives:
    without this they pay the general path's ~40 µs at 64 pairs."""
    cdef object sequence = value
    cdef Py_ssize_t n, i
    cdef PyObject **items
    cdef cnp.ndarray array
    cdef cnp.npy_intp dims[1]
    cdef double *floats
    cdef long long *counts
    cdef int overflow = 0
    if type(value) is not list and type(value) is not tuple:
        return value
    if _FREE_THREADED and type(value) is list:
        sequence = tuple(value)  # a snapshot, copied under the list's lock
    n = len(sequence)
    if n == 0:
        return value
    items = PySequence_Fast_ITEMS(sequence)
    dims[0] = n
    if _is_exact_float(items[0]):
        array = cnp.PyArray_EMPTY(1, dims, cnp.NPY_DOUBLE, 0)
        # (The allocation may have run a garbage collection, and a finalizer may have
        # resized the list: read its item array again, after checking its length.)
        if len(sequence) != n:
            return value
        items = PySequence_Fast_ITEMS(sequence)
        floats = <double *>cnp.PyArray_DATA(array)
        for i in range(n):
            if not _is_exact_float(items[i]):
                return value
            floats[i] = _borrowed_float_value(items[i])
        return array
    if ints and _is_exact_int(items[0]):
        array = cnp.PyArray_EMPTY(1, dims, cnp.NPY_INT64, 0)
        if len(sequence) != n:
            return value
        items = PySequence_Fast_ITEMS(sequence)
        counts = <long long *>cnp.PyArray_DATA(array)
        for i in range(n):
            if not _is_exact_int(items[i]):
                return value
            counts[i] = _borrowed_int_value(items[i], &overflow)
            if overflow:
                return value
        return array
    return value


# Per-pair weights longer than this are checked by NumPy's reductions, shorter ones by a C
# loop (no call overhead).
cdef Py_ssize_t _PER_PAIR_LOOP_MAX = 4096
cdef int _DPOP_ID = _registry.KERNEL_IDS["dpop"]
cdef int _BCO_ID = _registry.KERNEL_IDS["bco_pair"]
cdef int _ALPHAPO_ID = _registry.KERNEL_IDS["alphapo"]
cdef double _DPOP_LAMBDA_DEFAULT = _general.DPOP_LAMBDA_DEFAULT
cdef tuple _OUTPUT_NAMES = _general.OUTPUT_NAMES
cdef tuple _PREFERENCE_ARG_NAMES = _general.PREFERENCE_ARG_NAMES
cdef tuple _DPO_LOSS_ARG_NAMES = _general.DPO_LOSS_ARG_NAMES
# Reductions, as codes.
cdef enum:
    MEAN, SUM, NONE


@cython.final
@cython.freelist(8)
cdef class PreferenceLossResult:
    """What :func:`preference_loss` returns.

    Attributes
    ----------
    loss : float or numpy.ndarray
        The reduced loss: a Python float for ``reduction="mean"`` or ``"sum"``; for
        ``reduction="none"`` the per-pair array (the same object as ``losses``).
    losses : numpy.ndarray or None
        Per-pair losses (None when ``per_pair_outputs`` leaves them out).
    chosen_rewards, rejected_rewards : numpy.ndarray or None
        Implicit rewards ``beta * (policy - reference)`` per pair (not rounded); None when
        ``per_pair_outputs`` leaves them out.
    grad_chosen, grad_rejected : numpy.ndarray or None
        Derivatives of the reduced loss with respect to ``chosen_logps`` and
        ``rejected_logps`` (per-pair derivatives of each pair's loss for ``"none"``), or None
        unless ``compute_grad=True``.
    metrics : dict of str to float
        TRL's names (built on first access, then the same dict): ``rewards/chosen``, ``rewards/rejected`` (means), ``rewards/accuracies``
        (share of pairs with chosen reward strictly above rejected), ``rewards/margins`` (mean
        of the difference), ``logps/chosen``, ``logps/rejected`` (means of the policy
        log-probs).
    """

    # The fields in their documented order (pattern matching: PreferenceLossResult(loss, ...)).
    __match_args__ = ("loss", "losses", "chosen_rewards", "rejected_rewards", "grad_chosen",
                      "grad_rejected", "metrics")

    cdef readonly object loss
    cdef readonly object losses
    cdef readonly object chosen_rewards
    cdef readonly object rejected_rewards
    cdef readonly object grad_chosen
    cdef readonly object grad_rejected
    cdef object _metrics
    cdef double _means[6]  # SUM_NAMES order from the chosen reward on; _metrics is None

    def __init__(self, loss, losses, chosen_rewards, rejected_rewards, grad_chosen,
                 grad_rejected, metrics):
        self.loss = loss
        self.losses = losses
        self.chosen_rewards = chosen_rewards
        self.rejected_rewards = rejected_rewards
        self.grad_chosen = grad_chosen
        self.grad_rejected = grad_rejected
        if not isinstance(metrics, dict):
            raise TypeError(f"metrics must be a dict, got {type(metrics).__name__}")
        self._metrics = metrics

    @property
    def metrics(self):
        """TRL's metric names and values (see the class docstring)."""
        if self._metrics is None:
            self._metrics = {
                "rewards/chosen": self._means[0],
                "rewards/rejected": self._means[1],
                "rewards/accuracies": self._means[3],
                "rewards/margins": self._means[2],
                "logps/chosen": self._means[4],
                "logps/rejected": self._means[5],
            }
        return self._metrics

    def __repr__(self):
        return (f"PreferenceLossResult(loss={self.loss!r}, losses={self.losses!r}, "
                f"chosen_rewards={self.chosen_rewards!r}, "
                f"rejected_rewards={self.rejected_rewards!r}, "
                f"grad_chosen={self.grad_chosen!r}, grad_rejected={self.grad_rejected!r}, "
                f"metrics={self.metrics!r})")

    def __reduce__(self):
        return (PreferenceLossResult, (self.loss, self.losses, self.chosen_rewards,
                                       self.rejected_rewards, self.grad_chosen,
                                       self.grad_rejected, self.metrics))


cdef PreferenceLossResult _pack(object loss, dict outputs, list means):
    """A result from the general path's pieces."""
    return PreferenceLossResult(
        loss, outputs["losses"], outputs["chosen_rewards"], outputs["rejected_rewards"],
        outputs.get("grad_chosen"), outputs.get("grad_rejected"), {
            "rewards/chosen": means[DPO_SUM_CHOSEN_REWARD],
            "rewards/rejected": means[DPO_SUM_REJECTED_REWARD],
            "rewards/accuracies": means[DPO_SUM_ACCURACY],
            "rewards/margins": means[DPO_SUM_MARGIN],
            "logps/chosen": means[DPO_SUM_CHOSEN_LOGP],
            "logps/rejected": means[DPO_SUM_REJECTED_LOGP],
        })


cdef inline int _array_type(object value, Py_ssize_t *length) noexcept:
    """NPY_DOUBLE / NPY_FLOAT for a NumPy array the kernels can read as it is or after a
    contiguous copy (exactly ndarray, 1-D, native byte order, aligned), else -1."""
    cdef cnp.ndarray array
    cdef int typenum
    if type(value) is not cnp.ndarray:
        return -1
    array = <cnp.ndarray>value
    if cnp.PyArray_NDIM(array) != 1:
        return -1
    typenum = cnp.PyArray_TYPE(array)
    if typenum != cnp.NPY_DOUBLE and typenum != cnp.NPY_FLOAT:
        return -1
    if not cnp.PyArray_ISBEHAVED_RO(array):  # aligned, native byte order
        return -1
    length[0] = cnp.PyArray_DIM(array, 0)
    return typenum


cdef inline bint _claim(cnp.ndarray array, char **starts, char **ends, int taken) noexcept:
    """Record the bytes of a C-contiguous 1-D array as taken (slot ``taken``) and say whether
    they were free: np.may_share_memory's bounds test against slots 0 .. taken-1, the check
    of the general path."""
    cdef char *first = <char *>cnp.PyArray_DATA(array)
    cdef char *last = first + cnp.PyArray_NBYTES(array)
    cdef int k
    starts[taken] = first
    ends[taken] = last
    for k in range(taken):
        if not (last <= starts[k] or ends[k] <= first or first == last
                or starts[k] == ends[k]):
            return False
    return True


cdef inline cnp.ndarray _per_pair(object value, Py_ssize_t n, double minimum):
    """Per-pair weights (minimum 0; lengths: _lengths) the kernels can read as they are:
    a float64 or float32 array accepted by _array_type (float32 ones converted a chunk at a
    time, as for _lengths), of length n, C-contiguous, every value finite and >= minimum (the
    general path's rule; it names a bad one). Else None."""
    cdef cnp.ndarray array
    cdef const double *values
    cdef const float *floats
    cdef Py_ssize_t i, length = -1
    cdef double low = minimum, high = minimum
    if (_array_type(value, &length) < 0 or length != n
            or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>value)):
        return None
    array = <cnp.ndarray>value
    if cnp.PyArray_TYPE(array) == cnp.NPY_FLOAT and n <= _PER_PAIR_LOOP_MAX:
        floats = <const float *>cnp.PyArray_DATA(array)
        with nogil:
            for i in range(n):  # (as the loop below)
                if floats[i] < low or floats[i] != floats[i]:
                    low = floats[i]
                if floats[i] > high or floats[i] != floats[i]:
                    high = floats[i]
    elif n > _PER_PAIR_LOOP_MAX:
        # NumPy's SIMD reductions (NaN propagates through both): this branchy loop costs
        # ~2 ns a value, which at 1e6 pairs was more than the kernel call itself
        low = array.min()
        high = array.max()
    else:
        values = <const double *>cnp.PyArray_DATA(array)
        with nogil:
            # a running min and max that a NaN takes over and keeps (it then fails both tests
            # below): once low is NaN, no comparison with it is true
            for i in range(n):
                if values[i] < low or values[i] != values[i]:
                    low = values[i]
                if values[i] > high or values[i] != values[i]:
                    high = values[i]
    if low >= minimum and high < INFINITY:
        return array
    return None


cdef inline int _side_type(cnp.ndarray array) noexcept:
    """The DPO_SIDE_* dtype of a side array the kernels convert per chunk (float64 as it is;
    float32, int64 and int32 as NumPy's cast to float64 gives them), else -1."""
    cdef int typenum = cnp.PyArray_TYPE(array)
    if typenum == cnp.NPY_DOUBLE:
        return DPO_SIDE_F64
    if typenum == cnp.NPY_FLOAT:
        return DPO_SIDE_F32
    if cnp.PyArray_ISSIGNED(array):  # (int64 is NPY_LONG or NPY_LONGLONG by platform)
        if cnp.PyArray_ITEMSIZE(array) == 8:
            return DPO_SIDE_I64
        if cnp.PyArray_ITEMSIZE(array) == 4:
            return DPO_SIDE_I32
    return -1


cdef inline cnp.ndarray _lengths(object value, Py_ssize_t n):
    """Per-pair token counts or margins the kernels can read as they are (exactly ndarray,
    1-D, of length n, C-contiguous, aligned, native byte order, a _side_type dtype: the usual
    int64 counts and float32 ones next to float32 log-probs too), else None. Their values are
    the kernel's to check: a count outside [1, inf) makes the loss sum NaN (csrc/chunk_body.h,
    dpo_length_mark), and the call goes to the general path, which names it; so no pass over
    them here."""
    cdef cnp.ndarray array
    if type(value) is not cnp.ndarray:
        return None
    array = <cnp.ndarray>value
    if (cnp.PyArray_NDIM(array) != 1 or cnp.PyArray_DIM(array, 0) != n
            or _side_type(array) < 0 or not cnp.PyArray_ISBEHAVED_RO(array)
            or not cnp.PyArray_IS_C_CONTIGUOUS(array)):
        return None
    return array


cdef inline void _set_side(DpoChunkArgs *args, int slot, cnp.ndarray array) noexcept:
    """Side array ``slot`` (0 chosen lengths, 1 rejected lengths, 2 margins, 3 weights) of
    args: the double pointer for float64, else the source the chunk entry points convert."""
    cdef int side_type = _side_type(array)
    if side_type == DPO_SIDE_F64:
        if slot == 0:
            args.chosen_lengths = <const double *>cnp.PyArray_DATA(array)
        elif slot == 1:
            args.rejected_lengths = <const double *>cnp.PyArray_DATA(array)
        elif slot == 2:
            args.gt_reward_margins = <const double *>cnp.PyArray_DATA(array)
        else:
            args.weights = <const double *>cnp.PyArray_DATA(array)
    else:
        args.side_sources[slot] = cnp.PyArray_DATA(array)
        args.side_types[slot] = side_type


cdef inline cnp.ndarray _readable(object value):
    """A C-contiguous view of an array accepted by _array_type (a copy if strided)."""
    cdef cnp.ndarray array = <cnp.ndarray>value
    if cnp.PyArray_IS_C_CONTIGUOUS(array):
        return array
    return cnp.PyArray_NewCopy(array, cnp.NPY_CORDER)


cdef cnp.ndarray _output(object out, str key, cnp.npy_intp *dims, int typenum, char **starts,
                         char **ends, int taken, int *found):
    """The caller's out[key] if the kernels can write it as it is (exactly ndarray, of the
    result dtype and length, C-contiguous, aligned, writeable, native byte order, overlapping
    no input and no earlier output; ``found`` counts it), a new array when key is not in out,
    else None with ``found`` made negative (the caller then hands the call over)."""
    cdef Py_ssize_t length = -1
    cdef PyObject *given = NULL
    if out is not None:
        given = PyDict_GetItem(<dict>out, key)  # borrowed; NULL: not there
    if given == NULL:
        array = cnp.PyArray_EMPTY(1, dims, typenum, 0)
        if out is not None:
            _claim(<cnp.ndarray>array, starts, ends, taken)
        return array
    array = <object>given
    if (_array_type(array, &length) != typenum or length != dims[0]
            or not cnp.PyArray_ISBEHAVED(<cnp.ndarray>array)
            or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>array)
            or not _claim(<cnp.ndarray>array, starts, ends, taken)):
        found[0] = -8  # (stays negative: at most 4 more keys are counted after this one)
        return None
    found[0] += 1
    return array


# per_pair_outputs as bits: what _wanted_outputs returns.
cdef enum:
    _WANT_LOSSES = 1
    _WANT_CHOSEN = 2
    _WANT_REJECTED = 4


cdef inline int _wanted_outputs(object value):
    """The per-pair outputs a call asks for, as _WANT_* bits: all three for None, those named
    by a tuple or list of their names (repeats allowed, as the general path allows them); -1
    for anything else, which the general path checks and names."""
    cdef int wanted = 0
    if value is None:
        return _WANT_LOSSES | _WANT_CHOSEN | _WANT_REJECTED
    if type(value) is not tuple and type(value) is not list:
        return -1
    for name in value:
        if type(name) is not str:
            return -1
        if name == "losses":
            wanted |= _WANT_LOSSES
        elif name == "chosen_rewards":
            wanted |= _WANT_CHOSEN
        elif name == "rejected_rewards":
            wanted |= _WANT_REJECTED
        else:
            return -1
    return wanted


cdef inline bint _scalar(object value, double *out):
    """A scalar parameter as the general path takes it (``float(value)``), where that needs no
    question: a float, a NumPy float64 (whose float() is its value) or an int within double's
    range (``label_smoothing=0``, ``beta=1``). Else False: the general path decides (bools,
    other types, ints too large, which it names)."""
    if type(value) is float or type(value) is _NUMPY_FLOAT64:
        out[0] = PyFloat_AS_DOUBLE(value)
        return True
    if type(value) is int:
        try:
            out[0] = float(value)
        except OverflowError:
            return False
        return True
    return False


cdef object _fast_call(object chosen, object rejected, object ref_chosen, object ref_rejected,
                       object beta, object loss_type, object label_smoothing,
                       object discopop_tau, object simpo_gamma, object f_divergence_type,
                       object f_alpha_divergence_coef, object reduction, object compute_grad,
                       object check_finite, object n_threads, object out,
                       bint float64_only, object dpop_lambda, object bco_delta,
                       object alphapo_alpha,
                       object weights, object chosen_lengths, object rejected_lengths,
                       object gt_reward_margins=None, object gt_reward_scale=1.0,
                       object per_pair_outputs=None):
    """The result of the common call, or None: then the general path takes the call (and
    raises for what is wrong)."""
    cdef Py_ssize_t n = 0, other = 0
    cdef int typenum, kernel_id, reduce, threads, k, reads = _PLAIN
    cdef double beta_value = 0.0, smoothing = 0.0, limit, tau = 0.0, gt_scale = 1.0
    cdef double gamma = 0.0, dpop_value = 0.0, bco_value = 0.0, alpha_value = 0.0
    cdef double divergence_coef = 0.0
    cdef double token_count = 0.0, sft_value = 0.0, slope
    cdef double sums[DPO_NSUMS]
    cdef bint want_grad, strided = False, reference
    cdef object entry, given
    cdef cnp.ndarray chosen_array, rejected_array, ref_chosen_array = None
    cdef cnp.ndarray ref_rejected_array = None, grad_chosen = None, grad_rejected = None
    cdef cnp.ndarray losses = None, chosen_rewards = None, rejected_rewards = None
    cdef cnp.ndarray weights_array = None
    cdef int wanted = _wanted_outputs(per_pair_outputs)
    cdef cnp.ndarray chosen_lengths_array = None, rejected_lengths_array = None
    cdef cnp.ndarray gt_array = None
    cdef cnp.npy_intp dims[1]
    cdef char *starts[13]
    cdef char *ends[13]
    cdef bint normalized = chosen_lengths is not None
    cdef int taken, found
    cdef DpoChunkArgs args
    cdef PreferenceLossResult result

    # Scalars: exactly the types and ranges the general path accepts as they are.
    if type(loss_type) is not str:
        return None
    if not (_scalar(beta, &beta_value) and _scalar(gt_reward_scale, &gt_scale)
            and _scalar(label_smoothing, &smoothing) and _scalar(discopop_tau, &tau)
            and _scalar(simpo_gamma, &gamma) and _scalar(dpop_lambda, &dpop_value)
            and _scalar(bco_delta, &bco_value) and _scalar(alphapo_alpha, &alpha_value)
            and _scalar(f_alpha_divergence_coef, &divergence_coef)):
        return None
    if not 1e-300 <= beta_value <= 1e300:
        return None
    entry = _FAST_TYPES.get(loss_type)
    if entry is not None and (<tuple>entry)[3] != _PLAIN:
        # sft: the chosen lengths only; rpo_sq: the margins (finite scale), no lengths
        reads = (<tuple>entry)[3]
        normalized = False
        if reads == _CONST and (chosen_lengths is None or rejected_lengths is not None):
            return None
        if reads == _GT and (gt_reward_margins is None or chosen_lengths is not None
                             or rejected_lengths is not None or not isfinite(gt_scale)):
            return None
    elif normalized != (rejected_lengths is not None):
        return None
    else:
        entry = (_FAST_NORMALIZED_TYPES if normalized else _FAST_TYPES).get(loss_type)
        if entry is None:
            return None
    if reads != _GT and (gt_reward_margins is not None or gt_scale != 1.0):
        return None
    kernel_id = (<tuple>entry)[0]
    limit = (<tuple>entry)[1]
    if limit > 0.0:
        # (0 for a type that needs > 0: the general path raises the error)
        if not 0.0 <= smoothing < limit or (smoothing == 0.0 and (<tuple>entry)[2]):
            return None
    elif smoothing != 0.0:
        return None
    else:
        smoothing = 0.0  # (-0.0 too, as the general path returns)
    if not 1e-300 <= tau <= 1e300:
        return None
    if not isfinite(gamma):
        return None
    # The parameters of one loss type: finite (lambda >= 0) for it, the default otherwise.
    if kernel_id == _DPOP_ID:
        if not (isfinite(dpop_value) and dpop_value >= 0):
            return None
    elif dpop_value != _DPOP_LAMBDA_DEFAULT:
        return None
    if kernel_id == _BCO_ID:
        if not isfinite(bco_value):
            return None
    elif bco_value != 0.0:
        return None
    if kernel_id == _ALPHAPO_ID:
        # 0, or a magnitude in [1e-300, 1e300] (log|alpha| must be finite)
        if not (alpha_value == 0.0 or 1e-300 <= fabs(alpha_value) <= 1e300):
            return None
    elif alpha_value != 0.0:
        return None
    if not fabs(divergence_coef) <= 1e300:
        return None
    if type(f_divergence_type) is not str or f_divergence_type != "reverse_kl":
        return None
    if type(reduction) is not str:
        return None
    if reduction == "mean":
        reduce = MEAN
    elif reduction == "sum":
        reduce = SUM
    elif reduction == "none":
        reduce = NONE
    else:
        return None
    if wanted < 0 or (reduce == NONE and not wanted & _WANT_LOSSES):
        return None
    if compute_grad is True:
        want_grad = True
    elif compute_grad is False:
        want_grad = False
    else:
        return None
    if check_finite is not True and check_finite is not False:
        return None

    # Arrays: one dtype, one length, references both given or both not.
    typenum = _array_type(chosen, &n)
    if typenum < 0 or n == 0 or (float64_only and typenum != cnp.NPY_DOUBLE):
        return None
    if _array_type(rejected, &other) != typenum or other != n:
        return None
    reference = ref_chosen is not None
    if reference:
        if (_array_type(ref_chosen, &other) != typenum or other != n
                or _array_type(ref_rejected, &other) != typenum or other != n):
            return None
    elif ref_rejected is not None:
        return None
    if normalized:
        if reference and (<tuple>entry)[3]:  # a reference-free type: the general path refuses
            return None
        chosen_lengths_array = _lengths(chosen_lengths, n)
        rejected_lengths_array = _lengths(rejected_lengths, n)
        if chosen_lengths_array is None or rejected_lengths_array is None:
            return None
    elif reads == _CONST:
        chosen_lengths_array = _lengths(chosen_lengths, n)
        if chosen_lengths_array is None:
            return None
    elif reads == _GT:
        gt_array = _lengths(gt_reward_margins, n)  # (the kernel checks scale * each is finite)
        if gt_array is None:
            return None
    if weights is not None:
        weights_array = _per_pair(weights, n, 0.0)
        if weights_array is None:
            return None
        if reads == _CONST and cnp.PyArray_TYPE(weights_array) != cnp.NPY_DOUBLE:
            return None  # (sft's weight total: the general path sums their float64 cast)

    if n_threads is None:
        threads = 1
    elif type(n_threads) is int and n_threads >= 1:
        threads = 1
    else:
        return None
    if n >= _PARALLEL_MIN_ROWS:
        threads = _threads.resolve_n_threads(n_threads, n)

    chosen_array = _readable(chosen)
    rejected_array = _readable(rejected)
    strided = chosen_array is not chosen or rejected_array is not rejected
    if reference:
        ref_chosen_array = _readable(ref_chosen)
        ref_rejected_array = _readable(ref_rejected)
        strided = (strided or ref_chosen_array is not ref_chosen
                   or ref_rejected_array is not ref_rejected)

    # Outputs: allocated, or the caller's out= arrays when each is exactly right.
    dims[0] = n
    found = taken = 0
    if out is not None:
        if type(out) is not dict or strided:
            return None
        for given in (chosen_array, rejected_array, ref_chosen_array, ref_rejected_array,
                      weights_array, chosen_lengths_array, rejected_lengths_array, gt_array):
            if given is not None:
                _claim(<cnp.ndarray>given, starts, ends, taken)
                taken += 1
    # (A per-pair output the call leaves out is not made: the kernels write it to scratch.)
    if wanted & _WANT_LOSSES:
        losses = _output(out, "losses", dims, typenum, starts, ends, taken, &found)
        taken += 1
    if wanted & _WANT_CHOSEN:
        chosen_rewards = _output(out, "chosen_rewards", dims, typenum, starts, ends, taken,
                                 &found)
        taken += 1
    if wanted & _WANT_REJECTED:
        rejected_rewards = _output(out, "rejected_rewards", dims, typenum, starts, ends, taken,
                                   &found)
        taken += 1
    if want_grad:
        grad_chosen = _output(out, "grad_chosen", dims, typenum, starts, ends, taken, &found)
        grad_rejected = _output(out, "grad_rejected", dims, typenum, starts, ends, taken + 1,
                                &found)
    # An out= array we cannot write as it is, or a key we did not take (unknown, a gradient
    # without compute_grad, an output the call leaves out): the general path stages it or
    # names it.
    if found < 0 or (out is not None and found != len(<dict>out)):
        return None

    if reads == _CONST:
        # sft's batch constant and gradient offsets, as _general._run_kernel takes them (the
        # same NumPy sums: np.sum(a, dtype=d) is _add_reduce(a, None, d, None), without ~2 us
        # of Python around it); a value that is not finite: the general path's careful way.
        # Integer counts (the usual ones) with a sum below 2^52: their exact sum, which is
        # np.sum's, checked in the same pass; then the kernel need not read them. Else the
        # kernel checks their values (dpo_length_mark).
        token_count = exact_count_sum_typed(cnp.PyArray_DATA(chosen_lengths_array),
                                            _side_type(chosen_lengths_array), n)
        if token_count >= 1.0:
            chosen_lengths_array = None
        elif _side_type(chosen_lengths_array) != DPO_SIDE_F64:
            return None  # (the general path sums their float64 cast in NumPy's order)
        else:
            token_count = float(_add_reduce(chosen_lengths_array, None, None, None))
        if not 1.0 <= token_count < INFINITY:  # (counts >= 1: at least 1)
            return None
        sft_value = -float(_add_reduce(chosen_array, None, np.float64, None)) / token_count
        if not isfinite(sft_value):
            return None
        slope = 1.0 * (-1.0 / token_count)

    init_args(&args, beta_value, smoothing, tau)
    if reads == _CONST:
        args.params.sft_value = sft_value
        if reduce == NONE:
            args.grad_chosen_pair_offset = slope
        else:
            args.grad_chosen_offset = slope * (
                (<double>n if weights_array is None
                 else float(_add_reduce(weights_array, None, None, None)))
                / (<double>n if reduce == MEAN else 1.0))
    elif reads == _GT:
        _set_side(&args, 2, gt_array)
        args.params.gt_reward_scale = gt_scale
    args.params.dpop_lambda = dpop_value
    args.params.bco_delta = bco_value
    if kernel_id == _ALPHAPO_ID:
        set_alphapo_alpha(&args.params, alpha_value)
    args.loss_type = kernel_id
    args.grad_divisor = <double>n if reduce == MEAN else 1.0
    args.chosen = cnp.PyArray_DATA(chosen_array)
    args.rejected = cnp.PyArray_DATA(rejected_array)
    if reference:
        args.ref_chosen = cnp.PyArray_DATA(ref_chosen_array)
        args.ref_rejected = cnp.PyArray_DATA(ref_rejected_array)
    if weights_array is not None:
        _set_side(&args, 3, weights_array)
    args.params.simpo_gamma = gamma
    if normalized:
        _set_side(&args, 0, chosen_lengths_array)
        _set_side(&args, 1, rejected_lengths_array)
        args.normalized_rewards = (<tuple>entry)[4]
    elif reads == _CONST and chosen_lengths_array is not None:
        _set_side(&args, 0, chosen_lengths_array)
    if losses is not None:
        args.losses = cnp.PyArray_DATA(losses)
    if chosen_rewards is not None:
        args.chosen_rewards = cnp.PyArray_DATA(chosen_rewards)
    if rejected_rewards is not None:
        args.rejected_rewards = cnp.PyArray_DATA(rejected_rewards)
    if want_grad:
        args.grad_chosen = cnp.PyArray_DATA(grad_chosen)
        args.grad_rejected = cnp.PyArray_DATA(grad_rejected)
    run_loss(&args, n, threads, typenum == cnp.NPY_FLOAT, sums)
    # A non-finite sum: a NaN/inf input (an error, or check_finite=False), or a sum of finite
    # terms that overflowed (means taken the slow way). The general path redoes the call.
    if not isfinite(sums[0] + sums[1] + sums[2] + sums[3] + sums[4] + sums[5] + sums[6]):
        return None

    result = PreferenceLossResult.__new__(PreferenceLossResult)
    if reduce == MEAN:
        result.loss = sums[DPO_SUM_LOSS] / n
    elif reduce == SUM:
        result.loss = sums[DPO_SUM_LOSS]
    else:
        result.loss = losses
    result.losses = losses
    result.chosen_rewards = chosen_rewards
    result.rejected_rewards = rejected_rewards
    result.grad_chosen = grad_chosen
    result.grad_rejected = grad_rejected
    for k in range(6):
        result._means[k] = sums[DPO_SUM_CHOSEN_REWARD + k] / n
    return result


def preference_loss(chosen_logps: Any, rejected_logps: Any, ref_chosen_logps: Any = None,
                    ref_rejected_logps: Any = None, *, beta: float = 0.1,
                    loss_type: str | Sequence[str] = "sigmoid",
                    loss_weights: Sequence[float] | None = None, label_smoothing: float = 0.0,
                    discopop_tau: float = 0.05, simpo_gamma: float = 0.5,
                    f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = 1.0,
                    chosen_lengths: Any = None, rejected_lengths: Any = None,
                    weights: Any = None, reduction: str = "mean", compute_grad: bool = False,
                    check_finite: bool = True, n_threads: int | None = None,
                    out: Mapping[str, np.ndarray] | None = None,
                    dpop_lambda: float = _general.DPOP_LAMBDA_DEFAULT,
                    bco_delta: float = 0.0,
                    alphapo_alpha: float = 0.0, gt_reward_margins: Any = None,
                    gt_reward_scale: float = 1.0,
                    per_pair_outputs: Collection[str] | None = None) -> PreferenceLossResult:
    """Pairwise preference loss (DPO and family) over arrays, in one fused compiled pass.

    With log-ratios ``c = chosen_logps - ref_chosen_logps`` and
    ``r = rejected_logps - ref_rejected_logps`` and ``z = beta * (c - r)``, the ``"sigmoid"``
    loss (DPO) of a pair is ``-(1 - eps) * log(sigmoid(z)) - eps * log(sigmoid(-z))`` with
    ``eps = label_smoothing`` (conservative DPO, as in the DPO authors' code; ``eps = 0`` is
    plain DPO). Every loss type is evaluated stably in double precision: finite inputs never
    give NaN, and ``|z|`` up to 1e6 and beyond gives the exact limits (or ``inf`` where the
    value itself overflows).

    Parameters
    ----------
    chosen_logps, rejected_logps : array_like, shape (n,)
        Policy log-probabilities of the chosen and rejected responses (summed over tokens).
    ref_chosen_logps, ref_rejected_logps : array_like, shape (n,), optional
        The same under the reference model. Both None (the default): reference-free, the
        log-ratios are taken against 0.
    beta : float, default 0.1
        Inverse temperature; finite, in [1e-300, 1e300].
    loss_type : str or sequence of str, default "sigmoid"
        The per-pair loss (formulas, sources and differences from TRL in the README's loss
        table): ``"sigmoid"`` (DPO), ``"hinge"`` (SLiC), ``"ipo"`` (IPO; summed log-ratios,
        or length-normalised when both lengths are given), ``"exo_pair"``, ``"nca_pair"``,
        ``"robust"`` (rDPO), ``"bco_pair"``, ``"sppo_hard"``, ``"aot"``, ``"aot_unpaired"``
        (sorted across the batch), ``"apo_zero"``, ``"apo_down"``, ``"discopop"``, ``"sft"``
        (the batch's negative log-likelihood per chosen token), ``"sigmoid_norm"``,
        ``"simpo"``, ``"dpop"`` (DPO-Positive), ``"orpo"`` (ORPO's odds-ratio term:
        reference-free, both lengths, log-probs below 0), ``"alphapo"`` (AlphaPO: SimPO on
        rewards shaped by ``alphapo_alpha``), ``"rpo_sq"``, ``"rpo_fwd_kl"``, ``"rpo_bwd_kl"``
        (NeMo-Aligner's reward-aware losses, with ``gt_reward_margins``). A list of distinct names combines them: each pair's loss is the
        ``loss_weights``-weighted sum of the listed losses (TRL's MPO / RPO recipes, e.g.
        ``["sigmoid", "sft"]``).
    loss_weights : sequence of float, optional
        One finite weight per listed loss type; default all 1.
    label_smoothing : float, default 0.0
        ``eps``: for ``"sigmoid"``, ``"robust"``, ``"aot"``, ``"aot_unpaired"``,
        ``"simpo"`` and ``"alphapo"`` in ``[0, 0.5)``; for ``"exo_pair"`` in ``(0, 1)``: it must be set
        (the EXO paper recommends 1e-3; 0 raises ValueError, as in TRL). In a list it
        applies to the types that use it; a non-zero value with no such type is refused.
    discopop_tau : float, default 0.05
        DiscoPOP's temperature (TRL's default); in [1e-300, 1e300].
    simpo_gamma : float, default 0.5
        SimPO's target reward margin (TRL's ``CPOConfig`` default); also AlphaPO's.
    f_divergence_type : {"reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"}
        TRL's f-divergence: the log-ratios ``x`` become scores ``s(x)`` (``x``;
        ``-exp(-x)``; ``log(sigmoid(x))``; ``exp((alpha - 1) x) / (alpha - 1)``: TRL 1.16's
        scores) in ``"sigmoid"``, ``"hinge"``, ``"ipo"``, ``"exo_pair"``, ``"robust"``,
        ``"discopop"`` and ``"sigmoid_norm"``; other types refuse a non-default divergence
        (``"sft"`` in a list is unaffected). Raw types use ``s(c) - s(r)``; the
        length-normalised ones (``"sigmoid_norm"``, ``"ipo"`` with lengths) use
        ``s(c)/nc - s(r)/nr`` as TRL does: the score of the summed log-ratio, then the
        division.
    f_alpha_divergence_coef : float, default 1.0
        ``alpha`` of ``"alpha_divergence"``, in ``[-1e300, 1e300]``; within 1e-6 of 1 it is
        reverse KL (TRL's limit rule). The raw difference is taken as
        ``(expm1(a c) - expm1(a r)) / a`` with ``a = alpha - 1``, accurate for ``alpha``
        next to 1 too.
    chosen_lengths, rejected_lengths : array_like, shape (n,), optional
        Completion lengths in tokens (finite, >= 1): needed by ``"sigmoid_norm"`` and
        ``"simpo"`` (both) and ``"sft"`` (chosen); ``"ipo"`` normalises by them when both
        are given; other types ignore them. Contiguous float64, float32, int64 and int32
        arrays (``mask.sum(-1)``'s int64 counts, say) are read as they are, a chunk at a
        time; other dtypes are cast to float64 first. The values are the same either way.
    weights : array_like, shape (n,), optional
        Per-pair multipliers (finite, >= 0) applied to each pair's loss before the
        reduction (WPO-style weights computed elsewhere); ``"mean"`` stays the plain mean.
        Contiguous float64 and float32 arrays are read as they are (float32 a chunk at a
        time); other dtypes are cast to float64 first, with the same values.
    reduction : {"mean", "sum", "none"}, default "mean"
        How ``loss`` reduces the per-pair losses.
    compute_grad : bool, default False
        Also return the derivatives of the reduced loss with respect to ``chosen_logps`` and
        ``rejected_logps``, computed in the same pass (for ``reduction="none"``, each pair's
        derivative of its own loss; for the batch-coupled ``"aot_unpaired"`` the rejected
        derivative of a sorted position goes to the pair whose log-ratio has that rank).
    check_finite : bool, default True
        Raise ValueError (naming the input and the first bad index) if any input holds NaN
        or inf. The check is folded into the kernel's pass and costs nothing measurable.
    n_threads : int, optional
        OpenMP threads. None: the CPUs this process may use (affinity mask, cgroup quota,
        ``OMP_NUM_THREADS``). Inputs below a measured size run on one thread either way.
        Results are bit-identical for every value.
    out : dict of str to numpy.ndarray, optional
        Preallocated outputs, keyed by any of ``"losses"``, ``"chosen_rewards"``,
        ``"rejected_rewards"`` and, with ``compute_grad=True``, ``"grad_chosen"``,
        ``"grad_rejected"``: C-contiguous, writeable, of the result dtype and shape ``(n,)``,
        overlapping no input. Missing keys are allocated. When the call raises (a NaN input,
        say), what these arrays hold is unspecified: the kernel writes rows as it goes and
        the error is found at the end of the pass.
    dpop_lambda : float, default 50.0
        DPO-Positive's penalty weight ``lambda`` (the paper's value), finite and >= 0:
        ``"dpop"`` is ``-log(sigmoid(beta * (c - r - lambda * max(0, -c))))`` (Pal et al.
        2024, Eq. 3; ``-c`` is ``ref_chosen_logps - chosen_logps``). At ``c = 0`` its
        gradient takes the one-sided value without the penalty. Another value with no
        ``"dpop"`` in ``loss_type`` is refused.
    bco_delta : float, default 0.0
        BCO's reward shift ``delta`` for ``"bco_pair"``: ``-log(sigmoid(beta * c - delta))
        - log(sigmoid(-(beta * r - delta)))``, finite; 0 is TRL's ``DPOTrainer`` form. TRL's
        BCO keeps ``delta`` as the running mean of each step's mean reward, updated before
        the step's loss: ``m = beta * mean(concat(c, r))``, ``k += 1``, ``delta += (m -
        delta) / k`` (its ``RunningMoments``), then pass ``bco_delta=delta``. Another value
        with no ``"bco_pair"`` in ``loss_type`` is refused.
    alphapo_alpha : float, default 0.0
        AlphaPO's reward shape ``alpha`` (TRL's ``CPOConfig.alpha``; Gupta et al. 2025) for
        ``"alphapo"``: 0, or of magnitude in ``[1e-300, 1e300]``. With the average log-probs
        ``a = logps / lengths``, the rewards are ``r(a) = (1 - exp(-alpha * a)) / alpha``
        (TRL's ``(1 - p**(-alpha)) / alpha`` with ``p = exp(a)``; ``r(a) = a`` at 0) and the
        loss is SimPO's of ``u = beta * (r(a_c) - r(a_r)) - simpo_gamma``, so ``alpha = 0``
        is ``"simpo"``. TRL's ``CPOConfig(loss_type="alphapo", alpha=x)`` (``"simpo"`` with
        ``cpo_alpha=0``) is ``loss_type="alphapo", alphapo_alpha=x``. Where ``exp(-alpha *
        a)`` overflows, the margin comes from logarithms: the loss is inf only where its true
        value overflows double, and no finite input gives NaN. Another value with no
        ``"alphapo"`` in ``loss_type`` is refused.
    gt_reward_margins : array_like, shape (n,), optional
        Each pair's ground-truth reward of the chosen response minus that of the rejected
        one (finite; e.g. a reward model's scores): required by, and only by, NeMo-Aligner's
        reward-aware losses (RPO, Nemotron-4 340B report). With ``z = beta * (c - r)`` (NeMo's
        ``ref_policy_kl_penalty * rewards_delta``) and ``g = gt_reward_scale *
        gt_reward_margins``: ``"rpo_sq"`` is ``(z - g)**2``; ``"rpo_bwd_kl"`` is the
        Bernoulli KL ``KL(sigmoid(g) || sigmoid(z))`` = ``sigmoid(g) * (log(sigmoid(g)) -
        log(sigmoid(z))) + sigmoid(-g) * (log(sigmoid(-g)) - log(sigmoid(-z)))``;
        ``"rpo_fwd_kl"`` is ``KL(sigmoid(z) || sigmoid(g))``. Gradients are with respect to
        the log-probs only (the margins are constants). NeMo's ``preference_average_log_probs``
        corresponds to passing average log-probs.
    gt_reward_scale : float, default 1.0
        NeMo-Aligner's ``gt_reward_scale``, finite; ``gt_reward_scale * gt_reward_margins``
        must be finite. Another value with no ``"rpo_*"`` type in ``loss_type`` is refused.
    per_pair_outputs : collection of str, optional
        Which per-pair arrays to return, among ``"losses"``, ``"chosen_rewards"`` and
        ``"rejected_rewards"``; None (the default) returns all three, ``()`` none. The loss,
        the metrics and the gradients do not change. Leaving an array out saves its memory
        traffic and the page faults of a fresh array (at N = 1e7 float64, 80 MB each): the
        kernels write it to a small scratch buffer instead. ``reduction="none"`` needs
        ``"losses"``; an ``out`` array for an output left out is refused.

    Returns
    -------
    PreferenceLossResult
        ``loss``, ``losses``, ``chosen_rewards``, ``rejected_rewards``, ``grad_chosen``,
        ``grad_rejected`` and ``metrics`` (TRL's names); see :class:`PreferenceLossResult`.

    Notes
    -----
    Rewards are ``beta * c`` and ``beta * r`` for every loss type (``"simpo"``, ``"orpo"``:
    ``beta * chosen_logps / chosen_lengths`` and the same for rejected; ``"alphapo"``:
    ``beta * r(a)``, TRL's), in the input order.
    ``"sft"`` and the sorted types couple the pairs of a batch, so ``dpo-fast score`` and
    ``dpo_fast.dask`` (which see data in pieces) refuse them.

    dtypes: if every input is float32 (or float16) the outputs are float32; otherwise
    (float64, integer or mixed inputs) they are float64. The arithmetic and all sums are
    double precision either way, so float32 outputs are the float64 results rounded once.
    Strided and read-only inputs are accepted (strided ones are copied); inputs are never
    written.

    Examples
    --------
    >>> import numpy as np
    >>> result = preference_loss(np.array([-2.0, -1.5]), np.array([-3.0, -2.5]),
    ...                          np.array([-2.5, -2.0]), np.array([-2.5, -2.0]), beta=0.5)
    >>> round(result.loss, 6)
    0.474077
    >>> result.chosen_rewards
    array([0.25, 0.25])
    >>> result.metrics["rewards/accuracies"]
    1.0
    """
    cdef object result
    # CPU tensors that do not require grad (log-probs, or the lengths and weights that
    # dpo_fast.torch passes on as they are), as the views the general path would take (its
    # errors for the others, naming the argument), so that they run compiled too.
    chosen_logps = _tensor_view(chosen_logps, "chosen_logps")
    rejected_logps = _tensor_view(rejected_logps, "rejected_logps")
    ref_chosen_logps = _tensor_view(ref_chosen_logps, "ref_chosen_logps")
    ref_rejected_logps = _tensor_view(ref_rejected_logps, "ref_rejected_logps")
    weights = _tensor_view(weights, "weights")
    chosen_lengths = _tensor_view(chosen_lengths, "chosen_lengths")
    rejected_lengths = _tensor_view(rejected_lengths, "rejected_lengths")
    gt_reward_margins = _tensor_view(gt_reward_margins, "gt_reward_margins")
    if loss_weights is None:
        # Lists of floats (lengths and margins: or of ints) run compiled too; a call the fast path leaves
        # gets the arguments as they were given, so every error is the general path's.
        result = _fast_call(_list_array(chosen_logps, False), _list_array(rejected_logps, False),
                            _list_array(ref_chosen_logps, False),
                            _list_array(ref_rejected_logps, False),
                            beta, loss_type, label_smoothing, discopop_tau, simpo_gamma,
                            f_divergence_type, f_alpha_divergence_coef, reduction,
                            compute_grad, check_finite, n_threads, out, False, dpop_lambda,
                            bco_delta, alphapo_alpha, _list_array(weights, False),
                            _list_array(chosen_lengths, True),
                            _list_array(rejected_lengths, True),
                            _list_array(gt_reward_margins, True), gt_reward_scale,
                            per_pair_outputs)
        if result is not None:
            return result
    loss, outputs, means = _general.run(
        (chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps),
        _PREFERENCE_ARG_NAMES, beta=beta, loss_type=loss_type,
        label_smoothing=label_smoothing, discopop_tau=discopop_tau, reduction=reduction,
        compute_grad=compute_grad, check_finite=check_finite, n_threads=n_threads, out=out,
        loss_weights=loss_weights, simpo_gamma=simpo_gamma,
        f_divergence_type=f_divergence_type, f_alpha_divergence_coef=f_alpha_divergence_coef,
        chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths, weights=weights,
        dpop_lambda=dpop_lambda, bco_delta=bco_delta, alphapo_alpha=alphapo_alpha,
        gt_reward_margins=gt_reward_margins, gt_reward_scale=gt_reward_scale,
        per_pair_outputs=per_pair_outputs)
    return _pack(loss, outputs, means)


def dpo_loss_arrays(chosen_policy, rejected_policy, chosen_ref, rejected_ref, beta):
    """dpo_loss for the inputs its list reader does not take (NumPy arrays, long or other
    sequences): always float64, like the list reader, so both give the same numbers."""
    cdef object result
    cdef object loss, rewards
    for value, name in zip((chosen_ref, rejected_ref), _DPO_LOSS_ARG_NAMES[2:]):
        if value is None:
            raise TypeError(f"{name} is required, got None")
    # (Lists and tuples here are longer than dpo_loss's list reader takes.)
    result = _fast_call(_list_array(chosen_policy, False), _list_array(rejected_policy, False),
                        _list_array(chosen_ref, False), _list_array(rejected_ref, False), beta,
                        "sigmoid", 0.0, 0.05, 0.5, "reverse_kl", 1.0, "mean", False, True,
                        None, None, True, _DPOP_LAMBDA_DEFAULT, 0.0, 0.0, None, None, None)
    if result is None:
        loss, outputs, means = _general.run(
            (chosen_policy, rejected_policy, chosen_ref, rejected_ref), _DPO_LOSS_ARG_NAMES,
            beta=beta, loss_type="sigmoid", label_smoothing=0.0, discopop_tau=0.05,
            reduction="mean", compute_grad=False, check_finite=True, n_threads=None,
            out=None, force_float64=True)
        result = _pack(loss, outputs, means)
    return {"loss": round4((<PreferenceLossResult>result).loss),
            "chosen_rewards": round4_list((<PreferenceLossResult>result).chosen_rewards),
            "rejected_rewards": round4_list((<PreferenceLossResult>result).rejected_rewards)}
