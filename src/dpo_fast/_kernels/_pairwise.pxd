# Declarations shared by the compiled modules: the C side of the pairwise kernels
# (csrc/pairwise.h), the SIMD dispatch layer (csrc/simd.h), and the cdef functions that other
# Cython modules (dpo_fast._seed, dpo_fast._entry, dpo_fast._kernels._logps) call through this
# module. The chosen SIMD level lives in this module's C (csrc/simd.c) only: the whole package
# shares one dispatch state.

cdef extern from "simd.h" nogil:
    enum:
        DPO_SIMD_SCALAR
        DPO_SIMD_BASELINE
        DPO_SIMD_AVX2
        DPO_SIMD_AVX512

cdef extern from "pairwise.h" nogil:
    enum:
        DPO_CHUNK
        DPO_NSUMS
        DPO_SUM_LOSS
        DPO_SUM_CHOSEN_REWARD
        DPO_SUM_REJECTED_REWARD
        DPO_SUM_MARGIN
        DPO_SUM_ACCURACY
        DPO_SUM_CHOSEN_LOGP
        DPO_SUM_REJECTED_LOGP
        DPO_LOSS_SIGMOID
        DPO_LOSS_HINGE
        DPO_LOSS_IPO
        DPO_LOSS_EXO_PAIR
        DPO_LOSS_NCA_PAIR
        DPO_LOSS_ROBUST
        DPO_LOSS_BCO_PAIR
        DPO_LOSS_SPPO_HARD
        DPO_LOSS_APO_ZERO
        DPO_LOSS_APO_DOWN
        DPO_LOSS_DISCOPOP
        DPO_LOSS_SIGMOID_NORM
        DPO_LOSS_SIMPO
        DPO_LOSS_SFT
        DPO_LOSS_ALPHAPO
        DPO_LOSS_AOT
        DPO_LOSS_AOT_UNPAIRED
        DPO_N_LOSS_TYPES
        DPO_LT_PLAIN
        DPO_LT_DIVERGENCE
        DPO_LT_LENGTHS_BOTH
        DPO_LT_LENGTHS_CHOSEN
        DPO_LT_LENGTHS_OPTIONAL
        DPO_LT_BATCH_COUPLED
        DPO_LT_REFERENCE_FREE
        DPO_LT_NORMALIZED_REWARDS
        DPO_LT_BATCH_CONSTANT
        DPO_LT_SMOOTHING_POSITIVE
        DPO_LT_NORMALIZED
        DPO_LT_SORTED
        DPO_LT_GT_REWARDS
        DPO_LT_FUSED_AS_GENERAL
        DPO_MAX_TERMS
        DPO_DIV_IDENTITY
        DPO_DIV_EXP
        DPO_DIV_JS

    ctypedef struct DpoLossParams:
        double beta
        double label_smoothing
        double discopop_tau
        double exo_log1m_eps
        double exo_log_eps
        double discopop_neg_inf_arg
        double simpo_gamma
        double sft_value
        double dpop_lambda
        double bco_delta
        double alphapo_alpha
        double alphapo_log_beta
        double alphapo_log_scale
        double gt_reward_scale

    ctypedef struct DpoChunkArgs:
        const void *chosen
        const void *rejected
        const void *ref_chosen
        const void *ref_rejected
        void *losses
        void *chosen_rewards
        void *rejected_rewards
        void *grad_chosen
        void *grad_rejected
        double grad_divisor
        int loss_type
        DpoLossParams params
        int general
        int n_terms
        int term_types[DPO_MAX_TERMS]
        int term_normalized[DPO_MAX_TERMS]
        double term_weights[DPO_MAX_TERMS]
        const double *chosen_lengths
        const double *rejected_lengths
        const double *weights
        const double *gt_reward_margins
        int divergence
        double divergence_coef
        int normalized_rewards
        double grad_chosen_offset
        double grad_chosen_pair_offset
        const void *side_sources[4]
        int side_types[4]
        double *side_scratch
        int side_threads
        Py_ssize_t side_rows
        Py_ssize_t side_start

    enum:
        DPO_SIDE_SLOTS
        DPO_SIDE_F64
        DPO_SIDE_F32
        DPO_SIDE_I64
        DPO_SIDE_I32

# The one kernel boundary of the package: init_args fills every field of a DpoChunkArgs with
# the defaults of a plain single-loss call; run_loss runs the chunk function over rows [0, n)
# (in parallel over fixed chunks when n_threads > 1) and writes the DPO_NSUMS combined sums.
cdef void init_args(DpoChunkArgs *args, double beta, double label_smoothing,
                    double discopop_tau) noexcept
# alphapo's parameters (its shape and the logs its careful path reads), as LossConfig sets them.
cdef void set_alphapo_alpha(DpoLossParams *params, double alpha) noexcept
cdef int run_loss(const DpoChunkArgs *args, Py_ssize_t n, int n_threads, bint single,
                  double *totals) except -1

# The exact sum of token counts of a DPO_SIDE_* dtype, or -1.0 (pairwise.h's
# dpo_exact_count_sum_typed).
cdef double exact_count_sum_typed(const void *x, int side_type, Py_ssize_t n) noexcept nogil

# KTO's rows at the chosen SIMD level (csrc/kto_rows.h, for dpo_fast._kernels._kto).
cdef extern from "kto_rows.h" nogil:
    ctypedef struct DpoKtoParams:
        double beta
        double kl
        double desirable_weight
        double undesirable_weight
cdef int kto_rows_block(const DpoKtoParams *params, const double *policy,
                        const double *reference, const unsigned char *desirable, Py_ssize_t n,
                        double *losses, double *rewards, double *grad) noexcept nogil

# The SIMD level (DPO_SIMD_*) the kernels run now: what _logps stores in its C arguments.
cdef int simd_level_id() noexcept nogil
