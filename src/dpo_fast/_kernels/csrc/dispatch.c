/*
 * Runtime SIMD dispatch. The chunk loop of chunk_body.h is compiled several times: here for the
 * build's baseline target (SSE2 on x86-64, NEON on aarch64) and with vectorisation disabled
 * ("scalar", for testing that every path gives the same bits); on x86-64, simd_clone.c adds
 * AVX2 and AVX-512 clones compiled with the compiler's own ISA switches (setup.py defines
 * DPO_X86_CLONES when it built them). The best one this CPU and OS support is chosen at import
 * (__builtin_cpu_supports, or CPUID + XGETBV on MSVC). This is the portable route: target_clones
 * would need ifunc, which musl, macOS and MSVC lack.
 */
#include "dispatch_internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(DPO_X86_CLONES) && defined(_MSC_VER) && !defined(__clang__)
#include <immintrin.h>
#include <intrin.h>
#endif

#ifdef DPO_X86_CLONES
#define DPO_HAVE_X86_CLONES 1
#else
#define DPO_HAVE_X86_CLONES 0
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

/* ---- the chunk loop for the baseline and scalar paths (each an f64 and an f32 function) ---- */
#define DPO_ISA baseline
#define DPO_LINKAGE static
#define DPO_TARGET
#define DPO_LOOP_HINT DPO_VEC_HINT
#include "chunk_instances.h"

#define DPO_ISA scalar
#define DPO_LINKAGE static
#define DPO_TARGET DPO_NOVEC_ATTR
#define DPO_LOOP_HINT DPO_NOVEC_HINT
#include "chunk_instances.h"

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

#if DPO_HAVE_X86_CLONES && defined(_MSC_VER) && !defined(__clang__)
/* CPUID feature bits, and XGETBV for the OS saving the wider registers (Intel SDM vol. 1,
 * 13.3 and 15.2): XCR0 bits 1-2 (SSE, AVX state) and 5-7 (AVX-512 opmask, ZMM state). */
static int dpo_msvc_detect(void)
{
    int info[4];
    __cpuid(info, 0);
    int max_leaf = info[0];
    __cpuid(info, 1);
    int osxsave = (info[2] >> 27) & 1, avx = (info[2] >> 28) & 1;
    if (max_leaf < 7 || !osxsave || !avx)
        return DPO_SIMD_BASELINE;
    unsigned long long xcr0 = _xgetbv(0);
    __cpuidex(info, 7, 0);
    int avx2 = (info[1] >> 5) & 1;
    int avx512 = ((info[1] >> 16) & 1) && ((info[1] >> 17) & 1) && ((info[1] >> 31) & 1);
    if (avx512 && (xcr0 & 0xE6) == 0xE6)
        return DPO_SIMD_AVX512;
    if (avx2 && (xcr0 & 0x6) == 0x6)
        return DPO_SIMD_AVX2;
    return DPO_SIMD_BASELINE;
}
#endif

int dpo_simd_detect(void)
{
#if DPO_HAVE_X86_CLONES && defined(_MSC_VER) && !defined(__clang__)
    return dpo_msvc_detect();
#elif DPO_HAVE_X86_CLONES
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")
        && __builtin_cpu_supports("avx512vl"))
        return DPO_SIMD_AVX512;
    if (__builtin_cpu_supports("avx2"))
        return DPO_SIMD_AVX2;
    return DPO_SIMD_BASELINE;
#else
    return DPO_SIMD_BASELINE;
#endif
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
