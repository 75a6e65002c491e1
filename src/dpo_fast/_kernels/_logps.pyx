# cython: language_level=3
"""Compiled drivers for the fused log-softmax rows (dpo_fast.sequence_logps).

Thin layer: dpo_fast.logps validates and allocates; these functions pick the rows that count,
run the C row loops of csrc/logps_row.h over them in parallel (OpenMP dynamic schedule over
small groups of rows, so a busy core does not stall the others) and reduce per-row results
per sequence in row order. Every row is computed the same way whatever the thread count and
the sums are taken afterwards in a fixed order, so the results do not depend on n_threads.
"""

from cython.parallel cimport prange
cimport numpy as cnp
from libc.math cimport INFINITY, isfinite
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from dpo_fast._kernels._pairwise cimport simd_level_id as chosen_simd_level

cdef extern from "logps_api.h" nogil:
    enum:
        DPO_LOGPS_NOT_ARGMAX
        DPO_LOGPS_ARGMAX
        DPO_LOGPS_NONFINITE

    ctypedef struct DpoLogpsArgs:
        const void *logits
        Py_ssize_t stride_b
        Py_ssize_t stride_t
        Py_ssize_t n_t
        Py_ssize_t vocab
        const int64_t *labels
        double inv_temperature
        int simd_level
        double *token_logps
        double *logsumexp
        double *entropy
        double *log_sum_p2
        double *logit_sum
        uint8_t *status
        const double *row_weight
        const double *lse_in
        void *grad
        int grad_zeroed
        int grad_stream

    void dpo_logps_forward_f32(const DpoLogpsArgs *args, const int64_t *rows, Py_ssize_t k0,
                               Py_ssize_t k1)
    void dpo_logps_forward_f64(const DpoLogpsArgs *args, const int64_t *rows, Py_ssize_t k0,
                               Py_ssize_t k1)
    void dpo_logps_backward_f32(const DpoLogpsArgs *args, Py_ssize_t r0, Py_ssize_t r1)
    void dpo_logps_backward_f64(const DpoLogpsArgs *args, Py_ssize_t r0, Py_ssize_t r1)

    enum:
        DPO_LINEAR_STATE

    ctypedef struct DpoLinearArgs:
        void *tile
        Py_ssize_t ld
        Py_ssize_t n_cols
        Py_ssize_t v0
        const void *bias
        const int64_t *labels
        double inv_temperature
        int want_extras
        int simd_level
        double *state
        uint8_t *status
        const double *row_scale
        const double *lse

    void dpo_linear_fold_f32(const DpoLinearArgs *a, Py_ssize_t i0, Py_ssize_t i1)
    void dpo_linear_fold_f64(const DpoLinearArgs *a, Py_ssize_t i0, Py_ssize_t i1)
    void dpo_linear_tile_grad_f32(const DpoLinearArgs *a, Py_ssize_t i0, Py_ssize_t i1)
    void dpo_linear_tile_grad_f64(const DpoLinearArgs *a, Py_ssize_t i0, Py_ssize_t i1)

ctypedef fused floating:
    float
    double

cnp.import_array()

NOT_ARGMAX = DPO_LOGPS_NOT_ARGMAX
ARGMAX = DPO_LOGPS_ARGMAX
NONFINITE = DPO_LOGPS_NONFINITE
LINEAR_STATE = DPO_LINEAR_STATE
# Gradients of at least this many bytes are written with streaming stores (see backward).
cdef enum:
    STREAM_GRAD_BYTES = 33554432
STREAM_GRAD_MIN_BYTES = STREAM_GRAD_BYTES


def simd_level_id():
    """The SIMD level (csrc/simd.h numbering) the row loops run now: the package's one chosen
    level (dpo_fast._kernels._pairwise), read on every call."""
    return chosen_simd_level()

# A parallel task is a run of consecutive rows: the row loops prefetch the next row of their
# task while they compute, so longer tasks keep memory busy. At most TASK_MAX_ELEMENTS logits
# and at least TASKS_PER_THREAD tasks per thread (a descheduled core then holds up little).
cdef enum:
    TASK_MAX_ELEMENTS = 262144
    TASKS_PER_THREAD = 8


