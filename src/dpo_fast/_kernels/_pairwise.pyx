# cython: language_level=3
"""Compiled drivers for the pairwise preference losses.

Thin layer: the Python code in dpo_fast.losses validates and allocates; these functions run
the chunked loops of csrc/ over C-contiguous memoryviews, in parallel over fixed chunks of
DPO_CHUNK rows (OpenMP dynamic schedule: a busy core does not stall the others), and combine
the per-chunk sums in a fixed order, so results do not depend on the number of threads.
"""

from cpython.exc cimport PyErr_CheckSignals
from cython.parallel cimport prange
from libc.math cimport INFINITY, log, log1p
from libc.stdlib cimport free, malloc
from libc.string cimport memset

cdef extern from "dispatch.h" nogil:
    void dpo_chunk_f64(const DpoChunkArgs *args, Py_ssize_t start, Py_ssize_t n, double *sums)
    void dpo_chunk_f32(const DpoChunkArgs *args, Py_ssize_t start, Py_ssize_t n, double *sums)
    void dpo_combine_sums(const double *partials, Py_ssize_t n_chunks, double *total)
    void dpo_traffic_f64(const double *a, const double *b, const double *c, const double *d,
                         double *x, double *y, double *z, Py_ssize_t start, Py_ssize_t n)
    void dpo_traffic_f32(const float *a, const float *b, const float *c, const float *d,
                         float *x, float *y, float *z, Py_ssize_t start, Py_ssize_t n)
    int dpo_simd_detect()
    int dpo_simd_get()
    int dpo_simd_set(int level)
    const char *dpo_simd_name(int level)
    int dpo_openmp_enabled()
    ctypedef struct DpoLossInfo:
        int id
        const char *name
        int flags
        double smoothing_max
    const DpoLossInfo dpo_loss_registry[]

ctypedef fused floating:
    float
    double

CHUNK_ROWS = DPO_CHUNK
# Calls over fewer rows run with the GIL held: a few microseconds of arithmetic at most.
cdef Py_ssize_t GIL_RELEASE_MIN_ROWS = 1024
# The bits of a registry entry's flags (csrc/pair_losses.h).
LOSS_FLAGS = {
    "plain": DPO_LT_PLAIN, "divergence": DPO_LT_DIVERGENCE,
    "lengths_both": DPO_LT_LENGTHS_BOTH, "lengths_chosen": DPO_LT_LENGTHS_CHOSEN,
    "lengths_optional": DPO_LT_LENGTHS_OPTIONAL, "batch_coupled": DPO_LT_BATCH_COUPLED,
    "reference_free": DPO_LT_REFERENCE_FREE, "normalized_rewards": DPO_LT_NORMALIZED_REWARDS,
    "batch_constant": DPO_LT_BATCH_CONSTANT, "exo_default": DPO_LT_EXO_DEFAULT,
    "normalized": DPO_LT_NORMALIZED, "sorted": DPO_LT_SORTED,
}


def loss_registry():
    """The loss-type registry of csrc/pair_losses.h: a tuple of (name, kernel id, flags,
    smoothing_max) in the registry's order (dpo_fast._registry reads it)."""
    return tuple([(dpo_loss_registry[i].name.decode(), dpo_loss_registry[i].id,
                   dpo_loss_registry[i].flags, dpo_loss_registry[i].smoothing_max)
                  for i in range(DPO_N_LOSS_TYPES)])


MAX_TERMS = DPO_MAX_TERMS
# exo_pair's epsilon when label_smoothing is 0 (TRL's default for that loss).
cdef double EXO_DEFAULT_EPSILON = 1e-3
EXO_DEFAULT_LABEL_SMOOTHING = EXO_DEFAULT_EPSILON
DIVERGENCE_IDS = {"identity": DPO_DIV_IDENTITY, "exp": DPO_DIV_EXP, "js": DPO_DIV_JS}
SUM_NAMES = ("loss", "chosen_rewards", "rejected_rewards", "margins", "accuracies",
             "chosen_logps", "rejected_logps")
_LEVELS = (DPO_SIMD_SCALAR, DPO_SIMD_BASELINE, DPO_SIMD_AVX2, DPO_SIMD_AVX512)


cdef inline const void *_ptr_or_null(const floating[::1] view) noexcept:
    if view is None:
        return NULL
    return <const void *>&view[0]


