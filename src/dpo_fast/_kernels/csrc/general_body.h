/*
 * The general chunk loop: a weighted sum of loss types (TRL's loss_type lists with
 * loss_weights), per-pair weights, length-normalised log-ratios (ipo with lengths,
 * sigmoid_norm, simpo) and f-divergences. Included by chunk_body.h, so with its macros (DPO_T,
 * DPO_ZEROS, DPO_GENERAL_FN: the name of the static function to define) and simd.h's
 * DPO_TARGET / DPO_LOOP_HINT of the level; chunk_body.h's chunk function calls it when
 * args->general is set.
 *
 * Each block of DPO_GEN_BLOCK rows takes three vectorised passes over local buffers, so a loss
 * type is still one function of pair_losses.h and no loop is written per combination:
 *   1. prepare: log-ratios, rewards and the pair arguments of each variant the terms use
 *      ("raw": c, r; "normalised": c/nc, r/nr), with the chain factors d(argument)/d(input).
 *      Under an f-divergence the arguments are (h, 0), since every loss type TRL allows it
 *      for depends on c - r only: h = s(c) - s(r) raw, h = s(c)/nc - s(r)/nr normalised
 *      (TRL 1.16's order: the score of the summed log-ratio, then the division).
 *   2. one loop per term, adding its weighted value and derivatives.
 *   3. finish: per-pair weights, outputs, the row terms of the sums.
 * Rows where something overflows (c - r near DBL_MAX, exp of a large score) are flagged in
 * pass 1 and redone in scalar code from quarter-scaled log-ratios before pass 2.
 */

#ifndef DPO_GENERAL_HELPERS_H
#define DPO_GENERAL_HELPERS_H
#include <math.h>

/* Past this exponent dpo_exp saturates (it clamps its argument at 720), so a row whose
 * f-divergence score needs exp of more is flagged and redone with libm. */
#define DPO_EXP_SAFE_MAX 700.0

/* Rows per block: the ~25 row buffers of a block (25 KiB) stay within a 32 KiB L1 cache. */
#define DPO_GEN_BLOCK 128

typedef struct {
    double h;         /* s(x_c) - s(x_r) */
    double chain_c;   /* s'(x_c) */
    double chain_r;   /* s'(x_r) */
    double log_abs_h; /* log|h| (exp form), finite where h overflowed */
    double exp_c;     /* a x_c, a x_r: log s'(x) (exp form) */
    double exp_r;
} DpoScores;

/* Scores of flagged rows, from quarter-scaled log-ratios c4 = c/4, r4 = r/4 and the lengths
 * n_c, n_r (1 for the raw variant), with overflow going to +-inf and never to NaN (scalar,
 * libm; these rows are rare). The normalised variant follows TRL 1.16: the score of the summed
 * log-ratio divided by the length, h = s(c)/n_c - s(r)/n_r, with TRL's scores (constants
 * dropped: they cancel in s(c) - s(r) but not after the division). chain_c, chain_r are
 * dh/dc, -dh/dr; exp_c, exp_r their logs (exp form). */
