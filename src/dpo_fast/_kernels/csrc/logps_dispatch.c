/*
 * Runtime SIMD dispatch of the log-softmax rows (logps_row.h), the scheme of dispatch.c: the
 * row functions are compiled here for the build's baseline (SSE2 on x86-64, NEON on aarch64)
 * and with vectorisation disabled ("scalar", to test that every path gives the same bits); on
 * x86-64 logps_clone.c adds AVX2 and AVX-512 clones (setup.py defines DPO_X86_CLONES when it
 * built them).
 *
 * No level is kept here: each extension module links its own copy of any C file, so this one
 * cannot read dispatch.c's dpo_simd_get(). The caller passes the level the pairwise kernels
 * use (dpo_fast._kernels._pairwise.simd_level(), already clamped by dpo_simd_detect()), so
 * DPO_FAST_SIMD and set_simd_level() switch these loops too.
 */
#include "logps_internal.h"

#ifdef DPO_X86_CLONES
#define LOGPS_HAVE_X86_CLONES 1
#else
#define LOGPS_HAVE_X86_CLONES 0
#endif

#define DPO_ISA baseline
#define LOGPS_LINKAGE static
#define DPO_TARGET
#define LOGPS_LOOP_HINT LOGPS_VEC_HINT
#include "logps_instances.h"

#define DPO_ISA scalar
#define LOGPS_LINKAGE static
#define DPO_TARGET LOGPS_NOVEC_ATTR
#define LOGPS_LOOP_HINT LOGPS_NOVEC_HINT
#include "logps_instances.h"

/* The level comes from dispatch.c's detection (CPUID on MSVC, __builtin_cpu_supports
 * elsewhere); GCC and Clang builds check it once more so that a bad level can never reach an
 * illegal instruction. Levels this build has no clone for run the baseline. */
int dpo_logps_simd_level(int requested)
{
#if LOGPS_HAVE_X86_CLONES && (defined(__GNUC__) || defined(__clang__))
    if (requested >= LOGPS_SIMD_AVX2) {
        __builtin_cpu_init();
        if (!__builtin_cpu_supports("avx2"))
            requested = LOGPS_SIMD_BASELINE;
        else if (requested >= LOGPS_SIMD_AVX512
                 && !(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")
                      && __builtin_cpu_supports("avx512vl")))
            requested = LOGPS_SIMD_AVX2;
    }
#elif !LOGPS_HAVE_X86_CLONES
    if (requested > LOGPS_SIMD_BASELINE)
        requested = LOGPS_SIMD_BASELINE;
#endif
    if (requested > LOGPS_SIMD_AVX512)
        requested = LOGPS_SIMD_AVX512;
    return requested < LOGPS_SIMD_SCALAR ? LOGPS_SIMD_SCALAR : requested;
}

#if LOGPS_HAVE_X86_CLONES
#define LOGPS_X86_CASES(NAME, ...)                                                           \
    case LOGPS_SIMD_AVX2:                                                                    \
        NAME##_avx2(__VA_ARGS__);                                                            \
        return;                                                                              \
    case LOGPS_SIMD_AVX512:                                                                  \
        NAME##_avx512(__VA_ARGS__);                                                          \
        return;
#else
#define LOGPS_X86_CASES(NAME, ...)
#endif

#define LOGPS_DISPATCH(NAME, ...)                                                            \
    switch (args->simd_level) {                                                              \
    case LOGPS_SIMD_SCALAR:                                                                  \
        NAME##_scalar(__VA_ARGS__);                                                          \
        return;                                                                              \
    LOGPS_X86_CASES(NAME, __VA_ARGS__)                                                       \
    default:                                                                                 \
        NAME##_baseline(__VA_ARGS__);                                                        \
        return;                                                                              \
    }

void dpo_logps_forward_f32(const DpoLogpsArgs *args, const int64_t *rows, ptrdiff_t k0,
                           ptrdiff_t k1)
{
    LOGPS_DISPATCH(dpo_logps_forward_f32, args, rows, k0, k1)
}

void dpo_logps_forward_f64(const DpoLogpsArgs *args, const int64_t *rows, ptrdiff_t k0,
                           ptrdiff_t k1)
{
    LOGPS_DISPATCH(dpo_logps_forward_f64, args, rows, k0, k1)
}

void dpo_logps_backward_f32(const DpoLogpsArgs *args, ptrdiff_t r0, ptrdiff_t r1)
{
    LOGPS_DISPATCH(dpo_logps_backward_f32, args, r0, r1)
}

void dpo_logps_backward_f64(const DpoLogpsArgs *args, ptrdiff_t r0, ptrdiff_t r1)
{
    LOGPS_DISPATCH(dpo_logps_backward_f64, args, r0, r1)
}
