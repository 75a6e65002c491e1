/*
 * One small function per pairwise preference loss: given the pair's log-ratios c = pc - rc
 * (chosen) and r = pr - rr (rejected), it returns the per-pair loss and its derivatives with
 * respect to c and r, all in double precision. The chunk loops (chunk_body.h, general_body.h)
 * are written once and call these through the registry below, so a new loss type is a new
 * function here plus a row of DPO_LOSS_REGISTRY (and its reference formula in the tests),
 * never a new loop: the row's KIND gives the loops' cases, its FLAGS the Python layer's
 * checks.
 *
 * Arguments: `beta` and `inv_scale` come from the chunk loop, not from params: for rows near
 * DBL_MAX it passes c/4 and r/4 with inv_scale = 4 and beta = 4*params->beta, so that
 * beta*c and beta*r are still exact and finite; a loss of the raw log-ratios multiplies them
 * by inv_scale (an exact power of two, 1 on every ordinary row). Derivatives are with
 * respect to the arguments c and r as passed; the loop applies d(c)/d(pc).
 *
 * Formulas follow the papers cited at each function and TRL's DPOTrainer (README has the
 * table). logsigmoid(x) = -softplus(-x) is never formed as log(sigmoid(x)); every
 * softplus/sigmoid pair comes from dpo_logistic.
 */
#ifndef DPO_PAIR_LOSSES_H
#define DPO_PAIR_LOSSES_H

#include <math.h>

#include "simd_math.h"

/*
 * The loss-type registry: every fact about a loss type in one row, in the order of the README's
 * table. The Python layer reads it from the compiled module (dpo_fast._registry); nothing about
 * a loss type is written down anywhere else. A new per-pair loss is a function below and a row
 * here (and its reference formula in the tests).
 *
 * X(KIND, ID, PAIR_FN, NAME, FLAGS, SMOOTHING_MAX):
 *   KIND     which loop cases the type has (DPO_KIND_FLAGS_##KIND: what that tells the
 *            Python layer):
 *            PAIR       a per-pair function of the raw log-ratios: a case of the fused loop
 *                       (chunk_body.h) and of the general loop's terms (general_body.h)
 *            PAIR_NORM  also of the length-normalised ones: the fused loop's raw and
 *                       normalised cases, and the general loop's terms
 *            NORM       of the length-normalised log-ratios only: the fused loop's normalised
 *                       case, and the general loop's terms
 *            CONST      the same value for every pair (params->sft_value, computed by the
 *                       Python layer): a case of the fused loop, which adds the general
 *                       loop's gradient offsets; the general loop adds the constant
 *            SORTED     sorted across the batch by the Python layer, then PAIR_FN on the
 *                       sorted differences (no kernel case of its own)
 *            PAIR_GT    a per-pair function of the raw log-ratios and the pair's
 *                       ground-truth reward margin g (NeMo-Aligner's reward-aware losses),
 *                       PAIR_FN taking g as well: a case of the fused loop and a term of
 *                       the general loop
 *            GT_TERM    the same, a term of the general loop only (the KLs: a fused case
 *                       gave other NaN bits than the general loop for NaN inputs on AVX-512)
 *            (CONST and PAIR_GT had the general loop only at first: their fused cases
 *            finish a row as it does, so the two loops give the same bits; chunk_body.h.)
 *   ID       the kernel identifier (the enum below is generated from these rows)
 *   NAME     TRL's name of the type
 *   FLAGS    DPO_LT_* below, except those KIND gives (marked "from KIND")
 *   SMOOTHING_MAX  label_smoothing's exclusive upper bound (lower bound 0), 0: not used
 */
enum {
    DPO_LT_PLAIN = 1 << 0,          /* (from KIND) PAIR, PAIR_NORM: the plain fused loop */
    DPO_LT_DIVERGENCE = 1 << 1,     /* TRL's f_divergence_type applies */
    DPO_LT_LENGTHS_BOTH = 1 << 2,   /* needs chosen_lengths and rejected_lengths */
    DPO_LT_LENGTHS_CHOSEN = 1 << 3, /* needs chosen_lengths */
    DPO_LT_LENGTHS_OPTIONAL = 1 << 4, /* normalised by the lengths when both are given */
    DPO_LT_BATCH_COUPLED = 1 << 5,  /* a pair's loss depends on the other pairs of the batch */
    DPO_LT_REFERENCE_FREE = 1 << 6, /* refuses reference log-probs */
    DPO_LT_NORMALIZED_REWARDS = 1 << 7, /* rewards beta * p / n instead of beta * (p - ref) */
    DPO_LT_BATCH_CONSTANT = 1 << 8, /* the same value for every pair (sft): set by the caller */
    DPO_LT_SMOOTHING_POSITIVE = 1 << 9, /* label_smoothing must be > 0 (EXO takes log eps) */
    DPO_LT_NORMALIZED = 1 << 10,    /* (from KIND) PAIR_NORM, NORM */
    DPO_LT_SORTED = 1 << 11,        /* (from KIND) SORTED */
    DPO_LT_GT_REWARDS = 1 << 12,    /* (from KIND) PAIR_GT, GT_TERM: needs gt_reward_margins */
    DPO_LT_FUSED_AS_GENERAL = 1 << 13 /* (from KIND) CONST, PAIR_GT: a fused case with the
                                       * general loop's bits (sft's gradient offsets too) */
};

