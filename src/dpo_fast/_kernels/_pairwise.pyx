# cython: language_level=3
"""The kernel boundary of the pairwise preference losses.

Thin layer: dpo_fast._entry (the common call, in C) and dpo_fast._general (everything else)
validate and allocate; this module is the one way into the chunked loops of csrc/: init_args
fills the C argument struct, LossConfig builds a call's configuration from keywords and picks
its loop (plain, length-normalised or general), and run_loss runs the loop over the rows, in
parallel over fixed chunks of DPO_CHUNK rows (OpenMP dynamic schedule: a busy core does not
stall the others), combining the per-chunk sums in a fixed order, so results do not depend on
the number of threads. It also exports the loss-type registry (loss_registry).
"""

cimport cython
cimport numpy as cnp
import numpy as np
from cpython.exc cimport PyErr_CheckSignals
from cython.parallel cimport prange
from libc.math cimport INFINITY
from libc.stdlib cimport free, malloc
from libc.string cimport memset

# The kernels' own math (not the C library's, which differs between platforms): exo_pair's
# constants come out the same bits everywhere; math_values exposes them to the tests.
cdef extern from "simd_math.h" nogil:
    ctypedef struct DpoLogistic:
        double log1p_e
        double sig_pos
        double sig_neg
    double dpo_exp(double x)
    double dpo_expm1_exp(double x, double *exp_out)
    double dpo_log_pos(double x)
    double dpo_log1m(double y)
    double dpo_log1mexp(double a, double *one_minus_out)
    DpoLogistic dpo_logistic(double z)

cdef extern from "pair_losses.h" nogil:
    double dpo_orpo_log1mexp(double a, double *one_minus_out)

cdef extern from "simd.h" nogil:
    int dpo_simd_detect()
    int dpo_simd_get()
    int dpo_simd_set(int level)
    const char *dpo_simd_name(int level)

cdef extern from "pairwise.h" nogil:
    void dpo_chunk_f64(const DpoChunkArgs *args, Py_ssize_t start, Py_ssize_t n, double *sums)
    void dpo_chunk_f32(const DpoChunkArgs *args, Py_ssize_t start, Py_ssize_t n, double *sums)
    void dpo_combine_sums(const double *partials, Py_ssize_t n_chunks, double *total)
    void dpo_traffic_f64(const double *a, const double *b, const double *c, const double *d,
                         double *x, double *y, double *z, Py_ssize_t start, Py_ssize_t n)
    void dpo_traffic_f32(const float *a, const float *b, const float *c, const float *d,
                         float *x, float *y, float *z, Py_ssize_t start, Py_ssize_t n)
    int dpo_openmp_enabled()
    double dpo_exact_count_sum_typed(const void *x, int side_type, Py_ssize_t n)
    int dpo_kto_rows(const DpoKtoParams *params, const double *policy, const double *reference,
                     const unsigned char *desirable, Py_ssize_t n, double *losses,
                     double *rewards, double *grad)
    ctypedef struct DpoLossInfo:
        int id
        const char *name
        int flags
        double smoothing_max
    const DpoLossInfo dpo_loss_registry[]

ctypedef fused floating:
    float
    double

cnp.import_array()

CHUNK_ROWS = DPO_CHUNK
# Calls over fewer rows run with the GIL held: a few microseconds of arithmetic at most.
cdef Py_ssize_t GIL_RELEASE_MIN_ROWS = 1024
# The bits of a registry entry's flags (csrc/pair_losses.h).
LOSS_FLAGS = {
    "plain": DPO_LT_PLAIN, "divergence": DPO_LT_DIVERGENCE,
    "lengths_both": DPO_LT_LENGTHS_BOTH, "lengths_chosen": DPO_LT_LENGTHS_CHOSEN,
    "lengths_optional": DPO_LT_LENGTHS_OPTIONAL, "batch_coupled": DPO_LT_BATCH_COUPLED,
    "reference_free": DPO_LT_REFERENCE_FREE, "normalized_rewards": DPO_LT_NORMALIZED_REWARDS,
    "batch_constant": DPO_LT_BATCH_CONSTANT, "smoothing_positive": DPO_LT_SMOOTHING_POSITIVE,
    "normalized": DPO_LT_NORMALIZED, "sorted": DPO_LT_SORTED, "gt_rewards": DPO_LT_GT_REWARDS,
    "fused_as_general": DPO_LT_FUSED_AS_GENERAL,
}