cdef inline void *_out_ptr_or_null(floating[::1] view) noexcept:
    return NULL if view is None else <void *>&view[0]


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
    # exo_pair's constants; the caller keeps label_smoothing in [0, 1) for that loss, where 0
    # stands for TRL's default epsilon (so that a list with sigmoid can keep sigmoid's 0).
    cdef double exo_epsilon = label_smoothing if label_smoothing > 0.0 else EXO_DEFAULT_EPSILON
    args.params.exo_log1m_eps = log1p(-exo_epsilon)
    args.params.exo_log_eps = log(exo_epsilon)
    # DiscoPOP's exponent -z - softplus(-z/tau) tends to z*(1/tau - 1) as z -> -inf.
    args.params.discopop_neg_inf_arg = (
        -INFINITY if discopop_tau < 1.0 else (INFINITY if discopop_tau > 1.0 else 0.0))
    args.divergence = DPO_DIV_IDENTITY


cdef void _set_arrays(DpoChunkArgs *args, const floating[::1] chosen,
                      const floating[::1] rejected, const floating[::1] ref_chosen,
                      const floating[::1] ref_rejected, floating[::1] losses,
                      floating[::1] chosen_rewards, floating[::1] rejected_rewards,
                      floating[::1] grad_chosen, floating[::1] grad_rejected) noexcept:
    """The array pointers of both entry points (the caller checked that n > 0)."""
    args.chosen = &chosen[0]
    args.rejected = &rejected[0]
    args.ref_chosen = _ptr_or_null(ref_chosen)
    args.ref_rejected = _ptr_or_null(ref_rejected)
    args.losses = &losses[0]
    args.chosen_rewards = &chosen_rewards[0]
    args.rejected_rewards = &rejected_rewards[0]
    args.grad_chosen = _out_ptr_or_null(grad_chosen)
    args.grad_rejected = _out_ptr_or_null(grad_rejected)


cdef int run_loss(const DpoChunkArgs *args, Py_ssize_t n, int n_threads, bint single,
                  double *totals) except -1:
    """Run the chunk function over rows [0, n); write the DPO_NSUMS combined sums to totals."""
    cdef Py_ssize_t n_chunks = (n + DPO_CHUNK - 1) // DPO_CHUNK
    cdef Py_ssize_t chunk, start
    cdef double *partials
    if n <= 0:
        raise ValueError("empty input")
    if n_threads < 1:
        raise ValueError("n_threads must be >= 1")
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


cdef tuple _run_chunks(DpoChunkArgs *args, Py_ssize_t n, int n_threads, bint single):
    """run_loss, with the sums as a tuple."""
    cdef double totals[DPO_NSUMS]
    run_loss(args, n, n_threads, single, totals)
    return tuple([totals[q] for q in range(DPO_NSUMS)])


cdef tuple _pairwise_loss(const floating[::1] chosen, const floating[::1] rejected,
                          const floating[::1] ref_chosen, const floating[::1] ref_rejected,
                          floating[::1] losses, floating[::1] chosen_rewards,
                          floating[::1] rejected_rewards, floating[::1] grad_chosen,
                          floating[::1] grad_rejected, int loss_type, double beta,
                          double label_smoothing, double discopop_tau, double grad_divisor,
                          int n_threads):
    cdef DpoChunkArgs args
    if chosen.shape[0] == 0:
        raise ValueError("empty input")
    if (not 0 <= loss_type < DPO_N_LOSS_TYPES
            or not dpo_loss_registry[loss_type].flags & DPO_LT_PLAIN):
        raise ValueError(f"loss type id {loss_type} has no plain kernel loop")
    init_args(&args, beta, label_smoothing, discopop_tau)
    _set_arrays(&args, chosen, rejected, ref_chosen, ref_rejected, losses, chosen_rewards,
                rejected_rewards, grad_chosen, grad_rejected)
    args.grad_divisor = grad_divisor
    args.loss_type = loss_type
    return _run_chunks(&args, chosen.shape[0], n_threads, floating is float)


cdef inline const double *_double_ptr_or_null(const double[::1] view) noexcept:
    if view is None:
        return NULL
    return <const double *>_ptr_or_null(view)


