/*
 * Fused per-token log-probabilities of a language model's logits: the C side of
 * dpo_fast.sequence_logps (Cython: _logps.pyx sees only this header).
 *
 * A "row" is one (sequence b, position t) pair: V contiguous logits at
 *     logits + b * stride_b + t * stride_t           (strides in elements),
 * its label labels[r] and its flat index r = b * n_t + t. The Python layer validates labels
 * and picks the rows that count (mask, ignore_index); these functions only do arithmetic.
 *
 * Per row everything is double precision: z = x * inv_temperature, m = max z,
 * s = sum exp(z - m), lse = m + log(s), token logp = (z[label] - m) - log(s),
 * entropy = log(s) - sum exp(z - m) * (z - m) / s, log(sum p^2) = log(sum exp(z - m)^2) -
 * 2 log(s), logit sum = sum x. Each row is computed the same way (same
 * operations in the same order) whatever the SIMD level or thread count, so the results are
 * bit-identical across both.
 */
#ifndef DPO_LOGPS_API_H
#define DPO_LOGPS_API_H

#include <stddef.h>
#include <stdint.h>

/* Forward status per row. */
enum {
    DPO_LOGPS_NOT_ARGMAX = 0, /* the label is not the (first) arg-max of the logits */
    DPO_LOGPS_ARGMAX = 1,     /* it is: TRL's token accuracy counts these */
    DPO_LOGPS_NONFINITE = 2   /* the row holds a NaN or an infinity, or its largest logit
                               * overflows once divided by the temperature; outputs NaN */
};

typedef struct {
    const void *logits;     /* float or double, see the row layout above */
    ptrdiff_t stride_b;     /* elements between sequences */
    ptrdiff_t stride_t;     /* elements between positions */
    ptrdiff_t n_t;          /* positions per sequence (T) */
    ptrdiff_t vocab;        /* V >= 1 */
    const int64_t *labels;  /* n_b * n_t labels, already checked to lie in [0, V) where used */
    double inv_temperature; /* 1 / temperature */
    int simd_level;         /* DPO_SIMD_* of simd.h: the package's chosen level */

    /* Forward outputs, indexed by r (rows not processed are left alone). */
    double *token_logps;
    double *logsumexp;      /* lse of the row, what the backward needs */
    double *entropy;        /* NULL: not wanted */
    double *log_sum_p2;     /* log(sum softmax(z)^2), WPO's adjustment; NULL: not wanted */
    double *logit_sum;      /* sum of the row's logits (before the temperature); NULL: not
                             * wanted */
    uint8_t *status;        /* DPO_LOGPS_* (backward: written only when it recomputes lse) */

    /* Backward: grad + r * V receives row_weight[r] * (onehot(label) - softmax(z)) *
     * inv_temperature, or zeros when row_weight[r] == 0 (rows that do not count). */
    const double *row_weight;
    const double *lse_in;   /* logsumexp from the forward, or NULL: recompute it */
    void *grad;             /* n_b * n_t * V elements, C order, same type as logits */
    int grad_zeroed;        /* grad holds zeros already (fresh pages): the rows that do not
                             * count are not written at all */
    int grad_stream;        /* grad is far larger than the caches: written with streaming
                             * stores (simd.h), which skip reading each line first */
} DpoLogpsArgs;

/* The entry points run the instance of SIMD level args->simd_level (simd.h). */

/* Forward over rows[k] for k in [k0, k1). */
void dpo_logps_forward_f32(const DpoLogpsArgs *args, const int64_t *rows, ptrdiff_t k0,
                           ptrdiff_t k1);
void dpo_logps_forward_f64(const DpoLogpsArgs *args, const int64_t *rows, ptrdiff_t k0,
                           ptrdiff_t k1);

/* Backward over rows r in [r0, r1) (all rows: those with weight 0 get zeros). */
void dpo_logps_backward_f32(const DpoLogpsArgs *args, ptrdiff_t r0, ptrdiff_t r1);
void dpo_logps_backward_f64(const DpoLogpsArgs *args, ptrdiff_t r0, ptrdiff_t r1);

/*
 * The fused linear head (dpo_fast.linear_sequence_logps, loops in logps_linear.h): a tile of
 * rows x n_cols logits (vocabulary columns [v0, v0 + n_cols)) computed by BLAS, row i at
 * tile + i * ld, written in place by both functions.
 */
#define DPO_LINEAR_STATE 8 /* running statistics per row, see logps_linear.h */

typedef struct {
    void *tile;             /* float or double */
    ptrdiff_t ld;           /* elements between rows of the tile */
    ptrdiff_t n_cols;       /* >= 1 */
    ptrdiff_t v0;           /* vocabulary index of column 0 */
    const void *bias;       /* n_cols elements of the tile's type (bias + v0), or NULL */
    const int64_t *labels;  /* per tile row, vocabulary indices in [0, V) */
    double inv_temperature;
    int want_extras;        /* fold: also the entropy / WPO / logit-sum statistics */
    int simd_level;
    /* fold */
    double *state;          /* DPO_LINEAR_STATE doubles per tile row */
    uint8_t *status;        /* per tile row: DPO_LOGPS_NONFINITE once a tile held a NaN/inf */
    /* gradient: x <- row_scale * (onehot(label) - exp(x * inv_temperature - lse)) */
    const double *row_scale;
    const double *lse;
} DpoLinearArgs;

/* Tile rows [i0, i1). */
void dpo_linear_fold_f32(const DpoLinearArgs *a, ptrdiff_t i0, ptrdiff_t i1);
void dpo_linear_fold_f64(const DpoLinearArgs *a, ptrdiff_t i0, ptrdiff_t i1);
void dpo_linear_tile_grad_f32(const DpoLinearArgs *a, ptrdiff_t i0, ptrdiff_t i1);
void dpo_linear_tile_grad_f64(const DpoLinearArgs *a, ptrdiff_t i0, ptrdiff_t i1);

#endif /* DPO_LOGPS_API_H */