def loss_registry():
    """The loss-type registry of csrc/pair_losses.h: a tuple of (name, kernel id, flags,
    smoothing_max) in the registry's order (dpo_fast._registry reads it)."""
    return tuple([(dpo_loss_registry[i].name.decode(), dpo_loss_registry[i].id,
                   dpo_loss_registry[i].flags, dpo_loss_registry[i].smoothing_max)
                  for i in range(DPO_N_LOSS_TYPES)])


MAX_TERMS = DPO_MAX_TERMS
DIVERGENCE_IDS = {"identity": DPO_DIV_IDENTITY, "exp": DPO_DIV_EXP, "js": DPO_DIV_JS}
SUM_NAMES = ("loss", "chosen_rewards", "rejected_rewards", "margins", "accuracies",
             "chosen_logps", "rejected_logps")
_LEVELS = (DPO_SIMD_SCALAR, DPO_SIMD_BASELINE, DPO_SIMD_AVX2, DPO_SIMD_AVX512)


cdef void init_args(DpoChunkArgs *args, double beta, double label_smoothing,
                    double discopop_tau) noexcept:
    """Every field of ``args``: the parameters given, the defaults of a plain single-loss call
    (sigmoid, no lengths, weights, divergence or terms; grad_divisor 1) for the rest, and no
    arrays. The callers set the arrays and what their call changes."""
    memset(args, 0, sizeof(DpoChunkArgs))
    args.grad_divisor = 1.0
    args.loss_type = DPO_LOSS_SIGMOID
    args.params.beta = beta
    args.params.label_smoothing = label_smoothing
    args.params.discopop_tau = discopop_tau
    # exo_pair's constants (the callers keep label_smoothing in (0, 1) for that loss; with 0,
    # exo_pair is not among the terms and they stay unused).
    if label_smoothing > 0.0:
        args.params.exo_log1m_eps = dpo_log1m(label_smoothing)
        args.params.exo_log_eps = dpo_log_pos(label_smoothing)
    # DiscoPOP's exponent -z - softplus(-z/tau) tends to z*(1/tau - 1) as z -> -inf.
    args.params.discopop_neg_inf_arg = (
        -INFINITY if discopop_tau < 1.0 else (INFINITY if discopop_tau > 1.0 else 0.0))
    args.divergence = DPO_DIV_IDENTITY


cdef void set_alphapo_alpha(DpoLossParams *params, double alpha) noexcept:
    """alphapo's shape and the logs of its careful path (pair_losses.h), with the kernels' own
    log (the same bits on every platform); params.beta must be set."""
    params.alphapo_alpha = alpha
    params.alphapo_log_beta = 0.0
    params.alphapo_log_scale = 0.0
    if params.beta > 0.0:
        params.alphapo_log_beta = dpo_log_pos(params.beta)
    if alpha != 0.0 and params.beta > 0.0:
        params.alphapo_log_scale = (params.alphapo_log_beta
                                    - dpo_log_pos(-alpha if alpha < 0 else alpha))