cdef tuple _general_loss(const floating[::1] chosen, const floating[::1] rejected,
                         const floating[::1] ref_chosen, const floating[::1] ref_rejected,
                         const double[::1] chosen_lengths, const double[::1] rejected_lengths,
                         const double[::1] weights, floating[::1] losses,
                         floating[::1] chosen_rewards, floating[::1] rejected_rewards,
                         floating[::1] grad_chosen, floating[::1] grad_rejected,
                         tuple terms, double beta, double label_smoothing,
                         double discopop_tau, double simpo_gamma, double sft_value,
                         int divergence, double divergence_coef, bint normalized_rewards,
                         double grad_chosen_offset, double grad_chosen_pair_offset,
                         double grad_divisor, int n_threads):
    cdef DpoChunkArgs args
    cdef Py_ssize_t n = chosen.shape[0]
    cdef int t, term_type
    if n == 0:
        raise ValueError("empty input")
    if len(terms) > DPO_MAX_TERMS:
        raise ValueError(f"at most {DPO_MAX_TERMS} loss types can be combined")
    if divergence not in (DPO_DIV_IDENTITY, DPO_DIV_EXP, DPO_DIV_JS):
        raise ValueError(f"unknown divergence id {divergence}")
    if divergence == DPO_DIV_EXP and divergence_coef == 0.0:
        raise ValueError("the exp divergence needs a non-zero coefficient")
    if ((chosen_lengths is not None and chosen_lengths.shape[0] != n)
            or (rejected_lengths is not None and rejected_lengths.shape[0] != n)
            or (weights is not None and weights.shape[0] != n)):
        raise ValueError("lengths and weights must have one value per pair")
    init_args(&args, beta, label_smoothing, discopop_tau)
    _set_arrays(&args, chosen, rejected, ref_chosen, ref_rejected, losses, chosen_rewards,
                rejected_rewards, grad_chosen, grad_rejected)
    args.grad_divisor = grad_divisor
    args.params.simpo_gamma = simpo_gamma
    args.params.sft_value = sft_value
    args.general = 1
    args.n_terms = len(terms)
    for t in range(args.n_terms):
        term_type, args.term_normalized[t], args.term_weights[t] = terms[t]
        if (not 0 <= term_type < DPO_N_LOSS_TYPES
                or dpo_loss_registry[term_type].flags & DPO_LT_SORTED):
            raise ValueError(f"loss type id {term_type} has no kernel case")
        if args.term_normalized[t] and (chosen_lengths is None or rejected_lengths is None):
            raise ValueError("a length-normalised term needs both lengths")
        args.term_types[t] = term_type
    if normalized_rewards and (chosen_lengths is None or rejected_lengths is None):
        raise ValueError("normalised rewards need both lengths")
    args.chosen_lengths = _double_ptr_or_null(chosen_lengths)
    args.rejected_lengths = _double_ptr_or_null(rejected_lengths)
    args.weights = _double_ptr_or_null(weights)
    if (args.n_terms == 1 and args.term_normalized[0] and divergence == DPO_DIV_IDENTITY
            and args.term_weights[0] == 1.0):
        # One length-normalised loss type (with or without weights): the fused loop of the
        # plain path (csrc/chunk_body.h, MODS 2).
        args.general = 0
        args.loss_type = args.term_types[0]
    args.divergence = divergence
    args.divergence_coef = divergence_coef
    args.normalized_rewards = normalized_rewards
    args.grad_chosen_offset = grad_chosen_offset
    args.grad_chosen_pair_offset = grad_chosen_pair_offset
    return _run_chunks(&args, n, n_threads, floating is float)


# Two concrete entry points rather than one fused `def`: Cython's run-time dispatch of a fused
# def function costs about a microsecond per call, which small batches would feel.
def pairwise_loss_f64(const double[::1] chosen, const double[::1] rejected,
                      const double[::1] ref_chosen, const double[::1] ref_rejected,
                      double[::1] losses, double[::1] chosen_rewards,
                      double[::1] rejected_rewards, double[::1] grad_chosen,
                      double[::1] grad_rejected, int loss_type, double beta,
                      double label_smoothing, double discopop_tau, double grad_divisor,
                      int n_threads):
    """Run the fused per-pair loss over all rows (float64); return the DPO_NSUMS sums
    (SUM_NAMES). All arrays have the same non-zero length; ref_* and grad_* may be None. The
    caller guarantees that outputs overlap neither inputs nor each other."""
    return _pairwise_loss(chosen, rejected, ref_chosen, ref_rejected, losses, chosen_rewards,
                          rejected_rewards, grad_chosen, grad_rejected, loss_type, beta,
                          label_smoothing, discopop_tau, grad_divisor, n_threads)


