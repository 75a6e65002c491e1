/*
 * The SIMD dispatch layer of every kernel (the scheme of NumPy's npy_cpu_dispatch.h): the
 * levels, the loop hints, the CPU detection and the one chosen level (simd.c), and the macros
 * a kernel uses to be compiled once per level and called through the chosen one.
 *
 * A kernel source (pairwise_simd.c, logps_simd.c) is compiled by setup.py once per level with
 * -DDPO_ISA=<name> (scalar, baseline, avx2, avx512; the last two on x86-64 only, with the
 * compiler's own switch: -mavx2 / /arch:AVX2, -mavx512f... / /arch:AVX512, which works for
 * GCC, Clang and MSVC alike where __attribute__((target)) or target_clones would leave MSVC,
 * musl and macOS out). It names what it defines DPO_SIMD_FN(name), i.e. name_<DPO_ISA>, and
 * writes DPO_TARGET before each such function and DPO_LOOP_HINT before each row loop. Its
 * caller declares the instances with DPO_SIMD_DECLARE and calls the one of a level with
 * DPO_SIMD_DISPATCH; setup.py defines DPO_X86_CLONES when it built the x86-64 ones. Every
 * instance computes the same numbers (same operations in the same order: the build's flags
 * forbid contraction into FMA), so a level changes the speed, never a bit of a result.
 */
#ifndef DPO_SIMD_H
#define DPO_SIMD_H

/* The levels, lowest first (macros: the preprocessor compares them below). */
#define DPO_SIMD_SCALAR 0   /* the baseline code with vectorisation off, for testing */
#define DPO_SIMD_BASELINE 1 /* sse2 on x86-64, neon on aarch64, the compiler default elsewhere */
#define DPO_SIMD_AVX2 2
#define DPO_SIMD_AVX512 3

/* The chosen level (simd.c, linked into dpo_fast._kernels._pairwise only: the other compiled
 * modules read it through _pairwise.pxd, so the package has one). */
int dpo_simd_detect(void);   /* the best level this CPU and build support */
int dpo_simd_get(void);      /* the level in use */
int dpo_simd_set(int level); /* clamp to [scalar, detected], install it, return it */
const char *dpo_simd_name(int level);

/* DPO_VEC_HINT: a row loop's iterations are independent and its outputs never alias its
 * inputs (the Python layer checks), which GCC cannot prove across many pointers: without the
 * hint it gives up on the run-time alias checks (--param vect-max-version-for-alias-checks)
 * and stays scalar. DPO_NOVEC_HINT / DPO_NOVEC_ATTR: vectorisation off (the scalar level). */
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

/* DPO_NO_UNROLL: keep a short fixed-count loop a loop (the chunk loop's 8 lanes): fully
 * unrolled early, it would reach the vectoriser as straight-line code, which its basic-block
 * pass vectorises only in part. */
#if defined(__clang__)
#define DPO_NO_UNROLL _Pragma("clang loop unroll(disable)")
#elif defined(__GNUC__)
#define DPO_NO_UNROLL _Pragma("GCC unroll 1")
#else
#define DPO_NO_UNROLL
#endif

/* Software prefetch into L2 (a hint: no effect on any value). */
#if defined(__GNUC__) || defined(__clang__)
#define DPO_PREFETCH(address) __builtin_prefetch((address), 0, 2)
#elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
#include <xmmintrin.h>
#define DPO_PREFETCH(address) _mm_prefetch((const char *)(address), _MM_HINT_T1)
#else
#define DPO_PREFETCH(address) ((void)(address))
#endif

/* A helper kept out of line: one copy serves every caller of the translation unit. */
#if defined(__GNUC__) || defined(__clang__)
#define DPO_NOINLINE __attribute__((noinline))
#elif defined(_MSC_VER)
#define DPO_NOINLINE __declspec(noinline)
#else
#define DPO_NOINLINE
#endif

/* Kernel instances are called across translation units of one module, never from outside. */
#if defined(__GNUC__) || defined(__clang__)
#define DPO_HIDDEN __attribute__((visibility("hidden")))
#else
#define DPO_HIDDEN
#endif

#define DPO_PASTE_(a, b) a##_##b
#define DPO_PASTE(a, b) DPO_PASTE_(a, b)
#define DPO_CONCAT_(a, b) a##b
#define DPO_CONCAT(a, b) DPO_CONCAT_(a, b)

/* In a kernel source compiled for DPO_ISA: the name of an instance, and its loop settings. */
#ifdef DPO_ISA
#define DPO_SIMD_FN(name) DPO_PASTE(name, DPO_ISA)
#define DPO_ISA_IS_scalar 1
#if DPO_CONCAT(DPO_ISA_IS_, DPO_ISA)
#define DPO_TARGET DPO_NOVEC_ATTR
#define DPO_LOOP_HINT DPO_NOVEC_HINT
#define DPO_ISA_SCALAR 1
#else
#define DPO_TARGET
#define DPO_LOOP_HINT DPO_VEC_HINT
#define DPO_ISA_SCALAR 0
#endif
#undef DPO_ISA_IS_scalar
#endif