#define DPO_LOSS_REGISTRY(X)                                                                   \
    X(PAIR, DPO_LOSS_SIGMOID, dpo_pair_sigmoid, "sigmoid", DPO_LT_DIVERGENCE, 0.5)             \
    X(PAIR, DPO_LOSS_HINGE, dpo_pair_hinge, "hinge", DPO_LT_DIVERGENCE, 0.0)                   \
    X(PAIR_NORM, DPO_LOSS_IPO, dpo_pair_ipo, "ipo", DPO_LT_DIVERGENCE | DPO_LT_LENGTHS_OPTIONAL, \
      0.0)                                                                                     \
    X(PAIR, DPO_LOSS_EXO_PAIR, dpo_pair_exo_pair, "exo_pair",                                  \
      DPO_LT_DIVERGENCE | DPO_LT_SMOOTHING_POSITIVE, 1.0)                                      \
    X(PAIR, DPO_LOSS_NCA_PAIR, dpo_pair_nca_pair, "nca_pair", 0, 0.0)                          \
    X(PAIR, DPO_LOSS_ROBUST, dpo_pair_robust, "robust", DPO_LT_DIVERGENCE, 0.5)                \
    X(PAIR, DPO_LOSS_BCO_PAIR, dpo_pair_bco_pair, "bco_pair", 0, 0.0)                          \
    X(PAIR, DPO_LOSS_SPPO_HARD, dpo_pair_sppo_hard, "sppo_hard", 0, 0.0)                       \
    X(SORTED, DPO_LOSS_AOT, dpo_pair_sigmoid, "aot", DPO_LT_BATCH_COUPLED, 0.5)                \
    X(SORTED, DPO_LOSS_AOT_UNPAIRED, dpo_pair_sigmoid, "aot_unpaired", DPO_LT_BATCH_COUPLED,   \
      0.5)                                                                                     \
    X(PAIR, DPO_LOSS_APO_ZERO, dpo_pair_apo_zero, "apo_zero", 0, 0.0)                          \
    X(PAIR, DPO_LOSS_APO_DOWN, dpo_pair_apo_down, "apo_down", 0, 0.0)                          \
    X(PAIR, DPO_LOSS_DISCOPOP, dpo_pair_discopop, "discopop", DPO_LT_DIVERGENCE, 0.0)          \
    X(CONST, DPO_LOSS_SFT, dpo_pair_sft, "sft",                                                \
      DPO_LT_LENGTHS_CHOSEN | DPO_LT_BATCH_COUPLED | DPO_LT_BATCH_CONSTANT, 0.0)                \
    X(NORM, DPO_LOSS_SIGMOID_NORM, dpo_pair_sigmoid_norm, "sigmoid_norm",                      \
      DPO_LT_DIVERGENCE | DPO_LT_LENGTHS_BOTH, 0.0)                                            \
    X(NORM, DPO_LOSS_SIMPO, dpo_pair_simpo, "simpo",                                           \
      DPO_LT_LENGTHS_BOTH | DPO_LT_REFERENCE_FREE | DPO_LT_NORMALIZED_REWARDS, 0.5)             \
    X(PAIR, DPO_LOSS_DPOP, dpo_pair_dpop, "dpop", 0, 0.0)                                      \
    X(NORM, DPO_LOSS_ORPO, dpo_pair_orpo, "orpo",                                              \
      DPO_LT_LENGTHS_BOTH | DPO_LT_REFERENCE_FREE | DPO_LT_NORMALIZED_REWARDS, 0.0)            \
    X(NORM, DPO_LOSS_ALPHAPO, dpo_pair_alphapo, "alphapo",                                     \
      DPO_LT_LENGTHS_BOTH | DPO_LT_REFERENCE_FREE | DPO_LT_NORMALIZED_REWARDS, 0.5)            \
    X(PAIR_GT, DPO_LOSS_RPO_SQ, dpo_pair_rpo_sq, "rpo_sq", 0, 0.0)                             \
    X(GT_TERM, DPO_LOSS_RPO_FWD_KL, dpo_pair_rpo_fwd_kl, "rpo_fwd_kl", 0, 0.0)                 \
    X(GT_TERM, DPO_LOSS_RPO_BWD_KL, dpo_pair_rpo_bwd_kl, "rpo_bwd_kl", 0, 0.0)

/* Row filters for the loops' switch cases: DPO_IF_PLAIN_##KIND(...) keeps its argument for the
 * loss types with a case in the fused loop over raw log-ratios, DPO_IF_NORMALIZED_##KIND(...)
 * for those with one over normalised log-ratios, DPO_IF_TERM_##KIND(...) for those with a
 * per-pair term in the general loop, DPO_IF_GT_TERM_##KIND(...) for those whose term (and
 * fused case: DPO_IF_FUSED_GT_##KIND) also takes the ground-truth reward margin,
 * DPO_IF_CONST_##KIND(...) for the batch constants; DPO_KIND_FLAGS_##KIND is what KIND tells
 * the Python layer. */
#define DPO_IF_PLAIN_PAIR(...) __VA_ARGS__
#define DPO_IF_PLAIN_PAIR_NORM(...) __VA_ARGS__
#define DPO_IF_PLAIN_NORM(...)
#define DPO_IF_PLAIN_CONST(...)
#define DPO_IF_PLAIN_SORTED(...)
#define DPO_IF_PLAIN_PAIR_GT(...)
#define DPO_IF_PLAIN_GT_TERM(...)
#define DPO_IF_NORMALIZED_PAIR(...)
#define DPO_IF_NORMALIZED_PAIR_NORM(...) __VA_ARGS__
#define DPO_IF_NORMALIZED_NORM(...) __VA_ARGS__
#define DPO_IF_NORMALIZED_CONST(...)
#define DPO_IF_NORMALIZED_SORTED(...)
#define DPO_IF_NORMALIZED_PAIR_GT(...)
#define DPO_IF_NORMALIZED_GT_TERM(...)
#define DPO_IF_TERM_PAIR(...) __VA_ARGS__
#define DPO_IF_TERM_PAIR_NORM(...) __VA_ARGS__
#define DPO_IF_TERM_NORM(...) __VA_ARGS__
#define DPO_IF_TERM_CONST(...)
#define DPO_IF_TERM_SORTED(...)
#define DPO_IF_TERM_PAIR_GT(...)
#define DPO_IF_TERM_GT_TERM(...)
#define DPO_IF_GT_TERM_PAIR(...)
#define DPO_IF_GT_TERM_PAIR_NORM(...)
#define DPO_IF_GT_TERM_NORM(...)
#define DPO_IF_GT_TERM_CONST(...)
#define DPO_IF_GT_TERM_SORTED(...)
#define DPO_IF_GT_TERM_PAIR_GT(...) __VA_ARGS__
#define DPO_IF_GT_TERM_GT_TERM(...) __VA_ARGS__
#define DPO_IF_CONST_PAIR(...)
#define DPO_IF_CONST_PAIR_NORM(...)
#define DPO_IF_CONST_NORM(...)
#define DPO_IF_CONST_CONST(...) __VA_ARGS__
#define DPO_IF_CONST_SORTED(...)
#define DPO_IF_CONST_PAIR_GT(...)
#define DPO_IF_CONST_GT_TERM(...)
#define DPO_IF_FUSED_GT_PAIR(...)
#define DPO_IF_FUSED_GT_PAIR_NORM(...)
#define DPO_IF_FUSED_GT_NORM(...)
#define DPO_IF_FUSED_GT_CONST(...)
#define DPO_IF_FUSED_GT_SORTED(...)
#define DPO_IF_FUSED_GT_PAIR_GT(...) __VA_ARGS__
#define DPO_IF_FUSED_GT_GT_TERM(...)
#define DPO_KIND_FLAGS_PAIR DPO_LT_PLAIN
#define DPO_KIND_FLAGS_PAIR_NORM (DPO_LT_PLAIN | DPO_LT_NORMALIZED)
#define DPO_KIND_FLAGS_NORM DPO_LT_NORMALIZED
#define DPO_KIND_FLAGS_CONST DPO_LT_FUSED_AS_GENERAL
#define DPO_KIND_FLAGS_SORTED DPO_LT_SORTED
#define DPO_KIND_FLAGS_PAIR_GT (DPO_LT_GT_REWARDS | DPO_LT_FUSED_AS_GENERAL)
#define DPO_KIND_FLAGS_GT_TERM DPO_LT_GT_REWARDS

/* Loss identifiers: the registry's rows in order. */
#define DPO_LOSS_ENUM_ROW(KIND, ID, PAIR_FN, NAME, FLAGS, SMOOTHING_MAX) ID,
enum { DPO_LOSS_REGISTRY(DPO_LOSS_ENUM_ROW) DPO_N_LOSS_TYPES };
#undef DPO_LOSS_ENUM_ROW