cdef int run_loss(const DpoChunkArgs *args, Py_ssize_t n, int n_threads, bint single,
                  double *totals) except -1:
    """Run the chunk function over rows [0, n); write the DPO_NSUMS combined sums to totals.
    Side arrays of another dtype than float64 (args.side_sources) get their scratch here: one
    slice per thread of the team, which the chunk entry points convert a chunk's rows into."""
    cdef Py_ssize_t n_chunks = (n + DPO_CHUNK - 1) // DPO_CHUNK
    cdef DpoChunkArgs with_scratch
    cdef Py_ssize_t rows
    cdef int slot
    if n <= 0:
        raise ValueError("empty input")
    if n_threads < 1:
        raise ValueError("n_threads must be >= 1")
    for slot in range(DPO_SIDE_SLOTS):
        if args.side_sources[slot] != NULL:
            break
    else:
        return _run_chunks(args, n, n_chunks, n_threads, single, totals)
    rows = min(n, <Py_ssize_t>DPO_CHUNK)
    with_scratch = args[0]
    with_scratch.side_rows = rows
    with_scratch.side_threads = n_threads if n_chunks > 1 else 1
    with_scratch.side_scratch = <double *>malloc(
        with_scratch.side_threads * DPO_SIDE_SLOTS * rows * sizeof(double))
    if with_scratch.side_scratch == NULL:
        raise MemoryError()
    try:
        return _run_chunks(&with_scratch, n, n_chunks, n_threads, single, totals)
    finally:
        free(with_scratch.side_scratch)


cdef int _run_chunks(const DpoChunkArgs *args, Py_ssize_t n, Py_ssize_t n_chunks,
                     int n_threads, bint single, double *totals) except -1:
    """run_loss's loop: the chunks, in parallel when there are several."""
    cdef Py_ssize_t chunk, start
    cdef double *partials
    if n_chunks == 1:
        # One chunk: its sums are the totals (dpo_combine_sums of one chunk copies them), and
        # no team, no malloc: the cost of a small call is the arithmetic. Small ones keep the
        # GIL, which is cheaper to hold than to hand over and take back.
        if n < GIL_RELEASE_MIN_ROWS:
            if single:
                dpo_chunk_f32(args, 0, n, totals)
            else:
                dpo_chunk_f64(args, 0, n, totals)
            return 0
        with nogil:
            if single:
                dpo_chunk_f32(args, 0, n, totals)
            else:
                dpo_chunk_f64(args, 0, n, totals)
        # A Ctrl-C during the kernel: raise it here, inside the call that took the time (the
        # interpreter would only see it at the caller's next bytecode).
        if PyErr_CheckSignals() < 0:
            return -1
        return 0
    partials = <double *>malloc(n_chunks * DPO_NSUMS * sizeof(double))
    if partials == NULL:
        raise MemoryError()
    with nogil:
        for chunk in prange(n_chunks, num_threads=n_threads, schedule="dynamic",
                            chunksize=1, use_threads_if=n_threads > 1):
            start = chunk * DPO_CHUNK
            if single:
                dpo_chunk_f32(args, start, min(<Py_ssize_t>DPO_CHUNK, n - start),
                              &partials[chunk * DPO_NSUMS])
            else:
                dpo_chunk_f64(args, start, min(<Py_ssize_t>DPO_CHUNK, n - start),
                              &partials[chunk * DPO_NSUMS])
        dpo_combine_sums(partials, n_chunks, totals)
    free(partials)
    if PyErr_CheckSignals() < 0:  # (as above)
        return -1
    return 0