static DpoScores dpo_scores_careful(int divergence, double coef, double c4, double r4,
                                    double n_c, double n_r)
{
    DpoScores out;
    if (divergence == DPO_DIV_EXP) {
        /* s(x) = e^{a x}/a, so h = (e^{A_c} - e^{A_r})/a with A = a x - log n, computed as
         * sign * e^{max A} (1 - e^{-|A_c - A_r|})/a: finite wherever h is, and +-inf (not
         * inf - inf) where it is not. */
        double a4 = 4.0 * coef;
        double off_c = log(n_c), off_r = log(n_r); /* exactly 0 for the raw variant */
        double exp_c = a4 * c4 - off_c, exp_r = a4 * r4 - off_r;
        double gap_signed = a4 * (c4 - r4) - (off_c - off_r); /* A_c - A_r */
        out.exp_c = exp_c;
        out.exp_r = exp_r;
        out.chain_c = exp(exp_c);
        out.chain_r = exp(exp_r);
        if (gap_signed == 0.0 || isnan(gap_signed)) {
            out.h = 0.0 * gap_signed;
            out.log_abs_h = -INFINITY;
        } else {
            double top = exp_c > exp_r ? exp_c : exp_r;
            double gap = fabs(gap_signed);
            double sign = gap_signed > 0.0 ? 1.0 : -1.0;
            double share = -expm1(-gap); /* in (0, 1] */
            out.h = sign * (exp(top) * share) / coef;
            out.log_abs_h = top + log(share) - log(fabs(coef));
        }
    } else { /* DPO_DIV_JS: s(x) = logsigmoid(x); h = s(c)/n_c - s(r)/n_r, linear parts in
              * quarters (so that 4x cannot overflow before the division) */
        double lin = 4.0 * ((r4 < 0.0 ? -r4 : 0.0) / n_r - (c4 < 0.0 ? -c4 : 0.0) / n_c);
        out.h = lin + (log1p(exp(-4.0 * fabs(r4))) / n_r - log1p(exp(-4.0 * fabs(c4))) / n_c);
        out.chain_c = 1.0 / (1.0 + exp(4.0 * c4)) / n_c; /* sigmoid(-c)/n_c */
        out.chain_r = 1.0 / (1.0 + exp(4.0 * r4)) / n_r;
        out.log_abs_h = log(fabs(out.h));
        out.exp_c = out.exp_r = 0.0;
    }
    return out;
}

/* Any loss type by id, for the scalar redo of rare rows (the fused loop's, and the general
 * loop's of overflowed scores); the PAIR_GT types with their g: dpo_pair_gt_by_type. */
static DpoPairLoss dpo_pair_by_type(int type, const DpoLossParams *params, double beta,
                                    double inv_scale, double c, double r)
{
    switch (type) {
#define DPO_PAIR_BY_TYPE_CASE(ID, PAIR_FN) \
    case ID:                               \
        return PAIR_FN(params, beta, inv_scale, c, r);
#define DPO_EACH_X DPO_PAIR_BY_TYPE_CASE
        DPO_FOR_EACH_TERM_LOSS
        DPO_FOR_EACH_CONST_LOSS
#undef DPO_EACH_X
#undef DPO_PAIR_BY_TYPE_CASE
    default: {
        DpoPairLoss none = {0.0, 0.0, 0.0};
        return none;
    }
    }
}

static DpoPairLoss dpo_pair_gt_by_type(int type, const DpoLossParams *params, double beta,
                                       double inv_scale, double c, double r, double g)
{
    switch (type) {
#define DPO_PAIR_BY_TYPE_CASE(ID, PAIR_FN) \
    case ID:                               \
        return PAIR_FN(params, beta, inv_scale, c, r, g);
#define DPO_EACH_X DPO_PAIR_BY_TYPE_CASE
        DPO_FOR_EACH_GT_TERM_LOSS
#undef DPO_EACH_X
#undef DPO_PAIR_BY_TYPE_CASE
    default: {
        DpoPairLoss none = {0.0, 0.0, 0.0};
        return none;
    }
    }
}

/* Pass 2 for one term over a block: its weighted value and chain-ruled derivatives, added up.
 * Nothing here depends on the element type (the passes around it convert), so one function
 * of each SIMD level serves the float and the double loop. The PAIR_GT types also read the
 * block's ground-truth reward margins gt (NULL when no term needs them), scaled here. */
#define DPO_GEN_TERM_CASE(ID, PAIR_FN)                                                      \
    case ID:                                                                                \
        DPO_LOOP_HINT                                                                       \
        for (ptrdiff_t i = 0; i < m; i++) {                                                 \
            DpoPairLoss pl = PAIR_FN(&params, row_beta[i], row_inv_scale[i], a_c[i], a_r[i]); \
            acc_value[i] += term_weight * pl.value;                                         \
            acc_chosen[i] += term_weight * dpo_mul00(pl.d_chosen, k_c[i]);                  \
            acc_rejected[i] += term_weight * dpo_mul00(pl.d_rejected, k_r[i]);              \
        }                                                                                   \
        break;
