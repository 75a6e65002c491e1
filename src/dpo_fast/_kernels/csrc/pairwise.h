/*
 * The C side of the pairwise kernels: the chunk loop (chunk_body.h, compiled once per SIMD
 * level from pairwise_simd.c) and what surrounds it (pairwise.c). Cython (_pairwise.pyx, and
 * _seed.pyx / _entry.pyx through _pairwise.pxd) sees only this header and simd.h.
 */
#ifndef DPO_PAIRWISE_H
#define DPO_PAIRWISE_H

#include <float.h>
#include <stddef.h>
#include "kto_rows.h"
#include "pair_losses.h"
#include "simd.h"

/* Rows per chunk: the unit of parallel work and of the fixed-order reduction, so results do
 * not depend on the thread count. 8192 rows keep a chunk's 7 streams in L2. */
#define DPO_CHUNK 8192

/* Sums accumulated per chunk (for the reduced loss and TRL's metrics). */
enum {
    DPO_SUM_LOSS = 0,
    DPO_SUM_CHOSEN_REWARD,
    DPO_SUM_REJECTED_REWARD,
    DPO_SUM_MARGIN,
    DPO_SUM_ACCURACY,
    DPO_SUM_CHOSEN_LOGP,
    DPO_SUM_REJECTED_LOGP,
    DPO_NSUMS
};

/* Side arrays a chunk may convert (DpoChunkArgs.side_sources). */
#define DPO_SIDE_SLOTS 4

/* The general path (general_body.h): at most this many loss types combined in one call. */
#define DPO_MAX_TERMS 16

/* How the f-divergence turns log-ratios x into scores s(x) (TRL's f_divergence_type):
 * identity (reverse KL); exp: s(x) = (exp(a x) - 1)/a with a = alpha - 1 (forward KL is
 * a = -1, alpha-divergence any a != 0); js: s(x) = log 2 + logsigmoid(x). */
enum { DPO_DIV_IDENTITY = 0, DPO_DIV_EXP = 1, DPO_DIV_JS = 2 };

typedef struct {
    const void *chosen;       /* pc */
    const void *rejected;     /* pr */
    const void *ref_chosen;   /* rc, or NULL: reference-free */
    const void *ref_rejected; /* rr, or NULL */
    void *losses;
    void *chosen_rewards;
    void *rejected_rewards;
    void *grad_chosen;        /* NULL: no gradient wanted */
    void *grad_rejected;
    double grad_divisor;      /* N for reduction="mean", 1 otherwise */
    int loss_type;
    DpoLossParams params;
    /* The general path, taken when `general` is set: a weighted sum of n_terms loss types
     * (loss_type is then unused), per-pair weights, length-normalised log-ratios and
     * f-divergences. The plain path (general = 0) is one loss type of the raw log-ratios. */
    int general;
    int n_terms;
    int term_types[DPO_MAX_TERMS];
    int term_normalized[DPO_MAX_TERMS]; /* 1: the term takes c/nc, r/nr instead of c, r */
    double term_weights[DPO_MAX_TERMS];
    const double *chosen_lengths;       /* nc, nr; NULL unless some term is normalised */
    const double *rejected_lengths;
    const double *weights;              /* per-pair multipliers, or NULL */
    const double *gt_reward_margins;    /* per-pair gt margins (PAIR_GT terms), or NULL */
    int divergence;                     /* DPO_DIV_* */
    double divergence_coef;             /* a of DPO_DIV_EXP */
    int normalized_rewards;             /* simpo: rewards beta*pc/nc, beta*pr/nr */
    /* sft's batch gradient: grad_chosen = (weight * (sum of terms + pair_offset)) / divisor
     * + offset. */
    double grad_chosen_offset;
    double grad_chosen_pair_offset;
    /* Side arrays (chosen_lengths, rejected_lengths, gt_reward_margins, weights, in that
     * order) held in another dtype than float64: side_sources[k] points at the caller's array (NULL: none,
     * or the double pointer above is used as it is) and side_types[k] says its DPO_SIDE_*.
     * The entry points (pairwise.c) convert a chunk's rows to double, as NumPy's cast does,
     * into the calling OpenMP thread's slice of side_scratch (slices of DPO_SIDE_SLOTS *
     * side_rows doubles, side_rows >= the rows of any chunk) and hand the instance a copy of
     * the arguments whose double pointers start at row side_start (0 when nothing is
     * converted). The caller sizes side_scratch for the team it runs the chunks with. */
    const void *side_sources[DPO_SIDE_SLOTS];
    int side_types[DPO_SIDE_SLOTS];
    double *side_scratch;
    int side_threads; /* slices in side_scratch: the team's size, 1 outside a team */
    ptrdiff_t side_rows;
    ptrdiff_t side_start;
} DpoChunkArgs;

