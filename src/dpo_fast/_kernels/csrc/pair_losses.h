/*
 * One small function per pairwise preference loss: given beta and the pair's log-ratios
 * c = pc - rc (chosen) and r = pr - rr (rejected), it returns the per-pair loss and its
 * derivatives with respect to c and r, all in double precision. (The chunk loop passes beta
 * rather than reading params->beta: for rows near DBL_MAX it passes c/4, r/4 and 4*beta.)
 * The chunk loop (chunk_body.h) is written once and calls one of these, so a new loss type is
 * a new function here plus a case in DPO_FOR_EACH_LOSS, never a new loop.
 */
#ifndef DPO_PAIR_LOSSES_H
#define DPO_PAIR_LOSSES_H

#include "simd_math.h"

/* Loss identifiers shared with the Python layer (dpo_fast/losses.py keeps the registry). */
enum {
    DPO_LOSS_SIGMOID = 0,
    DPO_N_LOSS_TYPES = 1
};

typedef struct {
    double beta;
    double label_smoothing;
} DpoLossParams;


typedef struct {
    double value;
    double d_chosen;   /* d value / d c */
    double d_rejected; /* d value / d r */
} DpoPairLoss;

/*
 * sigmoid (DPO, Rafailov et al. 2023) with conservative label smoothing as in the DPO
 * authors' reference code: with z = beta*(c - r),
 *   loss   = -(1-eps)*log(sigmoid(z)) - eps*log(sigmoid(-z))
 *          = (1-eps)*softplus(-z) + eps*softplus(z)
 *   d/dz   = -(1-eps)*sigmoid(-z) + eps*sigmoid(z).
 * Both softplus terms share log(1 + exp(-|z|)), so neither is formed by cancellation.
 */
DPO_INLINE DpoPairLoss dpo_pair_sigmoid(const DpoLossParams *params, double beta, double c,
                                        double r)
{
    DpoPairLoss out;
    double eps = params->label_smoothing;
    double z = beta * (c - r);
    DpoLogistic lg = dpo_logistic(z);
    double softplus_neg = dpo_relu(-z) + lg.log1p_e;
    double softplus_pos = dpo_relu(z) + lg.log1p_e;
    double d_z = eps * lg.sig_pos - (1.0 - eps) * lg.sig_neg;
    out.value = (1.0 - eps) * softplus_neg + eps * softplus_pos;
    out.d_chosen = beta * d_z;
    out.d_rejected = -out.d_chosen;
    return out;
}

/* X-macro over (identifier, function): the chunk loop expands one case per entry. */
#define DPO_FOR_EACH_LOSS(X) \
    X(DPO_LOSS_SIGMOID, dpo_pair_sigmoid)

#endif /* DPO_PAIR_LOSSES_H */
