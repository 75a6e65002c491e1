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

/* One block of rows, contiguous arrays: branch-free, so that it vectorises (with_grad is a
 * constant at each call, so each instance is one straight loop). Returns 1 when every
 * policy and reference value was finite. */
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

DPO_INLINE int dpo_kto_block_impl(const DpoKtoParams *params,
                                  const double *DPO_RESTRICT policy,
                                  const double *DPO_RESTRICT reference,
                                  const unsigned char *DPO_RESTRICT desirable, ptrdiff_t n,
                                  double *DPO_RESTRICT losses, double *DPO_RESTRICT rewards,
                                  double *DPO_RESTRICT grad, const int with_grad)
{
    const double beta = params->beta, kl = params->kl;
    const double wd = params->desirable_weight, wu = params->undesirable_weight;
    for (ptrdiff_t i = 0; i < n; i++) {
        double p = policy[i], r = reference[i];
        int good = desirable[i] != 0;
        double x = p - r;
        double u = beta * (x - kl);
        double e = dpo_exp(-((u < 0.0) ? -u : u));
        double one_plus = 1.0 + e;
        double big = 1.0 / one_plus, small = e / one_plus;
        double sig_pos = (u >= 0.0) ? big : small;    /* sigmoid(u) */
        double sig_neg = (-u >= 0.0) ? big : small;   /* sigmoid(-u) */
        losses[i] = (good ? wd : wu) * (good ? sig_neg : sig_pos);
        rewards[i] = beta * x;
        if (with_grad)
            grad[i] = (good ? -wd : wu) * (beta * sig_pos * sig_neg);
    }
    return dpo_kto_all_finite(policy, reference, n);
}

static inline int dpo_kto_block(const DpoKtoParams *params, const double *policy,
                                const double *reference, const unsigned char *desirable,
                                ptrdiff_t n, double *losses, double *rewards, double *grad)
{
    if (grad != NULL)
        return dpo_kto_block_impl(params, policy, reference, desirable, n, losses, rewards,
                                  grad, 1);
    return dpo_kto_block_impl(params, policy, reference, desirable, n, losses, rewards, NULL,
                              0);
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
            dpo_exact_add(reward_side[good], rewards[i]);
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

/*
 * Rows [0, n) of contiguous arrays: losses[i], rewards[i] and (grad non-NULL) grad[i]; with
 * `sums` non-NULL (initialised by the caller) the sums too, block by block while the block
 * is in cache. Returns 1 when every policy and reference value was finite, else 0 (the
 * outputs and sums are then incomplete; the caller names the first bad value).
 */
static inline int dpo_kto_rows(const DpoKtoParams *params, const double *policy,
                               const double *reference, const unsigned char *desirable,
                               ptrdiff_t n, double *losses, double *rewards, double *grad,
                               DpoKtoSums *sums)
{
    for (ptrdiff_t start = 0; start < n; start += DPO_EXACT_CARRY_EVERY) {
        ptrdiff_t count = n - start < DPO_EXACT_CARRY_EVERY ? n - start : DPO_EXACT_CARRY_EVERY;
        if (!dpo_kto_block(params, policy + start, reference + start, desirable + start, count,
                           losses + start, rewards + start, grad ? grad + start : NULL))
            return 0;
        if (sums != NULL)
            dpo_kto_block_sums(sums, policy + start, desirable + start, count, losses + start,
                               rewards + start);
    }
    return 1;
}

#endif /* DPO_KTO_ROWS_H */