/* The dtypes a side array can have (DpoChunkArgs.side_types). */
enum { DPO_SIDE_F64 = 0, DPO_SIDE_F32 = 1, DPO_SIDE_I64 = 2, DPO_SIDE_I32 = 3 };

/* Process rows [start, start + n) (n <= DPO_CHUNK) and write the chunk's DPO_NSUMS sums, with
 * the instance of the chosen SIMD level (simd.h). */
void dpo_chunk_f64(const DpoChunkArgs *args, ptrdiff_t start, ptrdiff_t n, double *sums);
void dpo_chunk_f32(const DpoChunkArgs *args, ptrdiff_t start, ptrdiff_t n, double *sums);
/* Their instances (pairwise_simd.c) and the constant rows those read (pairwise.c): zeros in
 * place of a missing reference, ones in place of missing per-pair weights. */
DPO_SIMD_DECLARE(void, dpo_chunk_f64, (const DpoChunkArgs *, ptrdiff_t, ptrdiff_t, double *))
DPO_SIMD_DECLARE(void, dpo_chunk_f32, (const DpoChunkArgs *, ptrdiff_t, ptrdiff_t, double *))
/* Rows [start, start + n) of a side array of dtype DPO_SIDE_* as doubles (pairwise_simd.c). */
DPO_SIMD_DECLARE(void, dpo_side_to_double, (const void *, int, ptrdiff_t, ptrdiff_t, double *))
extern const double dpo_zeros_f64[DPO_CHUNK];
extern const float dpo_zeros_f32[DPO_CHUNK];
extern const double dpo_ones_f64[DPO_CHUNK];

/* Sum n_chunks rows of DPO_NSUMS partial sums pairwise, in a fixed order. */
void dpo_combine_sums(const double *partials, ptrdiff_t n_chunks, double *total);

/* Memory-traffic reference for the benchmark: 4 streams read, 3 written, no math. */
void dpo_traffic_f64(const double *a, const double *b, const double *c, const double *d,
                     double *x, double *y, double *z, ptrdiff_t start, ptrdiff_t n);
void dpo_traffic_f32(const float *a, const float *b, const float *c, const float *d,
                     float *x, float *y, float *z, ptrdiff_t start, ptrdiff_t n);

int dpo_openmp_enabled(void);

/* The sum of the token counts x[0..n) (of dtype DPO_SIDE_*, each converted to double) when
 * every one is an integer >= 1 and the sum is below 2^52, else -1.0. Such a sum is exact, so
 * every order of the additions gives it (NumPy's pairwise sum of the float64 cast too): sft's
 * fast path takes its token count from here, without a NumPy pass or the kernel's check of
 * the lengths. */
double dpo_exact_count_sum_typed(const void *x, int type, ptrdiff_t n);
DPO_SIMD_DECLARE(void, dpo_count_sum, (const void *, int, ptrdiff_t, double *))

/* KTO's rows (csrc/kto_rows.h) at the chosen SIMD level: returns 1 when every policy and
 * reference value was finite. One thread; the caller splits the rows into blocks. */
int dpo_kto_rows(const DpoKtoParams *params, const double *policy, const double *reference,
                 const unsigned char *desirable, ptrdiff_t n, double *losses, double *rewards,
                 double *grad);
DPO_SIMD_DECLARE(void, dpo_kto_rows, (const DpoKtoParams *, const double *, const double *,
                                      const unsigned char *, ptrdiff_t, double *, double *,
                                      double *, int *))

/* The loss-type registry (pair_losses.h) as data: one entry per loss type, by id. */
typedef struct {
    int id;
    const char *name;
    int flags;            /* DPO_LT_*, with the KIND flags */
    double smoothing_max; /* label_smoothing's exclusive upper bound, 0: not used */
} DpoLossInfo;
extern const DpoLossInfo dpo_loss_registry[DPO_N_LOSS_TYPES];

#endif /* DPO_PAIRWISE_H */
