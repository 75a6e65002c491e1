/*
 * alphapo's fused loop: loss_type="alphapo" alone with alpha != 0 (chunk_body.h's chunk
 * function calls it in place of the generic normalised case; included there, with its macros
 * DPO_T, DPO_ZEROS, DPO_CHUNK_FN). Two differences from the generic case:
 *   - the rewards are TRL's shaped ones, beta r(a) of the average log-probs a = p / n
 *     (dpo_alphapo_reward_near on plain rows, from the loss's expm1; dpo_alphapo_reward and
 *     its logarithm form on the others), written and summed here: before, a NumPy pass after
 *     the kernel recomputed them, which took longer than the kernel;
 *   - the vectorised pass takes dpo_pair_alphapo's plain path only (dpo_pair_alphapo_plain)
 *     and flags the rows that need a logarithm form (the loss's careful margin or gradients,
 *     a reward beyond e^700, a margin of two overflowed rewards, c - r overflowing, NaN). The
 *     full function computes every path for every row, which is most of its time; the flagged
 *     rows (none in ordinary batches) are redone in scalar code with the full function.
 * The loss and gradients are the generic case's bits (the same expressions on plain rows, the
 * same function on the others) and the row terms go to the same lanes in the same order; the
 * loss sum carries the generic case's length marks (dpo_length_mark).
 */

#define DPO_ALPHAPO_FN DPO_CONCAT(DPO_CHUNK_FN, _alphapo)

/* The vectorised pass over a block's rows (every row as if plain), WITH_GRAD 0 or 1. */
#define DPO_ALPHAPO_ROWS(WITH_GRAD)                                                         \
    DPO_LOOP_HINT                                                                           \
    for (ptrdiff_t i = 0; i < m; i++) {                                                     \
        const ptrdiff_t row = block + i;                                                    \
        double chosen = (double)pc[row];                                                    \
        double rejected = (double)pr[row];                                                  \
        double c = chosen - (double)rc[row];                                                \
        double r = rejected - (double)rr[row];                                              \
        double inv_c = 1.0 / nc[row], inv_r = 1.0 / nr[row];                                \
        double x_c = c * inv_c, x_r = r * inv_r;                                            \
        double redo_loss, far_c, far_r;                                                     \
        DpoAlphapoMargin mg;                                                                \
        DpoPairLoss pl = dpo_pair_alphapo_plain(&params, x_c, x_r, &redo_loss, &mg);        \
        /* (c / n, not c * inv_c: exp(-alpha a) turns an ulp of a into |alpha a| ulps; the  \
         * loss's expm1 corrected to it, not a second one) */                               \
        double chosen_reward = dpo_alphapo_reward_near(                                     \
            &params, c / nc[row], -params.alphapo_alpha * x_c, mg.m_c, mg.e_c, &far_c);     \
        double rejected_reward = dpo_alphapo_reward_near(                                   \
            &params, r / nr[row], -params.alphapo_alpha * x_r, mg.m_r, mg.e_r, &far_r);     \
        double margin = chosen_reward - rejected_reward;                                    \
        double weight = pw[row];                                                            \
        double value = dpo_mul0(weight, pl.value);                                          \
        out_loss_b[i] = (DPO_T)value;                                                       \
        out_chosen_reward_b[i] = (DPO_T)chosen_reward;                                      \
        out_rejected_reward_b[i] = (DPO_T)rejected_reward;                                  \
        if (WITH_GRAD) {                                                                    \
            double d_c = dpo_mul0(weight, pl.d_chosen * inv_c);                             \
            double d_r = dpo_mul0(weight, pl.d_rejected * inv_r);                           \
            out_grad_chosen[row] = (DPO_T)(d_c / grad_divisor);                             \
            out_grad_rejected[row] = (DPO_T)(d_r / grad_divisor);                           \
        }                                                                                   \
        /* (a NaN where a length is not in [1, inf), as in the generic fused loop) */       \
        buf[DPO_SUM_LOSS][i] = value + (dpo_length_mark(nc[row]) + dpo_length_mark(nr[row])); \
        buf[DPO_SUM_CHOSEN_REWARD][i] = chosen_reward;                                      \
        buf[DPO_SUM_REJECTED_REWARD][i] = rejected_reward;                                  \
        buf[DPO_SUM_MARGIN][i] = margin;                                                    \
        buf[DPO_SUM_ACCURACY][i] = (chosen_reward > rejected_reward) ? 1.0 : 0.0;           \
        buf[DPO_SUM_CHOSEN_LOGP][i] = chosen;                                               \
        buf[DPO_SUM_REJECTED_LOGP][i] = rejected;                                           \
        /* 0 on a plain row; 1, 2, 3 or NaN (c - r or the margin not finite) otherwise */   \
        redo[i] = redo_loss + far_c + far_r + (x_c - x_r) * 0.0 + margin * 0.0;             \
    }