def pairwise_loss_f32(const float[::1] chosen, const float[::1] rejected,
                      const float[::1] ref_chosen, const float[::1] ref_rejected,
                      float[::1] losses, float[::1] chosen_rewards,
                      float[::1] rejected_rewards, float[::1] grad_chosen,
                      float[::1] grad_rejected, int loss_type, double beta,
                      double label_smoothing, double discopop_tau, double grad_divisor,
                      int n_threads):
    """pairwise_loss_f64 for float32 arrays (arithmetic and sums still in double)."""
    return _pairwise_loss(chosen, rejected, ref_chosen, ref_rejected, losses, chosen_rewards,
                          rejected_rewards, grad_chosen, grad_rejected, loss_type, beta,
                          label_smoothing, discopop_tau, grad_divisor, n_threads)


def general_loss_f64(const double[::1] chosen, const double[::1] rejected,
                     const double[::1] ref_chosen, const double[::1] ref_rejected,
                     const double[::1] chosen_lengths, const double[::1] rejected_lengths,
                     const double[::1] weights, double[::1] losses,
                     double[::1] chosen_rewards, double[::1] rejected_rewards,
                     double[::1] grad_chosen, double[::1] grad_rejected, tuple terms,
                     double beta, double label_smoothing, double discopop_tau,
                     double simpo_gamma, double sft_value, int divergence,
                     double divergence_coef, bint normalized_rewards,
                     double grad_chosen_offset, double grad_chosen_pair_offset,
                     double grad_divisor, int n_threads):
    """The general path (float64): per pair, weight * sum of term_weight * loss over `terms`,
    a tuple of (loss id, normalised 0/1, term weight); lengths (float64, > 0) give the
    normalised log-ratios c/nc, r/nr to the terms flagged normalised; `divergence`
    (DIVERGENCE_IDS) with divergence_coef turns log-ratios into f-divergence scores;
    normalized_rewards gives simpo's rewards beta*pc/nc; grad_chosen_offset is added to every
    grad_chosen, grad_chosen_pair_offset to every pair's derivative before its weight and
    the divisor (sft's batch gradient, for the reductions). Returns the DPO_NSUMS sums (SUM_NAMES)."""
    return _general_loss(chosen, rejected, ref_chosen, ref_rejected, chosen_lengths,
                         rejected_lengths, weights, losses, chosen_rewards, rejected_rewards,
                         grad_chosen, grad_rejected, terms, beta, label_smoothing,
                         discopop_tau, simpo_gamma, sft_value, divergence, divergence_coef,
                         normalized_rewards, grad_chosen_offset, grad_chosen_pair_offset,
                         grad_divisor, n_threads)


def general_loss_f32(const float[::1] chosen, const float[::1] rejected,
                     const float[::1] ref_chosen, const float[::1] ref_rejected,
                     const double[::1] chosen_lengths, const double[::1] rejected_lengths,
                     const double[::1] weights, float[::1] losses,
                     float[::1] chosen_rewards, float[::1] rejected_rewards,
                     float[::1] grad_chosen, float[::1] grad_rejected, tuple terms,
                     double beta, double label_smoothing, double discopop_tau,
                     double simpo_gamma, double sft_value, int divergence,
                     double divergence_coef, bint normalized_rewards,
                     double grad_chosen_offset, double grad_chosen_pair_offset,
                     double grad_divisor, int n_threads):
    """general_loss_f64 for float32 arrays (lengths and weights stay float64)."""
    return _general_loss(chosen, rejected, ref_chosen, ref_rejected, chosen_lengths,
                         rejected_lengths, weights, losses, chosen_rewards, rejected_rewards,
                         grad_chosen, grad_rejected, terms, beta, label_smoothing,
                         discopop_tau, simpo_gamma, sft_value, divergence, divergence_coef,
                         normalized_rewards, grad_chosen_offset, grad_chosen_pair_offset,
                         grad_divisor, n_threads)


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


def openmp_enabled():
    """True when this build runs the kernels with OpenMP threads."""
    return bool(dpo_openmp_enabled())


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


# Start on the best code path this CPU supports; dpo_fast/__init__.py applies DPO_FAST_SIMD.
dpo_simd_set(dpo_simd_detect())
