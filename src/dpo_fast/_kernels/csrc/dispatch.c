/*
 * Runtime SIMD dispatch. The chunk loop of chunk_body.h is compiled several times: for the
 * build's baseline target, with vectorisation disabled ("scalar", for testing that every path
 * gives the same bits), and on x86-64 with GCC/Clang also for AVX2 and AVX-512 through
 * __attribute__((target)). The best one this CPU supports is chosen at import with
 * __builtin_cpu_supports. This is the portable route: target_clones would need ifunc, which
 * musl, macOS and MSVC lack. MSVC builds get the baseline and scalar paths only.
 */
#include "dispatch.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static const double dpo_zeros_f64[DPO_CHUNK];
static const float dpo_zeros_f32[DPO_CHUNK];

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define DPO_HAVE_X86_CLONES 1
#else
#define DPO_HAVE_X86_CLONES 0
#endif

/* DPO_VEC_HINT: the rows of a chunk are independent and outputs never alias inputs (the
 * Python layer checks), which GCC cannot prove across 9 pointers: without the hint it gives up
 * on the run-time alias checks (--param vect-max-version-for-alias-checks) and stays scalar. */
#if defined(__clang__)
#define DPO_VEC_HINT _Pragma("clang loop vectorize(assume_safety)")
#define DPO_NOVEC_HINT _Pragma("clang loop vectorize(disable) interleave(disable)")
#define DPO_NOVEC_ATTR
#elif defined(__GNUC__)
#define DPO_VEC_HINT _Pragma("GCC ivdep")
#define DPO_NOVEC_HINT
#define DPO_NOVEC_ATTR __attribute__((optimize("no-tree-vectorize")))
#elif defined(_MSC_VER)
#define DPO_VEC_HINT __pragma(loop(ivdep))
#define DPO_NOVEC_HINT __pragma(loop(no_vector))
#define DPO_NOVEC_ATTR
#else
#define DPO_VEC_HINT
#define DPO_NOVEC_HINT
#define DPO_NOVEC_ATTR
#endif


/* ---- the chunk loop once per instruction set (each gives an f64 and an f32 function) ---- */
#define DPO_ISA baseline
#define DPO_TARGET
#define DPO_LOOP_HINT DPO_VEC_HINT
#include "chunk_instances.h"

#define DPO_ISA scalar
#define DPO_TARGET DPO_NOVEC_ATTR
#define DPO_LOOP_HINT DPO_NOVEC_HINT
#include "chunk_instances.h"

#if DPO_HAVE_X86_CLONES
#define DPO_ISA avx2
#define DPO_TARGET __attribute__((target("avx2")))
#define DPO_LOOP_HINT DPO_VEC_HINT
#include "chunk_instances.h"

#define DPO_ISA avx512
#define DPO_TARGET __attribute__((target("avx512f,avx512dq,avx512vl")))
#define DPO_LOOP_HINT DPO_VEC_HINT
#include "chunk_instances.h"
#endif

typedef void (*dpo_chunk_fn)(const DpoChunkArgs *, ptrdiff_t, ptrdiff_t, double *);

static dpo_chunk_fn dpo_f64_impl = dpo_chunk_f64_baseline;
static dpo_chunk_fn dpo_f32_impl = dpo_chunk_f32_baseline;
static int dpo_level = DPO_SIMD_BASELINE;

void dpo_chunk_f64(const DpoChunkArgs *args, ptrdiff_t start, ptrdiff_t n, double *sums)
{
    dpo_f64_impl(args, start, n, sums);
}

void dpo_chunk_f32(const DpoChunkArgs *args, ptrdiff_t start, ptrdiff_t n, double *sums)
{
    dpo_f32_impl(args, start, n, sums);
}

int dpo_simd_detect(void)
{
#if DPO_HAVE_X86_CLONES
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")
        && __builtin_cpu_supports("avx512vl"))
        return DPO_SIMD_AVX512;
    if (__builtin_cpu_supports("avx2"))
        return DPO_SIMD_AVX2;
#endif
    return DPO_SIMD_BASELINE;
}

int dpo_simd_get(void)
{
    return dpo_level;
}

int dpo_simd_set(int level)
{
    int best = dpo_simd_detect();
    if (level > best)
        level = best;
    if (level < DPO_SIMD_SCALAR)
        level = DPO_SIMD_SCALAR;
    switch (level) {
    case DPO_SIMD_SCALAR:
        dpo_f64_impl = dpo_chunk_f64_scalar;
        dpo_f32_impl = dpo_chunk_f32_scalar;
        break;
#if DPO_HAVE_X86_CLONES
    case DPO_SIMD_AVX2:
        dpo_f64_impl = dpo_chunk_f64_avx2;
        dpo_f32_impl = dpo_chunk_f32_avx2;
        break;
    case DPO_SIMD_AVX512:
        dpo_f64_impl = dpo_chunk_f64_avx512;
        dpo_f32_impl = dpo_chunk_f32_avx512;
        break;
#endif
    default:
        level = DPO_SIMD_BASELINE;
        dpo_f64_impl = dpo_chunk_f64_baseline;
        dpo_f32_impl = dpo_chunk_f32_baseline;
        break;
    }
    dpo_level = level;
    return level;
}

const char *dpo_simd_name(int level)
{
    switch (level) {
    case DPO_SIMD_SCALAR:
        return "scalar";
    case DPO_SIMD_AVX2:
        return "avx2";
    case DPO_SIMD_AVX512:
        return "avx512";
    default:
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
        return "sse2";
#elif defined(__aarch64__) || defined(_M_ARM64) || defined(__ARM_NEON)
        return "neon";
#else
        return "baseline";
#endif
    }
}

int dpo_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
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