cdef inline Py_ssize_t _rows_per_task(Py_ssize_t n_rows, Py_ssize_t vocab,
                                      int n_threads) noexcept nogil:
    cdef Py_ssize_t by_size = max(<Py_ssize_t>1, TASK_MAX_ELEMENTS // vocab)
    cdef Py_ssize_t by_balance = max(<Py_ssize_t>1, n_rows // (n_threads * TASKS_PER_THREAD))
    return min(by_size, by_balance)


cdef inline Py_ssize_t _element_stride(Py_ssize_t byte_stride, Py_ssize_t itemsize) except? -1:
    if byte_stride % itemsize:
        raise ValueError("logits strides must be multiples of the item size")
    return byte_stride // itemsize


cdef inline int _check_rows(Py_ssize_t vocab_stride, Py_ssize_t itemsize) except -1:
    # Any strides over (B, T) are walked in place; a row of V logits must be contiguous.
    if vocab_stride != itemsize:
        raise ValueError("the vocabulary axis of logits must be contiguous")
    return 0


def select_rows(const int64_t[:, ::1] labels, const uint8_t[:, ::1] mask, int64_t ignore_index,
                Py_ssize_t vocab, int64_t[::1] rows, int64_t[::1] counts):
    """Pick the rows that count and check their labels, in one serial pass over B*T labels.

    A row counts when mask (may be None) is non-zero and its label is not ignore_index. Writes
    the flat indices of those rows, in order, to rows[:n] and the number per sequence to
    counts. Returns (n, first_bad): first_bad is the flat index of the first counted row whose
    label is outside [0, vocab), or -1.
    """
    cdef Py_ssize_t n_b = labels.shape[0], n_t = labels.shape[1]
    cdef Py_ssize_t b, t, n = 0, first_bad = -1, count
    cdef int64_t label
    cdef bint masked = mask is not None
    if rows.shape[0] < n_b * n_t or counts.shape[0] != n_b or (
            masked and (mask.shape[0] != n_b or mask.shape[1] != n_t)):
        raise ValueError("rows, counts or mask do not match labels")
    with nogil:
        for b in range(n_b):
            count = 0
            for t in range(n_t):
                label = labels[b, t]
                if label == ignore_index or (masked and mask[b, t] == 0):
                    continue
                if (label < 0 or label >= vocab) and first_bad < 0:
                    first_bad = b * n_t + t
                rows[n] = b * n_t + t
                n += 1
                count += 1
            counts[b] = count
    return n, first_bad


def forward(const floating[:, :, :] logits, const int64_t[::1] labels,
            const int64_t[::1] rows, double inv_temperature, double[::1] token_logps,
            double[::1] logsumexp, double[::1] entropy, uint8_t[::1] status, *,
            int n_threads, double[::1] log_sum_p2=None, double[::1] logit_sum=None):
    """Per-row log-softmax at the label (and entropy, log(sum p^2), the sum of the logits, for
    each of those outputs that is not None) for the rows listed in `rows` (flat indices
    b * T + t). Other positions of the outputs are left alone.
    Returns the number of rows holding a NaN or an infinity (status NONFINITE)."""
    cdef Py_ssize_t n_rows = rows.shape[0]
    cdef Py_ssize_t per_task, n_tasks, task, k0, k1, k, n_bad = 0, n_positions
    cdef DpoLogpsArgs args
    if n_threads < 1:
        raise ValueError("n_threads must be >= 1")
    if n_rows == 0:
        return 0
    _check_rows(logits.strides[2], sizeof(floating))
    n_positions = logits.shape[0] * logits.shape[1]
    if (labels.shape[0] != n_positions or token_logps.shape[0] != n_positions
            or logsumexp.shape[0] != n_positions or status.shape[0] != n_positions
            or (entropy is not None and entropy.shape[0] != n_positions)
            or (log_sum_p2 is not None and log_sum_p2.shape[0] != n_positions)
            or (logit_sum is not None and logit_sum.shape[0] != n_positions)):
        raise ValueError("labels and outputs must have B * T elements")
    args.logits = &logits[0, 0, 0]
    args.stride_b = _element_stride(logits.strides[0], sizeof(floating))
    args.stride_t = _element_stride(logits.strides[1], sizeof(floating))
    args.n_t = logits.shape[1]
    args.vocab = logits.shape[2]
    args.labels = &labels[0]
    args.inv_temperature = inv_temperature
    args.simd_level = chosen_simd_level()
    args.token_logps = &token_logps[0]
    args.logsumexp = &logsumexp[0]
    args.entropy = NULL
    if entropy is not None:
        args.entropy = &entropy[0]
    args.log_sum_p2 = NULL
    if log_sum_p2 is not None:
        args.log_sum_p2 = &log_sum_p2[0]
    args.logit_sum = NULL
    if logit_sum is not None:
        args.logit_sum = &logit_sum[0]
    args.status = &status[0]
    args.row_weight = NULL
    args.lse_in = NULL
    args.grad = NULL
    args.grad_zeroed = 0
    args.grad_stream = 0
    per_task = _rows_per_task(n_rows, args.vocab, n_threads)
    n_tasks = (n_rows + per_task - 1) // per_task
    with nogil:
        for task in prange(n_tasks, num_threads=n_threads, schedule="dynamic", chunksize=1,
                           use_threads_if=n_threads > 1 and n_tasks > 1):
            k0 = task * per_task
            k1 = min(k0 + per_task, n_rows)
            if floating is double:
                dpo_logps_forward_f64(&args, &rows[0], k0, k1)
            else:
                dpo_logps_forward_f32(&args, &rows[0], k0, k1)
        for k in range(n_rows):
            if status[rows[k]] == DPO_LOGPS_NONFINITE:
                n_bad += 1
    return n_bad


def sequence_sums(const int64_t[::1] rows, Py_ssize_t n_t, const double[::1] token_logps,
                  const double[::1] entropy, const uint8_t[::1] status, double[::1] sums):
    """Add the counted rows' token log-probs per sequence, in row order (fixed, whatever the
    thread count of the forward). Returns (argmax rows, sum of entropies or 0.0)."""
    cdef Py_ssize_t k, r, n_rows = rows.shape[0]
    cdef Py_ssize_t n_argmax = 0
    cdef double entropy_sum = 0.0
    cdef bint with_entropy = entropy is not None
    with nogil:
        for k in range(sums.shape[0]):
            sums[k] = 0.0
        for k in range(n_rows):
            r = rows[k]
            sums[r // n_t] += token_logps[r]
            n_argmax += status[r] == DPO_LOGPS_ARGMAX
            if with_entropy:
                entropy_sum += entropy[r]
    return n_argmax, entropy_sum


def backward(const floating[:, :, :] logits, const int64_t[::1] labels,
             const double[::1] row_weight, const double[::1] logsumexp,
             double inv_temperature, floating[:, ::1] grad, uint8_t[::1] status, *,
             int n_threads, bint grad_zeroed=False):
    """grad[r] = row_weight[r] * (onehot(labels[r]) - softmax(logits[r] * inv_temperature))
    * inv_temperature for every row r (zeros where row_weight[r] == 0), one pass per row.
    ``grad_zeroed``: grad already holds zeros, so the zero rows are left alone.

    logsumexp (from the forward) may be None: it is then recomputed in the same pass over the
    row (from cache), and rows holding a NaN or an infinity get status NONFINITE. Returns the
    number of such rows (always 0 when logsumexp is given: those rows are not re-checked)."""
    cdef Py_ssize_t n_b = logits.shape[0], n_t = logits.shape[1]
    cdef Py_ssize_t n_rows = n_b * n_t
    cdef Py_ssize_t per_task, n_tasks, task, r0, r1, r, n_bad = 0
    cdef DpoLogpsArgs args
    if n_threads < 1:
        raise ValueError("n_threads must be >= 1")
    if grad.shape[0] != n_rows or grad.shape[1] != logits.shape[2]:
        raise ValueError("grad must have shape (B * T, V)")
    if (labels.shape[0] != n_rows or row_weight.shape[0] != n_rows or status.shape[0] != n_rows
            or (logsumexp is not None and logsumexp.shape[0] != n_rows)):
        raise ValueError("labels, row_weight, logsumexp and status must have B * T elements")
    if n_rows == 0 or logits.shape[2] == 0:
        return 0
    _check_rows(logits.strides[2], sizeof(floating))
    args.logits = &logits[0, 0, 0]
    args.stride_b = _element_stride(logits.strides[0], sizeof(floating))
    args.stride_t = _element_stride(logits.strides[1], sizeof(floating))
    args.n_t = n_t
    args.vocab = logits.shape[2]
    args.labels = &labels[0]
    args.inv_temperature = inv_temperature
    args.simd_level = chosen_simd_level()
    args.token_logps = NULL
    args.logsumexp = NULL
    args.entropy = NULL
    args.log_sum_p2 = NULL
    args.logit_sum = NULL
    args.status = &status[0]
    args.row_weight = &row_weight[0]
    args.lse_in = NULL
    if logsumexp is not None:
        args.lse_in = &logsumexp[0]
    args.grad = &grad[0, 0]
    args.grad_zeroed = grad_zeroed
    # Far larger than any cache, the gradient is written with streaming stores (csrc/simd.h):
    # about 40% less time for a pass that reads and writes 0.5 GB here; smaller ones stay
    # cached for whoever reads them next.
    args.grad_stream = n_rows * args.vocab * <Py_ssize_t>sizeof(floating) >= STREAM_GRAD_BYTES
    per_task = _rows_per_task(n_rows, args.vocab, n_threads)
    n_tasks = (n_rows + per_task - 1) // per_task
    with nogil:
        for task in prange(n_tasks, num_threads=n_threads, schedule="dynamic", chunksize=1,
                           use_threads_if=n_threads > 1 and n_tasks > 1):
            r0 = task * per_task
            r1 = min(r0 + per_task, n_rows)
            if floating is double:
                dpo_logps_backward_f64(&args, r0, r1)
            else:
                dpo_logps_backward_f32(&args, r0, r1)
        if logsumexp is None:
            for r in range(n_rows):
                if row_weight[r] != 0.0 and status[r] == DPO_LOGPS_NONFINITE:
                    n_bad += 1
    return n_bad


# ----------------------------------------------------------------------------- the linear head

# Tile rows per parallel task of the linear head's loops (a tile holds at most a few thousand
# rows, each a few thousand logits: small tasks balance a busy core).
cdef enum:
    LINEAR_TASK_ROWS = 8


cdef int _linear_args(DpoLinearArgs *a, floating[:, :] tile, object bias, Py_ssize_t v0,
                      const int64_t[::1] labels, double inv_temperature) except -1:
    cdef const floating[::1] bias_view
    if tile.shape[1] < 1 or tile.strides[1] != sizeof(floating):
        raise ValueError("tile must have at least one column, and contiguous rows")
    if labels.shape[0] != tile.shape[0]:
        raise ValueError("labels must have one entry per tile row")
    a.tile = &tile[0, 0]
    a.ld = _element_stride(tile.strides[0], sizeof(floating))
    a.n_cols = tile.shape[1]
    a.v0 = v0
    a.bias = NULL
    if bias is not None:
        bias_view = bias
        if bias_view.shape[0] != tile.shape[1]:
            raise ValueError("bias must have one entry per tile column")
        a.bias = &bias_view[0]
    a.labels = &labels[0]
    a.inv_temperature = inv_temperature
    a.want_extras = 0
    a.simd_level = chosen_simd_level()
    a.state = NULL
    a.status = NULL
    a.row_scale = NULL
    a.lse = NULL
    return 0


def linear_fold(floating[:, :] tile, object bias, Py_ssize_t v0, const int64_t[::1] labels,
                double inv_temperature, double[:, ::1] state, uint8_t[::1] status, *,
                bint want_extras, int n_threads):
    """Fold a tile of logits (tile rows x vocabulary columns [v0, v0 + n)) into the running
    per-row statistics ``state`` (LINEAR_STATE doubles per row, csrc/logps_linear.h; row 0 of
    a fresh state holds -inf), adding ``bias`` (the n entries of the tile's columns, or None)
    in place first. Rows whose tile holds a NaN or an infinity get status NONFINITE and are
    not folded again. The tile is overwritten (bias added)."""
    cdef DpoLinearArgs a
    cdef Py_ssize_t n_rows = tile.shape[0], n_tasks, task, i0
    if n_threads < 1:
        raise ValueError("n_threads must be >= 1")
    if n_rows == 0:
        return
    _linear_args(&a, tile, bias, v0, labels, inv_temperature)
    if state.shape[0] != n_rows or state.shape[1] != DPO_LINEAR_STATE or (
            status.shape[0] != n_rows):
        raise ValueError("state and status must have one row per tile row")
    a.want_extras = want_extras
    a.state = &state[0, 0]
    a.status = &status[0]
    n_tasks = (n_rows + LINEAR_TASK_ROWS - 1) // LINEAR_TASK_ROWS
    with nogil:
        for task in prange(n_tasks, num_threads=n_threads, schedule="dynamic", chunksize=1,
                           use_threads_if=n_threads > 1 and n_tasks > 1):
            i0 = task * LINEAR_TASK_ROWS
            if floating is double:
                dpo_linear_fold_f64(&a, i0, min(i0 + LINEAR_TASK_ROWS, n_rows))
            else:
                dpo_linear_fold_f32(&a, i0, min(i0 + LINEAR_TASK_ROWS, n_rows))


def linear_tile_grad(floating[:, :] tile, object bias, Py_ssize_t v0, const int64_t[::1] labels,
                     double inv_temperature, const double[::1] row_scale,
                     const double[::1] lse, *, int n_threads):
    """Turn a tile of logits (as for linear_fold) in place into the gradient of the rows'
    token log-probs: ``row_scale * (onehot(label) - exp(x / temperature - lse))`` per row,
    ``row_scale`` = upstream weight / temperature, ``lse`` the forward's log-sum-exp."""
    cdef DpoLinearArgs a
    cdef Py_ssize_t n_rows = tile.shape[0], n_tasks, task, i0
    if n_threads < 1:
        raise ValueError("n_threads must be >= 1")
    if n_rows == 0:
        return
    _linear_args(&a, tile, bias, v0, labels, inv_temperature)
    if row_scale.shape[0] != n_rows or lse.shape[0] != n_rows:
        raise ValueError("row_scale and lse must have one entry per tile row")
    a.row_scale = &row_scale[0]
    a.lse = &lse[0]
    n_tasks = (n_rows + LINEAR_TASK_ROWS - 1) // LINEAR_TASK_ROWS
    with nogil:
        for task in prange(n_tasks, num_threads=n_threads, schedule="dynamic", chunksize=1,
                           use_threads_if=n_threads > 1 and n_tasks > 1):
            i0 = task * LINEAR_TASK_ROWS
            if floating is double:
                dpo_linear_tile_grad_f64(&a, i0, min(i0 + LINEAR_TASK_ROWS, n_rows))
            else:
                dpo_linear_tile_grad_f32(&a, i0, min(i0 + LINEAR_TASK_ROWS, n_rows))


# ----------------------------------------------------------------------------- the common call


cdef inline int _mask_item_size(cnp.ndarray mask) noexcept:
    """Bytes per element of a mask the common call reads (bool, or any integer dtype of 1, 2,
    4 or 8 bytes), else 0."""
    cdef int typenum = cnp.PyArray_TYPE(mask)
    cdef Py_ssize_t size = cnp.PyArray_ITEMSIZE(mask)
    if typenum == cnp.NPY_BOOL:
        return 1
    if cnp.PyTypeNum_ISINTEGER(typenum) and size in (1, 2, 4, 8):
        return <int>size
    return 0


cdef inline bint _mask_counts(const char *item, int size) noexcept nogil:
    """Whether a mask element (aligned, native order, of `size` bytes) is non-zero."""
    if size == 1:
        return (<const uint8_t *>item)[0] != 0
    if size == 2:
        return (<const uint16_t *>item)[0] != 0
    if size == 4:
        return (<const uint32_t *>item)[0] != 0
    return (<const uint64_t *>item)[0] != 0


cdef inline int _float_type(object value) noexcept:
    """NPY_FLOAT / NPY_DOUBLE for an exact ndarray the row loops can read in place (aligned,
    native byte order, a contiguous last axis, strides in whole items), else -1."""
    cdef cnp.ndarray array
    cdef int typenum, axis
    cdef Py_ssize_t itemsize
    if type(value) is not cnp.ndarray:
        return -1
    array = <cnp.ndarray>value
    typenum = cnp.PyArray_TYPE(array)
    if typenum != cnp.NPY_FLOAT and typenum != cnp.NPY_DOUBLE:
        return -1
    if cnp.PyArray_NDIM(array) not in (2, 3) or not cnp.PyArray_ISBEHAVED_RO(array):
        return -1
    itemsize = cnp.PyArray_ITEMSIZE(array)
    if cnp.PyArray_STRIDE(array, cnp.PyArray_NDIM(array) - 1) != itemsize:
        return -1
    for axis in range(cnp.PyArray_NDIM(array) - 1):
        if cnp.PyArray_STRIDE(array, axis) % itemsize:
            return -1
    return typenum


cdef struct _Common:
    # What _common_rows found: the logits' dtype and layout, and the counted rows.
    int typenum
    int ndim
    Py_ssize_t n_b, n_t, vocab, n_rows
    double inv_temperature


cdef tuple _common_rows(object logits, object labels, object ignore_index, object mask,
                        object temperature, object n_threads, Py_ssize_t max_elements,
                        _Common *common):
    """The checks the common calls share, and the rows that count: (rows, counts) -- the
    flat indices of the counted positions (in rows[:n_rows]) and the count per sequence -- or
    None for a call the general path takes. Fills `common`. A position counts where its label
    is not ignore_index and the mask (if any) is non-zero there; a counted label outside the
    vocabulary is the general path's to name."""
    cdef int typenum = _float_type(logits)
    cdef cnp.ndarray logit_array, label_array, rows, counts
    cdef int ndim, k
    cdef Py_ssize_t n_b, n_t, vocab, n_rows = 0, b, t, count
    cdef cnp.npy_intp dims[1]
    cdef cnp.npy_intp seq_dims[1]
    cdef int64_t ignore, label
    cdef int64_t *label_data
    cdef int64_t *row_data
    cdef int64_t *count_data
    cdef double value
    cdef cnp.ndarray mask_array = None
    cdef const char *mask_data = NULL
    cdef Py_ssize_t mask_stride_b = 0, mask_stride_t = 0
    cdef int mask_size = 0

    if typenum < 0 or type(ignore_index) is not int:
        return None
    if type(temperature) is not float:
        return None
    value = temperature
    if not (value > 0.0 and value < INFINITY):
        return None
    if n_threads is not None and not (type(n_threads) is int and n_threads >= 1):
        return None
    if not -(2**63) <= ignore_index < 2**63:
        return None
    ignore = ignore_index

    logit_array = <cnp.ndarray>logits
    ndim = cnp.PyArray_NDIM(logit_array)
    if ndim == 3:
        n_b = cnp.PyArray_DIM(logit_array, 0)
        n_t = cnp.PyArray_DIM(logit_array, 1)
    else:
        n_b = 1
        n_t = cnp.PyArray_DIM(logit_array, 0)
    vocab = cnp.PyArray_DIM(logit_array, ndim - 1)
    if vocab == 0 or n_b * n_t * vocab >= max_elements:
        return None
    # labels: exactly the token shape, int64, C-contiguous
    if (type(labels) is not cnp.ndarray or cnp.PyArray_TYPE(<cnp.ndarray>labels) != cnp.NPY_INT64
            or cnp.PyArray_NDIM(<cnp.ndarray>labels) != ndim - 1
            or not cnp.PyArray_ISBEHAVED_RO(<cnp.ndarray>labels)
            or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>labels)):
        return None
    label_array = <cnp.ndarray>labels
    for k in range(ndim - 1):
        if cnp.PyArray_DIM(label_array, k) != cnp.PyArray_DIM(logit_array, k):
            return None
    if mask is not None:
        # A position counts where the mask's element is non-zero, as logps.as_mask reads it:
        # a bool or integer array of the labels' shape, read in place through its strides.
        if type(mask) is not cnp.ndarray:
            return None
        mask_array = <cnp.ndarray>mask
        mask_size = _mask_item_size(mask_array)
        if (mask_size == 0 or cnp.PyArray_NDIM(mask_array) != ndim - 1
                or not cnp.PyArray_ISBEHAVED_RO(mask_array)):
            return None
        for k in range(ndim - 1):
            if cnp.PyArray_DIM(mask_array, k) != cnp.PyArray_DIM(label_array, k):
                return None
        mask_data = <const char *>cnp.PyArray_DATA(mask_array)
        if ndim == 3:
            mask_stride_b = cnp.PyArray_STRIDE(mask_array, 0)
            mask_stride_t = cnp.PyArray_STRIDE(mask_array, 1)
        else:
            mask_stride_t = cnp.PyArray_STRIDE(mask_array, 0)

    dims[0] = n_b * n_t
    rows = cnp.PyArray_EMPTY(1, dims, cnp.NPY_INT64, 0)
    seq_dims[0] = n_b
    counts = cnp.PyArray_EMPTY(ndim - 2, seq_dims, cnp.NPY_INT64, 0)
    label_data = <int64_t *>cnp.PyArray_DATA(label_array)
    row_data = <int64_t *>cnp.PyArray_DATA(rows)
    count_data = <int64_t *>cnp.PyArray_DATA(counts)
    for b in range(n_b):
        count = 0
        for t in range(n_t):
            label = label_data[b * n_t + t]
            if label == ignore or (mask_size != 0 and not _mask_counts(
                    mask_data + b * mask_stride_b + t * mask_stride_t, mask_size)):
                continue
            if label < 0 or label >= vocab:
                return None
            row_data[n_rows] = b * n_t + t
            n_rows += 1
            count += 1
        count_data[b] = count
    common.typenum = typenum
    common.ndim = ndim
    common.n_b = n_b
    common.n_t = n_t
    common.vocab = vocab
    common.n_rows = n_rows
    common.inv_temperature = 1.0 / value
    return rows, counts


cdef void _common_args(DpoLogpsArgs *args, cnp.ndarray logit_array, cnp.ndarray label_array,
                       const _Common *common) noexcept:
    """The kernel arguments of a common call's logits and labels; every output pointer NULL."""
    cdef int ndim = common.ndim
    args.logits = cnp.PyArray_DATA(logit_array)
    args.stride_b = (cnp.PyArray_STRIDE(logit_array, 0) // cnp.PyArray_ITEMSIZE(logit_array)
                     if ndim == 3 else 0)
    args.stride_t = (cnp.PyArray_STRIDE(logit_array, ndim - 2)
                     // cnp.PyArray_ITEMSIZE(logit_array))
    args.n_t = common.n_t
    args.vocab = common.vocab
    args.labels = <int64_t *>cnp.PyArray_DATA(label_array)
    args.inv_temperature = common.inv_temperature
    args.simd_level = chosen_simd_level()
    args.token_logps = NULL
    args.logsumexp = NULL
    args.entropy = NULL
    args.log_sum_p2 = NULL
    args.logit_sum = NULL
    args.status = NULL
    args.row_weight = NULL
    args.lse_in = NULL
    args.grad = NULL
    args.grad_zeroed = 0
    args.grad_stream = 0


def common_call(object logits, object labels, object ignore_index, object mask,
                object average, object temperature, object return_token_logps,
                object return_entropy, object n_threads, Py_ssize_t max_elements):
    """dpo_fast.sequence_logps's common call in one compiled step: the fields of its result
    as a tuple (logps, counts, token_accuracy, logsumexp, token_logps, entropy, mean_entropy),
    or None for anything else, which dpo_fast.logps then validates and runs (and raises for).

    The common call: exact float32/float64 ndarray logits (B, T, V) or (N, V) read in place,
    C-contiguous int64 labels of the matching shape, no mask or a bool or integer ndarray mask
    of the labels' shape (any strides: an attention mask's slice), an int ignore_index, a float
    temperature, exact bools, n_threads None or an int, and fewer than ``max_elements`` logits
    (below the parallel threshold: larger calls run threaded through the general path, where the
    per-call cost does not matter). Every row and sum is computed exactly as there."""
    cdef _Common common
    cdef tuple found
    cdef cnp.ndarray label_array, rows, counts, token_logps, logsumexp
    cdef cnp.ndarray entropy = None, status, sums
    cdef int ndim, k
    cdef Py_ssize_t n_b, n_t, n_rows, b, r, n_argmax = 0
    cdef cnp.npy_intp dims[2]
    cdef cnp.npy_intp seq_dims[1]
    cdef int64_t *row_data
    cdef int64_t *count_data
    cdef double *sum_data
    cdef double *token_data
    cdef double *entropy_data = NULL
    cdef uint8_t *status_data
    cdef double entropy_sum = 0.0
    cdef bint want_average, want_tokens, want_entropy
    cdef DpoLogpsArgs args

    for flag in (average, return_token_logps, return_entropy):
        if flag is not True and flag is not False:
            return None
    found = _common_rows(logits, labels, ignore_index, mask, temperature, n_threads,
                         max_elements, &common)
    if found is None:
        return None
    rows, counts = found
    want_average = average is True
    want_tokens = return_token_logps is True
    want_entropy = return_entropy is True
    label_array = <cnp.ndarray>labels
    ndim, n_b, n_t, n_rows = common.ndim, common.n_b, common.n_t, common.n_rows
    row_data = <int64_t *>cnp.PyArray_DATA(rows)
    count_data = <int64_t *>cnp.PyArray_DATA(counts)
    seq_dims[0] = n_b

    # Per-row results (zeros where a position does not count), in the token shape.
    for k in range(ndim - 1):
        dims[k] = cnp.PyArray_DIM(label_array, k)
    token_logps = cnp.PyArray_ZEROS(ndim - 1, dims, cnp.NPY_DOUBLE, 0)
    logsumexp = cnp.PyArray_ZEROS(ndim - 1, dims, cnp.NPY_DOUBLE, 0)
    status = cnp.PyArray_ZEROS(ndim - 1, dims, cnp.NPY_UINT8, 0)
    if want_entropy:
        entropy = cnp.PyArray_ZEROS(ndim - 1, dims, cnp.NPY_DOUBLE, 0)
        entropy_data = <double *>cnp.PyArray_DATA(entropy)
    _common_args(&args, <cnp.ndarray>logits, label_array, &common)
    args.token_logps = <double *>cnp.PyArray_DATA(token_logps)
    args.logsumexp = <double *>cnp.PyArray_DATA(logsumexp)
    args.entropy = entropy_data
    args.status = <uint8_t *>cnp.PyArray_DATA(status)
    if n_rows:
        if common.typenum == cnp.NPY_DOUBLE:
            dpo_logps_forward_f64(&args, row_data, 0, n_rows)
        else:
            dpo_logps_forward_f32(&args, row_data, 0, n_rows)

    # Per-sequence sums in row order (as sequence_sums); a non-finite row: the general path.
    sums = cnp.PyArray_ZEROS(ndim - 2, seq_dims, cnp.NPY_DOUBLE, 0)
    sum_data = <double *>cnp.PyArray_DATA(sums)
    token_data = args.token_logps
    status_data = args.status
    for k in range(n_rows):
        r = row_data[k]
        if status_data[r] == DPO_LOGPS_NONFINITE:
            return None
        sum_data[r // n_t] += token_data[r]
        n_argmax += status_data[r] == DPO_LOGPS_ARGMAX
        if want_entropy:
            entropy_sum += entropy_data[r]
    if want_average:
        for b in range(n_b):
            sum_data[b] = sum_data[b] / <double>count_data[b] if count_data[b] > 0 else 0.0
    return (sums, counts, n_argmax / <double>n_rows if n_rows else 0.0, logsumexp,
            token_logps if want_tokens else None, entropy,
            (entropy_sum / n_rows if n_rows else 0.0) if want_entropy else None)


def common_grad_call(object logits, object labels, object grad_logps, object ignore_index,
                     object mask, object average, object temperature, object grad_token_logps,
                     object logsumexp, object n_threads, object out, Py_ssize_t max_elements):
    """dpo_fast.sequence_logps_grad's common call in one compiled step: the gradient, or None
    for anything else, which dpo_fast.logps then validates and runs (and raises for).

    The common call is common_call's (logits, labels, mask, ignore_index, temperature,
    n_threads, size) with a bool average, grad_logps a float or a float64/float32 ndarray of
    the sequences' shape (any strides), no grad_token_logps, logsumexp None or the forward's
    (float64, C-contiguous, the labels' shape) and no out: what dpo_fast.torch's backward
    passes. Every row weight and gradient is computed exactly as there."""
    cdef _Common common
    cdef tuple found
    cdef cnp.ndarray rows, counts, grad, status, weight, upstream
    cdef Py_ssize_t n_b, n_t, n_rows, k, r, b
    cdef double upstream_value = 0.0, value
    cdef double *weight_data
    cdef const double *lse_data = NULL
    cdef const char *upstream_data = NULL
    cdef Py_ssize_t upstream_stride = 0
    cdef int upstream_type = 0, i
    cdef int64_t *row_data
    cdef int64_t *count_data
    cdef uint8_t *status_data
    cdef cnp.npy_intp dims[3]
    cdef DpoLogpsArgs args
    cdef bint want_average

    if out is not None or grad_token_logps is not None:
        return None
    if average is not True and average is not False:
        return None
    want_average = average is True
    found = _common_rows(logits, labels, ignore_index, mask, temperature, n_threads,
                         max_elements, &common)
    if found is None:
        return None
    rows, counts = found
    n_b, n_t, n_rows = common.n_b, common.n_t, common.n_rows
    # The upstream gradient of each sequence: a float, or an array of the sequences' shape.
    if type(grad_logps) is float:
        upstream_value = grad_logps
    elif type(grad_logps) is cnp.ndarray:
        upstream = <cnp.ndarray>grad_logps
        upstream_type = cnp.PyArray_TYPE(upstream)
        if ((upstream_type != cnp.NPY_DOUBLE and upstream_type != cnp.NPY_FLOAT)
                or not cnp.PyArray_ISBEHAVED_RO(upstream)
                or cnp.PyArray_NDIM(upstream) != common.ndim - 2):
            return None
        if common.ndim == 3:
            if cnp.PyArray_DIM(upstream, 0) != n_b:
                return None
            upstream_stride = cnp.PyArray_STRIDE(upstream, 0)
        upstream_data = <const char *>cnp.PyArray_DATA(upstream)
    else:
        return None
    if logsumexp is not None:
        if (type(logsumexp) is not cnp.ndarray
                or cnp.PyArray_TYPE(<cnp.ndarray>logsumexp) != cnp.NPY_DOUBLE
                or not cnp.PyArray_ISBEHAVED_RO(<cnp.ndarray>logsumexp)
                or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>logsumexp)
                or cnp.PyArray_NDIM(<cnp.ndarray>logsumexp) != common.ndim - 1):
            return None
        for i in range(common.ndim - 1):
            if cnp.PyArray_DIM(<cnp.ndarray>logsumexp, i) != cnp.PyArray_DIM(
                    <cnp.ndarray>labels, i):
                return None
        lse_data = <const double *>cnp.PyArray_DATA(<cnp.ndarray>logsumexp)

    # Row weights (zeros where a position does not count), as the general path forms them;
    # one whose weight / temperature is not finite, or whose logsumexp is not where it is
    # used, is the general path's to name.
    dims[0] = n_b * n_t
    weight = cnp.PyArray_ZEROS(1, dims, cnp.NPY_DOUBLE, 0)
    status = cnp.PyArray_ZEROS(1, dims, cnp.NPY_UINT8, 0)
    weight_data = <double *>cnp.PyArray_DATA(weight)
    status_data = <uint8_t *>cnp.PyArray_DATA(status)
    row_data = <int64_t *>cnp.PyArray_DATA(rows)
    count_data = <int64_t *>cnp.PyArray_DATA(counts)
    for k in range(n_rows):
        r = row_data[k]
        b = r // n_t
        value = upstream_value
        if upstream_data != NULL:
            if upstream_type == cnp.NPY_DOUBLE:
                value = (<const double *>(upstream_data + b * upstream_stride))[0]
            else:
                value = (<const float *>(upstream_data + b * upstream_stride))[0]
        if want_average:
            value = value / <double>count_data[b]  # (a counted row: its count is >= 1)
        weight_data[r] = value
        if not isfinite(value * common.inv_temperature):
            return None
        if lse_data != NULL and value != 0.0 and not isfinite(lse_data[r]):
            return None

    # A fresh gradient of the logits' shape and dtype (the general path zeroes only gradients
    # of 64 MB and more, far above the common call's size), every row written by the kernel.
    for i in range(common.ndim):
        dims[i] = cnp.PyArray_DIM(<cnp.ndarray>logits, i)
    grad = cnp.PyArray_EMPTY(common.ndim, dims, common.typenum, 0)
    _common_args(&args, <cnp.ndarray>logits, <cnp.ndarray>labels, &common)
    args.status = status_data
    args.row_weight = weight_data
    args.lse_in = lse_data
    args.grad = cnp.PyArray_DATA(grad)
    if n_b * n_t:
        if common.typenum == cnp.NPY_DOUBLE:
            dpo_logps_backward_f64(&args, 0, n_b * n_t)
        else:
            dpo_logps_backward_f32(&args, 0, n_b * n_t)
    if lse_data == NULL:
        for k in range(n_rows):
            r = row_data[k]
            if weight_data[r] != 0.0 and status_data[r] == DPO_LOGPS_NONFINITE:
                return None
    return grad