typedef struct {
    double beta;
    double label_smoothing; /* epsilon of sigmoid / robust / exo_pair */
    double discopop_tau;
    double exo_log1m_eps;   /* log(1 - epsilon), log(epsilon): exo_pair's constants */
    double exo_log_eps;
    double discopop_neg_inf_arg; /* limit of -z - softplus(-z/tau) as z -> -inf (see discopop) */
    double simpo_gamma;     /* SimPO's target margin */
    double sft_value;       /* sft's batch constant -(sum pc)/(sum nc), from the Python layer */
    double dpop_lambda;     /* DPO-Positive's penalty weight */
    double bco_delta;       /* BCO's reward shift (TRL's running mean of the rewards) */
    double alphapo_alpha;   /* AlphaPO's reward shape alpha (0: SimPO) */
    double alphapo_log_beta;      /* log(beta), log(beta) - log|alpha|: alphapo's careful */
    double alphapo_log_scale;     /* path (set with alphapo_alpha; 0 when alpha is 0) */
    double gt_reward_scale; /* NeMo-Aligner's gt_reward_scale: g = scale * gt margin */
} DpoLossParams;

typedef struct {
    double value;
    double d_chosen;   /* d value / d c */
    double d_rejected; /* d value / d r */
} DpoPairLoss;

/* a*b, but 0 where a is 0: a weight or probability that is exactly 0 removes its term even
 * where the other factor is infinite (z = +-inf when beta*(c - r) overflows, or a score of an
 * f-divergence), where the plain product would be 0*inf = NaN. */
DPO_INLINE double dpo_mul0(double a, double b)
{
    return (a == 0.0) ? 0.0 : a * b;
}

/* a*b, but 0 where either is 0: a loss derivative times a chain factor of an f-divergence,
 * either of which may have underflowed to 0 while the other overflowed. The product is then
 * taken as 0, which is its limit for every loss type whose derivative decays at least as fast
 * as the score grows: all but ipo, whose rows with an overflowed score the general loop
 * redoes from logarithms (general_body.h). */
DPO_INLINE double dpo_mul00(double a, double b)
{
    /* `|`, not `||`: no short-circuit branch, which keeps the SSE2 loops vectorisable. */
    int either_zero = (a == 0.0) | (b == 0.0);
    return either_zero ? 0.0 : a * b;
}

/* softplus(x) = log(1 + exp(x)) from the pieces of dpo_logistic(x). */
DPO_INLINE double dpo_softplus_of(double x, DpoLogistic lg)
{
    return dpo_relu(x) + lg.log1p_e;
}

/* The conservative logistic loss of a margin z and its derivative, shared by sigmoid, simpo
 * and sigmoid_norm:
 *   loss   = -(1-eps)*log(sigmoid(z)) - eps*log(sigmoid(-z))
 *          = (1-eps)*softplus(-z) + eps*softplus(z)
 *   d/dz   = -(1-eps)*sigmoid(-z) + eps*sigmoid(z).
 * Both softplus terms share log(1 + exp(-|z|)), so neither is formed by cancellation. */
typedef struct {
    double value;
    double d_z;
} DpoMarginLoss;

DPO_INLINE DpoMarginLoss dpo_conservative_logistic(double z, double eps)
{
    DpoMarginLoss out;
    DpoLogistic lg = dpo_logistic(z);
    double softplus_neg = dpo_relu(-z) + lg.log1p_e;
    double softplus_pos = dpo_relu(z) + lg.log1p_e;
    out.value = (1.0 - eps) * softplus_neg + dpo_mul0(eps, softplus_pos);
    out.d_z = eps * lg.sig_pos - (1.0 - eps) * lg.sig_neg;
    return out;
}

/* sigmoid (DPO, Rafailov et al. 2023), conservative with label smoothing eps as in the DPO
 * authors' reference code; z = beta*(c - r). */
DPO_INLINE DpoPairLoss dpo_pair_sigmoid(const DpoLossParams *params, double beta,
                                        double inv_scale, double c, double r)
{
    (void)inv_scale;
    DpoPairLoss out;
    DpoMarginLoss ml = dpo_conservative_logistic(beta * (c - r), params->label_smoothing);
    out.value = ml.value;
    out.d_chosen = beta * ml.d_z;
    out.d_rejected = -out.d_chosen;
    return out;
}

/* sigmoid without label smoothing, the commonest call, which the fused loop runs as a case of
 * its own: dpo_pair_sigmoid with eps = 0 folded in, the same bits ((1 - 0) x + 0 * y is x for
 * the softplus x >= +0, and 0 * sigmoid(z) - sigmoid(-z) is 0.0 - sigmoid(-z), +0 included)
 * in ~5 fewer operations a row. */
DPO_INLINE DpoPairLoss dpo_pair_sigmoid_unsmoothed(const DpoLossParams *params, double beta,
                                                   double inv_scale, double c, double r)
{
    (void)params;
    (void)inv_scale;
    DpoPairLoss out;
    double z = beta * (c - r);
    DpoLogistic lg = dpo_logistic(z);
    out.value = dpo_relu(-z) + lg.log1p_e;
    out.d_chosen = beta * (0.0 - lg.sig_neg);
    out.d_rejected = -out.d_chosen;
    return out;
}

/* sigmoid_norm (Tulu 3's length-normalised DPO; TRL): -logsigmoid(beta*(c/nc - r/nr)). The
 * chunk loop passes the length-normalised log-ratios as c and r; no label smoothing. */
DPO_INLINE DpoPairLoss dpo_pair_sigmoid_norm(const DpoLossParams *params, double beta,
                                             double inv_scale, double c, double r)
{
    (void)params;
    (void)inv_scale;
    DpoPairLoss out;
    DpoMarginLoss ml = dpo_conservative_logistic(beta * (c - r), 0.0);
    out.value = ml.value;
    out.d_chosen = beta * ml.d_z;
    out.d_rejected = -out.d_chosen;
    return out;
}

/* simpo (Meng et al. 2024; TRL's CPOTrainer, Liger): u = beta*(pc/nc - pr/nr) - gamma, the
 * conservative logistic loss of u. Reference-free: the chunk loop passes pc/nc, pr/nr. */
DPO_INLINE DpoPairLoss dpo_pair_simpo(const DpoLossParams *params, double beta,
                                      double inv_scale, double c, double r)
{
    (void)inv_scale;
    DpoPairLoss out;
    DpoMarginLoss ml = dpo_conservative_logistic(beta * (c - r) - params->simpo_gamma,
                                                 params->label_smoothing);
    out.value = ml.value;
    out.d_chosen = beta * ml.d_z;
    out.d_rejected = -out.d_chosen;
    return out;
}

/* sft (TRL, inside the RPO / MPO combinations): the mean negative log-likelihood per chosen
 * token of the whole batch, -(sum_i pc_i)/(sum_i nc_i), the same for every pair. It couples
 * the batch, so the Python layer computes the constant and its gradient (a constant added to
 * every grad_chosen); here it only contributes its value. */
DPO_INLINE DpoPairLoss dpo_pair_sft(const DpoLossParams *params, double beta,
                                    double inv_scale, double c, double r)
{
    (void)beta;
    (void)inv_scale;
    (void)c;
    (void)r;
    DpoPairLoss out;
    out.value = params->sft_value;
    out.d_chosen = 0.0;
    out.d_rejected = 0.0;
    return out;
}