@cython.final
cdef class LossConfig:
    """What one kernel call computes, built from keywords: the one place that picks the loop.

    ``terms``: a tuple of (kernel id, normalised 0/1, term weight) -- the loss types of the call
    (sorted types excluded: the Python layer adds them). The loop is picked here, once:
    ``"plain"`` (one term of raw log-ratios, weight 1, no f-divergence: the fused chunk loop;
    sft and rpo_sq too, with the general loop's bits),
    ``"normalized"`` (one length-normalised term, weight 1, no f-divergence: the same fused loop
    over c/nc, r/nr), else ``"general"`` (term lists, f-divergences, sft's batch constant:
    csrc/general_body.h). Per-pair weights are allowed in all three. ``weighted``: the call
    passes per-pair weights. ``shaped_rewards``: the kernel writes alphapo's rewards beta * r(a)
    (alphapo alone, alpha != 0: csrc/alphapo_body.h); else rewards are beta * p / n for the
    normalised-reward types. Every field of the C argument struct starts from init_args.
    """

    cdef DpoChunkArgs args
    cdef readonly str loop
    cdef readonly bint needs_lengths, weighted, needs_gt_rewards, shaped_rewards

    def __init__(self, tuple terms, *, double beta, double label_smoothing=0.0,
                 double discopop_tau=0.05, double simpo_gamma=0.0, double sft_value=0.0,
                 double dpop_lambda=0.0, double bco_delta=0.0, double alphapo_alpha=0.0,
                 double gt_reward_scale=1.0, int divergence=DPO_DIV_IDENTITY, double divergence_coef=0.0,
                 bint normalized_rewards=False, double grad_chosen_offset=0.0,
                 double grad_chosen_pair_offset=0.0, double grad_divisor=1.0,
                 bint weighted=False):
        cdef int t, term_type
        cdef DpoChunkArgs *args = &self.args
        if len(terms) > DPO_MAX_TERMS:
            raise ValueError(f"at most {DPO_MAX_TERMS} loss types can be combined")
        if divergence not in (DPO_DIV_IDENTITY, DPO_DIV_EXP, DPO_DIV_JS):
            raise ValueError(f"unknown divergence id {divergence}")
        if divergence == DPO_DIV_EXP and divergence_coef == 0.0:
            raise ValueError("the exp divergence needs a non-zero coefficient")
        init_args(args, beta, label_smoothing, discopop_tau)
        args.params.simpo_gamma = simpo_gamma
        args.params.sft_value = sft_value
        args.params.dpop_lambda = dpop_lambda
        args.params.bco_delta = bco_delta
        set_alphapo_alpha(&args.params, alphapo_alpha)
        args.params.gt_reward_scale = gt_reward_scale
        args.grad_divisor = grad_divisor
        args.n_terms = len(terms)
        self.needs_lengths = normalized_rewards
        self.needs_gt_rewards = False
        self.shaped_rewards = False
        for t in range(args.n_terms):
            term_type, args.term_normalized[t], args.term_weights[t] = terms[t]
            if (not 0 <= term_type < DPO_N_LOSS_TYPES
                    or dpo_loss_registry[term_type].flags & DPO_LT_SORTED):
                raise ValueError(f"loss type id {term_type} has no kernel case")
            if (args.term_normalized[t]
                    and not dpo_loss_registry[term_type].flags & DPO_LT_NORMALIZED):
                raise ValueError(f"loss type id {term_type} has no normalised kernel case")
            args.term_types[t] = term_type
            self.needs_lengths |= args.term_normalized[t]
            self.needs_gt_rewards |= bool(dpo_loss_registry[term_type].flags & DPO_LT_GT_REWARDS)
        args.divergence = divergence
        args.divergence_coef = divergence_coef
        args.normalized_rewards = normalized_rewards
        args.grad_chosen_offset = grad_chosen_offset
        args.grad_chosen_pair_offset = grad_chosen_pair_offset
        self.weighted = weighted
        single = (args.n_terms == 1 and args.term_weights[0] == 1.0
                  and divergence == DPO_DIV_IDENTITY)
        # The fused cases of sft and rpo_sq finish their rows as the general loop does,
        # sft's gradient offsets included (csrc/chunk_body.h).
        as_general = (dpo_loss_registry[args.term_types[0]].flags & DPO_LT_FUSED_AS_GENERAL
                      if args.n_terms else 0)
        if not as_general and (grad_chosen_offset != 0.0 or grad_chosen_pair_offset != 0.0):
            single = False
        if (single and not args.term_normalized[0]
                and (dpo_loss_registry[args.term_types[0]].flags & DPO_LT_PLAIN or as_general)):
            self.loop = "plain"
            args.general = 0
            args.loss_type = args.term_types[0]
        elif single and args.term_normalized[0]:
            self.loop = "normalized"
            args.general = 0
            args.loss_type = args.term_types[0]
            self.shaped_rewards = (args.loss_type == DPO_LOSS_ALPHAPO
                                   and alphapo_alpha != 0.0)
        else:
            self.loop = "general"
            args.general = 1


