/*
 * The CPU detection and the chosen SIMD level of simd.h: the one copy, linked into
 * dpo_fast._kernels._pairwise (the other compiled modules read the level through its .pxd).
 * The best level this CPU and OS support is chosen at import: __builtin_cpu_supports, or
 * CPUID + XGETBV on MSVC. Kernels read the level on every call (DPO_SIMD_DISPATCH), so
 * set_simd_level() / DPO_FAST_SIMD switch all of them at once.
 */
#include "simd.h"

#if defined(DPO_X86_CLONES) && defined(_MSC_VER) && !defined(__clang__)
#include <immintrin.h>
#include <intrin.h>
#endif

static int dpo_level = DPO_SIMD_BASELINE;

#if defined(DPO_X86_CLONES) && defined(_MSC_VER) && !defined(__clang__)
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
#if defined(DPO_X86_CLONES) && defined(_MSC_VER) && !defined(__clang__)
    return dpo_msvc_detect();
#elif defined(DPO_X86_CLONES)
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