/* hinge (SLiC, Zhao et al. 2023; RSO): max(0, 1 - z); the subgradient at z = 1 is 0. */
DPO_INLINE DpoPairLoss dpo_pair_hinge(const DpoLossParams *params, double beta,
                                      double inv_scale, double c, double r)
{
    DpoPairLoss out;
    (void)params;
    (void)inv_scale;
    double margin = 1.0 - beta * (c - r);
    /* Arithmetic rather than two selects on one condition: GCC's if-conversion of the
     * latter next to the general loop's dpo_mul00 failed on SSE2 (the loop stayed scalar). */
    double active = (margin > 0.0) ? 1.0 : 0.0;
    out.value = dpo_relu(margin);
    out.d_chosen = -beta * active;
    out.d_rejected = -out.d_chosen;
    return out;
}

/* ipo (Azar et al. 2023, Eq. 17), summed log-ratios: (h - 1/(2 beta))^2 with h = c - r.
 * (Length-normalised log-ratios are the caller's choice of c and r.) */
DPO_INLINE DpoPairLoss dpo_pair_ipo(const DpoLossParams *params, double beta,
                                    double inv_scale, double c, double r)
{
    DpoPairLoss out;
    double gap = (c - r) * inv_scale - 0.5 / params->beta;
    out.value = gap * gap;
    out.d_chosen = 2.0 * gap * inv_scale;
    out.d_rejected = -out.d_chosen;
    (void)beta;
    return out;
}

/* exo_pair (Ji et al. 2024, Eq. 16):
 *   sigmoid(z) (logsigmoid(z) - log(1-eps)) + sigmoid(-z) (logsigmoid(-z) - log(eps));
 *   d/dz = sigmoid(z) sigmoid(-z) (z - log(1-eps) + log(eps)),
 * since logsigmoid(z) - logsigmoid(-z) = z. */
DPO_INLINE DpoPairLoss dpo_pair_exo_pair(const DpoLossParams *params, double beta,
                                         double inv_scale, double c, double r)
{
    DpoPairLoss out;
    (void)inv_scale;
    double z = beta * (c - r);
    DpoLogistic lg = dpo_logistic(z);
    double logsig_pos = -dpo_softplus_of(-z, lg);
    double logsig_neg = -dpo_softplus_of(z, lg);
    out.value = dpo_mul0(lg.sig_pos, logsig_pos - params->exo_log1m_eps)
                + dpo_mul0(lg.sig_neg, logsig_neg - params->exo_log_eps);
    double d_z = dpo_mul0(lg.sig_pos * lg.sig_neg,
                          z - params->exo_log1m_eps + params->exo_log_eps);
    out.d_chosen = beta * d_z;
    out.d_rejected = -out.d_chosen;
    return out;
}

/* nca_pair (Chen et al. 2024): with x = beta c, y = beta r,
 *   -logsigmoid(x) - logsigmoid(-x)/2 - logsigmoid(-y)/2. */
DPO_INLINE DpoPairLoss dpo_pair_nca_pair(const DpoLossParams *params, double beta,
                                         double inv_scale, double c, double r)
{
    DpoPairLoss out;
    (void)params;
    (void)inv_scale;
    double x = beta * c, y = beta * r;
    DpoLogistic lx = dpo_logistic(x);
    DpoLogistic ly = dpo_logistic(y);
    out.value = dpo_softplus_of(-x, lx) + 0.5 * dpo_softplus_of(x, lx)
                + 0.5 * dpo_softplus_of(y, ly);
    out.d_chosen = beta * (0.5 * lx.sig_pos - lx.sig_neg);
    out.d_rejected = beta * (0.5 * ly.sig_pos);
    return out;
}

/* robust (Chowdhury et al. 2024, rDPO):
 *   ((1-eps) softplus(-z) - eps softplus(z)) / (1 - 2 eps). */
DPO_INLINE DpoPairLoss dpo_pair_robust(const DpoLossParams *params, double beta,
                                       double inv_scale, double c, double r)
{
    DpoPairLoss out;
    (void)inv_scale;
    double eps = params->label_smoothing;
    double denom = 1.0 - 2.0 * eps;
    double z = beta * (c - r);
    DpoLogistic lg = dpo_logistic(z);
    out.value = ((1.0 - eps) * dpo_softplus_of(-z, lg) - dpo_mul0(eps, dpo_softplus_of(z, lg)))
                / denom;
    double d_z = (-(1.0 - eps) * lg.sig_neg - eps * lg.sig_pos) / denom;
    out.d_chosen = beta * d_z;
    out.d_rejected = -out.d_chosen;
    return out;
}

/* bco_pair (Jung et al. 2024; TRL's DPOTrainer form, with BCOTrainer's reward shift delta, a
 * running mean of the rewards the caller keeps; 0 is TRL's DPOTrainer):
 *   -logsigmoid(beta c - delta) - logsigmoid(-(beta r - delta)). */
DPO_INLINE DpoPairLoss dpo_pair_bco_pair(const DpoLossParams *params, double beta,
                                         double inv_scale, double c, double r)
{
    DpoPairLoss out;
    (void)inv_scale;
    double x = beta * c - params->bco_delta, y = beta * r - params->bco_delta;
    DpoLogistic lx = dpo_logistic(x);
    DpoLogistic ly = dpo_logistic(y);
    out.value = dpo_softplus_of(-x, lx) + dpo_softplus_of(y, ly);
    out.d_chosen = -beta * lx.sig_neg;
    out.d_rejected = beta * ly.sig_pos;
    return out;
}

/* sppo_hard (Wu et al. 2024, hard labels): (c - 1/(2 beta))^2 + (r + 1/(2 beta))^2. */
DPO_INLINE DpoPairLoss dpo_pair_sppo_hard(const DpoLossParams *params, double beta,
                                          double inv_scale, double c, double r)
{
    DpoPairLoss out;
    (void)beta;
    double half_inv_beta = 0.5 / params->beta;
    double gap_c = c * inv_scale - half_inv_beta;
    double gap_r = r * inv_scale + half_inv_beta;
    out.value = gap_c * gap_c + gap_r * gap_r;
    out.d_chosen = 2.0 * gap_c * inv_scale;
    out.d_rejected = 2.0 * gap_r * inv_scale;
    return out;
}

/* apo_zero (D'Oosterlinck et al. 2024, Eq. 7): 1 - sigmoid(beta c) + sigmoid(beta r),
 * with 1 - sigmoid(x) taken as sigmoid(-x). */
DPO_INLINE DpoPairLoss dpo_pair_apo_zero(const DpoLossParams *params, double beta,
                                         double inv_scale, double c, double r)
{
    DpoPairLoss out;
    (void)params;
    (void)inv_scale;
    DpoLogistic lx = dpo_logistic(beta * c);
    DpoLogistic ly = dpo_logistic(beta * r);
    out.value = lx.sig_neg + ly.sig_pos;
    out.d_chosen = -beta * lx.sig_pos * lx.sig_neg;
    out.d_rejected = beta * ly.sig_pos * ly.sig_neg;
    return out;
}