cdef inline void *_data(object array, Py_ssize_t n, int typenum, str name) except NULL:
    """The data pointer of a C-contiguous, aligned 1-D ndarray of ``n`` items of ``typenum``;
    ValueError for anything else (the Python layer prepares exactly such arrays)."""
    if (not isinstance(array, cnp.ndarray) or cnp.PyArray_NDIM(<cnp.ndarray>array) != 1
            or cnp.PyArray_DIM(<cnp.ndarray>array, 0) != n
            or cnp.PyArray_TYPE(<cnp.ndarray>array) != typenum
            or not cnp.PyArray_ISCARRAY_RO(<cnp.ndarray>array)):
        raise ValueError(f"{name} must be a C-contiguous, aligned 1-D array of {n} "
                         f"{'float32' if typenum == cnp.NPY_FLOAT else 'float64'} values")
    return cnp.PyArray_DATA(<cnp.ndarray>array)


def run(LossConfig config, chosen, rejected, ref_chosen, ref_rejected, chosen_lengths,
        rejected_lengths, weights, dict outputs, int n_threads, gt_reward_margins=None):
    """Run ``config`` over the pairs: the one kernel entry of the Python layer.

    The inputs are 1-D float32 or float64 arrays (one dtype; the references may both be None),
    the lengths and weights float64 or None, ``outputs`` maps "losses", "chosen_rewards",
    "rejected_rewards" and optionally "grad_chosen", "grad_rejected" to writeable arrays of the
    inputs' dtype (a per-pair one None or absent: not wanted, its sums are still taken); none
    may overlap (the caller checks). Returns the DPO_NSUMS sums
    (SUM_NAMES). ``gt_reward_margins``: float64, for a configuration with a PAIR_GT term."""
    cdef DpoChunkArgs args = config.args
    cdef double totals[DPO_NSUMS]
    cdef Py_ssize_t n
    cdef int typenum
    if not isinstance(chosen, cnp.ndarray) or cnp.PyArray_NDIM(<cnp.ndarray>chosen) != 1:
        raise ValueError("chosen must be a 1-D array")
    n = cnp.PyArray_DIM(<cnp.ndarray>chosen, 0)
    typenum = cnp.PyArray_TYPE(<cnp.ndarray>chosen)
    if typenum != cnp.NPY_FLOAT and typenum != cnp.NPY_DOUBLE:
        raise ValueError("the inputs must be float32 or float64")
    if n == 0:
        raise ValueError("empty input")
    args.chosen = _data(chosen, n, typenum, "chosen")
    args.rejected = _data(rejected, n, typenum, "rejected")
    if (ref_chosen is None) != (ref_rejected is None):
        raise ValueError("pass both reference arrays or neither")
    if ref_chosen is not None:
        args.ref_chosen = _data(ref_chosen, n, typenum, "ref_chosen")
        args.ref_rejected = _data(ref_rejected, n, typenum, "ref_rejected")
    if config.needs_lengths:
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("this configuration needs both lengths")
        args.chosen_lengths = <const double *>_data(chosen_lengths, n, cnp.NPY_DOUBLE,
                                                    "chosen_lengths")
        args.rejected_lengths = <const double *>_data(rejected_lengths, n, cnp.NPY_DOUBLE,
                                                      "rejected_lengths")
    if config.weighted:
        if weights is None:
            raise ValueError("this configuration needs the pair weights")
        args.weights = <const double *>_data(weights, n, cnp.NPY_DOUBLE, "weights")
    if config.needs_gt_rewards:
        if gt_reward_margins is None:
            raise ValueError("this configuration needs the ground-truth reward margins")
        args.gt_reward_margins = <const double *>_data(gt_reward_margins, n, cnp.NPY_DOUBLE,
                                                       "gt_reward_margins")
    # A per-pair output that is None is not wanted: the kernels write it to scratch (NULL).
    for key in ("losses", "chosen_rewards", "rejected_rewards"):
        if outputs.get(key) is not None and not cnp.PyArray_ISWRITEABLE(outputs[key]):
            raise ValueError(f"{key} must be writeable")
    args.losses = (NULL if outputs.get("losses") is None
                   else _data(outputs["losses"], n, typenum, "losses"))
    args.chosen_rewards = (NULL if outputs.get("chosen_rewards") is None
                           else _data(outputs["chosen_rewards"], n, typenum, "chosen_rewards"))
    args.rejected_rewards = (NULL if outputs.get("rejected_rewards") is None
                             else _data(outputs["rejected_rewards"], n, typenum,
                                        "rejected_rewards"))
    if outputs.get("grad_chosen") is not None:
        if not cnp.PyArray_ISWRITEABLE(outputs["grad_chosen"]) or not cnp.PyArray_ISWRITEABLE(
                outputs["grad_rejected"]):
            raise ValueError("the gradients must be writeable")
        args.grad_chosen = _data(outputs["grad_chosen"], n, typenum, "grad_chosen")
        args.grad_rejected = _data(outputs["grad_rejected"], n, typenum, "grad_rejected")
    run_loss(&args, n, n_threads, typenum == cnp.NPY_FLOAT, totals)
    return tuple([totals[q] for q in range(DPO_NSUMS)])