#define DPO_GEN_GT_TERM_CASE(ID, PAIR_FN)                                                   \
    case ID:                                                                                \
        DPO_LOOP_HINT                                                                       \
        for (ptrdiff_t i = 0; i < m; i++) {                                                 \
            DpoPairLoss pl = PAIR_FN(&params, row_beta[i], row_inv_scale[i], a_c[i], a_r[i], \
                                     params.gt_reward_scale * gt[i]);                       \
            acc_value[i] += term_weight * pl.value;                                         \
            acc_chosen[i] += term_weight * dpo_mul00(pl.d_chosen, k_c[i]);                  \
            acc_rejected[i] += term_weight * dpo_mul00(pl.d_rejected, k_r[i]);              \
        }                                                                                   \
        break;
DPO_TARGET DPO_NOINLINE static void dpo_general_term(
    int type, const DpoLossParams *params_in, double term_weight, ptrdiff_t m,
    const double *DPO_RESTRICT a_c, const double *DPO_RESTRICT a_r,
    const double *DPO_RESTRICT k_c, const double *DPO_RESTRICT k_r,
    const double *DPO_RESTRICT row_beta, const double *DPO_RESTRICT row_inv_scale,
    const double *DPO_RESTRICT gt, double *DPO_RESTRICT acc_value,
    double *DPO_RESTRICT acc_chosen, double *DPO_RESTRICT acc_rejected)
{
    const DpoLossParams params = *params_in; /* a local copy: no alias with the outputs */
    switch (type) {
#define DPO_EACH_X DPO_GEN_TERM_CASE
        DPO_FOR_EACH_TERM_LOSS
#undef DPO_EACH_X
#define DPO_EACH_X DPO_GEN_GT_TERM_CASE
        DPO_FOR_EACH_GT_TERM_LOSS
#undef DPO_EACH_X
    default:
        break;
    }
    (void)gt;
}
#undef DPO_GEN_GT_TERM_CASE
#undef DPO_GEN_TERM_CASE
#endif /* DPO_GENERAL_HELPERS_H */

/* Pass 1 for one row: variant V (0 raw, 1 normalised) of the pair arguments from the log-ratios
 * X_C, X_R and the chain factors INV_C, INV_R (1 or 1/n); DIV the f-divergence. */
#define DPO_GEN_VARIANT(V, DIV, X_C, X_R, INV_C, INV_R)                                     \
    if ((DIV) == DPO_DIV_IDENTITY) {                                                        \
        arg_c[V][i] = (X_C);                                                                \
        arg_r[V][i] = (X_R);                                                                \
        chain_c[V][i] = (INV_C);                                                            \
        chain_r[V][i] = (INV_R);                                                            \
        flag += ((X_C) - (X_R)) * 0.0;                                                      \
    } else if ((DIV) == DPO_DIV_EXP) {                                                      \
        double exp_c = coef * (X_C), exp_r = coef * (X_R);                                  \
        double e_c, e_r;                                                                    \
        /* expm1, not exp: (e_c - e_r) / a would lose every digit for |a| near 1e-16. */   \
        double m_c = dpo_expm1_exp(exp_c, &e_c), m_r = dpo_expm1_exp(exp_r, &e_r);          \
        double h = (m_c - m_r) / coef;                                                      \
        arg_c[V][i] = h;                                                                    \
        arg_r[V][i] = 0.0;                                                                  \
        chain_c[V][i] = e_c * (INV_C);                                                      \
        chain_r[V][i] = e_r * (INV_R);                                                      \
        flag += h * 0.0 + ((exp_c > DPO_EXP_SAFE_MAX) ? 1.0 : 0.0)                          \
                + ((exp_r > DPO_EXP_SAFE_MAX) ? 1.0 : 0.0);                                 \
    } else {                                                                                \
        DpoLogistic lc = dpo_logistic(X_C), lr = dpo_logistic(X_R);                         \
        double h = (dpo_relu(-(X_R)) + lr.log1p_e) - (dpo_relu(-(X_C)) + lc.log1p_e);       \
        arg_c[V][i] = h;                                                                    \
        arg_r[V][i] = 0.0;                                                                  \
        chain_c[V][i] = lc.sig_neg * (INV_C);                                               \
        chain_r[V][i] = lr.sig_neg * (INV_R);                                               \
        flag += h * 0.0;                                                                    \
    }