/* apo_down (D'Oosterlinck et al. 2024, Eq. 8): sigmoid(beta c) + 1 - sigmoid(z). */
DPO_INLINE DpoPairLoss dpo_pair_apo_down(const DpoLossParams *params, double beta,
                                         double inv_scale, double c, double r)
{
    DpoPairLoss out;
    (void)params;
    (void)inv_scale;
    DpoLogistic lx = dpo_logistic(beta * c);
    DpoLogistic lz = dpo_logistic(beta * (c - r));
    double slope_z = lz.sig_pos * lz.sig_neg;
    out.value = lx.sig_pos + lz.sig_neg;
    out.d_chosen = beta * (lx.sig_pos * lx.sig_neg - slope_z);
    out.d_rejected = beta * slope_z;
    return out;
}

/* discopop (Chris Lu et al. 2024, Eq. 5): m = sigmoid(z/tau),
 *   (1 - m) softplus(-z) + m exp(-z),
 * the second term taken as exp(-z - softplus(-z/tau)): the product m*exp(-z) is 0*inf = NaN
 * for very negative z (the limit as z -> -inf, -inf, 0 or +inf as tau <, =, > 1, comes in
 * params). d/dz = -m(1-m)/tau softplus(-z) - (1-m) sigmoid(-z)
 *                              + exp(...) (-1 + (1-m)/tau). */
DPO_INLINE DpoPairLoss dpo_pair_discopop(const DpoLossParams *params, double beta,
                                         double inv_scale, double c, double r)
{
    DpoPairLoss out;
    (void)inv_scale;
    double tau = params->discopop_tau;
    double z = beta * (c - r);
    double u = z / tau;
    DpoLogistic lz = dpo_logistic(z);
    DpoLogistic lu = dpo_logistic(u);
    double one_minus_m = lu.sig_neg;
    double logistic_part = dpo_softplus_of(-z, lz);
    /* z = -inf (beta*(c - r) overflowed) would make the exponent inf - inf. */
    double exp_arg = (z == -INFINITY) ? params->discopop_neg_inf_arg
                                      : -z - dpo_softplus_of(-u, lu);
    double exp_part = dpo_exp(exp_arg);
    out.value = one_minus_m * logistic_part + exp_part;
    double d_z = -dpo_mul0(lu.sig_pos * lu.sig_neg / tau, logistic_part)
                 - one_minus_m * lz.sig_neg + dpo_mul0(one_minus_m / tau - 1.0, exp_part);
    out.d_chosen = beta * d_z;
    out.d_rejected = -out.d_chosen;
    return out;
}

/* dpop (DPO-Positive, Pal et al. 2024, Eq. 3): -logsigmoid(beta (c - r - lambda max(0, -c))),
 * where max(0, -c) = max(0, log pi_ref(y_w) - log pi(y_w)) penalises a chosen log-prob that
 * fell below the reference's. The margin is formed as c (1 + lambda [c < 0]) - r (no inf - inf
 * when the penalty overflows); at the kink c = 0 the derivative is the one-sided value without
 * the penalty, d/dc = beta * (-sigmoid(-u)). */
DPO_INLINE DpoPairLoss dpo_pair_dpop(const DpoLossParams *params, double beta,
                                     double inv_scale, double c, double r)
{
    DpoPairLoss out;
    (void)inv_scale;
    double slope_c = (c < 0.0) ? 1.0 + params->dpop_lambda : 1.0;
    DpoMarginLoss ml = dpo_conservative_logistic(beta * (c * slope_c - r), 0.0);
    out.value = ml.value;
    out.d_chosen = beta * slope_c * ml.d_z;
    out.d_rejected = -beta * ml.d_z;
    return out;
}

/* orpo (Hong et al. 2024; TRL's ORPOTrainer.odds_ratio_loss), the odds-ratio term:
 * reference-free, of the average log-probs a = p/n (the chunk loop passes them),
 *   log_odds = (a_c - a_r) - (log(1 - e^{a_c}) - log(1 - e^{a_r})),
 *   loss = -beta logsigmoid(log_odds),
 * d log_odds / d a_c = 1/(1 - e^{a_c}), / d a_r = -1/(1 - e^{a_r}). The Python layer keeps
 * a < 0. beta and a come unscaled (params->beta, c * inv_scale), as in ipo: the loss is not
 * linear in a. ["orpo", "sft"] with weights [1, 1] is TRL's ORPO loss. */

/* dpo_log1mexp(a) (simd_math.h), the same bits, with one log kernel instead of three. A
 * vectorised loop evaluates every form of dpo_log1mexp on every row: log_pos(-expm1(a)),
 * log1m(e^a)'s near-one form and its log_pos(1 - e^a), three fdlibm kernels with a division
 * each, most of orpo's time. Here the form a row takes is chosen first (its kernel argument
 * f, exponent k and correction c, as those functions compute them) and the kernel runs once. */
DPO_INLINE double dpo_orpo_log1mexp(double a, double *one_minus_out)
{
    double e;
    double near = -dpo_expm1_exp(a, &e); /* 1 - e^a, accurate for a > -ln 2 */
    double u = 1.0 - e;
    int close = a > -0.6931471805599453;
    *one_minus_out = close ? near : u;
    /* dpo_log1m(e)'s near-one form (e <= 1/2), else dpo_log_pos of near or of u = 1 - e
     * (one compare of a selected value: `!close & !(e > 0.5)` would not vectorise) */
    double e_far = close ? 1.0 : e;
    int one_form = !(e_far > 0.5);
    double c_one = ((1.0 - u) - e) / u;
    int lower = u < 0.7071067811865476;
    double f_one = (lower ? 2.0 * u : u) - 1.0;
    double k_one = lower ? -1.0 : 0.0;
    /* dpo_log_pos's reduction of x, and its special values on its forms only */
    double x = close ? near : u;
    double k_pos;
    double f_pos = dpo_log_reduce(x, &k_pos);
    double result = dpo_log_kernel(one_form ? f_one : f_pos, one_form ? k_one : k_pos,
                                   one_form ? c_one : 0.0);
    return one_form ? result : dpo_log_special(x, result);
}

DPO_INLINE DpoPairLoss dpo_pair_orpo(const DpoLossParams *params, double beta,
                                     double inv_scale, double c, double r)
{
    DpoPairLoss out;
    (void)beta;
    double a_c = c * inv_scale, a_r = r * inv_scale;
    double one_minus_c, one_minus_r;
    double log_c = dpo_orpo_log1mexp(a_c, &one_minus_c);
    double log_r = dpo_orpo_log1mexp(a_r, &one_minus_r);
    double log_odds = (a_c - a_r) - (log_c - log_r);
    DpoLogistic lg = dpo_logistic(log_odds);
    double slope = -params->beta * lg.sig_neg; /* d loss / d log_odds */
    out.value = params->beta * dpo_softplus_of(-log_odds, lg);
    out.d_chosen = slope / one_minus_c * inv_scale;
    out.d_rejected = -slope / one_minus_r * inv_scale;
    return out;
}