def memory_traffic(const floating[::1] a, const floating[::1] b, const floating[::1] c,
                   const floating[::1] d, floating[::1] x, floating[::1] y, floating[::1] z,
                   int n_threads):
    """Benchmark reference: the loss kernel's memory traffic (4 streams read, 3 written) with
    trivial arithmetic, chunked and scheduled the same way. Its time is the bandwidth bound."""
    cdef Py_ssize_t n = a.shape[0]
    cdef Py_ssize_t n_chunks = (n + DPO_CHUNK - 1) // DPO_CHUNK
    cdef Py_ssize_t chunk, start
    if n == 0:
        return
    if n_threads < 1:
        raise ValueError("n_threads must be >= 1")
    with nogil:
        for chunk in prange(n_chunks, num_threads=n_threads, schedule="dynamic", chunksize=1,
                            use_threads_if=n_threads > 1 and n_chunks > 1):
            start = chunk * DPO_CHUNK
            if floating is double:
                dpo_traffic_f64(&a[0], &b[0], &c[0], &d[0], &x[0], &y[0], &z[0], start,
                                min(<Py_ssize_t>DPO_CHUNK, n - start))
            else:
                dpo_traffic_f32(&a[0], &b[0], &c[0], &d[0], &x[0], &y[0], &z[0], start,
                                min(<Py_ssize_t>DPO_CHUNK, n - start))


cdef double exact_count_sum_typed(const void *x, int side_type, Py_ssize_t n) noexcept nogil:
    """dpo_exact_count_sum_typed: the exact sum of token counts of a DPO_SIDE_* dtype (integers
    >= 1 summing below 2^52; any order of the additions gives it, so NumPy's np.sum of their
    float64 cast gives it too), else -1.0. One thread: a parallel region of its own before
    the kernel's doubled the cost of a call whenever the other CPU was busy (~4 ms a region
    on the shared 2-CPU machine)."""
    return dpo_exact_count_sum_typed(x, side_type, n)


cdef int kto_rows_block(const DpoKtoParams *params, const double *policy,
                        const double *reference, const unsigned char *desirable, Py_ssize_t n,
                        double *losses, double *rewards, double *grad) noexcept nogil:
    """dpo_kto_rows: KTO's rows at the chosen SIMD level (1: every input finite)."""
    return dpo_kto_rows(params, policy, reference, desirable, n, losses, rewards, grad)


