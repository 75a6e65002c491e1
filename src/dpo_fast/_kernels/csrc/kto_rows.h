/*
 * KTO's per-completion rows (TRL 1.16's KTOTrainer.kto_loss; formulas in dpo_fast/kto.py),
 * with the correctly rounded sums of the metrics in the same pass.
 *
 * With x = logps - ref_logps, u = beta * (x - kl):
 *   desirable:   loss = wd * sigmoid(-u),  d loss / d logps = -wd * beta * s(u) s(-u)
 *   undesirable: loss = wu * sigmoid(u),   d loss / d logps =  wu * beta * s(u) s(-u)
 *   reward = beta * x.
 * The sigmoids are the overflow-free pair 1 / (1 + e), e / (1 + e) with e = exp(-|u|), the
 * kernels' own exp (simd_math.h), so the bits are the same on every platform and SIMD level.
 *
 * The row loop is compiled once per SIMD level (pairwise_simd.c's dpo_kto_block_<level>,
 * called through pairwise.c's dpo_kto_block); the exact sums of a block's rows run in
 * dpo_fast._kernels._kto (a scatter of integer adds: no vector instructions to gain).
 */
#ifndef DPO_KTO_ROWS_H
#define DPO_KTO_ROWS_H

#include <stddef.h>

#include "exact_sum.h"
#include "simd_math.h"

typedef struct {
    double beta, kl, desirable_weight, undesirable_weight;
} DpoKtoParams;

/* The sums kto_loss reports, exact until rounded (dpo_exact_result). */
typedef struct {
    DpoExactSum losses, rewards_chosen, rewards_rejected, logps_chosen, logps_rejected;
    ptrdiff_t count_chosen;
} DpoKtoSums;

/* Whether a[0..n) and b[0..n) are all finite: an OR of exponent tests in a loop of its own
 * (a flag reduction inside the rows' loop would keep GCC from vectorising that loop). */
static inline int dpo_kto_all_finite(const double *a, const double *b, ptrdiff_t n)
{
    const uint64_t exponent = UINT64_C(0x7ff0000000000000);
    uint64_t special = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        uint64_t x, y;
        memcpy(&x, &a[i], sizeof x);
        memcpy(&y, &b[i], sizeof y);
        special |= (uint64_t)((x & exponent) == exponent) | (uint64_t)((y & exponent) == exponent);
    }
    return special == 0;
}

/* Rows per pass of dpo_kto_rows_impl: its labels as doubles fit a stack buffer (4 KiB). */
#define DPO_KTO_PASS 512

/* Rows [0, n) of contiguous arrays: losses[i], rewards[i] and (with_grad) grad[i];
 * branch-free, so that it vectorises (with_grad is a constant at each call: each instance is
 * one straight loop). Returns 1 when every policy and reference value was finite, else 0
 * (the caller names the first bad one). */
DPO_INLINE int dpo_kto_rows_impl(const DpoKtoParams *params,
                                 const double *DPO_RESTRICT policy,
                                 const double *DPO_RESTRICT reference,
                                 const unsigned char *DPO_RESTRICT desirable, ptrdiff_t n,
                                 double *DPO_RESTRICT losses, double *DPO_RESTRICT rewards,
                                 double *DPO_RESTRICT grad, const int with_grad)
{
    const double beta = params->beta, kl = params->kl;
    const double wd = params->desirable_weight, wu = params->undesirable_weight;
    /* The labels as doubles first: with bytes and doubles in one loop, GCC's AVX-512
     * vectoriser finds no vector type for the mix and leaves the loop scalar. */
    double good[DPO_KTO_PASS];
    for (ptrdiff_t start = 0; start < n; start += DPO_KTO_PASS) {
        ptrdiff_t count = n - start < DPO_KTO_PASS ? n - start : DPO_KTO_PASS;
        const double *p_in = policy + start, *r_in = reference + start;
        double *loss_out = losses + start, *reward_out = rewards + start;
        double *grad_out = with_grad ? grad + start : NULL;
        for (ptrdiff_t i = 0; i < count; i++)
            good[i] = (double)desirable[start + i];
        for (ptrdiff_t i = 0; i < count; i++) {
            double x = p_in[i] - r_in[i];
            double u = beta * (x - kl);
            double e = dpo_exp(-((u < 0.0) ? -u : u));
            double one_plus = 1.0 + e;
            double big = 1.0 / one_plus, small = e / one_plus;
            double sig_pos = (u >= 0.0) ? big : small;    /* sigmoid(u) */
            double sig_neg = (-u >= 0.0) ? big : small;   /* sigmoid(-u) */
            int is_good = good[i] != 0.0;
            loss_out[i] = (is_good ? wd : wu) * (is_good ? sig_neg : sig_pos);
            reward_out[i] = beta * x;
            if (with_grad)
                grad_out[i] = (is_good ? -wd : wu) * (beta * sig_pos * sig_neg);
        }
    }
    return dpo_kto_all_finite(policy, reference, n);
}

/* The exact sums of one block's rows (all finite inputs): the two sides picked by index, not
 * by a branch (the labels are in no order). */
static inline void dpo_kto_block_sums(DpoKtoSums *sums, const double *policy,
                                      const unsigned char *desirable, ptrdiff_t n,
                                      const double *losses, const double *rewards)
{
    DpoExactSum *reward_side[2] = {&sums->rewards_rejected, &sums->rewards_chosen};
    int64_t *logps_side[2] = {sums->logps_rejected.digit, sums->logps_chosen.digit};
    for (ptrdiff_t i = 0; i < n; i++) {
        int good = desirable[i] != 0;
        uint64_t bits;
        memcpy(&bits, &losses[i], sizeof bits);       /* finite, >= 0 */
        dpo_exact_add_bits(sums->losses.digit, bits, (bits >> 52) & 0x7ff);
        memcpy(&bits, &policy[i], sizeof bits);       /* finite */
        dpo_exact_add_bits(logps_side[good], bits, (bits >> 52) & 0x7ff);
        memcpy(&bits, &rewards[i], sizeof bits);      /* +-inf when policy - reference overflows */
        if (((bits >> 52) & 0x7ff) == 0x7ff)
            dpo_exact_add_special(reward_side[good], rewards[i]);
        else
            dpo_exact_add_bits(reward_side[good]->digit, bits, (bits >> 52) & 0x7ff);
        sums->count_chosen += good;
    }
    dpo_exact_carry(&sums->losses);
    dpo_exact_carry(&sums->rewards_chosen);
    dpo_exact_carry(&sums->rewards_rejected);
    dpo_exact_carry(&sums->logps_chosen);
    dpo_exact_carry(&sums->logps_rejected);
}

#endif /* DPO_KTO_ROWS_H */