/* e^p - e^q with no inf - inf: sign * e^{max(p, q)} (1 - e^{-|p - q|}); 0 where p == q
 * (both -inf included). */
DPO_INLINE double dpo_exp_difference(double p, double q)
{
    double top = (p > q) ? p : q;
    double gap = (p > q) ? p - q : q - p;
    double one_minus;
    double log_share = dpo_log1mexp((p == q) ? -1.0 : -gap, &one_minus);
    double magnitude = dpo_exp(top + log_share);
    return (p == q) ? 0.0 : ((p > q) ? magnitude : -magnitude);
}

/* alphapo (AlphaPO, Gupta et al. 2025, arXiv 2501.03884; TRL's CPOTrainer.cpo_loss with
 * CPOConfig(loss_type="alphapo", alpha=alpha), which is "simpo" with cpo_alpha = 0): SimPO on
 * shaped rewards. Of the average log-probs a = p/n (the chunk loop passes them), TRL's
 *   r(a) = (1 - p^(-alpha)) / alpha,  p = exp(a),  i.e.  r(a) = -expm1(-alpha a) / alpha,
 *   u = beta (r(a_c) - r(a_r)) - gamma,  loss = -(1-eps) logsigmoid(u) - eps logsigmoid(-u),
 * with dr/da = exp(-alpha a). r is formed as a * expm1(b)/b with b = -alpha a (1 at b = 0), so
 * alpha = 0 (and a subnormal alpha a) is exactly SimPO's u = beta (a_c - a_r) - gamma.
 * Where exp(b) is beyond e^700, or beta r(a_c) - beta r(a_r) overflowed (inf or inf - inf),
 * the margin is taken from logarithms instead:
 *   beta (r_c - r_r) = -sign(b_c - b_r) sign(alpha) exp(max(b) + log(1 - e^{-|b_c - b_r|})
 *                                                   + log beta - log|alpha|),
 * which is +-inf only where the true margin overflows double; the derivatives there (and
 * where |u| > 700, where sigmoid(-u) would underflow) are
 *   d/da_c = beta e^{b_c} (eps sigmoid(u) - (1-eps) sigmoid(-u)), each product as
 *   exp(b_c - softplus(-+u) + log beta), so no inf * 0. beta and a come unscaled
 * (params->beta, c * inv_scale), as in orpo: the loss is not linear in a. */
#define DPO_ALPHAPO_EXP_MAX 1.0e6 /* |b| clamp: exp of more is 0 or inf whatever is added */

/* alphapo's margin the plain way, and what its logarithm paths start from: the pieces shared
 * by dpo_pair_alphapo and the fused alphapo loop's plain rows (alphapo_body.h), so the two
 * give the same bits there. */
typedef struct {
    double x_c, x_r; /* b = -alpha a, clamped to +-DPO_ALPHAPO_EXP_MAX */
    double e_c, e_r; /* exp(x_c), exp(x_r) */
    double m_c, m_r; /* expm1(x_c), expm1(x_r) */
    double u_plain;  /* beta (r(a_c) - r(a_r)) - gamma from the two rewards */
    int plain_bad;   /* u_plain is inf, or NaN from inf - inf */
} DpoAlphapoMargin;

DPO_INLINE DpoAlphapoMargin dpo_alphapo_margin(const DpoLossParams *params, double a_c,
                                               double a_r)
{
    DpoAlphapoMargin out;
    const double alpha = params->alphapo_alpha, b = params->beta;
    double b_c = -alpha * a_c, b_r = -alpha * a_r; /* +-inf where alpha a overflows */
    double x_c = (b_c > DPO_ALPHAPO_EXP_MAX) ? DPO_ALPHAPO_EXP_MAX : b_c;
    x_c = (x_c < -DPO_ALPHAPO_EXP_MAX) ? -DPO_ALPHAPO_EXP_MAX : x_c;
    double x_r = (b_r > DPO_ALPHAPO_EXP_MAX) ? DPO_ALPHAPO_EXP_MAX : b_r;
    x_r = (x_r < -DPO_ALPHAPO_EXP_MAX) ? -DPO_ALPHAPO_EXP_MAX : x_r;
    double m_c = dpo_expm1_exp(x_c, &out.e_c), m_r = dpo_expm1_exp(x_r, &out.e_r);
    /* r = a expm1(b)/b for |b| <= 1 (1 at b = 0: alpha = 0, or alpha a subnormal), else
     * -expm1(b)/alpha (no cancellation there; right for a clamped b as well) */
    int small_c = (b_c <= 1.0) & (b_c >= -1.0), small_r = (b_r <= 1.0) & (b_r >= -1.0);
    double div_c = (b_c == 0.0) ? 1.0 : b_c, div_r = (b_r == 0.0) ? 1.0 : b_r;
    double alpha_div = (alpha == 0.0) ? 1.0 : alpha;
    double rw_c = small_c ? ((b_c == 0.0) ? a_c : a_c * (m_c / div_c)) : -m_c / alpha_div;
    double rw_r = small_r ? ((b_r == 0.0) ? a_r : a_r * (m_r / div_r)) : -m_r / alpha_div;
    out.x_c = x_c;
    out.x_r = x_r;
    out.m_c = m_c;
    out.m_r = m_r;
    out.u_plain = (b * rw_c - b * rw_r) - params->simpo_gamma;
    out.plain_bad = !(out.u_plain - out.u_plain == 0.0);
    return out;
}

/* The conservative logistic loss of alphapo's u, its derivative, and the two softplus terms
 * the logarithm path of the derivatives reads. */
typedef struct {
    double value;
    double d_u;
    double softplus_neg; /* -logsigmoid(u) */
    double softplus_pos; /* -logsigmoid(-u) */
} DpoAlphapoLoss;

DPO_INLINE DpoAlphapoLoss dpo_alphapo_loss_of(double u, double eps)
{
    DpoAlphapoLoss out;
    DpoLogistic lg = dpo_logistic(u);
    out.softplus_neg = dpo_relu(-u) + lg.log1p_e;
    out.softplus_pos = dpo_relu(u) + lg.log1p_e;
    out.value = (1.0 - eps) * out.softplus_neg + dpo_mul0(eps, out.softplus_pos);
    out.d_u = eps * lg.sig_pos - (1.0 - eps) * lg.sig_neg;
    return out;
}