_COUNT_SIDE_TYPES = {np.dtype(np.float64): DPO_SIDE_F64, np.dtype(np.float32): DPO_SIDE_F32,
                     np.dtype(np.int64): DPO_SIDE_I64, np.dtype(np.int32): DPO_SIDE_I32}


def exact_count_sum_of(counts):
    """exact_count_sum of a 1-D float64, float32, int64 or int32 array (for the tests)."""
    cdef cnp.ndarray array = np.ascontiguousarray(counts)
    if array.shape[0] == 0:
        return 0.0
    return exact_count_sum_typed(cnp.PyArray_DATA(array), _COUNT_SIDE_TYPES[array.dtype],
                                 array.shape[0])


def openmp_enabled():
    """True when this build runs the kernels with OpenMP threads."""
    return bool(dpo_openmp_enabled())


cdef int simd_level_id() noexcept nogil:
    return dpo_simd_get()


def simd_level():
    """Name of the instruction set the kernels use now."""
    return dpo_simd_name(dpo_simd_get()).decode()


def supported_simd_levels():
    """Names of the code paths this CPU and build can run, lowest first."""
    best = dpo_simd_detect()
    return tuple([dpo_simd_name(level).decode() for level in _LEVELS if level <= best])


def set_simd_level(str name):
    """Use the code path `name` (one of supported_simd_levels(), or a name above the best
    supported one, which gives the best); return the name of the path now in use."""
    names = {dpo_simd_name(level).decode(): level for level in _LEVELS}
    names.update({"scalar": DPO_SIMD_SCALAR, "avx2": DPO_SIMD_AVX2, "avx512": DPO_SIMD_AVX512})
    if name not in names:
        raise ValueError(
            f"unknown SIMD level {name!r}; expected one of {sorted(set(names))}")
    return dpo_simd_name(dpo_simd_set(names[name])).decode()


MATH_FUNCTIONS = ("exp", "expm1", "log", "log1m", "log1mexp", "log1p_exp_neg_abs", "sigmoid",
                  "orpo_log1mexp")


def math_values(str name, double[::1] x):
    """The kernels' own scalar functions (csrc/simd_math.h) at each ``x``, for the accuracy
    tests: ``"exp"``, ``"expm1"``, ``"log"`` (x > 0), ``"log1m"`` (log(1 - x), x in [0, 1)),
    ``"log1mexp"`` (log(1 - exp(x)), x < 0), ``"log1p_exp_neg_abs"`` (log(1 + exp(-|x|)), the
    softplus core), ``"sigmoid"`` and ``"orpo_log1mexp"`` (orpo's one-kernel log1mexp,
    csrc/pair_losses.h: the same bits as ``"log1mexp"``). Returns a new float64 array."""
    if name not in MATH_FUNCTIONS:
        raise ValueError(f"unknown function {name!r}; expected one of {MATH_FUNCTIONS}")
    cdef Py_ssize_t i, n = x.shape[0]
    cdef double scratch
    cdef int which = MATH_FUNCTIONS.index(name)
    result = np.empty(n)
    cdef double[::1] out = result
    for i in range(n):
        if which == 0:
            out[i] = dpo_exp(x[i])
        elif which == 1:
            out[i] = dpo_expm1_exp(x[i], &scratch)
        elif which == 2:
            out[i] = dpo_log_pos(x[i])
        elif which == 3:
            out[i] = dpo_log1m(x[i])
        elif which == 4:
            out[i] = dpo_log1mexp(x[i], &scratch)
        elif which == 5:
            out[i] = dpo_logistic(x[i]).log1p_e
        elif which == 6:
            out[i] = dpo_logistic(x[i]).sig_pos
        else:
            out[i] = dpo_orpo_log1mexp(x[i], &scratch)
    return result


# Start on the best code path this CPU supports; dpo_fast/__init__.py applies DPO_FAST_SIMD.
dpo_simd_set(dpo_simd_detect())