/* Pass 1, normalised variant under an f-divergence (TRL 1.16's order): the score of the summed
 * log-ratios C, R divided by the lengths (INV_C, INV_R = 1/n), h = s(C)/n_c - s(R)/n_r with
 * TRL's scores: e^{a x}/a (exp form) and logsigmoid(x) (js). Evaluated as written, as TRL
 * does; rows where exp would saturate or h overflows are flagged. */
#define DPO_GEN_NORM_SCORES(DIV, C, R, INV_C, INV_R)                                        \
    if ((DIV) == DPO_DIV_EXP) {                                                             \
        double exp_c = coef * (C), exp_r = coef * (R);                                      \
        double e_c, e_r;                                                                    \
        dpo_expm1_exp(exp_c, &e_c);                                                         \
        dpo_expm1_exp(exp_r, &e_r);                                                         \
        double s_c = e_c * (INV_C), s_r = e_r * (INV_R);                                    \
        double h = (s_c - s_r) / coef;                                                      \
        arg_c[1][i] = h;                                                                    \
        arg_r[1][i] = 0.0;                                                                  \
        chain_c[1][i] = s_c;                                                                \
        chain_r[1][i] = s_r;                                                                \
        flag += h * 0.0 + ((exp_c > DPO_EXP_SAFE_MAX) ? 1.0 : 0.0)                          \
                + ((exp_r > DPO_EXP_SAFE_MAX) ? 1.0 : 0.0);                                 \
    } else {                                                                                \
        DpoLogistic lc = dpo_logistic(C), lr = dpo_logistic(R);                             \
        double h = (dpo_relu(-(R)) + lr.log1p_e) * (INV_R)                                  \
                   - (dpo_relu(-(C)) + lc.log1p_e) * (INV_C);                               \
        arg_c[1][i] = h;                                                                    \
        arg_r[1][i] = 0.0;                                                                  \
        chain_c[1][i] = lc.sig_neg * (INV_C);                                               \
        chain_r[1][i] = lr.sig_neg * (INV_R);                                               \
        flag += h * 0.0;                                                                    \
    }

#define DPO_GEN_PREPARE(RAW, NORM, DIV)                                                     \
    {                                                                                       \
        DPO_LOOP_HINT                                                                       \
        for (ptrdiff_t i = 0; i < m; i++) {                                                 \
            ptrdiff_t row = block + i;                                                      \
            double chosen = (double)pc[row];                                                \
            double rejected = (double)pr[row];                                              \
            double c = chosen - (double)rc[row];                                            \
            double r = rejected - (double)rr[row];                                          \
            double flag = (c - r) * 0.0;                                                    \
            double reward_c = c, reward_r = r;                                              \
            if (RAW) {                                                                      \
                DPO_GEN_VARIANT(0, DIV, c, r, 1.0, 1.0)                                     \
            }                                                                               \
            if (NORM) {                                                                     \
                /* Multiplying by the reciprocal (within an ulp of c/nc) halves the          \
                 * divisions, the slowest instructions of this loop. */                     \
                double inv_nc = 1.0 / nc[row], inv_nr = 1.0 / nr[row];                      \
                double x_c = c * inv_nc, x_r = r * inv_nr;                                  \
                if ((DIV) == DPO_DIV_IDENTITY) {                                            \
                    DPO_GEN_VARIANT(1, DIV, x_c, x_r, inv_nc, inv_nr)                       \
                } else {                                                                    \
                    DPO_GEN_NORM_SCORES(DIV, c, r, inv_nc, inv_nr)                          \
                }                                                                           \
                reward_c = normalized_rewards ? x_c : c;                                    \
                reward_r = normalized_rewards ? x_r : r;                                    \
            }                                                                               \
            row_beta[i] = beta;                                                             \
            row_inv_scale[i] = 1.0;                                                         \
            double chosen_reward = beta * reward_c;                                         \
            double rejected_reward = beta * reward_r;                                       \
            out_chosen_reward_b[i] = (DPO_T)chosen_reward;                                  \
            out_rejected_reward_b[i] = (DPO_T)rejected_reward;                              \
            buf[DPO_SUM_CHOSEN_REWARD][i] = chosen_reward;                                  \
            buf[DPO_SUM_REJECTED_REWARD][i] = rejected_reward;                              \
            buf[DPO_SUM_MARGIN][i] = chosen_reward - rejected_reward;                       \
            buf[DPO_SUM_ACCURACY][i] = (chosen_reward > rejected_reward) ? 1.0 : 0.0;       \
            buf[DPO_SUM_CHOSEN_LOGP][i] = chosen;                                           \
            buf[DPO_SUM_REJECTED_LOGP][i] = rejected;                                       \
            buf[DPO_NSUMS][i] = flag;                                                       \
        }                                                                                   \
    }