DPO_INLINE DpoPairLoss dpo_pair_alphapo(const DpoLossParams *params, double beta,
                                        double inv_scale, double c, double r)
{
    DpoPairLoss out;
    (void)beta;
    const double alpha = params->alphapo_alpha, b = params->beta;
    const double eps = params->label_smoothing;
    double a_c = c * inv_scale, a_r = r * inv_scale;
    DpoAlphapoMargin mg = dpo_alphapo_margin(params, a_c, a_r);
    double x_c = mg.x_c, x_r = mg.x_r;

    /* the margin from logarithms */
    double top = (x_c > x_r) ? x_c : x_r;
    double gap = -alpha * (a_c - a_r); /* b_c - b_r before the clamp; +-inf if it overflows */
    double abs_gap = (gap < 0.0) ? -gap : gap;
    double one_minus;
    double log_share = dpo_log1mexp((gap == 0.0) ? -1.0 : -abs_gap, &one_minus);
    double alpha_sign = (alpha > 0.0) ? 1.0 : -1.0;
    double sign = (gap > 0.0) ? -alpha_sign : alpha_sign; /* (a compare of two compares
                                                            * would not vectorise) */
    double margin_log = dpo_exp(top + log_share + params->alphapo_log_scale);
    double u_log = ((gap == 0.0) ? 0.0 : sign * margin_log) - params->simpo_gamma;
    int careful = (alpha != 0.0) & ((top > 700.0) | mg.plain_bad);
    double u = careful ? u_log : mg.u_plain;

    DpoAlphapoLoss lo = dpo_alphapo_loss_of(u, eps);
    out.value = lo.value;
    double g_c = (lo.d_u * mg.e_c) * b, g_r = -(lo.d_u * mg.e_r) * b;
    int abs_u_big = (u > 700.0) | (u < -700.0);
    /* e^{L_pos} - e^{L_neg}: eps sigmoid(u) = exp(-softplus(-u) + log eps), (1-eps)
     * sigmoid(-u) = exp(-softplus(u) + log(1-eps)), times beta e^{b} */
    double lb = params->alphapo_log_beta;
    double log_eps = (eps > 0.0) ? params->exo_log_eps : -INFINITY;
    double log_keep = (eps > 0.0) ? params->exo_log1m_eps : 0.0;
    double g_c_log = dpo_exp_difference(x_c - lo.softplus_neg + lb + log_eps,
                                        x_c - lo.softplus_pos + lb + log_keep);
    double g_r_log = dpo_exp_difference(x_r - lo.softplus_pos + lb + log_keep,
                                        x_r - lo.softplus_neg + lb + log_eps);
    int log_grad = careful | ((alpha != 0.0) & abs_u_big);
    out.d_chosen = (log_grad ? g_c_log : g_c) * inv_scale;
    out.d_rejected = (log_grad ? g_r_log : g_r) * inv_scale;
    return out;
}

/* dpo_pair_alphapo's plain path alone (unscaled a; the fused alphapo loop's vectorised rows):
 * its loss and derivatives wherever it takes neither logarithm path, and *redo = 1 where it
 * would (an exp beyond e^700, an overflowed margin, |u| > 700): such rows must be computed by
 * dpo_pair_alphapo instead. *margin_out: the margin's pieces (for the rewards). */
DPO_INLINE DpoPairLoss dpo_pair_alphapo_plain(const DpoLossParams *params, double a_c,
                                              double a_r, double *redo,
                                              DpoAlphapoMargin *margin_out)
{
    DpoPairLoss out;
    const double b = params->beta;
    DpoAlphapoMargin mg = dpo_alphapo_margin(params, a_c, a_r);
    *margin_out = mg;
    DpoAlphapoLoss lo = dpo_alphapo_loss_of(mg.u_plain, params->label_smoothing);
    out.value = lo.value;
    out.d_chosen = (lo.d_u * mg.e_c) * b;
    out.d_rejected = -(lo.d_u * mg.e_r) * b;
    double top = (mg.x_c > mg.x_r) ? mg.x_c : mg.x_r;
    int abs_u_big = (mg.u_plain > 700.0) | (mg.u_plain < -700.0);
    int logs = (params->alphapo_alpha != 0.0) & ((top > 700.0) | mg.plain_bad | abs_u_big);
    *redo = logs ? 1.0 : 0.0;
    return out;
}

/* AlphaPO's reward beta r(a) as TRL reports it (chosen_rewards, rejected_rewards, the metrics),
 * of the average log-prob a = p / n (a true division, as TRL's): beta (-expm1(b) / alpha) with
 * b = -alpha a, alpha != 0. *far = 1 where b > 700 or that value overflowed: there
 * dpo_alphapo_reward_far gives it. */
DPO_INLINE double dpo_alphapo_reward(const DpoLossParams *params, double a, double *far)
{
    const double alpha = params->alphapo_alpha;
    double b = -alpha * a;
    double e;
    double reward = params->beta * (-dpo_expm1_exp(b, &e) / alpha);
    *far = ((b > 0.0) & ((b > 700.0) | !(reward - reward == 0.0))) ? 1.0 : 0.0;
    return reward;
}

/* dpo_alphapo_reward from the loss's expm1 instead of one of its own, on a plain row: the
 * loss takes b_l = -alpha a_l of a_l = c * (1/n), the reward b = -alpha a of a = c / n (an ulp
 * apart at most), and expm1(b) = expm1(b_l) + e^{b_l} (b - b_l) to within (b - b_l)^2 / 2,
 * below 1e-25 relative on a row with b <= 700. Same *far rule. */
DPO_INLINE double dpo_alphapo_reward_near(const DpoLossParams *params, double a, double b_l,
                                          double expm1_l, double exp_l, double *far)
{
    const double alpha = params->alphapo_alpha;
    double b = -alpha * a;
    double expm1_b = expm1_l + dpo_mul0(exp_l, b - b_l);
    double reward = params->beta * (-expm1_b / alpha);
    *far = ((b > 0.0) & ((b > 700.0) | !(reward - reward == 0.0))) ? 1.0 : 0.0;
    return reward;
}

/* The reward where b = -alpha a > 0 is large: |beta r| = exp(b + log(1 - e^{-b}) + log beta
 * - log|alpha|), -inf (alpha > 0) or +inf (alpha < 0) only where the true value overflows. */
DPO_INLINE double dpo_alphapo_reward_far(const DpoLossParams *params, double a)
{
    double b = -params->alphapo_alpha * a;
    double one_minus;
    double magnitude = dpo_exp(b + dpo_log1mexp(-b, &one_minus) + params->alphapo_log_scale);
    return (params->alphapo_alpha > 0.0) ? -magnitude : magnitude;
}

/* beta (r(a_c) - r(a_r)) from logarithms, where the difference of the two rewards is not
 * finite (inf - inf): -sign(g) sign(alpha) exp(max(b) + log(1 - e^{-|g|}) + log beta -
 * log|alpha|), g = b_c - b_r; 0 where g = 0. */
DPO_INLINE double dpo_alphapo_margin_far(const DpoLossParams *params, double a_c, double a_r)
{
    const double alpha = params->alphapo_alpha;
    double b_c = -alpha * a_c, b_r = -alpha * a_r;
    double top = (b_c > b_r) ? b_c : b_r;
    double gap = -alpha * (a_c - a_r);
    double abs_gap = (gap < 0.0) ? -gap : gap;
    double one_minus;
    double log_share = dpo_log1mexp((gap == 0.0) ? -1.0 : -abs_gap, &one_minus);
    double magnitude = dpo_exp(top + log_share + params->alphapo_log_scale);
    double sign = ((gap > 0.0) == (alpha > 0.0)) ? -1.0 : 1.0;
    return (gap == 0.0) ? 0.0 : ((gap == gap) ? sign * magnitude : gap);
}