DPO_TARGET DPO_NOINLINE static void DPO_ALPHAPO_FN(const DpoChunkArgs *args, ptrdiff_t start,
                                                   ptrdiff_t n, double *sums)
{
    DPO_CHUNK_LOCALS
    const double *DPO_RESTRICT pw = args->weights ? DPO_SIDE_ROWS(args->weights) : dpo_ones_f64;
    (void)normalized_rewards;
    double lanes[DPO_NSUMS][DPO_LANES];
    double buf[DPO_NSUMS][DPO_BLOCK];
    double redo[DPO_BLOCK];
    for (int q = 0; q < DPO_NSUMS; q++)
        for (int j = 0; j < DPO_LANES; j++)
            lanes[q][j] = 0.0;

    DPO_T out_scratch[3][DPO_BLOCK];
    for (ptrdiff_t block = 0; block < n; block += DPO_BLOCK) {
        ptrdiff_t m = (n - block < DPO_BLOCK) ? n - block : DPO_BLOCK;
        DPO_BLOCK_OUTPUTS(out_scratch)
        if (with_grad) {
            DPO_ALPHAPO_ROWS(1)
        } else {
            DPO_ALPHAPO_ROWS(0)
        }
        /* Any row flagged? (lanes of partial sums: a plain reduction would not vectorise) */
        double flag_lanes[DPO_LANES] = {0.0};
        ptrdiff_t i_end = m / DPO_LANES * DPO_LANES;
        for (ptrdiff_t i = 0; i < i_end; i += DPO_LANES)
            for (int j = 0; j < DPO_LANES; j++)
                flag_lanes[j] += redo[i + j];
        for (ptrdiff_t i = i_end; i < m; i++)
            flag_lanes[0] += redo[i];
        double flag = 0.0;
        for (int j = 0; j < DPO_LANES; j++)
            flag += flag_lanes[j];
        if (flag != 0.0) {
            for (ptrdiff_t i = 0; i < m; i++) {
                if (redo[i] == 0.0)
                    continue;
                /* The generic fix-up's row (chunk_body.h): quarter-scaled log-ratios where
                 * c/nc - r/nr overflowed, then dpo_pair_alphapo with all its paths; the
                 * rewards and the margin in their logarithm forms where they need them. */
                {
                    const ptrdiff_t row = block + i;
                    double chosen = (double)pc[row];
                    double rejected = (double)pr[row];
                    double raw_c = chosen - (double)rc[row];
                    double raw_r = rejected - (double)rr[row];
                    double inv_c = 1.0 / nc[row], inv_r = 1.0 / nr[row];
                    const int huge = (raw_c * inv_c - raw_r * inv_r) * 0.0 != 0.0;
                    double scale = huge ? 0.25 : 1.0;
                    double row_beta = huge ? beta4 : beta;
                    double c = scale * chosen - scale * (double)rc[row];
                    double r = scale * rejected - scale * (double)rr[row];
                    DpoPairLoss pl = dpo_pair_alphapo(&params, row_beta, 1.0 / scale, c * inv_c,
                                                      r * inv_r);
                    double weight = pw[row];
                    double value = dpo_mul0(weight, pl.value);
                    out_loss_b[i] = (DPO_T)value;
                    if (with_grad) {
                        double d_c = dpo_mul0(weight, pl.d_chosen * inv_c);
                        double d_r = dpo_mul0(weight, pl.d_rejected * inv_r);
                        out_grad_chosen[row] = (DPO_T)(d_c * scale / grad_divisor);
                        out_grad_rejected[row] = (DPO_T)(d_r * scale / grad_divisor);
                    }
                    double a_c = raw_c / nc[row], a_r = raw_r / nr[row];
                    double far_c, far_r;
                    double chosen_reward = dpo_alphapo_reward(&params, a_c, &far_c);
                    double rejected_reward = dpo_alphapo_reward(&params, a_r, &far_r);
                    if (far_c != 0.0)
                        chosen_reward = dpo_alphapo_reward_far(&params, a_c);
                    if (far_r != 0.0)
                        rejected_reward = dpo_alphapo_reward_far(&params, a_r);
                    double margin = chosen_reward - rejected_reward;
                    if (!(margin - margin == 0.0))
                        margin = dpo_alphapo_margin_far(&params, a_c, a_r);
                    out_chosen_reward_b[i] = (DPO_T)chosen_reward;
                    out_rejected_reward_b[i] = (DPO_T)rejected_reward;
                    buf[DPO_SUM_LOSS][i] =
                        value + (dpo_length_mark(nc[row]) + dpo_length_mark(nr[row]));
                    buf[DPO_SUM_CHOSEN_REWARD][i] = chosen_reward;
                    buf[DPO_SUM_REJECTED_REWARD][i] = rejected_reward;
                    buf[DPO_SUM_MARGIN][i] = margin;
                    buf[DPO_SUM_ACCURACY][i] = (chosen_reward > rejected_reward) ? 1.0 : 0.0;
                }
            }
        }
        DPO_ADD_BLOCK_TO_LANES
    }
    DPO_LANES_TO_SUMS
}

#undef DPO_ALPHAPO_ROWS