#define DPO_GEN_PREPARE_CASE(RAW, NORM)                                                     \
    case (RAW) * 2 + (NORM):                                                                \
        if (divergence == DPO_DIV_IDENTITY)                                                 \
            DPO_GEN_PREPARE(RAW, NORM, DPO_DIV_IDENTITY)                                    \
        else if (divergence == DPO_DIV_EXP)                                                 \
            DPO_GEN_PREPARE(RAW, NORM, DPO_DIV_EXP)                                         \
        else                                                                                \
            DPO_GEN_PREPARE(RAW, NORM, DPO_DIV_JS)                                          \
        break;

DPO_TARGET static void DPO_GENERAL_FN(const DpoChunkArgs *args, ptrdiff_t start, ptrdiff_t n,
                                      double *sums)
{
    DPO_CHUNK_LOCALS
    const double *DPO_RESTRICT weights = args->weights ? DPO_SIDE_ROWS(args->weights) : NULL;
    const int divergence = args->divergence;
    const double coef = args->divergence_coef;
    const int n_terms = args->n_terms;

    /* Which argument variants the terms need (sft needs neither). */
    int need_raw = 0, need_norm = normalized_rewards;
    for (int t = 0; t < n_terms; t++) {
        if (args->term_types[t] == DPO_LOSS_SFT)
            continue;
        if (args->term_normalized[t])
            need_norm = 1;
        else
            need_raw = 1;
    }
    if (nc == NULL || nr == NULL)
        need_norm = 0; /* the Python layer never asks for it without lengths */

    double lanes[DPO_NSUMS][DPO_LANES];
    double buf[DPO_NSUMS + 1][DPO_GEN_BLOCK];
    double arg_c[2][DPO_GEN_BLOCK], arg_r[2][DPO_GEN_BLOCK];
    double chain_c[2][DPO_GEN_BLOCK], chain_r[2][DPO_GEN_BLOCK];
    double row_beta[DPO_GEN_BLOCK], row_inv_scale[DPO_GEN_BLOCK];
    double acc_value[DPO_GEN_BLOCK], acc_chosen[DPO_GEN_BLOCK], acc_rejected[DPO_GEN_BLOCK];
    /* Flagged rows whose exp-form score difference h overflowed: ipo's derivative there is
     * (h - q) s'(x), an overflowed factor times a possibly underflowed one, taken from logs
     * (log|h| + log dh/dx) instead. */
    unsigned char h_overflow[2][DPO_GEN_BLOCK];
    double log_abs_h[2][DPO_GEN_BLOCK], log_chain_c[2][DPO_GEN_BLOCK];
    double log_chain_r[2][DPO_GEN_BLOCK];
    for (int q = 0; q < DPO_NSUMS; q++)
        for (int j = 0; j < DPO_LANES; j++)
            lanes[q][j] = 0.0;

    DPO_T out_scratch[3][DPO_GEN_BLOCK];
    for (ptrdiff_t block = 0; block < n; block += DPO_GEN_BLOCK) {
        ptrdiff_t m = (n - block < DPO_GEN_BLOCK) ? n - block : DPO_GEN_BLOCK;
        DPO_BLOCK_OUTPUTS(out_scratch)

        /* 1. prepare */
        switch (need_raw * 2 + need_norm) {
            DPO_GEN_PREPARE_CASE(0, 0)
            DPO_GEN_PREPARE_CASE(0, 1)
            DPO_GEN_PREPARE_CASE(1, 0)
            DPO_GEN_PREPARE_CASE(1, 1)
        }
        double flag_lanes[DPO_LANES] = {0.0};
        ptrdiff_t i_end = m / DPO_LANES * DPO_LANES;
        for (ptrdiff_t i = 0; i < i_end; i += DPO_LANES)
            for (int j = 0; j < DPO_LANES; j++)
                flag_lanes[j] += buf[DPO_NSUMS][i + j];
        for (ptrdiff_t i = i_end; i < m; i++)
            flag_lanes[0] += buf[DPO_NSUMS][i];
        double flag = 0.0;
        for (int j = 0; j < DPO_LANES; j++)
            flag += flag_lanes[j];
        int any_h_overflow = 0;
        if (flag != 0.0) {
            /* Flagged rows again, from quarter-scaled log-ratios (x/4 is exact for normal x,
             * so this gives what the plain formulas give wherever nothing overflows). Without
             * an f-divergence the loss functions take the quarters with 4*beta, as in the
             * plain path; with one, the careful scores. A NaN input stays NaN. */
            for (ptrdiff_t i = 0; i < m; i++) {
                if (buf[DPO_NSUMS][i] == 0.0)
                    continue;
                ptrdiff_t row = block + i;
                h_overflow[0][i] = h_overflow[1][i] = 0;
                double c4 = 0.25 * (double)pc[row] - 0.25 * (double)rc[row];
                double r4 = 0.25 * (double)pr[row] - 0.25 * (double)rr[row];
                double reward_c4 = c4, reward_r4 = r4;
                for (int v = 0; v < 2; v++) {
                    if ((v == 0 && !need_raw) || (v == 1 && !need_norm))
                        continue;
                    double n_c = v ? nc[row] : 1.0, n_r = v ? nr[row] : 1.0;
                    double x_c4 = c4 / n_c, x_r4 = r4 / n_r;
                    if (v && normalized_rewards) {
                        reward_c4 = x_c4;
                        reward_r4 = x_r4;
                    }
                    if (divergence == DPO_DIV_IDENTITY) {
                        arg_c[v][i] = x_c4;
                        arg_r[v][i] = x_r4;
                        chain_c[v][i] = 0.25 / n_c;
                        chain_r[v][i] = 0.25 / n_r;
                    } else {
                        /* (the lengths enter the scores: TRL's order, see above) */
                        DpoScores sc = dpo_scores_careful(divergence, coef, c4, r4, n_c, n_r);
                        int overflowed = divergence == DPO_DIV_EXP && isinf(sc.h);
                        h_overflow[v][i] = (unsigned char)overflowed;
                        any_h_overflow |= overflowed;
                        log_abs_h[v][i] = sc.log_abs_h;
                        log_chain_c[v][i] = sc.exp_c;
                        log_chain_r[v][i] = sc.exp_r;
                        arg_c[v][i] = sc.h;
                        arg_r[v][i] = 0.0;
                        chain_c[v][i] = sc.chain_c;
                        chain_r[v][i] = sc.chain_r;
                    }
                }
                int quarter = divergence == DPO_DIV_IDENTITY;
                row_beta[i] = quarter ? beta4 : beta;
                row_inv_scale[i] = quarter ? 4.0 : 1.0;
                double chosen_reward = beta4 * reward_c4;
                double rejected_reward = beta4 * reward_r4;
                out_chosen_reward_b[i] = (DPO_T)chosen_reward;
                out_rejected_reward_b[i] = (DPO_T)rejected_reward;
                buf[DPO_SUM_CHOSEN_REWARD][i] = chosen_reward;
                buf[DPO_SUM_REJECTED_REWARD][i] = rejected_reward;
                buf[DPO_SUM_MARGIN][i] = chosen_reward - rejected_reward;
                buf[DPO_SUM_ACCURACY][i] = (chosen_reward > rejected_reward) ? 1.0 : 0.0;
            }
        }

        /* 2. the terms */
        for (ptrdiff_t i = 0; i < m; i++) {
            acc_value[i] = 0.0;
            acc_chosen[i] = 0.0;
            acc_rejected[i] = 0.0;
        }
        for (int t = 0; t < n_terms; t++) {
            const int variant = args->term_normalized[t] ? 1 : 0;
            const double term_weight = args->term_weights[t];
            /* A weight of 0 drops its term (0 * inf would be NaN); a test inside the loop
             * would keep SSE2 from vectorising it. */
            if (term_weight == 0.0)
                continue;
            if (args->term_types[t] == DPO_LOSS_SFT) {
                /* A batch constant; it reads no pair arguments (none were prepared for it). */
                double value = dpo_mul0(term_weight, params.sft_value);
                for (ptrdiff_t i = 0; i < m; i++)
                    acc_value[i] += value;
                continue;
            }
            dpo_general_term(args->term_types[t], &params, term_weight, m, arg_c[variant],
                             arg_r[variant], chain_c[variant], chain_r[variant], row_beta,
                             row_inv_scale, gt ? gt + block : NULL, acc_value, acc_chosen,
                             acc_rejected);
        }

        if (any_h_overflow) {
            /* The rows of that kind, all terms again in scalar code (ipo from the logs). */
            for (ptrdiff_t i = 0; i < m; i++) {
                if (buf[DPO_NSUMS][i] == 0.0 || !(h_overflow[0][i] | h_overflow[1][i]))
                    continue;
                double value = 0.0, d_chosen = 0.0, d_rejected = 0.0;
                for (int t = 0; t < n_terms; t++) {
                    const int type = args->term_types[t];
                    const int v = args->term_normalized[t] ? 1 : 0;
                    const double term_weight = args->term_weights[t];
                    if (type == DPO_LOSS_SFT) {
                        value += dpo_mul0(term_weight, params.sft_value);
                        continue;
                    }
                    DpoPairLoss pl = dpo_pair_by_type(type, &params, row_beta[i],
                                                      row_inv_scale[i], arg_c[v][i], arg_r[v][i]);
                    double dc, dr;
                    if (type == DPO_LOSS_IPO && h_overflow[v][i]) {
                        /* 2 (h - q) s'(x) with |h| = inf >> q: 2 sign(h) exp(log|h| + a x) */
                        double sign = arg_c[v][i] > 0.0 ? 2.0 : -2.0;
                        dc = sign * exp(log_abs_h[v][i] + log_chain_c[v][i]);
                        dr = -sign * exp(log_abs_h[v][i] + log_chain_r[v][i]);
                    } else {
                        dc = dpo_mul00(pl.d_chosen, chain_c[v][i]);
                        dr = dpo_mul00(pl.d_rejected, chain_r[v][i]);
                    }
                    value += dpo_mul0(term_weight, pl.value);
                    d_chosen += dpo_mul0(term_weight, dc);
                    d_rejected += dpo_mul0(term_weight, dr);
                }
                acc_value[i] = value;
                acc_chosen[i] = d_chosen;
                acc_rejected[i] = d_rejected;
            }
        }

        /* 3. finish */
        DPO_LOOP_HINT
        for (ptrdiff_t i = 0; i < m; i++) {
            ptrdiff_t row = block + i;
            double weight = weights ? weights[row] : 1.0;
            double value = dpo_mul0(weight, acc_value[i]);
            out_loss_b[i] = (DPO_T)value;
            buf[DPO_SUM_LOSS][i] = value;
            if (with_grad) {
                out_grad_chosen[row] =
                    (DPO_T)(dpo_mul0(weight, acc_chosen[i] + grad_pair_offset) / grad_divisor
                            + grad_offset);
                out_grad_rejected[row] = (DPO_T)(dpo_mul0(weight, acc_rejected[i]) / grad_divisor);
            }
        }
        DPO_ADD_BLOCK_TO_LANES
    }
    DPO_LANES_TO_SUMS
}

#undef DPO_GEN_VARIANT
#undef DPO_GEN_NORM_SCORES
#undef DPO_GEN_PREPARE
#undef DPO_GEN_PREPARE_CASE