/*
 * Streaming (non-temporal) stores, for outputs far larger than the caches that nothing reads
 * soon (sequence_logps' gradient): written through the cache, each line of the destination is
 * first read from memory (read for ownership), so a pass that reads x bytes and writes x bytes
 * moves 3x; streamed, 2x (measured: a float32 pass of 524 MB, 2 threads, 89 -> 52 ms).
 * DPO_STREAM_COPY(dst, src, bytes) copies like memcpy, then DPO_STREAM_FENCE() once after the
 * last copy of a kernel call orders the streamed lines before the call returns. Only the speed
 * differs: the bytes written are the same. The widest store of the level where the compiler
 * has one (x86-64); plain memcpy elsewhere and on the scalar level.
 */
#if defined(DPO_ISA) && !DPO_ISA_SCALAR && (defined(__SSE2__) || defined(_M_X64))
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#define DPO_STREAM_WIDTH 64
#define DPO_STREAM_ONE(dst, src)                                                             \
    _mm512_stream_si512((void *)(dst), _mm512_loadu_si512((const void *)(src)))
#elif defined(__AVX2__)
#define DPO_STREAM_WIDTH 32
#define DPO_STREAM_ONE(dst, src)                                                             \
    _mm256_stream_si256((__m256i *)(dst), _mm256_loadu_si256((const __m256i *)(src)))
#else
#define DPO_STREAM_WIDTH 16
#define DPO_STREAM_ONE(dst, src)                                                             \
    _mm_stream_si128((__m128i *)(dst), _mm_loadu_si128((const __m128i *)(src)))
#endif
static inline void dpo_stream_copy(void *dst, const void *src, size_t bytes)
{
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    /* A head to the store's alignment and a tail shorter than one store: plain copies. */
    size_t head = (size_t)(-(uintptr_t)d) & (DPO_STREAM_WIDTH - 1);
    if (head > bytes)
        head = bytes;
    memcpy(d, s, head);
    size_t i = head;
    for (; i + DPO_STREAM_WIDTH <= bytes; i += DPO_STREAM_WIDTH)
        DPO_STREAM_ONE(d + i, s + i);
    memcpy(d + i, s + i, bytes - i);
}
#define DPO_STREAM_COPY(dst, src, bytes) dpo_stream_copy((dst), (src), (bytes))
#define DPO_STREAM_FENCE() _mm_sfence()
#elif defined(DPO_ISA)
#include <string.h>
#define DPO_STREAM_COPY(dst, src, bytes) memcpy((dst), (src), (bytes))
#define DPO_STREAM_FENCE() ((void)0)
#endif

/* DPO_SIMD_DECLARE(void, name, (params)): the prototypes of name_<level> for every level this
 * build compiles. DPO_SIMD_DISPATCH(level, name, args...): call name_<level>(args...) and
 * return (void functions); a level without an instance in this build runs the baseline. */
#ifdef DPO_X86_CLONES
#define DPO_SIMD_DECLARE_X86(RET, NAME, PARAMS)                                              \
    DPO_HIDDEN RET NAME##_avx2 PARAMS;                                                       \
    DPO_HIDDEN RET NAME##_avx512 PARAMS;
#define DPO_SIMD_CASES_X86(NAME, ...)                                                        \
    case DPO_SIMD_AVX2:                                                                      \
        NAME##_avx2(__VA_ARGS__);                                                            \
        return;                                                                              \
    case DPO_SIMD_AVX512:                                                                    \
        NAME##_avx512(__VA_ARGS__);                                                          \
        return;
#else
#define DPO_SIMD_DECLARE_X86(RET, NAME, PARAMS)
#define DPO_SIMD_CASES_X86(NAME, ...)
#endif

#define DPO_SIMD_DECLARE(RET, NAME, PARAMS)                                                  \
    DPO_HIDDEN RET NAME##_scalar PARAMS;                                                     \
    DPO_HIDDEN RET NAME##_baseline PARAMS;                                                   \
    DPO_SIMD_DECLARE_X86(RET, NAME, PARAMS)

#define DPO_SIMD_DISPATCH(LEVEL, NAME, ...)                                                  \
    switch (LEVEL) {                                                                         \
    case DPO_SIMD_SCALAR:                                                                    \
        NAME##_scalar(__VA_ARGS__);                                                          \
        return;                                                                              \
    DPO_SIMD_CASES_X86(NAME, __VA_ARGS__)                                                    \
    default:                                                                                 \
        NAME##_baseline(__VA_ARGS__);                                                        \
        return;                                                                              \
    }

#endif /* DPO_SIMD_H */