/* NeMo-Aligner's reward-aware preference losses (RPO; Nemotron-4 340B technical report,
 * NVIDIA 2024; NeMo-Aligner's MegatronGPT DPO model, nemo_aligner/models/nlp/gpt/
 * megatron_gpt_dpo_model.py, loss_func, whose SPIN model has the same code): with z = beta (c - r) (beta: NeMo's ref_policy_kl_penalty; c - r its
 * rewards_delta) and g = gt_reward_scale (gt_chosen - gt_rejected) (gt_rewards_delta, the
 * loop passes it), each a function of z and g, derivatives d/dc = beta d/dz, d/dr = -d/dc.
 * The Python layer keeps g finite. The two KLs are differences of terms near log 2 in size,
 * as NeMo writes them: near their zero (z = g) the value has an absolute error of a few
 * 1e-16, not a relative one; the derivatives have no such cancellation. */

/* rpo_sq: (z - g)^2. */
DPO_INLINE DpoPairLoss dpo_pair_rpo_sq(const DpoLossParams *params, double beta,
                                       double inv_scale, double c, double r, double g)
{
    DpoPairLoss out;
    (void)params;
    (void)inv_scale;
    double gap = beta * (c - r) - g;
    out.value = gap * gap;
    out.d_chosen = beta * (2.0 * gap);
    out.d_rejected = -out.d_chosen;
    return out;
}

/* rpo_fwd_kl: KL(Bernoulli(sigmoid(z)) || Bernoulli(sigmoid(g))), NeMo's
 *   exp(logsig(z)) (logsig(z) - logsig(g)) + exp(logsig(-z)) (logsig(-z) - logsig(-g)),
 * as sigmoid(z) (softplus(-g) - softplus(-z)) + sigmoid(-z) (softplus(g) - softplus(z)), each
 * weight 0 dropping its term (z = +-inf); d/dz = sigmoid(z) sigmoid(-z) (z - g). */
DPO_INLINE DpoPairLoss dpo_pair_rpo_fwd_kl(const DpoLossParams *params, double beta,
                                           double inv_scale, double c, double r, double g)
{
    DpoPairLoss out;
    (void)params;
    (void)inv_scale;
    double z = beta * (c - r);
    DpoLogistic lz = dpo_logistic(z);
    DpoLogistic lg = dpo_logistic(g);
    double sp_neg_z = dpo_relu(-z) + lz.log1p_e, sp_z = dpo_relu(z) + lz.log1p_e;
    double sp_neg_g = dpo_relu(-g) + lg.log1p_e, sp_g = dpo_relu(g) + lg.log1p_e;
    out.value = dpo_mul0(lz.sig_pos, sp_neg_g - sp_neg_z) + dpo_mul0(lz.sig_neg, sp_g - sp_z);
    double d_z = dpo_mul0(lz.sig_pos * lz.sig_neg, z - g);
    out.d_chosen = beta * d_z;
    out.d_rejected = -out.d_chosen;
    return out;
}

/* rpo_bwd_kl: KL(Bernoulli(sigmoid(g)) || Bernoulli(sigmoid(z))), NeMo's
 *   exp(logsig(g)) (logsig(g) - logsig(z)) + exp(logsig(-g)) (logsig(-g) - logsig(-z)),
 * as sigmoid(g) (softplus(-z) - softplus(-g)) + sigmoid(-g) (softplus(z) - softplus(g));
 * d/dz = sigmoid(z) - sigmoid(g), taken as sigmoid(-g) - sigmoid(-z) where z, g < 0 (no
 * cancellation of two numbers near 1). */
DPO_INLINE DpoPairLoss dpo_pair_rpo_bwd_kl(const DpoLossParams *params, double beta,
                                           double inv_scale, double c, double r, double g)
{
    DpoPairLoss out;
    (void)params;
    (void)inv_scale;
    double z = beta * (c - r);
    DpoLogistic lz = dpo_logistic(z);
    DpoLogistic lg = dpo_logistic(g);
    double sp_neg_z = dpo_relu(-z) + lz.log1p_e, sp_z = dpo_relu(z) + lz.log1p_e;
    double sp_neg_g = dpo_relu(-g) + lg.log1p_e, sp_g = dpo_relu(g) + lg.log1p_e;
    out.value = dpo_mul0(lg.sig_pos, sp_neg_z - sp_neg_g) + dpo_mul0(lg.sig_neg, sp_z - sp_g);
    double d_z = (z + g > 0.0) ? lg.sig_neg - lz.sig_neg : lz.sig_pos - lg.sig_pos;
    out.d_chosen = beta * d_z;
    out.d_rejected = -out.d_chosen;
    return out;
}

/* The loss types with a case in a loop, as X(ID, PAIR_FN), one list per kind of case (the
 * filters above): the fused loop's raw and normalised cases, the general loop's terms (and
 * those with g, of which the PAIR_GT ones are fused cases too), the batch constants. The
 * rows' X is named by the caller: define DPO_EACH_X(ID, PAIR_FN), expand, undefine. */
#define DPO_PLAIN_ROW(KIND, ID, PAIR_FN, NAME, FLAGS, SMOOTHING_MAX) \
    DPO_IF_PLAIN_##KIND(DPO_EACH_X(ID, PAIR_FN))
#define DPO_NORMALIZED_ROW(KIND, ID, PAIR_FN, NAME, FLAGS, SMOOTHING_MAX) \
    DPO_IF_NORMALIZED_##KIND(DPO_EACH_X(ID, PAIR_FN))
#define DPO_TERM_ROW(KIND, ID, PAIR_FN, NAME, FLAGS, SMOOTHING_MAX) \
    DPO_IF_TERM_##KIND(DPO_EACH_X(ID, PAIR_FN))
#define DPO_FOR_EACH_PLAIN_LOSS DPO_LOSS_REGISTRY(DPO_PLAIN_ROW)
#define DPO_FOR_EACH_NORMALIZED_LOSS DPO_LOSS_REGISTRY(DPO_NORMALIZED_ROW)
#define DPO_FOR_EACH_TERM_LOSS DPO_LOSS_REGISTRY(DPO_TERM_ROW)
#define DPO_GT_TERM_ROW(KIND, ID, PAIR_FN, NAME, FLAGS, SMOOTHING_MAX) \
    DPO_IF_GT_TERM_##KIND(DPO_EACH_X(ID, PAIR_FN))
#define DPO_FOR_EACH_GT_TERM_LOSS DPO_LOSS_REGISTRY(DPO_GT_TERM_ROW)
#define DPO_CONST_ROW(KIND, ID, PAIR_FN, NAME, FLAGS, SMOOTHING_MAX) \
    DPO_IF_CONST_##KIND(DPO_EACH_X(ID, PAIR_FN))
#define DPO_FOR_EACH_CONST_LOSS DPO_LOSS_REGISTRY(DPO_CONST_ROW)
#define DPO_FUSED_GT_ROW(KIND, ID, PAIR_FN, NAME, FLAGS, SMOOTHING_MAX) \
    DPO_IF_FUSED_GT_##KIND(DPO_EACH_X(ID, PAIR_FN))
#define DPO_FOR_EACH_FUSED_GT_LOSS DPO_LOSS_REGISTRY(DPO_FUSED_GT_ROW)

#endif /* DPO_PAIR_LOSSES_H */
