/*
 * The pairwise kernels around the chunk loop: the entry points that run the instance of the
 * chosen SIMD level (the instances: pairwise_simd.c, compiled once per level), the constant
 * rows they read, the fixed-order combination of the chunk sums, the loss-type registry as
 * data, and the memory-traffic reference of the benchmark.
 */
#include "pairwise.h"

#ifdef _OPENMP
#include <omp.h>
#endif

const double dpo_zeros_f64[DPO_CHUNK] = {0};
const float dpo_zeros_f32[DPO_CHUNK] = {0};
const double dpo_ones_f64[DPO_CHUNK] = {
#define DPO_ONES_16 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
#define DPO_ONES_256 DPO_ONES_16 DPO_ONES_16 DPO_ONES_16 DPO_ONES_16 DPO_ONES_16 DPO_ONES_16 \
    DPO_ONES_16 DPO_ONES_16 DPO_ONES_16 DPO_ONES_16 DPO_ONES_16 DPO_ONES_16 DPO_ONES_16        \
    DPO_ONES_16 DPO_ONES_16 DPO_ONES_16
    DPO_ONES_256 DPO_ONES_256 DPO_ONES_256 DPO_ONES_256 DPO_ONES_256 DPO_ONES_256 DPO_ONES_256
    DPO_ONES_256 DPO_ONES_256 DPO_ONES_256 DPO_ONES_256 DPO_ONES_256 DPO_ONES_256 DPO_ONES_256
    DPO_ONES_256 DPO_ONES_256 DPO_ONES_256 DPO_ONES_256 DPO_ONES_256 DPO_ONES_256 DPO_ONES_256
    DPO_ONES_256 DPO_ONES_256 DPO_ONES_256 DPO_ONES_256 DPO_ONES_256 DPO_ONES_256 DPO_ONES_256
    DPO_ONES_256 DPO_ONES_256 DPO_ONES_256 DPO_ONES_256
#undef DPO_ONES_256
#undef DPO_ONES_16
};

void dpo_chunk_f64(const DpoChunkArgs *args, ptrdiff_t start, ptrdiff_t n, double *sums)
{
    DPO_SIMD_DISPATCH(dpo_simd_get(), dpo_chunk_f64, args, start, n, sums)
}

void dpo_chunk_f32(const DpoChunkArgs *args, ptrdiff_t start, ptrdiff_t n, double *sums)
{
    DPO_SIMD_DISPATCH(dpo_simd_get(), dpo_chunk_f32, args, start, n, sums)
}

#define DPO_REGISTRY_ENTRY(KIND, ID, PAIR_FN, NAME, FLAGS, SMOOTHING_MAX) \
    {ID, NAME, (FLAGS) | DPO_KIND_FLAGS_##KIND, SMOOTHING_MAX},
const DpoLossInfo dpo_loss_registry[DPO_N_LOSS_TYPES] = {DPO_LOSS_REGISTRY(DPO_REGISTRY_ENTRY)};
#undef DPO_REGISTRY_ENTRY

int dpo_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

double dpo_exact_count_sum(const double *x, ptrdiff_t n)
{
    /* 8 lanes of the sum, the smallest count and the distances |v - round(v)| ((v + 2^52) -
     * 2^52 rounds v < 2^52 to an integer: 0 for integers), vectorised without reassociation.
     * A NaN or inf makes the sum fail its test; a count of 2^52 or more is refused (not
     * always an integer away from its rounding). */
    double lanes[8] = {0.0}, low[8], off[8] = {0.0};
    ptrdiff_t n8 = n / 8 * 8, i;
    for (int j = 0; j < 8; j++)
        low[j] = 1.0;
    for (i = 0; i < n8; i += 8) {
        DPO_NO_UNROLL /* (a loop over the lanes: whole vectors, as the chunk loops' lanes) */
        DPO_VEC_HINT
        for (int j = 0; j < 8; j++) {
            double v = x[i + j];
            double d = ((v + 0x1p52) - 0x1p52) - v;
            lanes[j] += v;
            low[j] = (v < low[j]) ? v : low[j];
            off[j] += (d < 0.0) ? -d : d;
        }
    }
    for (; i < n; i++) {
        double v = x[i];
        double d = ((v + 0x1p52) - 0x1p52) - v;
        lanes[0] += v;
        low[0] = (v < low[0]) ? v : low[0];
        off[0] += (d < 0.0) ? -d : d;
    }
    double total = 0.0, smallest = 1.0, distance = 0.0;
    for (int j = 0; j < 8; j++) {
        total += lanes[j];
        smallest = (low[j] < smallest) ? low[j] : smallest;
        distance += off[j];
    }
    return (smallest >= 1.0 && distance == 0.0 && total < 0x1p52) ? total : -1.0;
}

static double dpo_pairwise_sum(const double *partials, ptrdiff_t n, int q)
{
    if (n == 1)
        return partials[q];
    ptrdiff_t half = n / 2;
    return dpo_pairwise_sum(partials, half, q)
           + dpo_pairwise_sum(partials + half * DPO_NSUMS, n - half, q);
}

void dpo_combine_sums(const double *partials, ptrdiff_t n_chunks, double *total)
{
    for (int q = 0; q < DPO_NSUMS; q++)
        total[q] = n_chunks > 0 ? dpo_pairwise_sum(partials, n_chunks, q) : 0.0;
}

#define DPO_TRAFFIC_BODY                                                                    \
    for (ptrdiff_t i = start; i < start + n; i++) {                                         \
        x[i] = a[i] + c[i];                                                                 \
        y[i] = b[i] + d[i];                                                                 \
        z[i] = a[i] - b[i];                                                                 \
    }

void dpo_traffic_f64(const double *a, const double *b, const double *c, const double *d,
                     double *x, double *y, double *z, ptrdiff_t start, ptrdiff_t n)
{
    DPO_TRAFFIC_BODY
}

void dpo_traffic_f32(const float *a, const float *b, const float *c, const float *d,
                     float *x, float *y, float *z, ptrdiff_t start, ptrdiff_t n)
{
    DPO_TRAFFIC_BODY
}
