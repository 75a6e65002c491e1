/*
 * The chunk loop's instances for one SIMD level: dpo_chunk_f64_<DPO_ISA> and
 * dpo_chunk_f32_<DPO_ISA> (and the static general loops they call), from chunk_body.h for
 * double and float; and the passes over side arrays of another dtype (their rows as doubles,
 * the exact sum of token counts; KTO's rows, csrc/kto_rows.h). setup.py compiles this file once per level (simd.h); pairwise.c calls the
 * instance of the chosen one. Nothing else lives here, so no code outside these functions can
 * use the wider instructions of a level the CPU may lack.
 */
#include "pairwise.h"

#ifndef DPO_ISA
#error "compile pairwise_simd.c with -DDPO_ISA=scalar, baseline, avx2 or avx512"
#endif

#define DPO_T double
#define DPO_T_IS_FLOAT 0
#define DPO_ZEROS dpo_zeros_f64
#define DPO_CHUNK_FN DPO_SIMD_FN(dpo_chunk_f64)
#define DPO_GENERAL_FN DPO_SIMD_FN(dpo_general_f64)
#include "chunk_body.h"
#undef DPO_T
#undef DPO_T_IS_FLOAT
#undef DPO_ZEROS
#undef DPO_CHUNK_FN
#undef DPO_GENERAL_FN

#define DPO_T float
#define DPO_T_IS_FLOAT 1
#define DPO_ZEROS dpo_zeros_f32
#define DPO_CHUNK_FN DPO_SIMD_FN(dpo_chunk_f32)
#define DPO_GENERAL_FN DPO_SIMD_FN(dpo_general_f32)
#include "chunk_body.h"
#undef DPO_T
#undef DPO_T_IS_FLOAT
#undef DPO_ZEROS
#undef DPO_CHUNK_FN
#undef DPO_GENERAL_FN

#include <stdint.h>
#include <string.h>

/* Rows [start, start + n) of a side array as doubles, as NumPy's cast gives them (exact for
 * float32 and int32; int64 rounded to nearest beyond 2^53): one loop per dtype, which
 * AVX-512 (DQ) converts 8 int64 at a time. */
DPO_TARGET DPO_HIDDEN void DPO_SIMD_FN(dpo_side_to_double)(const void *source, int type,
                                                        ptrdiff_t start, ptrdiff_t n,
                                                        double *out)
{
    switch (type) {
    case DPO_SIDE_F32: {
        const float *x = (const float *)source + start;
        DPO_LOOP_HINT
        for (ptrdiff_t i = 0; i < n; i++)
            out[i] = (double)x[i];
        break;
    }
    case DPO_SIDE_I64: {
        const int64_t *x = (const int64_t *)source + start;
        DPO_LOOP_HINT
        for (ptrdiff_t i = 0; i < n; i++)
            out[i] = (double)x[i];
        break;
    }
    case DPO_SIDE_I32: {
        const int32_t *x = (const int32_t *)source + start;
        DPO_LOOP_HINT
        for (ptrdiff_t i = 0; i < n; i++)
            out[i] = (double)x[i];
        break;
    }
    default:
        memcpy(out, (const double *)source + start, (size_t)n * sizeof(double));
        break;
    }
}

/* dpo_exact_count_sum_typed's pass over counts of one element type, each converted to
 * double: 8 lanes of the sum, the smallest count and the distances |v - round(v)| ((v + 2^52) - 2^52 rounds v < 2^52 to an
 * integer: 0 for integers), vectorised without reassociation. A NaN or inf makes the sum
 * fail its test; a count of 2^52 or more is refused (not always an integer away from its
 * rounding). Every count is >= 1 when it passes, so the partial sums only grow: a total
 * below 2^52 was exact at every step. */
#define DPO_EXACT_COUNT_SUM_BODY(TYPE)                                                      \
    {                                                                                       \
        const TYPE *values = (const TYPE *)x;                                               \
        double lanes[8] = {0.0}, low[8], off[8] = {0.0};                                    \
        ptrdiff_t n8 = n / 8 * 8, i;                                                        \
        for (int j = 0; j < 8; j++)                                                         \
            low[j] = 1.0;                                                                   \
        for (i = 0; i < n8; i += 8) {                                                       \
            DPO_NO_UNROLL /* (a loop over the lanes: whole vectors, as the chunk loops') */ \
            DPO_LOOP_HINT                                                                   \
            for (int j = 0; j < 8; j++) {                                                   \
                double v = (double)values[i + j];                                           \
                double d = ((v + 0x1p52) - 0x1p52) - v;                                     \
                lanes[j] += v;                                                              \
                low[j] = (v < low[j]) ? v : low[j];                                         \
                off[j] += (d < 0.0) ? -d : d;                                               \
            }                                                                               \
        }                                                                                   \
        for (; i < n; i++) {                                                                \
            double v = (double)values[i];                                                   \
            double d = ((v + 0x1p52) - 0x1p52) - v;                                         \
            lanes[0] += v;                                                                  \
            low[0] = (v < low[0]) ? v : low[0];                                             \
            off[0] += (d < 0.0) ? -d : d;                                                   \
        }                                                                                   \
        double total = 0.0, smallest = 1.0, distance = 0.0;                                 \
        for (int j = 0; j < 8; j++) {                                                       \
            total += lanes[j];                                                              \
            smallest = (low[j] < smallest) ? low[j] : smallest;                             \
            distance += off[j];                                                             \
        }                                                                                   \
        *result = (smallest >= 1.0 && distance == 0.0 && total < 0x1p52) ? total : -1.0;   \
    }

DPO_TARGET DPO_HIDDEN void DPO_SIMD_FN(dpo_count_sum)(const void *x, int type, ptrdiff_t n,
                                                   double *result)
{
    switch (type) {
    case DPO_SIDE_F32:
        DPO_EXACT_COUNT_SUM_BODY(float)
        break;
    case DPO_SIDE_I64:
        DPO_EXACT_COUNT_SUM_BODY(int64_t)
        break;
    case DPO_SIDE_I32:
        DPO_EXACT_COUNT_SUM_BODY(int32_t)
        break;
    default:
        DPO_EXACT_COUNT_SUM_BODY(double)
        break;
    }
}
#undef DPO_EXACT_COUNT_SUM_BODY

/* KTO's rows (kto_rows.h), one block; *finite as dpo_kto_rows_impl returns it. */
DPO_TARGET DPO_HIDDEN void DPO_SIMD_FN(dpo_kto_rows)(const DpoKtoParams *params,
                                                  const double *policy, const double *reference,
                                                  const unsigned char *desirable, ptrdiff_t n,
                                                  double *losses, double *rewards, double *grad,
                                                  int *finite)
{
    if (grad != NULL)
        *finite = dpo_kto_rows_impl(params, policy, reference, desirable, n, losses, rewards,
                                    grad, 1);
    else
        *finite = dpo_kto_rows_impl(params, policy, reference, desirable, n, losses, rewards,
                                    NULL, 0);
}
