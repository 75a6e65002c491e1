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
    /* 8 lanes (vectorised without reassociation); a count that is not an integer in
     * [1, 2^52) -- NaN too -- adds 1 to `bad`: (v + 2^52) - 2^52 rounds v to an integer. */
    double lanes[8] = {0.0}, bad[8] = {0.0};
    ptrdiff_t n8 = n / 8 * 8, i;
    for (i = 0; i < n8; i += 8)
        for (int j = 0; j < 8; j++) {
            double v = x[i + j];
            double in_range = (v >= 1.0) ? 0.0 : 1.0;
            in_range += (v < 0x1p52) ? 0.0 : 1.0;
            bad[j] += in_range + (((v + 0x1p52) - 0x1p52 == v) ? 0.0 : 1.0);
            lanes[j] += v;
        }
    for (; i < n; i++) {
        double v = x[i];
        bad[0] += (v >= 1.0 && v < 0x1p52 && (v + 0x1p52) - 0x1p52 == v) ? 0.0 : 1.0;
        lanes[0] += v;
    }
    double total = 0.0, flags = 0.0;
    for (int j = 0; j < 8; j++) {
        total += lanes[j];
        flags += bad[j];
    }
    return (flags == 0.0 && total < 0x1p53) ? total : -1.0;
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
