/*
 * The pairwise kernels around the chunk loop: the entry points that run the instance of the
 * chosen SIMD level (the instances: pairwise_simd.c, compiled once per level), the constant
 * rows they read, the fixed-order combination of the chunk sums, the loss-type registry as
 * data, and the memory-traffic reference of the benchmark.
 */
#include "pairwise.h"

#include <stdint.h>
#include <string.h>

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

/* dpo_side_to_double (pairwise_simd.c) of the chosen SIMD level. */
static void dpo_side_rows(const void *source, int type, ptrdiff_t start, ptrdiff_t n,
                          double *out)
{
    DPO_SIMD_DISPATCH(dpo_simd_get(), dpo_side_to_double, source, type, start, n, out)
}

/* dpo_count_sum (pairwise_simd.c) of the chosen SIMD level. */
static void dpo_count_sum_rows(const void *x, int type, ptrdiff_t n, double *total)
{
    DPO_SIMD_DISPATCH(dpo_simd_get(), dpo_count_sum, x, type, n, total)
}

/* args as the instance reads it: itself, or, with side arrays to convert, `local` (a copy
 * whose side pointers are the chunk's rows as doubles, in this thread's scratch slice). Per
 * chunk, so the converted rows are read from L2 and no n-row copy is ever made. */
static const DpoChunkArgs *dpo_sides_as_double(const DpoChunkArgs *args, ptrdiff_t start,
                                               ptrdiff_t n, DpoChunkArgs *local)
{
    if (args->side_scratch == NULL)
        return args;
    int thread = 0;
#ifdef _OPENMP
    /* In the caller's team, the thread's number there (< the team's size, which the caller
     * sized the scratch for); a call outside one (side_threads 1) takes slice 0, whatever
     * team the calling thread may belong to. */
    if (args->side_threads > 1)
        thread = omp_get_thread_num();
#endif
    double *slot = args->side_scratch + (ptrdiff_t)thread * DPO_SIDE_SLOTS * args->side_rows;
    const double **targets[DPO_SIDE_SLOTS];
    *local = *args;
    targets[0] = &local->chosen_lengths;
    targets[1] = &local->rejected_lengths;
    targets[2] = &local->gt_reward_margins;
    targets[3] = &local->weights;
    /* Every side array of the copy begins at row `start`: the converted ones in the slice,
     * the float64 ones (given as they are next to converted ones) in place. */
    for (int k = 0; k < DPO_SIDE_SLOTS; k++) {
        if (args->side_sources[k] != NULL) {
            dpo_side_rows(args->side_sources[k], args->side_types[k], start, n,
                          slot + k * args->side_rows);
            *targets[k] = slot + k * args->side_rows;
        } else if (*targets[k] != NULL) {
            *targets[k] += start;
        }
    }
    local->side_start = start;
    return local;
}

void dpo_chunk_f64(const DpoChunkArgs *args, ptrdiff_t start, ptrdiff_t n, double *sums)
{
    DpoChunkArgs local;
    const DpoChunkArgs *read = dpo_sides_as_double(args, start, n, &local);
    DPO_SIMD_DISPATCH(dpo_simd_get(), dpo_chunk_f64, read, start, n, sums)
}

void dpo_chunk_f32(const DpoChunkArgs *args, ptrdiff_t start, ptrdiff_t n, double *sums)
{
    DpoChunkArgs local;
    const DpoChunkArgs *read = dpo_sides_as_double(args, start, n, &local);
    DPO_SIMD_DISPATCH(dpo_simd_get(), dpo_chunk_f32, read, start, n, sums)
}

static void dpo_kto_rows_level(const DpoKtoParams *params, const double *policy,
                               const double *reference, const unsigned char *desirable,
                               ptrdiff_t n, double *losses, double *rewards, double *grad,
                               int *finite)
{
    DPO_SIMD_DISPATCH(dpo_simd_get(), dpo_kto_rows, params, policy, reference, desirable, n,
                      losses, rewards, grad, finite)
}

int dpo_kto_rows(const DpoKtoParams *params, const double *policy, const double *reference,
                 const unsigned char *desirable, ptrdiff_t n, double *losses, double *rewards,
                 double *grad)
{
    int finite = 1;
    dpo_kto_rows_level(params, policy, reference, desirable, n, losses, rewards, grad, &finite);
    return finite;
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

double dpo_exact_count_sum_typed(const void *x, int type, ptrdiff_t n)
{
    double total = -1.0;
    dpo_count_sum_rows(x, type, n, &total);
    return total;
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
